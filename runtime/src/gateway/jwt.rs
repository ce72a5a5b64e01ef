//! End-user JWTs from a tenant's identity provider.
//!
//! The checks, in order: the token is three base64url parts; its header `alg` is one of the
//! tenant's pinned algorithms (so `none`, and an HMAC algorithm presented to an RSA issuer,
//! are refused before any key is touched); it carries no `crit` extension; the key is chosen
//! by `kid` from the issuer's key set and must be of the algorithm's family (and of the JWK's
//! own `alg` when it names one); the signature verifies; `iss` is the configured issuer, `aud`
//! names one of the configured audiences, `exp` is present and not past and `nbf` (when
//! present) is not ahead, both with [`LEEWAY_SECS`] of clock skew. See docs/auth.md.

mod jwks;

pub use jwks::{JwksCache, JwksTiming};

use std::collections::BTreeSet;
use std::str::FromStr as _;

use agentry_crds::bundle::JwtConfig;
use agentry_crds::tenant::JwtAlgorithm;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::Scope;
use crate::error::ApiError;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Longest accepted user claim value.
const MAX_SUBJECT_LEN: usize = 512;

/// Why a JWT was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header.
    #[error("the credential is neither an API key nor a well-formed JWT")]
    Malformed,
    /// The header's `alg` is not pinned for the tenant (this includes `none` and HMAC).
    #[error("tokens signed with {alg:?} are not accepted; this tenant accepts {allowed}")]
    AlgorithmRefused {
        /// The `alg` the token named.
        alg: String,
        /// The pinned algorithms.
        allowed: String,
    },
    /// The header carries a `crit` extension, which this service does not implement.
    #[error("the token's header has a critical extension (crit) this service does not support")]
    Critical,
    /// No key of the issuer has the token's `kid`.
    #[error("the token's key id {0:?} is not in the issuer's key set")]
    UnknownKey(String),
    /// The token names no `kid` and the key set has several keys.
    #[error("the token names no key id (kid) and the issuer has several keys")]
    NoKeyId,
    /// The key found is not of the algorithm's family or names another algorithm.
    #[error("the issuer's key {kid:?} is not for {alg}")]
    KeyMismatch {
        /// The key's id.
        kid: String,
        /// The token's algorithm.
        alg: String,
    },
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is ahead.
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `aud` names none of the configured audiences.
    #[error("the token's audience (aud) is not accepted here")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer (iss) is not trusted by this tenant")]
    WrongIssuer,
    /// A required claim is missing or not of the right type.
    #[error("the token lacks a valid {0:?} claim")]
    MissingClaim(String),
    /// The issuer's keys could not be fetched and none are cached.
    #[error("the identity provider's signing keys are unavailable")]
    KeysUnavailable,
    /// The configured key set has no usable signing key.
    #[error("the tenant's JWT key set has no usable signing key")]
    NoUsableKeys,
}

impl From<JwtError> for ApiError {
    fn from(e: JwtError) -> Self {
        match e {
            // Configuration or upstream trouble, not the caller's fault: retrying may help.
            JwtError::KeysUnavailable | JwtError::NoUsableKeys => {
                ApiError::unavailable(e.to_string())
            }
            _ => ApiError::unauthorized(e.to_string()),
        }
    }
}

/// The parts of a JWT header that decide how it is checked, before any key is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// The `alg` as written.
    pub alg: String,
    /// The `kid`, if any.
    pub kid: Option<String>,
    crit: bool,
}

/// Reads a token's header without trusting it; fails unless the token has JWT shape.
pub fn read_header(token: &str) -> Result<RawHeader, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(JwtError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed)?
        .to_owned();
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    Ok(RawHeader {
        alg,
        kid,
        crit: header.contains_key("crit"),
    })
}

/// The algorithm of a header that passed the pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedHeader {
    /// The algorithm, one of the pinned ones.
    pub alg: Algorithm,
    /// The `kid`, if any.
    pub kid: Option<String>,
}

