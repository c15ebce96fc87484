//! Credentials bound to a trusted device, proved at the gateway by a TLS client certificate for
//! the device's key, through the shared harness ([`airlock_testkit::gateway`]) with real clients:
//! the `psql` binary (libpq over OpenSSL, given `sslcert` and `sslkey` files made by
//! [`airlock_gateway::device_tls`]) and tokio-postgres over rustls with a client certificate.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use airlock_broker::broker::TrustedDevice;
use airlock_broker::devices::Enrollment;
use airlock_core::device::{DeviceKey, enrollment_message};
use airlock_core::lifecycle::Grant;
use airlock_gateway::device_tls::{device_certificate, device_key_pem};
use airlock_gateway::gateway::Settings;
use airlock_testkit::caller;
use airlock_testkit::gateway::{DATABASE, GatewayHarness, Setup};
use ed25519_dalek::{Signer, SigningKey};
use rustls::SupportedProtocolVersion;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A client certificate and its key as the files libpq reads: `sslcert` and `sslkey` (mode 0600).
struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
    _dir: TempDir,
}

impl CertificateFiles {
    /// A device's files, made by `device_tls` as the CLI makes them, for the device key of `seed`.
    fn device(seed: u8) -> Self {
        let signing_key = device_key(seed);
        let now = OffsetDateTime::now_utc();
        let cert = device_certificate(&signing_key, now - Duration::minutes(1), now + Duration::minutes(30)).unwrap();
        Self::write(&cert, &device_key_pem(&signing_key).unwrap())
    }

    fn write(cert_pem: &str, key_pem: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("device.crt"), dir.path().join("device.key"));
        std::fs::write(&cert, cert_pem).unwrap();
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key).unwrap();
        std::io::Write::write_all(&mut file, key_pem.as_bytes()).unwrap();
        Self { cert, key, _dir: dir }
    }

    /// A client trusting the gateway's certificate and presenting this device's.
    fn client(&self, h: &GatewayHarness) -> MakeRustlsConnect {
        self.client_over(h, rustls::DEFAULT_VERSIONS)
    }

    /// [`Self::client`], speaking only the TLS `versions`.
    fn client_over(&self, h: &GatewayHarness, versions: &[&'static SupportedProtocolVersion]) -> MakeRustlsConnect {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(h.certificate()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_file_iter(&self.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("rustls takes the key");
        MakeRustlsConnect::new(config)
    }
}

fn device_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A harness whose `demo-db` binds credentials to devices.
async fn bound_harness() -> GatewayHarness {
    GatewayHarness::start_with(Setup { bind_credentials_to_device: true, ..Setup::default() }).await
}

/// dana's caller, as the harness's credentials are issued to.
fn dana() -> airlock_broker::Caller {
    caller("dana", &["eng", "oncall"])
}

/// Adds dana as a user (devices belong to known users), enrolls the device key of `seed` as hers
/// and has an administrator approve it.
async fn trust(h: &GatewayHarness, seed: u8) -> TrustedDevice {
    let user = "dana".parse().unwrap();
    let groups = ["eng".parse().unwrap(), "oncall".parse().unwrap()];
    h.broker.add_user(&user, &groups, false, "admin").await.expect("dana is added");
    let (signing_key, key) = (device_key(seed), DeviceKey::of(&device_key(seed)));
    let signature = hex::encode(signing_key.sign(&enrollment_message(&user, &key)).to_bytes());
    let enrollment = Enrollment { name: "laptop".parse().unwrap(), key, signature };
    let enrolled = h.broker.enroll_device(&dana(), enrollment).await.expect("dana enrolls her device");
    let approved = h.broker.approve_device(enrolled.id, "admin").await.expect("an administrator approves it");
    TrustedDevice { id: approved.id, key: approved.key }
}

/// A credential for `grant` issued to dana calling from `device`.
async fn token_from(h: &GatewayHarness, grant: &Grant, device: TrustedDevice) -> String {
    let holder = airlock_broker::Caller { device: Some(device), ..dana() };
    let (credential, token) = h.broker.issue_credential(&holder, &grant.id.to_string()).await.expect("a credential");
    assert_eq!(credential.device, Some(device.key), "the credential is bound to the device");
    token.expose().to_owned()
}

