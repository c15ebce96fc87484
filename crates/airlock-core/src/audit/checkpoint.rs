//! Signed statements about the audit chain: checkpoints and export seals.
//!
//! A [`Checkpoint`] says "record `seq` of chain `chain_id` has hash `head_hash`", signed with the
//! broker's Ed25519 key at `at_ms`. Because each record's hash covers every record before it, a
//! checkpoint vouches for the whole chain up to `seq`: rewriting any of it (even recomputing every
//! hash) no longer matches a checkpoint, unless the rewriter also holds the key. Checkpoints copied
//! to a sink elsewhere (another volume, a webhook) catch even that.
//!
//! A [`Seal`] ends an export: which records it holds (first and last sequence numbers, the last
//! hash, how many) and whether it reaches the chain's head. Cutting records off either end of an
//! export, or dropping its seal, is then visible offline.
//!
//! Keys are bytes, as in [`crate::credential`]: the signing key pair is `seed || public key`.
//! Each signed message starts with its own label, so a signature made for one kind of statement
//! (or for a PASETO credential) is never valid for another.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::credential::key_id;

/// Why a signed statement cannot be made or does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signing key pair is invalid: its public half does not belong to its seed")]
    KeyPair,
    #[error("the public key is not a valid Ed25519 key")]
    PublicKey,
    #[error("signed by key {claimed}, not by the given key {expected}")]
    OtherKey { claimed: String, expected: String },
    #[error("the signature does not verify with the given key (forged, or its contents edited)")]
    Invalid,
}

/// A signed head of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain_id: String,
    pub seq: i64,
    pub head_hash: String,
    /// Unix time in milliseconds when it was signed.
    pub at_ms: i64,
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// The signed end of one export of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub chain_id: String,
    /// The first and last records exported; both 0 when the export holds none.
    pub first_seq: i64,
    pub last_seq: i64,
    pub last_hash: String,
    pub records: i64,
    /// Whether the last record was the chain's head when the export was made.
    pub to_head: bool,
    pub at_ms: i64,
    pub key_id: String,
    pub signature: String,
}

/// Appends each part with its length, so no two different statements sign the same bytes.
fn message(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(128);
    for part in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
        bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
        bytes.extend_from_slice(part);
    }
    bytes
}

fn signing_key(keypair: &[u8; 64]) -> Result<SigningKey, SignatureError> {
    SigningKey::from_keypair_bytes(keypair).map_err(|_| SignatureError::KeyPair)
}

/// Signs the message built for the key's id; returns the key id and the signature.
fn sign(keypair: &[u8; 64], message: impl FnOnce(&str) -> Vec<u8>) -> Result<(String, String), SignatureError> {
    let key = signing_key(keypair)?;
    let key_id = key_id(&key.verifying_key().to_bytes());
    let signature = key.sign(&message(&key_id));
    Ok((key_id, hex::encode(signature.to_bytes())))
}

fn check(public_key: &[u8; 32], claimed_key_id: &str, signature: &str, message: &[u8]) -> Result<(), SignatureError> {
    let expected = key_id(public_key);
    if claimed_key_id != expected {
        return Err(SignatureError::OtherKey { claimed: claimed_key_id.to_owned(), expected });
    }
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| SignatureError::PublicKey)?;
    let bytes = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
    let signature = Signature::from_slice(&bytes).map_err(|_| SignatureError::Invalid)?;
    key.verify_strict(message, &signature).map_err(|_| SignatureError::Invalid)
}

impl Checkpoint {
    const LABEL: &'static str = "airlock audit checkpoint v1";

    fn message(chain_id: &str, seq: i64, head_hash: &str, at_ms: i64, key_id: &str) -> Vec<u8> {
        let (seq, at_ms) = (seq.to_be_bytes(), at_ms.to_be_bytes());
        message(Self::LABEL, &[chain_id.as_bytes(), &seq, head_hash.as_bytes(), &at_ms, key_id.as_bytes()])
    }

    /// Signs the head (`seq`, `head_hash`) of `chain_id` at `at_ms`.
    pub fn sign(
        keypair: &[u8; 64],
        chain_id: &str,
        seq: i64,
        head_hash: &str,
        at_ms: i64,
    ) -> Result<Self, SignatureError> {
        let (key_id, signature) = sign(keypair, |key_id| Self::message(chain_id, seq, head_hash, at_ms, key_id))?;
        Ok(Self { chain_id: chain_id.to_owned(), seq, head_hash: head_hash.to_owned(), at_ms, key_id, signature })
    }

