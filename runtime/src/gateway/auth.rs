//! Authentication of API keys and JWTs.
//!
//! A request carries one credential: `Authorization: Bearer <token>` or `x-api-key: <key>`.
//! A token starting with `agk_` is an API key; anything else is tried as an end-user JWT.
//!
//! API keys are looked up by key id through `agentry.lookup_api_key` (a tenant role sees only
//! its own tenant's keys), and the secret is compared with the stored SHA-256 in constant
//! time. Lookups, found or not, are cached per replica for [`KEY_CACHE_TTL`]: the hot path
//! rarely touches the database, and a revocation reaches every replica within that TTL (plus
//! one lookup's duration). A key in use is looked up again in the background once its entry is
//! [`KEY_REFRESH_AFTER`] old, so that its requests keep being answered from the cache instead
//! of all waiting for one query when the entry expires. See docs/auth.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{OnceCell, Semaphore};
use uuid::Uuid;

use super::jwt::{self, JwksCache};
use super::{Caller, Principal, Scope, apikeys};
use crate::db::Db;
use crate::error::ApiError;
use crate::state::AppState;
use crate::tenancy::{TenantHandle, TenantId};

/// Header that may carry an API key instead of `Authorization`.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header naming the tenant of a JWT in dev mode (where one process serves many tenants).
pub const TENANT_HEADER: &str = "x-agentry-tenant";

/// How long a key lookup is reused; bounds how long a revoked key keeps working.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Age at which the entry of a key in use is refreshed in the background (found keys only).
pub const KEY_REFRESH_AFTER: Duration = Duration::from_millis(500);
/// Most cached lookups; past it, expired entries are swept and new ones go uncached.
const KEY_CACHE_MAX: usize = 10_000;
/// Most key lookups in flight at once, so that a flood of unknown keys cannot take every
/// pooled connection.
const MAX_CONCURRENT_LOOKUPS: usize = 8;
/// `last_used_at` is written at most this often per key.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

const INVALID_KEY: &str = "invalid API key";

/// A key row as `agentry.lookup_api_key` returns it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct KeyRow {
    tenant_id: Uuid,
    id: Uuid,
    secret_hash: Vec<u8>,
    scopes: Vec<String>,
    revoked: bool,
}

/// One cached lookup. The cell is shared so that concurrent requests for the same key id
/// wait for a single query.
#[derive(Debug, Clone)]
struct CachedLookup {
    /// When the lookup was started: a revocation committed later is seen by the next one.
    started: Instant,
    cell: Arc<OnceCell<Option<KeyRow>>>,
    /// Set by the request that starts this entry's background refresh: one per entry.
    refreshing: Arc<AtomicBool>,
}

impl CachedLookup {
    fn new(started: Instant) -> Self {
        Self::with_cell(started, OnceCell::new())
    }