/// Accepts the header only when its `alg` is exactly one of `pinned`.
pub fn check_header(raw: RawHeader, pinned: &[JwtAlgorithm]) -> Result<CheckedHeader, JwtError> {
    if raw.crit {
        return Err(JwtError::Critical);
    }
    // Compared by exact name: `none`, `None`, `HS256` and anything unknown fall through.
    let alg = pinned
        .iter()
        .map(|p| algorithm(*p))
        .find(|a| algorithm_name(*a) == raw.alg)
        .ok_or_else(|| JwtError::AlgorithmRefused {
            alg: raw.alg.clone(),
            allowed: pinned
                .iter()
                .map(|p| algorithm_name(algorithm(*p)))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    Ok(CheckedHeader { alg, kid: raw.kid })
}

/// The signing algorithm of a pinned algorithm name.
pub fn algorithm(pinned: JwtAlgorithm) -> Algorithm {
    match pinned {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // `Algorithm` is non-exhaustive; a new variant is never pinned, so never matched.
        _ => "unknown",
    }
}

/// One verification key of an issuer.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The JWK's `kid`.
    pub kid: Option<String>,
    /// The JWK's own `alg`, which then binds the key to that algorithm.
    pub alg: Option<Algorithm>,
    key: DecodingKey,
}

/// An issuer's signing keys, parsed from a JSON Web Key Set.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<TrustedKey>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot verify signatures here are left out:
    /// encryption keys, symmetric (`oct`) keys (a shared secret is never trusted for
    /// end-user tokens), and keys of unknown types. Fails when no usable key remains.
    pub fn parse(document: &[u8]) -> Result<Self, JwtError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let doc: Document = serde_json::from_slice(document).map_err(|e| {
            tracing::warn!(error = %e, "JWKS is not a JSON object with a keys array");
            JwtError::NoUsableKeys
        })?;
        let keys: Vec<TrustedKey> = doc.keys.into_iter().filter_map(trusted_key).collect();
        if keys.is_empty() {
            return Err(JwtError::NoUsableKeys);
        }
        Ok(Self { keys })
    }

    /// Whether a key with `kid` is in the set (any key when the token names none).
    pub fn has(&self, kid: Option<&str>) -> bool {
        self.select(kid).is_ok()
    }

    /// The key for a token's `kid`. A token without `kid` is accepted only when the set
    /// has a single key, so that the choice is never ambiguous.
    pub fn select(&self, kid: Option<&str>) -> Result<&TrustedKey, JwtError> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or_else(|| JwtError::UnknownKey(kid.to_owned())),
            None => match self.keys.as_slice() {
                [only] => Ok(only),
                _ => Err(JwtError::NoKeyId),
            },
        }
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn trusted_key(value: Value) -> Option<TrustedKey> {
    let jwk: Jwk = match serde_json::from_value(value) {
        Ok(jwk) => jwk,
        Err(e) => {
            tracing::debug!(error = %e, "skipping a JWK that does not parse");
            return None;
        }
    };
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        // Encryption algorithms (RSA-OAEP, ...) do not parse as signing algorithms.
        Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    if key.family() == AlgorithmFamily::Hmac {
        return None;
    }
    Some(TrustedKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The end user (the configured user claim).
    pub subject: String,
    /// `chat`, plus the scopes named in `scope`/`scp`, never `admin`.
    pub scopes: Vec<Scope>,
}

/// Verifies `token` (whose header passed [`check_header`]) with `key` against the tenant's
/// configuration, at `now` seconds since the epoch.
pub fn verify(
    token: &str,
    header: &CheckedHeader,
    key: &TrustedKey,
    config: &JwtConfig,
    now: u64,
) -> Result<Verified, JwtError> {
    let mismatch = || JwtError::KeyMismatch {
        kid: key.kid.clone().unwrap_or_default(),
        alg: algorithm_name(header.alg).to_owned(),
    };
    if key.key.family() != header.alg.family() || key.alg.is_some_and(|a| a != header.alg) {
        return Err(mismatch());
    }
    let mut validation = Validation::new(header.alg);
    // Time is checked below against `now`, so that tests control the clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[config.issuer.as_str()]);
    validation.set_audience(&config.audiences);
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
            match e.into_kind() {
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
                ErrorKind::InvalidAudience => JwtError::WrongAudience,
                ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                    JwtError::MissingClaim(claim)
                }
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey => mismatch(),
                _ => JwtError::Malformed,
            }
        })?;
    let claims = data.claims;
    let exp = numeric_claim(&claims, "exp")?.ok_or_else(|| JwtError::MissingClaim("exp".into()))?;
    if exp.saturating_add(LEEWAY_SECS) < now {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_claim(&claims, "nbf")?
        && nbf > now.saturating_add(LEEWAY_SECS)
    {
        return Err(JwtError::NotYetValid);
    }
    let subject = match claims.get(&config.user_claim) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT_LEN => s.clone(),
        _ => return Err(JwtError::MissingClaim(config.user_claim.clone())),
    };
    Ok(Verified {
        subject,
        scopes: user_scopes(&claims),
    })
}

/// A NumericDate claim in whole seconds (fractions truncated); `None` when absent.
fn numeric_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(secs) = n.as_u64() {
                Ok(Some(secs))
            } else {
                // Negative or fractional: a fraction is truncated, a negative time is 0.
                let secs = n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| JwtError::MissingClaim(name.to_owned()))?;
                Ok(Some(if secs <= 0.0 { 0 } else { secs.trunc() as u64 }))
            }
        }
        Some(_) => Err(JwtError::MissingClaim(name.to_owned())),
    }
}

/// End users always get `chat`; they may get other scopes the identity provider grants in
/// `scope` (space-separated, RFC 8693) or `scp` (an array or string), but never `admin`:
/// administration is done with API keys, which an administrator creates deliberately.
pub fn user_scopes(claims: &Map<String, Value>) -> Vec<Scope> {
    let mut scopes = BTreeSet::from([Scope::Chat]);
    for name in ["scope", "scp"] {
        let words: Vec<&str> = match claims.get(name) {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        scopes.extend(
            words
                .into_iter()
                .filter_map(Scope::parse)
                .filter(|s| *s != Scope::Admin),
        );
    }
    scopes.into_iter().collect()
}

#[cfg(test)]
mod tests;
