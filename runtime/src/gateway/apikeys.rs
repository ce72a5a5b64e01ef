//! API key format and hashing.
//!
//! A key reads `agk_<key id>_<secret>`: the key id (12 random base62 characters) finds the
//! row; the secret (256 random bits, base64url) is stored only as its SHA-256 and compared in
//! constant time. A fast hash is right here: the secret has 256 bits of entropy, so there is
//! nothing for a slow hash to protect against.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Prefix of every key.
pub const PREFIX: &str = "agk_";
const KEY_ID_LEN: usize = 12;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A newly generated key: the plaintext is shown once and never stored.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The full key to hand to the user.
    pub plaintext: String,
    /// The lookup id.
    pub key_id: String,
    /// SHA-256 of the secret part.
    pub secret_hash: Vec<u8>,
}

/// Generates a key from the operating system's random source.
pub fn generate() -> GeneratedKey {
    let mut rng = rand::rng();
    let key_id: String = (0..KEY_ID_LEN)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
        .collect();
    let mut secret = [0u8; 32];
    rng.fill(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    GeneratedKey {
        plaintext: format!("{PREFIX}{key_id}_{secret}"),
        key_id,
        secret_hash: hash_secret(&secret),
    }
}

/// SHA-256 of a key's secret part.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits a presented key into (key id, secret); `None` when it is not shaped like a key.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let id_ok = key_id.len() == KEY_ID_LEN && key_id.bytes().all(|b| b.is_ascii_alphanumeric());
    // 32 bytes in unpadded base64url are 43 characters.
    let secret_ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((key_id, secret))
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub fn verify(secret: &str, stored: &[u8]) -> bool {
    hash_secret(secret).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let key = generate();
        assert!(key.plaintext.starts_with("agk_"));
        let (id, secret) = parse(&key.plaintext).unwrap();
        assert_eq!(id, key.key_id);
        assert!(verify(secret, &key.secret_hash));
        assert!(!verify("x", &key.secret_hash));
        assert_ne!(generate().plaintext, key.plaintext);
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert!(parse("agk_short_x").is_none());
        assert!(parse("sk-abc").is_none());
        assert!(parse(&format!("agk_{}_{}", "a".repeat(12), "b".repeat(42))).is_none());
    }
}