    fn with_cell(started: Instant, cell: OnceCell<Option<KeyRow>>) -> Self {
        Self {
            started,
            cell: Arc::new(cell),
            refreshing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a request using this entry should start its refresh (and is the one to).
    fn claim_refresh(&self, now: Instant) -> bool {
        now.duration_since(self.started) >= KEY_REFRESH_AFTER
            && matches!(self.cell.get(), Some(Some(_)))
            && !self.refreshing.swap(true, Ordering::AcqRel)
    }
}

type KeyCache = DashMap<String, CachedLookup>;

/// Authenticates requests for the tenants this process serves.
#[derive(Debug)]
pub struct Authenticator {
    db: Db,
    http: reqwest::Client,
    keys: Arc<KeyCache>,
    lookups: Arc<Semaphore>,
    touched: DashMap<Uuid, Instant>,
    jwks: JwksCache,
}

/// A presented credential.
enum Credential<'a> {
    ApiKey(&'a str),
    Jwt(&'a str),
}

impl Authenticator {
    /// An authenticator reading keys through `db` and fetching key sets with `http`.
    pub fn new(db: Db, http: reqwest::Client) -> Self {
        Self {
            db,
            http,
            keys: Arc::new(DashMap::new()),
            lookups: Arc::new(Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
            touched: DashMap::new(),
            jwks: JwksCache::new(),
        }
    }

    /// The caller presenting `headers`, or 401 (403 for a key of another tenant in dev mode).
    pub async fn authenticate(
        &self,
        state: &AppState,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        match credential(headers)? {
            Credential::ApiKey(key) => self.api_key(state, headers, key).await,
            Credential::Jwt(token) => self.jwt(state, headers, token).await,
        }
    }

    /// Drops this replica's cached lookup of `key_id` (after a revocation here); other
    /// replicas notice within [`KEY_CACHE_TTL`].
    pub fn forget_key(&self, key_id: &str) {
        self.keys.remove(key_id);
    }

    async fn api_key(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        presented: &str,
    ) -> Result<Caller, ApiError> {
        let (key_id, secret) =
            apikeys::parse(presented).ok_or_else(|| ApiError::unauthorized("malformed API key"))?;
        let row = self
            .lookup(key_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized(INVALID_KEY))?;
        if !apikeys::verify(secret, &row.secret_hash) {
            return Err(ApiError::unauthorized(INVALID_KEY));
        }
        // Said only to whoever holds the secret.
        if row.revoked {
            return Err(ApiError::unauthorized("this API key has been revoked"));
        }
        let tenant = state
            .tenants
            .by_id(TenantId(row.tenant_id))
            .ok_or_else(|| ApiError::unauthorized(INVALID_KEY))?;
        if let Some(named) = tenant_header(headers)?
            && named != tenant.name
        {
            return Err(ApiError::unauthorized(format!(
                "this API key does not belong to tenant {named:?}"
            )));
        }
        if !tenant.bundle().tenant.auth.api_keys {
            return Err(ApiError::unauthorized(
                "this tenant does not accept API keys",
            ));
        }
        let scopes = key_scopes(&row.scopes, row.id);
        self.touch(tenant.id, row.id);
        Ok(Caller {
            tenant,
            principal: Principal::ApiKey { id: row.id },
            scopes,
        })
    }

    /// The key row of `key_id` (`None`: no such key for this role), from the cache when it
    /// is fresh.
    async fn lookup(&self, key_id: &str) -> Result<Option<KeyRow>, ApiError> {
        let now = Instant::now();
        let cached = match self.keys.get(key_id) {
            Some(hit) if now.duration_since(hit.started) < KEY_CACHE_TTL => Some(hit.clone()),
            _ => None,
        };
        if let Some(hit) = &cached
            && hit.claim_refresh(now)
        {
            self.refresh(key_id, hit);
        }
        let lookup = match cached {
            Some(hit) => hit,
            None => {
                if self.keys.len() >= KEY_CACHE_MAX {
                    self.keys
                        .retain(|_, e| now.duration_since(e.started) < KEY_CACHE_TTL);
                }
                if self.keys.len() >= KEY_CACHE_MAX {
                    // Full of fresh entries: answer without caching rather than grow.
                    return Box::pin(self.query(key_id)).await;
                }
                match self.keys.entry(key_id.to_owned()) {
                    // Another request may have started a lookup meanwhile: share it.
                    Entry::Occupied(e) if now.duration_since(e.get().started) < KEY_CACHE_TTL => {
                        e.get().clone()
                    }
                    Entry::Occupied(mut e) => {
                        let fresh = CachedLookup::new(now);
                        e.insert(fresh.clone());
                        fresh
                    }
                    Entry::Vacant(e) => e.insert(CachedLookup::new(now)).clone(),
                }
            }
        };
        // The query is boxed: inline, the database call a cache hit never makes would make
        // every request's future several KB bigger, and futures are moved by value.
        let row = lookup
            .cell
            .get_or_try_init(|| Box::pin(self.query(key_id)))
            .await?;
        Ok(row.clone())
    }

    async fn query(&self, key_id: &str) -> Result<Option<KeyRow>, ApiError> {
        let _permit = self.lookups.acquire().await.map_err(ApiError::internal)?;
        query_key(&self.db, key_id).await
    }

    /// Looks `key_id` up again in the background and replaces `stale` with the answer, unless
    /// the entry was replaced or forgotten (a revocation here) meanwhile. With every lookup
    /// slot taken it does nothing: the entry then expires and is looked up on the request path.
    fn refresh(&self, key_id: &str, stale: &CachedLookup) {
        let Ok(permit) = self.lookups.clone().try_acquire_owned() else {
            return;
        };
        let (db, keys, key_id, stale) = (
            self.db.clone(),
            self.keys.clone(),
            key_id.to_owned(),
            stale.cell.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let Ok(row) = query_key(&db, &key_id).await else {
                return;
            };
            drop(permit);
            if let Entry::Occupied(mut entry) = keys.entry(key_id)
                && Arc::ptr_eq(&entry.get().cell, &stale)
            {
                entry.insert(CachedLookup::with_cell(
                    started,
                    OnceCell::new_with(Some(row)),
                ));
            }
        });
    }

    /// Records that key `id` was used, at most once per [`TOUCH_INTERVAL`], off the request
    /// path: a slow or failing write never delays or fails the request.
    fn touch(&self, tenant: TenantId, id: Uuid) {
        let now = Instant::now();
        let due = match self.touched.entry(id) {
            Entry::Occupied(mut e) if now.duration_since(*e.get()) >= TOUCH_INTERVAL => {
                e.insert(now);
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(e) => {
                e.insert(now);
                true
            }
        };
        if !due {
            return;
        }
        let db = self.db.clone();
        tokio::spawn(async move {
            let result = async {
                let mut tx = db.begin(tenant).await?;
                sqlx::query(
                    "update agentry.api_keys set last_used_at = now() where tenant_id = $1 and id = $2",
                )
                .bind(tenant.0)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<_, crate::db::DbError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(key = %id, error = %e, "recording the key's last use failed");
            }
        });
    }

    async fn jwt(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        token: &str,
    ) -> Result<Caller, ApiError> {
        // Shape first, so that a garbage credential is told so whatever the tenant.
        let raw = jwt::read_header(token)?;
        let tenant = jwt_tenant(state, headers)?;
        let bundle = tenant.bundle();
        let config = bundle.tenant.auth.jwt.as_ref().ok_or_else(|| {
            ApiError::unauthorized("this tenant does not accept JWTs; use an API key")
        })?;
        let header = jwt::check_header(raw, &config.algorithms)?;
        let keys = self
            .jwks
            .keys(
                &self.http,
                &tenant.name,
                &bundle.hash,
                config,
                header.kid.as_deref(),
            )
            .await?;
        let key = keys.select(header.kid.as_deref())?;
        let verified = jwt::verify(token, &header, key, config, unix_now())?;
        Ok(Caller {
            tenant,
            principal: Principal::User {
                subject: verified.subject,
            },
            scopes: verified.scopes,
        })
    }
}

/// The row of `key_id` from `agentry.lookup_api_key` (`None`: no such key for this role).
async fn query_key(db: &Db, key_id: &str) -> Result<Option<KeyRow>, ApiError> {
    sqlx::query_as::<_, KeyRow>(
        "select tenant_id, id, secret_hash, scopes, revoked from agentry.lookup_api_key($1)",
    )
    .bind(key_id)
    .fetch_optional(db.pool())
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "API key lookup failed");
        ApiError::unavailable("cannot check credentials right now; retry shortly")
    })
}

/// The one credential of a request.
fn credential(headers: &HeaderMap) -> Result<Credential<'_>, ApiError> {
    let bearer = match headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().ok();
            let token = text
                .and_then(|t| t.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .filter(|token| !token.is_empty())
                .ok_or_else(|| {
                    ApiError::unauthorized(
                        "malformed Authorization header; expected `Bearer <API key or JWT>`",
                    )
                })?;
            Some(token)
        }
    };
    let api_key = match headers.get(API_KEY_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| k.starts_with(apikeys::PREFIX))
                .ok_or_else(|| ApiError::unauthorized("malformed API key in x-api-key"))?,
        ),
    };
    match (bearer, api_key) {
        (Some(_), Some(_)) => Err(ApiError::unauthorized(
            "send one credential: either Authorization or x-api-key, not both",
        )),
        (None, Some(key)) => Ok(Credential::ApiKey(key)),
        (Some(token), None) if token.starts_with(apikeys::PREFIX) => Ok(Credential::ApiKey(token)),
        (Some(token), None) => Ok(Credential::Jwt(token)),
        (None, None) => Err(ApiError::unauthorized(
            "missing credentials: send `Authorization: Bearer <API key or JWT>` or `x-api-key: <API key>`",
        )),
    }
}

