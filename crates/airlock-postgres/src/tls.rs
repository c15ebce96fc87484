//! TLS from Airlock to a target database, one piece of code for the connector and the gateway:
//! the rustls client configuration a resource's `tls` setting ([`TlsMode`]) asks for, built once
//! per resource by [`TargetTls::new`].
//!
//! - `verify-full`: the server's certificate must chain to the resource's `ca_file`, or to the
//!   system's root certificates without one, and name the host of its address;
//! - `require`: encrypted, but any certificate is accepted (module `unverified`), which protects
//!   only against passive eavesdropping;
//! - `disable`: no TLS, so no [`TargetTls`].
//!
//! Both clients refuse a server that will not speak TLS when it was asked for: a connection never
//! falls back to plaintext. One crypto provider, ring, is used everywhere (see `DEPENDENCIES.md`).

mod unverified;

use std::path::Path;
use std::sync::Arc;

use airlock_core::catalog::TlsMode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::grant_ca::GrantCa;

/// Why the TLS settings of a target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ca_file `{path}`: {message}")]
    CaFile { path: String, message: String },
    #[error("no system root certificates could be loaded ({0}); name the server's CA in ca_file")]
    NoSystemRoots(String),
    #[error("host `{0}` is not a name or IP address a certificate can be checked against")]
    ServerName(String),
}

/// TLS to one target: the client configuration, the name the server's certificate must carry,
/// and, for a resource with `grant_login = "certificate"`, the grant CA that signs each login's
/// client certificate ([`crate::grant_ca`]).
#[derive(Debug, Clone)]
pub struct TargetTls {
    config: Arc<ClientConfig>,
    trust: Trust,
    server_name: ServerName<'static>,
    grant_ca: Option<Arc<GrantCa>>,
}

/// How the server's certificate is checked, kept to build a configuration per login.
#[derive(Debug, Clone)]
enum Trust {
    Any(Arc<unverified::AnyCertificate>),
    Roots(Arc<RootCertStore>),
}

impl TargetTls {
    /// What `mode` asks for, to the server at `host`; `None` for [`TlsMode::Disable`].
    pub fn new(mode: &TlsMode, host: &str) -> Result<Option<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let trust = match mode {
            TlsMode::Disable => return Ok(None),
            TlsMode::Require => Trust::Any(Arc::new(unverified::AnyCertificate::new(provider))),
            TlsMode::VerifyFull { ca_file } => Trust::Roots(Arc::new(roots(ca_file.as_deref())?)),
        };
        let server_name = ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))?;
        let config = Arc::new(trust.builder().with_no_client_auth());
        Ok(Some(Self { config, trust, server_name, grant_ca: None }))
    }

    /// The same, with logins as grant roles proved by a certificate from `grant_ca`.
    pub fn with_grant_ca(mut self, grant_ca: Arc<GrantCa>) -> Self {
        self.grant_ca = Some(grant_ca);
        self
    }

    /// The grant CA that signs logins as grant roles, if the resource logs in that way.
    pub fn grant_ca(&self) -> Option<&Arc<GrantCa>> {
        self.grant_ca.as_ref()
    }

    /// The TLS handshake over `stream`, once the server has agreed to TLS.
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> std::io::Result<TlsStream<S>> {
        TlsConnector::from(self.config.clone()).connect(self.server_name.clone(), stream).await
    }

    /// The handshake of a login as the grant role `role`: with a client certificate naming it
    /// when the resource logs in with certificates, else as [`TargetTls::handshake`].
    pub async fn handshake_as<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        role: &str,
    ) -> std::io::Result<TlsStream<S>> {
        let Some(grant_ca) = &self.grant_ca else { return self.handshake(stream).await };
        let login = grant_ca.login_certificate(role, time::OffsetDateTime::now_utc()).map_err(std::io::Error::other)?;
        let config =
            self.trust.builder().with_client_auth_cert(login.chain, login.key).map_err(std::io::Error::other)?;
        TlsConnector::from(Arc::new(config)).connect(self.server_name.clone(), stream).await
    }

    /// The same configuration for tokio-postgres; its `Config` must also say `sslmode=require`,
    /// or a server that refuses TLS would get the login in plaintext.
    pub fn postgres(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new(ClientConfig::clone(&self.config))
    }
}

impl Trust {
    fn builder(&self) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        match self {
            Trust::Any(verifier) => builder.dangerous().with_custom_certificate_verifier(verifier.clone()),
            Trust::Roots(roots) => builder.with_root_certificates(roots.clone()),
        }
    }
}

/// The certificates in `ca_file`, or the system's root certificates without one.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let Some(path) = ca_file else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            let why = if errors.is_empty() { "none found".to_owned() } else { errors.join("; ") };
            return Err(TlsError::NoSystemRoots(why));
        }
        return Ok(roots);
    };
    let error = |message: &dyn std::fmt::Display| TlsError::CaFile {
        path: path.display().to_string(),
        message: message.to_string(),
    };
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| error(&e))? {
        roots.add(cert.map_err(|e| error(&e))?).map_err(|e| error(&e))?;
    }
    if roots.is_empty() {
        return Err(error(&"holds no PEM certificate"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_is_no_tls_and_require_needs_no_roots() {
        assert!(TargetTls::new(&TlsMode::Disable, "db.internal").unwrap().is_none());
        assert!(TargetTls::new(&TlsMode::Require, "db.internal").unwrap().is_some());
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        let mode = TlsMode::VerifyFull { ca_file: Some(ca_file.clone()) };
        let missing = TargetTls::new(&mode, "db.internal").unwrap_err().to_string();
        assert!(missing.starts_with(&format!("ca_file `{}`: ", ca_file.display())), "{missing}");
        std::fs::write(&ca_file, "not a certificate").unwrap();
        let empty = TargetTls::new(&mode, "db.internal").unwrap_err().to_string();
        assert!(empty.ends_with("holds no PEM certificate"), "{empty}");
    }

    #[test]
    fn the_host_must_be_checkable() {
        let error = TargetTls::new(&TlsMode::Require, "not a host").unwrap_err();
        assert_eq!(
            error.to_string(),
            "host `not a host` is not a name or IP address a certificate can be checked against"
        );
    }
}
