//! Secrets the operator generates: database passwords and bootstrap admin API keys.
//!
//! The API key format is the runtime's (`runtime/src/gateway/apikeys.rs`): `agk_<key id>_<secret>`
//! with a 12-character base62 key id and 256 random bits of base64url secret; the database
//! keeps only the SHA-256 of the secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt as _;
use sha2::{Digest, Sha256};

/// Prefix of every API key.
pub const API_KEY_PREFIX: &str = "agk_";
const KEY_ID_LEN: usize = 12;
const SECRET_LEN: usize = 43;
const PASSWORD_LEN: usize = 32;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A generated API key.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The whole key, handed to the tenant's administrator through the Secret.
    pub plaintext: String,
    /// The lookup id.
    pub key_id: String,
    /// SHA-256 of the secret part.
    pub secret_hash: Vec<u8>,
}

fn base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
        .collect()
}

/// A database password: 32 base62 characters (about 190 bits), nothing to escape.
pub fn generate_password() -> String {
    base62(PASSWORD_LEN)
}

/// A new API key.
pub fn generate_api_key() -> GeneratedKey {
    let key_id = base62(KEY_ID_LEN);
    let mut secret = [0u8; 32];
    rand::rng().fill(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    GeneratedKey {
        plaintext: format!("{API_KEY_PREFIX}{key_id}_{secret}"),
        secret_hash: hash_secret(&secret),
        key_id,
    }
}

/// SHA-256 of a key's secret part.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits a key into (key id, secret); `None` when it is not shaped like a key.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let (key_id, secret) = key.strip_prefix(API_KEY_PREFIX)?.split_once('_')?;
    let id_ok = key_id.len() == KEY_ID_LEN && key_id.bytes().all(|b| b.is_ascii_alphanumeric());
    let secret_ok = secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((key_id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_runtime_format_and_hash_their_secret() {
        let key = generate_api_key();
        assert!(key.plaintext.starts_with("agk_"));
        assert_eq!(key.plaintext.len(), 4 + 12 + 1 + 43);
        let (id, secret) = parse_api_key(&key.plaintext).unwrap();
        assert_eq!(id, key.key_id);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(hash_secret(secret), key.secret_hash);
        assert_eq!(key.secret_hash.len(), 32);
        assert_ne!(generate_api_key().plaintext, key.plaintext);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        assert!(parse_api_key("agk_short_x").is_none());
        assert!(parse_api_key("sk-123").is_none());
        assert!(parse_api_key(&format!("agk_{}_{}", "a".repeat(12), "b".repeat(42))).is_none());
    }

    #[test]
    fn passwords_are_long_base62_and_differ() {
        let p = generate_password();
        assert_eq!(p.len(), 32);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(p, generate_password());
    }
}