/// The tenant named by `x-agentry-tenant`, if the header is present.
fn tenant_header(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get(TENANT_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::unauthorized("malformed x-agentry-tenant header"))
        })
        .transpose()
}

/// The tenant a JWT is checked against: the one tenant served in the cluster; in dev mode,
/// the one the request names (a JWT says nothing we could trust about its tenant before it
/// is verified, and verifying needs the tenant's keys).
fn jwt_tenant(state: &AppState, headers: &HeaderMap) -> Result<Arc<TenantHandle>, ApiError> {
    if state.dev_mode {
        let name = tenant_header(headers)?.ok_or_else(|| {
            ApiError::unauthorized(
                "this runtime serves several tenants: name the JWT's tenant in the x-agentry-tenant header",
            )
        })?;
        return state
            .tenants
            .by_name(name)
            .ok_or_else(|| ApiError::unauthorized(format!("unknown tenant {name:?}")));
    }
    let tenant = state
        .tenants
        .single()
        .ok_or_else(|| ApiError::unavailable("no tenant bundle is loaded yet"))?;
    if let Some(named) = tenant_header(headers)?
        && named != tenant.name
    {
        return Err(ApiError::unauthorized(format!(
            "this runtime does not serve tenant {named:?}"
        )));
    }
    Ok(tenant)
}

