//! Trusted devices: the key a user's machine holds, and what it signs.
//!
//! A device is an Ed25519 key pair made on the user's machine; the broker keeps only the public
//! half ([`DeviceKey`]). It signs two things:
//! - at enrollment, [`enrollment_message`]: the user and the key, so nobody registers a key they
//!   do not hold;
//! - at every call, a [`Proof`] over [`Call`] — the method, the path and query, and the SHA-256 of
//!   the bearer token — with the time and a fresh nonce. A proof is accepted within
//!   [`PROOF_WINDOW`] of the verifier's clock either way; keeping each nonce until then, so a proof
//!   works once, is the verifier's business (this module has no memory).
//!
//! The header a proof travels in is `Airlock-Device-Proof: DEVICE.UNIX.NONCE.SIGNATURE` (id, Unix
//! seconds, 16 nonce bytes and the 64-byte signature in lower-case hex). Every message is
//! labelled, so no signature serves two purposes. Signing is pure: time and nonce are arguments.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::ids::{DeviceId, UserName};

/// The HTTP header a [`Proof`] travels in.
pub const PROOF_HEADER: &str = "airlock-device-proof";

/// How far a proof's time may be from the verifier's clock, either way.
pub const PROOF_WINDOW: Duration = Duration::seconds(60);

/// Bytes of a proof's nonce.
pub const NONCE_BYTES: usize = 16;

const PROOF_LABEL: &str = "airlock-device-proof-v1";
const ENROLLMENT_LABEL: &str = "airlock-device-enrollment-v1";

/// A device's public key (Ed25519), shown and sent as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceKey([u8; 32]);

impl DeviceKey {
    /// The key, if `bytes` are a valid Ed25519 public key of full order (a weak, small-order
    /// key would let anyone sign for it).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, ProofError> {
        match VerifyingKey::from_bytes(&bytes) {
            Ok(key) if !key.is_weak() => Ok(Self(bytes)),
            _ => Err(ProofError::BadKey),
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public half of `signing_key`.
    pub fn of(signing_key: &SigningKey) -> Self {
        Self(signing_key.verifying_key().to_bytes())
    }

    fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), ProofError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| ProofError::BadKey)?;
        key.verify_strict(message, &Signature::from_bytes(signature)).map_err(|_| ProofError::BadSignature)
    }
}

impl std::str::FromStr for DeviceKey {
    type Err = ProofError;
    fn from_str(text: &str) -> Result<Self, ProofError> {
        Self::from_bytes(hex_array(text).ok_or(ProofError::BadKey)?)
    }
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({self})")
    }
}

impl Serialize for DeviceKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a device key, enrollment or proof was refused. Shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("a device key must be an Ed25519 public key, 64 hex digits")]
    BadKey,
    #[error("the device proof is malformed: expected DEVICE.UNIX.NONCE.SIGNATURE")]
    Malformed,
    #[error("the device proof's signature is not valid for this device and call")]
    BadSignature,
    #[error(
        "the device proof was made at {at}, more than a minute from the broker's clock; check this machine's clock"
    )]
    OutOfWindow { at: OffsetDateTime },
}

/// The call a proof is for.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Upper-case HTTP method.
    pub method: &'a str,
    /// The path and query, as sent.
    pub path: &'a str,
    /// The bearer token the call is made with.
    pub bearer: &'a str,
}

/// One call's proof of holding a device key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub device: DeviceId,
    pub at: OffsetDateTime,
    pub nonce: [u8; NONCE_BYTES],
    signature: [u8; 64],
}

impl Proof {
    /// Signs `call` as `device` with `key` at `at` (whole seconds), with a fresh `nonce`.
    pub fn sign(
        key: &SigningKey,
        device: DeviceId,
        call: &Call<'_>,
        at: OffsetDateTime,
        nonce: [u8; NONCE_BYTES],
    ) -> Self {
        let at = OffsetDateTime::from_unix_timestamp(at.unix_timestamp()).expect("a valid time in whole seconds");
        let signature = key.sign(&proof_message(device, at, &nonce, call)).to_bytes();
        Self { device, at, nonce, signature }
    }

