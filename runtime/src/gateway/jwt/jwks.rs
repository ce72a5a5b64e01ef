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

/// How often key sets are fetched.
#[derive(Debug, Clone, Copy)]
pub struct JwksTiming {
    /// How long a fetched key set is used.
    pub ttl: Duration,
    /// Shortest time between fetches caused by an unknown `kid`.
    pub refetch_interval: Duration,
    /// Shortest time between fetches while no fresh key set is held.
    pub retry_interval: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        Self {
            ttl: JWKS_TTL,
            refetch_interval: REFETCH_INTERVAL,
            retry_interval: RETRY_INTERVAL,
        }
    }
}

/// Key sets of every tenant served, by tenant name.
#[derive(Debug, Default)]
pub struct JwksCache {
    sources: DashMap<String, Arc<Source>>,
    timing: JwksTiming,
}

impl JwksCache {
    /// An empty cache with the default timing.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache with `timing` (tests shorten it).
    pub fn with_timing(timing: JwksTiming) -> Self {
        Self {
            sources: DashMap::new(),
            timing,
        }
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
            return snap
                .keys
                .ok_or(snap.error.unwrap_or(JwtError::NoUsableKeys));
        };
        let now = Instant::now();
        let seen = source.snapshot();
        let fresh = seen.fetched_at.is_some_and(|t| now - t < self.timing.ttl);
        if fresh && let Some(keys) = seen.keys.as_ref().filter(|k| k.has(kid)) {
            return Ok(keys.clone());
        }
        let gap = if fresh && seen.keys.is_some() {
            self.timing.refetch_interval
        } else {
            self.timing.retry_interval
        };
        if seen.last_attempt.is_none_or(|t| now - t >= gap) {
            let _fetching = source.fetching.lock().await;
            // Another request may have fetched while this one waited.
            if source.snapshot().last_attempt == seen.last_attempt {
                source.snapshot.write().last_attempt = Some(Instant::now());
                // Boxed: a rare HTTP call that would otherwise size every JWT request's future.
                let result = Box::pin(fetch(http, url)).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use agentry_crds::tenant::JwtAlgorithm;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::{Value, json};

    const ISSUER_PEM: &str = include_str!("../../../tests/auth_support/keys/rsa_issuer.pem");
    const OTHER_PEM: &str = include_str!("../../../tests/auth_support/keys/rsa_other.pem");

    fn jwk(pem: &str, kid: &str) -> Value {
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        serde_json::to_value(jwk).unwrap()
    }

    /// A JWKS endpoint on a local port whose document and health the test changes.
    struct Issuer {
        url: String,
        document: Arc<RwLock<Option<Value>>>,
        hits: Arc<AtomicUsize>,
    }

    async fn issuer(initial: Value) -> Issuer {
        let document = Arc::new(RwLock::new(Some(initial)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), hits.clone());
        let app = Router::new().route(
            "/jwks.json",
            get(move || {
                let (doc, count) = (doc.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    match doc.read().clone() {
                        Some(d) => (StatusCode::OK, d.to_string()),
                        None => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer {
            url,
            document,
            hits,
        }
    }

    fn config(url: &str) -> JwtConfig {
        JwtConfig {
            issuer: "https://issuer.example".into(),
            audiences: vec!["agentry".into()],
            jwks_url: Some(url.to_owned()),
            jwks: None,
            algorithms: vec![JwtAlgorithm::RS256],
            user_claim: "sub".into(),
        }
    }

    fn timing(ttl_ms: u64, refetch_ms: u64) -> JwksTiming {
        JwksTiming {
            ttl: Duration::from_millis(ttl_ms),
            refetch_interval: Duration::from_millis(refetch_ms),
            retry_interval: Duration::from_millis(refetch_ms),
        }
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let idp = issuer(json!({"keys": [jwk(ISSUER_PEM, "k1")]})).await;
        let cache = JwksCache::with_timing(timing(60_000, 300));
        let http = client();
        let config = config(&idp.url);
        let keys = |kid: &'static str| cache.keys(&http, "acme", "h", &config, Some(kid));

        assert!(keys("k1").await.unwrap().has(Some("k1")));
        assert!(keys("k1").await.unwrap().has(Some("k1")));
        assert_eq!(
            idp.hits.load(Ordering::SeqCst),
            1,
            "a known kid is served from the cache"
        );

        // The issuer rotates; a token with the new kid arrives right after the first fetch:
        // too soon to refetch, so a flood of unknown kids costs nothing upstream.
        *idp.document.write() =
            Some(json!({"keys": [jwk(ISSUER_PEM, "k1"), jwk(OTHER_PEM, "k2")]}));
        for _ in 0..20 {
            assert!(!keys("k2").await.unwrap().has(Some("k2")));
        }
        assert_eq!(idp.hits.load(Ordering::SeqCst), 1);

        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(keys("k2").await.unwrap().has(Some("k2")));
        assert_eq!(idp.hits.load(Ordering::SeqCst), 2);
        assert!(!keys("k3").await.unwrap().has(Some("k3")));
        assert_eq!(idp.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_last_good_set_survives_a_failing_issuer() {
        let idp = issuer(json!({"keys": [jwk(ISSUER_PEM, "k1")]})).await;
        let cache = JwksCache::with_timing(timing(100, 50));
        let http = client();
        let config = config(&idp.url);
        assert!(
            cache
                .keys(&http, "acme", "h", &config, Some("k1"))
                .await
                .is_ok()
        );
        *idp.document.write() = None;
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Expired, refetch fails: the old keys keep serving.
        let keys = cache
            .keys(&http, "acme", "h", &config, Some("k1"))
            .await
            .unwrap();
        assert!(keys.has(Some("k1")));
        assert_eq!(idp.hits.load(Ordering::SeqCst), 2);

        // A tenant whose issuer never answered has no keys: 503, not 401.
        let down = issuer(json!({})).await;
        *down.document.write() = None;
        let down_config = JwtConfig {
            jwks_url: Some(down.url.clone()),
            ..config
        };
        let err = cache
            .keys(&http, "globex", "h", &down_config, Some("k1"))
            .await
            .unwrap_err();
        assert_eq!(err, JwtError::KeysUnavailable);
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    #[tokio::test]
    async fn inline_sets_are_parsed_per_bundle_and_never_fetched() {
        let cache = JwksCache::new();
        let http = client();
        let mut config = config("http://127.0.0.1:9/unused");
        config.jwks_url = None;
        config.jwks = Some(json!({"keys": [jwk(ISSUER_PEM, "k1")]}).to_string());
        let first = cache
            .keys(&http, "acme", "h1", &config, Some("k9"))
            .await
            .unwrap();
        assert!(!first.has(Some("k9")) && first.has(Some("k1")));
        config.jwks = Some(json!({"keys": [jwk(OTHER_PEM, "k9")]}).to_string());
        // Same bundle hash: the parsed set is reused.
        let same = cache
            .keys(&http, "acme", "h1", &config, Some("k9"))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        // A new bundle: parsed again.
        let next = cache
            .keys(&http, "acme", "h2", &config, Some("k9"))
            .await
            .unwrap();
        assert!(next.has(Some("k9")) && !next.has(Some("k1")));
    }
}