/// The scopes of a key row; names this version does not know are ignored (and logged), so
/// that a key written by a newer version never gains anything here.
fn key_scopes(names: &[String], id: Uuid) -> Vec<Scope> {
    let mut scopes: Vec<Scope> = names
        .iter()
        .filter_map(|name| {
            let scope = Scope::parse(name);
            if scope.is_none() {
                tracing::warn!(key = %id, scope = %name, "ignoring an unknown scope on an API key");
            }
            scope
        })
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

fn unix_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn credentials_are_classified() {
        let key = apikeys::generate().plaintext;
        let bearer = format!("Bearer {key}");
        assert!(matches!(
            credential(&headers(&[("authorization", &bearer)])),
            Ok(Credential::ApiKey(k)) if k == key
        ));
        assert!(matches!(
            credential(&headers(&[("x-api-key", &key)])),
            Ok(Credential::ApiKey(k)) if k == key
        ));
        assert!(matches!(
            credential(&headers(&[("authorization", "bearer a.b.c")])),
            Ok(Credential::Jwt("a.b.c"))
        ));
    }

    #[test]
    fn bad_credentials_are_401() {
        for h in [
            headers(&[]),
            headers(&[("authorization", "Basic dXNlcjpwYXNz")]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("x-api-key", "sk-123")]),
            headers(&[("authorization", "Bearer a.b.c"), ("x-api-key", "agk_x")]),
        ] {
            let err = credential(&h).err().unwrap();
            assert_eq!(err.status, axum::http::StatusCode::UNAUTHORIZED, "{h:?}");
        }
    }

    #[test]
    fn unknown_scopes_are_dropped() {
        let scopes = key_scopes(
            &[
                "chat".into(),
                "superuser".into(),
                "chat".into(),
                "admin".into(),
            ],
            Uuid::nil(),
        );
        assert_eq!(scopes, vec![Scope::Chat, Scope::Admin]);
    }
}