    /// The header's value.
    pub fn header(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.device,
            self.at.unix_timestamp(),
            hex::encode(self.nonce),
            hex::encode(self.signature)
        )
    }

    /// Reads a header's value; nothing is verified yet.
    pub fn parse(header: &str) -> Result<Self, ProofError> {
        let mut parts = header.trim().split('.');
        let (Some(device), Some(at), Some(nonce), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ProofError::Malformed);
        };
        let device = device.parse().map_err(|_| ProofError::Malformed)?;
        let at = at.parse::<i64>().ok().and_then(|unix| OffsetDateTime::from_unix_timestamp(unix).ok());
        Ok(Self {
            device,
            at: at.ok_or(ProofError::Malformed)?,
            nonce: hex_array(nonce).ok_or(ProofError::Malformed)?,
            signature: hex_array(signature).ok_or(ProofError::Malformed)?,
        })
    }

    /// Checks that `key` signed this proof for `call`, within [`PROOF_WINDOW`] of `now`.
    pub fn verify(&self, key: &DeviceKey, call: &Call<'_>, now: OffsetDateTime) -> Result<(), ProofError> {
        if (self.at - now).abs() > PROOF_WINDOW {
            return Err(ProofError::OutOfWindow { at: self.at });
        }
        key.verify(&proof_message(self.device, self.at, &self.nonce, call), &self.signature)
    }
}

/// What a device signs to enroll: that `user` holds `key`.
pub fn enrollment_message(user: &UserName, key: &DeviceKey) -> Vec<u8> {
    format!("{ENROLLMENT_LABEL}\n{user}\n{key}").into_bytes()
}

/// Checks an enrollment signature (64 bytes, hex) by `key` for `user`.
pub fn verify_enrollment(user: &UserName, key: &DeviceKey, signature: &str) -> Result<(), ProofError> {
    let signature = hex_array(signature).ok_or(ProofError::Malformed)?;
    key.verify(&enrollment_message(user, key), &signature)
}

fn proof_message(device: DeviceId, at: OffsetDateTime, nonce: &[u8; NONCE_BYTES], call: &Call<'_>) -> Vec<u8> {
    let bearer = hex::encode(Sha256::digest(call.bearer.as_bytes()));
    format!(
        "{PROOF_LABEL}\n{device}\n{}\n{}\n{}\n{}\n{bearer}",
        at.unix_timestamp(),
        hex::encode(nonce),
        call.method,
        call.path
    )
    .into_bytes()
}