    /// Checks that `public_key` signed exactly this checkpoint.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<(), SignatureError> {
        let message = Self::message(&self.chain_id, self.seq, &self.head_hash, self.at_ms, &self.key_id);
        check(public_key, &self.key_id, &self.signature, &message)
    }
}

/// What a seal vouches for, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealContents<'a> {
    pub chain_id: &'a str,
    pub first_seq: i64,
    pub last_seq: i64,
    pub last_hash: &'a str,
    pub records: i64,
    pub to_head: bool,
    pub at_ms: i64,
}

impl Seal {
    const LABEL: &'static str = "airlock audit export seal v1";

    fn message(c: &SealContents<'_>, key_id: &str) -> Vec<u8> {
        let numbers = [c.first_seq, c.last_seq, c.records, c.at_ms].map(i64::to_be_bytes);
        message(
            Self::LABEL,
            &[
                c.chain_id.as_bytes(),
                &numbers[0],
                &numbers[1],
                c.last_hash.as_bytes(),
                &numbers[2],
                &[u8::from(c.to_head)],
                &numbers[3],
                key_id.as_bytes(),
            ],
        )
    }

    pub fn sign(keypair: &[u8; 64], contents: &SealContents<'_>) -> Result<Self, SignatureError> {
        let (key_id, signature) = sign(keypair, |key_id| Self::message(contents, key_id))?;
        let c = contents;
        Ok(Self {
            chain_id: c.chain_id.to_owned(),
            first_seq: c.first_seq,
            last_seq: c.last_seq,
            last_hash: c.last_hash.to_owned(),
            records: c.records,
            to_head: c.to_head,
            at_ms: c.at_ms,
            key_id,
            signature,
        })
    }

    pub fn contents(&self) -> SealContents<'_> {
        SealContents {
            chain_id: &self.chain_id,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            last_hash: &self.last_hash,
            records: self.records,
            to_head: self.to_head,
            at_ms: self.at_ms,
        }
    }

    pub fn verify(&self, public_key: &[u8; 32]) -> Result<(), SignatureError> {
        check(public_key, &self.key_id, &self.signature, &Self::message(&self.contents(), &self.key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn keypair(seed: u8) -> [u8; 64] {
        SigningKey::from_bytes(&[seed; 32]).to_keypair_bytes()
    }

    fn public(keypair: &[u8; 64]) -> [u8; 32] {
        keypair[32..].try_into().unwrap()
    }

    #[test]
    fn checkpoints_verify_only_as_signed_and_with_their_key() {
        let key = keypair(1);
        let checkpoint = Checkpoint::sign(&key, "broker", 7, &"ab".repeat(32), 1_800_000_000_000).unwrap();
        assert_eq!(checkpoint.verify(&public(&key)), Ok(()));

        let mut moved = checkpoint.clone();
        moved.seq = 8;
        assert_eq!(moved.verify(&public(&key)), Err(SignatureError::Invalid));

        let other = keypair(2);
        let resigned = Checkpoint::sign(&other, "broker", 7, &"ab".repeat(32), 1_800_000_000_000).unwrap();
        assert!(matches!(resigned.verify(&public(&key)), Err(SignatureError::OtherKey { .. })));
        // Claiming the right key id does not help a signature made with another key.
        let mut claimed = resigned;
        claimed.key_id = checkpoint.key_id.clone();
        assert_eq!(claimed.verify(&public(&key)), Err(SignatureError::Invalid));
    }

    #[test]
    fn a_seal_signature_is_not_a_checkpoint_signature() {
        let key = keypair(1);
        let hash = "cd".repeat(32);
        let contents = SealContents {
            chain_id: "broker",
            first_seq: 1,
            last_seq: 9,
            last_hash: &hash,
            records: 9,
            to_head: true,
            at_ms: 5,
        };
        let seal = Seal::sign(&key, &contents).unwrap();
        assert_eq!(seal.verify(&public(&key)), Ok(()));
        let mut cut = seal.clone();
        cut.last_seq = 8;
        assert_eq!(cut.verify(&public(&key)), Err(SignatureError::Invalid));
        let borrowed = Checkpoint {
            chain_id: "broker".into(),
            seq: 9,
            head_hash: hash.clone(),
            at_ms: 5,
            key_id: seal.key_id.clone(),
            signature: seal.signature.clone(),
        };
        assert_eq!(borrowed.verify(&public(&key)), Err(SignatureError::Invalid));
    }
}
