//! Secrets the broker makes: API tokens, its signing key, and other 32-byte secrets kept in the
//! data directory (file mode 0600); and secrets the configuration names (an environment variable
//! or a file), read where they are needed.
//!
//! Secrets the store must keep readable (TOTP seeds, an identity provider's refresh tokens) are
//! sealed with a key derived from the signing key.
//!
//! An API token is 32 random bytes, shown once; only its SHA-256 is stored. A slow password hash
//! (argon2) would add nothing here: the token has 256 bits of entropy, so it cannot be guessed
//! from its hash, and a fast hash lets every request be authenticated by an indexed lookup.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use airlock_core::catalog::SecretSource;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

const TOKEN_PREFIX: &str = "airlock_";

/// Why a secret could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the system's random source failed: {0}")]
    Random(String),
    #[error("secret file `{path}`: {source}")]
    KeyFile { path: String, source: std::io::Error },
    #[error("secret file `{path}` does not hold a 32-byte hex secret")]
    KeyFormat { path: String },
    #[error("a sealed secret does not open with this broker's key (another key, or tampered with)")]
    Sealed,
    #[error("environment variable `{var}` is not set or not UTF-8")]
    MissingEnv { var: String },
}

/// Reads a secret the configuration names, without the line end a file usually has. The error
/// says where it looked, never what it found.
pub fn read_named(source: &SecretSource) -> Result<String, SecretError> {
    match source {
        SecretSource::Env(var) => std::env::var(var).map_err(|_| SecretError::MissingEnv { var: var.clone() }),
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|source| SecretError::KeyFile { path: path.display().to_string(), source }),
    }
}

/// 32 bytes from the system's random source.
pub fn random_bytes() -> Result<[u8; 32], SecretError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(bytes)
}

/// A new API token, to be shown once.
pub fn new_token() -> Result<String, SecretError> {
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(random_bytes()?)))
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The broker's Ed25519 key and its public id.
pub struct BrokerKey {
    pub signing: SigningKey,
    pub key_id: String,
}

impl BrokerKey {
    pub fn public_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// `seed || public key`, as `airlock_core` takes signing keys.
    pub fn keypair(&self) -> [u8; 64] {
        self.signing.to_keypair_bytes()
    }

    /// The key that seals secrets the store keeps (TOTP seeds, identity-provider refresh
    /// tokens): derived from the signing key's seed under its own label, so a copy of the
    /// database alone opens nothing.
    fn sealing_key(&self) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(b"airlock sealing key v1\0");
        hasher.update(self.signing.to_bytes());
        Key::from(<[u8; 32]>::from(hasher.finalize()))
    }

    /// Encrypts `plain` (ChaCha20-Poly1305, random nonce), bound to `context` (what it belongs
    /// to, such as the user's name: a sealed value moved to another row does not open). The
    /// result is hex: nonce, then ciphertext and tag.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, SecretError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::Random(e.to_string()))?;
        let sealed = ChaCha20Poly1305::new(&self.sealing_key())
            .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad: context.as_bytes() })
            .map_err(|_| SecretError::Sealed)?;
        Ok(hex::encode([nonce.as_slice(), &sealed].concat()))
    }

    /// Opens what [`BrokerKey::seal`] made for the same `context`.
    pub fn unseal(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let bytes = hex::decode(sealed).map_err(|_| SecretError::Sealed)?;
        if bytes.len() < 12 {
            return Err(SecretError::Sealed);
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce = Nonce::from(<[u8; 12]>::try_from(nonce).map_err(|_| SecretError::Sealed)?);
        ChaCha20Poly1305::new(&self.sealing_key())
            .decrypt(&nonce, Payload { msg: sealed, aad: context.as_bytes() })
            .map_err(|_| SecretError::Sealed)
    }
}

/// Reads the 32-byte secret at `path`, which must exist.
pub fn read_secret(path: &Path) -> Result<[u8; 32], SecretError> {
    let display = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| SecretError::KeyFile { path: display.clone(), source })?;
    let bytes = hex::decode(text.trim()).map_err(|_| SecretError::KeyFormat { path: display.clone() })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| SecretError::KeyFormat { path: display })
}

/// Reads the 32-byte secret at `path`, generating it (file mode 0600) when missing.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], SecretError> {
    if path.exists() {
        return read_secret(path);
    }
    let display = path.display().to_string();
    let io = |source| SecretError::KeyFile { path: display.clone(), source };
    let seed = random_bytes()?;
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(hex::encode(seed).as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(seed)
}

/// Reads the signing key in `data_dir`, generating it (file mode 0600) at first start.
pub fn load_or_create_key(data_dir: &Path) -> Result<BrokerKey, SecretError> {
    let seed = load_or_create_secret(&data_dir.join("signing.key"))?;
    let signing = SigningKey::from_bytes(&seed);
    let key_id = airlock_core::credential::key_id(&signing.verifying_key().to_bytes());
    Ok(BrokerKey { signing, key_id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_key(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("signing.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_key(dir.path()).unwrap();
        assert_eq!(first.public_hex(), again.public_hex());
        assert_eq!(first.key_id.len(), 16);
    }

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(dir.path()).unwrap();
        let sealed = key.seal("alice", b"seed").unwrap();
        assert_ne!(sealed, key.seal("alice", b"seed").unwrap(), "a fresh nonce each time");
        assert_eq!(key.unseal("alice", &sealed).unwrap(), b"seed");
        assert!(matches!(key.unseal("mallory", &sealed), Err(SecretError::Sealed)));
        let other = load_or_create_key(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(matches!(other.unseal("alice", &sealed), Err(SecretError::Sealed)));
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert!(matches!(key.unseal("alice", std::str::from_utf8(&tampered).unwrap()), Err(SecretError::Sealed)));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("airlock_") && a.len() == 8 + 64);
        assert_ne!(token_hash(&a), a);
        assert_eq!(token_hash(&a), token_hash(&a));
    }
}