/// `N` bytes from exactly `2 * N` hex digits.
fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut bytes = [0; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;

    const T0: OffsetDateTime = datetime!(2030-01-01 10:00 UTC);

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn device() -> DeviceId {
        DeviceId::from_uuid(Uuid::from_u128(7))
    }

    const CALL: Call<'static> = Call { method: "POST", path: "/v1/requests", bearer: "secret-token" };

    #[test]
    fn a_proof_round_trips_through_its_header() {
        let proof = Proof::sign(&key(1), device(), &CALL, T0 + Duration::milliseconds(700), [9; NONCE_BYTES]);
        let parsed = Proof::parse(&proof.header()).unwrap();
        assert_eq!(parsed, proof);
        assert_eq!(parsed.at, T0, "whole seconds");
        parsed.verify(&DeviceKey::of(&key(1)), &CALL, T0).unwrap();
        assert!(proof.header().starts_with("00000000-0000-0000-0000-000000000007.1893492000."), "{}", proof.header());
    }

    #[test]
    fn a_proof_is_for_one_key_one_call_and_one_minute() {
        let proof = Proof::sign(&key(1), device(), &CALL, T0, [9; NONCE_BYTES]);
        let good = DeviceKey::of(&key(1));
        assert_eq!(proof.verify(&DeviceKey::of(&key(2)), &CALL, T0), Err(ProofError::BadSignature));
        for other in [
            Call { method: "GET", ..CALL },
            Call { path: "/v1/requests?x=1", ..CALL },
            Call { bearer: "stolen-token", ..CALL },
        ] {
            assert_eq!(proof.verify(&good, &other, T0), Err(ProofError::BadSignature), "{other:?}");
        }
        proof.verify(&good, &CALL, T0 + PROOF_WINDOW).unwrap();
        proof.verify(&good, &CALL, T0 - PROOF_WINDOW).unwrap();
        let late = T0 + PROOF_WINDOW + Duration::seconds(1);
        assert_eq!(proof.verify(&good, &CALL, late), Err(ProofError::OutOfWindow { at: T0 }));

        // Another device id, nonce or time in the header breaks the signature.
        let header = proof.header();
        let edits = [
            header.replacen("-000000000007.", "-000000000008.", 1),
            header.replacen(".1893492000.", ".1893492001.", 1),
            header.replacen(&hex::encode([9; NONCE_BYTES]), &hex::encode([8; NONCE_BYTES]), 1),
        ];
        for edited in edits {
            assert_ne!(edited, header);
            let edited = Proof::parse(&edited).unwrap();
            assert_eq!(edited.verify(&good, &CALL, T0), Err(ProofError::BadSignature));
        }
    }

    #[test]
    fn malformed_proofs_and_keys_are_refused() {
        let header = Proof::sign(&key(1), device(), &CALL, T0, [9; NONCE_BYTES]).header();
        for bad in ["", "x", "a.b.c.d", &format!("{header}.00"), &header[..header.len() - 2], &header.replace('.', ":")]
        {
            assert_eq!(Proof::parse(bad), Err(ProofError::Malformed), "{bad}");
        }
        assert_eq!("00".parse::<DeviceKey>(), Err(ProofError::BadKey));
        assert_eq!("zz".repeat(32).parse::<DeviceKey>(), Err(ProofError::BadKey));
        // The identity point: a small-order key any signature would pass for.
        let weak = format!("01{}", "00".repeat(31));
        assert_eq!(weak.parse::<DeviceKey>(), Err(ProofError::BadKey));
        let text = DeviceKey::of(&key(1)).to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<DeviceKey>().unwrap(), DeviceKey::of(&key(1)));
        let json = serde_json::to_string(&DeviceKey::of(&key(1))).unwrap();
        assert_eq!(serde_json::from_str::<DeviceKey>(&json).unwrap(), DeviceKey::of(&key(1)));
    }

    #[test]
    fn an_enrollment_proves_the_key_for_one_user() {
        let alice: UserName = "alice".parse().unwrap();
        let bob: UserName = "bob".parse().unwrap();
        let public = DeviceKey::of(&key(1));
        let signature = hex::encode(key(1).sign(&enrollment_message(&alice, &public)).to_bytes());
        verify_enrollment(&alice, &public, &signature).unwrap();
        assert_eq!(verify_enrollment(&bob, &public, &signature), Err(ProofError::BadSignature));
        // Somebody else's public key, with a signature of the attacker's own key.
        let forged = hex::encode(key(2).sign(&enrollment_message(&alice, &public)).to_bytes());
        assert_eq!(verify_enrollment(&alice, &public, &forged), Err(ProofError::BadSignature));
        assert_eq!(verify_enrollment(&alice, &public, "00"), Err(ProofError::Malformed));
        // A call proof is never an enrollment, whatever it signs.
        let proof = Proof::sign(&key(1), device(), &CALL, T0, [9; NONCE_BYTES]);
        assert_eq!(verify_enrollment(&alice, &public, &hex::encode(proof.signature)), Err(ProofError::BadSignature));
    }
}