/// `SELECT 1` through the gateway with tokio-postgres over `tls`.
async fn select_one(h: &GatewayHarness, password: &str, tls: MakeRustlsConnect) -> Result<i32, tokio_postgres::Error> {
    let (client, connection) = h.config("dana", password).connect(tls).await?;
    tokio::spawn(connection);
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

/// The SQLSTATE and message a refused connection got.
fn refusal(error: tokio_postgres::Error) -> (SqlState, String) {
    let db = error.as_db_error().unwrap_or_else(|| panic!("a PostgreSQL error: {error}"));
    (db.code().clone(), db.message().to_owned())
}

/// Runs `psql -c 'SELECT 1'` through the gateway, with `device`'s files as `sslcert` and
/// `sslkey` when given; its output, or its error output when it fails.
async fn psql(h: &GatewayHarness, password: &str, device: Option<&CertificateFiles>) -> Result<String, String> {
    let program = airlock_postgres::cluster::program("psql").expect("psql is installed");
    let mut conninfo = format!("host=127.0.0.1 port={} dbname={DATABASE} user=dana sslmode=require", h.port);
    if let Some(device) = device {
        conninfo.push_str(&format!(" sslcert={} sslkey={}", quoted(&device.cert), quoted(&device.key)));
    }
    // An empty home: no ~/.postgresql/postgresql.crt or root.crt of this machine's joins in.
    let home = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(program)
        .args(["-X", "-w", "-tA", "-c", "SELECT 1", &conninfo])
        .env("PGPASSWORD", password)
        .env("HOME", home.path())
        .env_remove("PGSSLCERT")
        .env_remove("PGSSLKEY")
        .env_remove("PGSSLROOTCERT")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("psql runs");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[tokio::test]
async fn a_device_bound_credential_works_with_its_device_certificate() {
    let h = bound_harness().await;
    let trusted = trust(&h, 1).await;
    let grant = h.read_grant("30m").await;
    let token = token_from(&h, &grant, trusted).await;
    let laptop = CertificateFiles::device(1);

    assert_eq!(psql(&h, &token, Some(&laptop)).await, Ok("1".to_owned()), "psql with sslcert and sslkey");
    assert_eq!(select_one(&h, &token, laptop.client(&h)).await.unwrap(), 1, "tokio-postgres with the certificate");
    let tls12 = laptop.client_over(&h, &[&rustls::version::TLS12]);
    assert_eq!(select_one(&h, &token, tls12).await.unwrap(), 1, "TLS 1.2's CertificateVerify proves the key too");
    assert!(h.audit("session.refused").await.is_empty());
}

#[tokio::test]
async fn a_credential_used_from_another_device_is_refused() {
    let h = bound_harness().await;
    let trusted = trust(&h, 1).await;
    let grant = h.read_grant("30m").await;
    let token = token_from(&h, &grant, trusted).await;
    let another = CertificateFiles::device(2);

    let (code, message) = refusal(select_one(&h, &token, another.client(&h)).await.unwrap_err());
    assert_eq!(code, SqlState::INVALID_PASSWORD);
    assert!(message.starts_with("airlock: ") && message.contains("bound to another device"), "{message}");
    let refused = psql(&h, &token, Some(&another)).await.unwrap_err();
    assert!(refused.contains("bound to another device"), "psql shows why: {refused}");

    let (code, message) = refusal(select_one(&h, &token, h.tls.clone()).await.unwrap_err());
    assert_eq!(code, SqlState::INVALID_PASSWORD);
    assert!(message.contains("presented no client certificate"), "{message}");
    let refused = psql(&h, &token, None).await.unwrap_err();
    assert!(refused.contains("presented no client certificate"), "psql shows why: {refused}");

    // A certificate for a key that is no device's (ECDSA P-256) proves no device.
    let made = rcgen::generate_simple_self_signed(vec!["laptop".to_owned()]).unwrap();
    let ecdsa = CertificateFiles::write(&made.cert.pem(), &made.signing_key.serialize_pem());
    let (code, message) = refusal(select_one(&h, &token, ecdsa.client(&h)).await.unwrap_err());
    assert_eq!(code, SqlState::INVALID_PASSWORD);
    assert!(message.contains("not for a device key (Ed25519)"), "{message}");

    airlock_testkit::eventually(|| async { h.audit("session.refused").await.len() == 5 }).await;
    let refused = h.audit("session.refused").await;
    assert!(refused.iter().all(|r| r["reason"].as_str().unwrap().contains("device")), "{refused:?}");
}

#[tokio::test]
async fn an_unbound_credential_works_with_or_without_a_client_certificate() {
    let h = GatewayHarness::start(Settings::default()).await;
    let grant = h.read_grant("30m").await;
    let token = h.token(&grant).await;
    let laptop = CertificateFiles::device(1);

    assert_eq!(select_one(&h, &token, h.tls.clone()).await.unwrap(), 1, "without a certificate");
    assert_eq!(select_one(&h, &token, laptop.client(&h)).await.unwrap(), 1, "with a device's certificate");
    assert_eq!(psql(&h, &token, Some(&laptop)).await, Ok("1".to_owned()));
    assert_eq!(psql(&h, &token, None).await, Ok("1".to_owned()));
}
