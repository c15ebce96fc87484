//! The gateway's TLS identity: the configured certificate and key, or, when none is configured, a
//! self-signed one generated once into the data directory (key file mode 0600) so that
//! `sslmode=require` works out of the box. Clients that verify the server (`verify-full`) need a
//! configured certificate.
//!
//! Every client is asked for a certificate and none is required ([`AnyClientCertificate`]): a
//! client certificate proves that the client holds its key, and when that key is a device's
//! ([`device_key`]), admission checks it against the device a credential is bound to.
//!
//! One crypto provider, ring, is used everywhere (see `DEPENDENCIES.md`).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_core::device::DeviceKey;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio_rustls::TlsAcceptor;
use x509_parser::oid_registry::OID_SIG_ED25519;

/// File names of the generated identity inside the data directory.
pub const GENERATED_CERT: &str = "gateway-cert.pem";
pub const GENERATED_KEY: &str = "gateway-key.pem";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{path}`: {message}")]
    File { path: String, message: String },
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not fit together: {0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// Where the certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generated into (and reused from) this directory.
    Generated {
        dir: PathBuf,
    },
}

/// A TLS acceptor for `identity`.
pub fn acceptor(identity: &Identity) -> Result<TlsAcceptor, TlsError> {
    let (cert, key) = match identity {
        Identity::Files { cert, key } => (cert.clone(), key.clone()),
        Identity::Generated { dir } => generated(dir)?,
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| file_error(&cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&cert, e))?;
    if chain.is_empty() {
        return Err(file_error(&cert, "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| file_error(&key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clients = Arc::new(AnyClientCertificate { algorithms: provider.signature_verification_algorithms });
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Asks every client for a certificate, requires none, and accepts any certificate: issuer,
/// names and validity dates mean nothing to the gateway. What a client certificate proves is only
/// that the client holds its key — rustls checks the handshake's signature (CertificateVerify)
/// against the certificate's key with [`Self::verify_tls13_signature`] and its TLS 1.2 twin.
/// Which key is acceptable is pinned later, by the credential: admission passes the key
/// ([`device_key`]) to `credential::verify`, which refuses a device-bound credential on any other.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The device key a client certificate (end-entity, DER) is for: its key when that is an Ed25519
/// key (OID 1.3.101.112, 32 bytes). `None` for any other key type, and for a certificate that does
/// not parse (rustls has already checked the handshake's signature with it, so that cannot happen
/// on a live connection): such a connection proves no device, and a device-bound credential is
/// refused on it.
pub fn device_key(end_entity: &CertificateDer<'_>) -> Option<DeviceKey> {
    let (_, certificate) = x509_parser::parse_x509_certificate(end_entity).ok()?;
    let key = certificate.public_key();
    if key.algorithm.algorithm != OID_SIG_ED25519 || key.subject_public_key.unused_bits != 0 {
        return None;
    }
    let bytes: [u8; 32] = key.subject_public_key.data.as_ref().try_into().ok()?;
    DeviceKey::from_bytes(bytes).ok()
}

/// The generated identity in `dir`, made at first use.
fn generated(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = (dir.join(GENERATED_CERT), dir.join(GENERATED_KEY));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| file_error(&cert, e))?;
    Ok((cert, key))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_identity_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::Generated { dir: dir.path().to_owned() };
        acceptor(&identity).unwrap();
        let key = dir.path().join(GENERATED_KEY);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let first = std::fs::read(&key).unwrap();
        acceptor(&identity).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), first);
    }

    #[test]
    fn clients_are_asked_for_a_certificate_and_need_none() {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let clients = AnyClientCertificate { algorithms };
        assert!(clients.offer_client_auth() && !clients.client_auth_mandatory());
        assert!(clients.root_hint_subjects().is_empty());
        assert!(clients.supported_verify_schemes().contains(&SignatureScheme::ED25519), "device keys are Ed25519");
    }

    #[test]
    fn a_broken_certificate_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let identity = Identity::Files { cert: cert.clone(), key: dir.path().join("missing.pem") };
        let error = acceptor(&identity).err().unwrap().to_string();
        assert!(error.contains("cert.pem") && error.contains("no certificate"), "{error}");
    }
}
