//! Airlock's grant certificate authority: the database layer's proof that a login as a grant's
//! role comes through the gateway.
//!
//! A grant role's password could be changed by the role itself (PostgreSQL lets any role set its
//! own), after which its holder could log in directly, past the gateway and its recording. A
//! database set up as [`HBA_LINES`] says admits members of [`GATEWAY_LOGIN_ROLE`] (every grant
//! role of a resource with `grant_login = "certificate"`) only with a TLS client certificate
//! naming the role and signed by this authority, whose key stays in Airlock's data directory. The
//! gateway makes such a certificate for each login, valid for minutes; no role can change it.
//!
//! The key is kept (`grant-ca.key`, 0600, PKCS#8 PEM); the certificate (`grant-ca.pem`, which the
//! database trusts as `ssl_ca_file`) is made from it with fixed contents, so it can be written
//! again whenever it is missing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// The group every grant role of a certificate-login resource is in; `pg_hba.conf` names it.
pub const GATEWAY_LOGIN_ROLE: &str = "airlock_gateway_login";

/// The lines to put first in a target's `pg_hba.conf` (PostgreSQL 15 and later): members of
/// [`GATEWAY_LOGIN_ROLE`] log in only over TLS with a certificate from the grant CA whose common
/// name is the role (`cert` checks both), never with a password, over a socket or in plaintext.
/// The server's `ssl_ca_file` must hold `grant-ca.pem`.
pub const HBA_LINES: &str = "\
# Airlock: grant roles log in only through the gateway, with a certificate from Airlock's grant CA.
local   all  +airlock_gateway_login                 reject
hostssl all  +airlock_gateway_login  all            cert
host    all  +airlock_gateway_login  all            reject
";

/// How long a login certificate is valid: it is needed only while the gateway logs in.
const LOGIN_CERTIFICATE_LIFETIME: Duration = Duration::minutes(10);
const KEY_FILE: &str = "grant-ca.key";
const CERT_FILE: &str = "grant-ca.pem";

/// Why the grant CA could not be loaded, made or used.
#[derive(Debug, thiserror::Error)]
pub enum GrantCaError {
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a usable key: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// A client certificate for one login, with its private key.
pub struct LoginCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The grant CA, loaded from (or made in) a data directory.
pub struct GrantCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for GrantCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantCa").finish_non_exhaustive()
    }
}

impl GrantCa {
    /// The CA whose key is in `dir`, made there (key 0600) at first use; its certificate is
    /// written beside the key when missing.
    pub fn load_or_create(dir: &Path) -> Result<Arc<Self>, GrantCaError> {
        let key_path = dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem)
                .map_err(|e| GrantCaError::Key { path: key_path.clone(), message: e.to_string() })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                key
            }
            Err(source) => return Err(GrantCaError::File { what: "cannot read", path: key_path, source }),
        };
        let params = authority_params();
        let cert_pem = params.clone().self_signed(&key)?.pem();
        let cert_path = dir.join(CERT_FILE);
        if !cert_path.exists() {
            write_new(&cert_path, cert_pem.as_bytes(), 0o644)?;
        }
        Ok(Arc::new(Self { issuer: Issuer::new(params, key), cert_pem }))
    }

    /// The CA whose key is in `dir`, which must be there (a gateway running apart uses a copy of
    /// the broker's).
    pub fn load(dir: &Path) -> Result<Arc<Self>, GrantCaError> {
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            let source = io::Error::new(io::ErrorKind::NotFound, "copy the broker's grant-ca.key here");
            return Err(GrantCaError::File { what: "cannot read", path, source });
        }
        Self::load_or_create(dir)
    }

    /// Where the CA's certificate is kept in `dir`.
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join(CERT_FILE)
    }

    /// The CA's certificate, in PEM: what the database's `ssl_ca_file` must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate to log in as `role` (its common name), valid from a minute ago for
    /// [`LOGIN_CERTIFICATE_LIFETIME`].
    pub fn login_certificate(&self, role: &str, now: OffsetDateTime) -> Result<LoginCertificate, GrantCaError> {
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name.push(DnType::CommonName, role);
        params.not_before = now - Duration::minutes(1);
        params.not_after = now + LOGIN_CERTIFICATE_LIFETIME;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(LoginCertificate { chain: vec![cert.der().clone()], key })
    }

    /// A server certificate for `names` (a throwaway cluster's), signed by this CA.
    pub fn server_certificate(&self, names: &[&str]) -> Result<(String, String), GrantCaError> {
        let mut params = CertificateParams::new(names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The CA's own certificate: the same every time it is made from the same key, but for the
/// signature, so databases that trust one copy trust the next.
fn authority_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Airlock grant CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from(1u64));
    params.not_before = time::macros::datetime!(2026-01-01 00:00 UTC);
    params.not_after = time::macros::datetime!(2126-01-01 00:00 UTC);
    params
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), GrantCaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(contents).and_then(|()| file.sync_all()));
    written.map_err(|source| GrantCaError::File { what: "cannot write", path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_kept_private_and_the_authority_is_the_same_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = GrantCa::load_or_create(dir.path()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let second = GrantCa::load_or_create(dir.path()).unwrap();
        assert!(dir.path().join(CERT_FILE).exists(), "the certificate is written again");
        // Same subject and key: a leaf of one verifies against the other (checked end to end
        // against PostgreSQL in the connector's tests).
        assert_eq!(first.issuer.key().public_key_pem(), second.issuer.key().public_key_pem());
        let login = second.login_certificate("airlock_0123", OffsetDateTime::now_utc()).unwrap();
        assert_eq!(login.chain.len(), 1);
    }
}
