//! Issuers' key sets, cached per tenant.
//!
//! An inline key set is parsed once per bundle hash. A key set behind a URL is fetched with
//! the runtime's HTTP client and kept for [`JWKS_TTL`]; a token whose `kid` is not in it
//! triggers a refetch (the issuer may have rotated keys) at most once per
//! [`REFETCH_INTERVAL`], so a stream of tokens with made-up key ids cannot make the runtime
//! hammer the identity provider. When a fetch fails, the last good set keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_crds::bundle::JwtConfig;
use dashmap::DashMap;
use parking_lot::RwLock;

use super::{JwtError, KeySet};

/// How long a fetched key set is used before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// Shortest time between two fetches caused by an unknown `kid`.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest time between two fetches while no usable (or only an expired) key set is held.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Timeout of one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where a tenant's key set comes from; a change (a new bundle) starts a new cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// Inline in the bundle with this hash.
    Inline(String),
    /// Behind this URL.
    Url(String),
}

#[derive(Debug, Clone, Default)]
struct Snapshot {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    error: Option<JwtError>,
}

#[derive(Debug)]
struct Source {
    origin: Origin,
    snapshot: RwLock<Snapshot>,
    /// Held while fetching, so that concurrent requests wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
}

impl Source {
    fn new(origin: Origin, snapshot: Snapshot) -> Self {
        Self {
            origin,
            snapshot: RwLock::new(snapshot),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot.read().clone()
    }
}

/// Key sets of every tenant served, by tenant name.
#[derive(Debug, Default)]
pub struct JwksCache {
    sources: DashMap<String, Arc<Source>>,
}

impl JwksCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key set to verify a token of `tenant` naming `kid`, refetched when the `kid` is
    /// unknown and the rules above allow it. The caller still selects the key: the set
    /// returned may not have it.
    pub async fn keys(
        &self,
        http: &reqwest::Client,
        tenant: &str,
        bundle_hash: &str,
        config: &JwtConfig,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, JwtError> {
        let (origin, url) = match (&config.jwks, &config.jwks_url) {
            (Some(_), _) => (Origin::Inline(bundle_hash.to_owned()), None),
            (None, Some(url)) => (Origin::Url(url.clone()), Some(url.as_str())),
            (None, None) => return Err(JwtError::NoUsableKeys),
        };
        let source = self.source(tenant, origin, config);
        let Some(url) = url else {
            // Inline: nothing to refetch.
            let snap = source.snapshot();
            return snap.keys.ok_or(snap.error.unwrap_or(JwtError::NoUsableKeys));
        };
        let now = Instant::now();
        let seen = source.snapshot();
        let fresh = seen.fetched_at.is_some_and(|t| now - t < JWKS_TTL);
        if fresh && let Some(keys) = seen.keys.as_ref().filter(|k| k.has(kid)) {
            return Ok(keys.clone());
        }
        let gap = if fresh && seen.keys.is_some() {
            REFETCH_INTERVAL
        } else {
            RETRY_INTERVAL
        };
        if seen.last_attempt.is_none_or(|t| now - t >= gap) {
            let _fetching = source.fetching.lock().await;
            // Another request may have fetched while this one waited.
            if source.snapshot().last_attempt == seen.last_attempt {
                source.snapshot.write().last_attempt = Some(Instant::now());
                let result = fetch(http, url).await;
                let mut snap = source.snapshot.write();
                match result {
                    Ok(keys) => {
                        snap.keys = Some(Arc::new(keys));
                        snap.fetched_at = Some(Instant::now());
                        snap.error = None;
                    }
                    Err(e) => {
                        tracing::warn!(tenant, url, error = %e, "fetching the JWT key set failed; keeping the last good one");
                        snap.error = Some(e);
                    }
                }
            }
        }
        let snap = source.snapshot();
        snap.keys
            .ok_or(snap.error.unwrap_or(JwtError::KeysUnavailable))
    }

    /// The cache entry of `tenant`, replaced when the origin changed.
    fn source(&self, tenant: &str, origin: Origin, config: &JwtConfig) -> Arc<Source> {
        if let Some(existing) = self.sources.get(tenant)
            && existing.origin == origin
        {
            return existing.clone();
        }
        let snapshot = match (&origin, &config.jwks) {
            (Origin::Inline(_), Some(inline)) => match KeySet::parse(inline.as_bytes()) {
                Ok(keys) => Snapshot {
                    keys: Some(Arc::new(keys)),
                    ..Snapshot::default()
                },
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "the tenant's inline JWT key set is unusable");
                    Snapshot {
                        error: Some(e),
                        ..Snapshot::default()
                    }
                }
            },
            _ => Snapshot::default(),
        };
        let source = Arc::new(Source::new(origin, snapshot));
        self.sources.insert(tenant.to_owned(), source.clone());
        source
    }
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<KeySet, JwtError> {
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        tracing::warn!(url, error = %e, "{what}");
        JwtError::KeysUnavailable
    };
    let mut response = http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| unavailable("JWKS request failed", &e))?
        .error_for_status()
        .map_err(|e| unavailable("JWKS endpoint answered an error", &e))?;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| unavailable("reading the JWKS failed", &e))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(unavailable(
                "JWKS too large",
                &format!("more than {MAX_JWKS_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::parse(&body)
}
