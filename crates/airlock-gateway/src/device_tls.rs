//! The files a device presents to the gateway as a TLS client: its key as a PKCS#8 PEM file and a
//! short-lived self-signed certificate for it, in the forms libpq (OpenSSL) reads through
//! `sslkey` and `sslcert`. The certificate is not trusted for anything: the TLS handshake proves
//! that the client holds the key, and the credential says which key it must be (see
//! [`crate::tls`]). Both functions are pure apart from their arguments.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ED25519};
use rustls::pki_types::PrivatePkcs8KeyDer;
use time::OffsetDateTime;

/// The subject (common name) of a device's certificate.
pub const DEVICE_CERTIFICATE_NAME: &str = "airlock device";

/// Why a device's key or certificate could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum DeviceTlsError {
    #[error("cannot encode the device's key as PKCS#8: {0}")]
    Encode(String),
    #[error("cannot make the device's certificate: {0}")]
    Certificate(String),
}

/// The device's private key as a PEM file (`-----BEGIN PRIVATE KEY-----`) for libpq's `sslkey`.
/// It is PKCS#8 v1 (the seed only), the form `openssl genpkey -algorithm ed25519` writes: OpenSSL
/// 3.0 refuses v2 (OneAsymmetricKey, with the public key) as "unsupported", and so does `psql`.
/// libpq refuses a key file others may read; the caller writes it with mode 0600.
pub fn device_key_pem(key: &SigningKey) -> Result<Zeroizing<String>, DeviceTlsError> {
    seed_only(key).to_pkcs8_pem(LineEnding::LF).map_err(|e| DeviceTlsError::Encode(e.to_string()))
}

/// `key` as PKCS#8 v1 wants it: the seed, without the public key.
fn seed_only(key: &SigningKey) -> KeypairBytes {
    KeypairBytes { secret_key: key.to_bytes(), public_key: None }
}

/// A self-signed X.509 certificate (PEM) for `key`, named [`DEVICE_CERTIFICATE_NAME`] and valid
/// from `not_before` to `not_after` (the credential's window: a device's certificate lives no
/// longer than the credential it goes with).
pub fn device_certificate(
    key: &SigningKey,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<String, DeviceTlsError> {
    let der = seed_only(key).to_pkcs8_der().map_err(|e| DeviceTlsError::Encode(e.to_string()))?;
    let pkcs8 = PrivatePkcs8KeyDer::from(der.as_bytes());
    let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ED25519)
        .map_err(|e| DeviceTlsError::Certificate(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, DEVICE_CERTIFICATE_NAME);
    params.not_before = not_before;
    params.not_after = not_after;
    let certificate = params.self_signed(&key_pair).map_err(|e| DeviceTlsError::Certificate(e.to_string()))?;
    Ok(certificate.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::device_key;
    use airlock_core::device::DeviceKey;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use time::macros::datetime;

    const FROM: OffsetDateTime = datetime!(2026-03-01 09:00 UTC);
    const UNTIL: OffsetDateTime = datetime!(2026-03-01 09:30 UTC);

    #[test]
    fn the_certificate_is_for_the_device_key_and_its_window() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let pem = device_certificate(&key, FROM, UNTIL).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(device_key(&der), Some(DeviceKey::of(&key)));
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(parsed.subject().to_string(), "CN=airlock device");
        assert_eq!(parsed.validity().not_before.to_datetime(), FROM);
        assert_eq!(parsed.validity().not_after.to_datetime(), UNTIL);
    }

    #[test]
    fn the_key_file_is_pkcs8_v1_of_the_same_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let pem = device_key_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{}", *pem);
        let read: KeypairBytes = pem.parse().unwrap();
        assert_eq!((read.secret_key, read.public_key), (key.to_bytes(), None));
    }

    #[test]
    fn a_certificate_for_another_key_type_is_no_device() {
        let other = rcgen::generate_simple_self_signed(vec!["laptop".to_owned()]).unwrap();
        assert_eq!(device_key(other.cert.der()), None);
        assert_eq!(device_key(&CertificateDer::from(b"not a certificate".to_vec())), None);
    }
}
