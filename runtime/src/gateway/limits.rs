//! Rate limits (GCRA) per tenant, API key and end user, and the concurrent-stream cap.
//!
//! Each replica enforces `1/shards` of every configured rate with `governor`'s keyed GCRA
//! limiters, so `shards` replicas together admit about the configured rate without talking to
//! each other. Limiters are keyed by tenant, limit and rate: a hot-reloaded bundle with a new
//! rate gets a fresh limiter, and idle state is swept once a minute. See docs/limits.md.

mod tokens;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use agentry_crds::bundle::LimitsConfig;
use dashmap::DashMap;
use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{NotUntil, Quota, RateLimiter};
use uuid::Uuid;

use super::{Caller, Principal};
use crate::error::ApiError;
use crate::tenancy::{TenantHandle, TenantId};

use tokens::TokenAccount;

/// The clock of production limiters.
pub type DefaultClock = governor::clock::DefaultClock;

/// How often idle limiter state is dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A request refused by a limit.
#[derive(Debug, Clone)]
pub struct LimitExceeded {
    /// Which limit (metric label).
    pub limit: &'static str,
    /// Seconds until a retry can succeed.
    pub retry_after_secs: u64,
    /// Message for the client.
    pub message: String,
}

impl From<LimitExceeded> for ApiError {
    fn from(e: LimitExceeded) -> Self {
        ApiError::rate_limited(e.message, e.retry_after_secs)
    }
}

/// One of the limits, named as in metrics and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Requests per minute of the whole tenant.
    TenantRpm,
    /// Requests per minute of one API key.
    KeyRpm,
    /// Requests per minute of one end user.
    UserRpm,
    /// LLM tokens per minute of the whole tenant.
    TenantTpm,
    /// LLM tokens per minute of one API key.
    KeyTpm,
    /// LLM tokens per minute of one end user.
    UserTpm,
    /// Concurrent streams of the tenant.
    Streams,
}

impl Limit {
    /// The metric label and the name used in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::TenantRpm => "tenant_rpm",
            Limit::KeyRpm => "key_rpm",
            Limit::UserRpm => "user_rpm",
            Limit::TenantTpm => "tenant_tpm",
            Limit::KeyTpm => "key_tpm",
            Limit::UserTpm => "user_tpm",
            Limit::Streams => "streams",
        }
    }

    fn describe(self, configured: u32) -> String {
        let (unit, whom) = match self {
            Limit::TenantRpm => ("requests per minute", "this tenant"),
            Limit::KeyRpm => ("requests per minute", "this API key"),
            Limit::UserRpm => ("requests per minute", "this user"),
            Limit::TenantTpm => ("tokens per minute", "this tenant"),
            Limit::KeyTpm => ("tokens per minute", "this API key"),
            Limit::UserTpm => ("tokens per minute", "this user"),
            Limit::Streams => ("concurrent streams", "this tenant"),
        };
        format!(
            "rate limit {} reached: {configured} {unit} for {whom}",
            self.as_str()
        )
    }
}

/// Whose state a limiter keeps, within one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    Tenant,
    Key(Uuid),
    User(Arc<str>),
}

/// The request or token limits that apply to a caller, most specific first: a caller refused
/// by its own limit then never spends a cell of the tenant's.
fn levels(caller: &Caller, limits: &LimitsConfig, tokens: bool) -> Vec<(Limit, u32, Subject)> {
    let mut out = Vec::with_capacity(2);
    let (key, user, tenant) = if tokens {
        (
            limits.per_key_tokens_per_minute,
            limits.per_user_tokens_per_minute,
            limits.tokens_per_minute,
        )
    } else {
        (
            limits.per_key_requests_per_minute,
            limits.per_user_requests_per_minute,
            limits.requests_per_minute,
        )
    };
    match &caller.principal {
        Principal::User { subject } => {
            if let Some(rate) = user {
                let limit = if tokens {
                    Limit::UserTpm
                } else {
                    Limit::UserRpm
                };
                out.push((limit, rate, Subject::User(Arc::from(subject.as_str()))));
            }
        }
        Principal::ApiKey { id } => {
            if let Some(rate) = key {
                let limit = if tokens { Limit::KeyTpm } else { Limit::KeyRpm };
                out.push((limit, rate, Subject::Key(*id)));
            }
        }
    }
    if let Some(rate) = tenant {
        let limit = if tokens {
            Limit::TenantTpm
        } else {
            Limit::TenantRpm
        };
        out.push((limit, rate, Subject::Tenant));
    }
    out
}

type KeyedGcra<C> =
    RateLimiter<Subject, DashMapStateStore<Subject>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A GCRA limiter for one tenant, limit and rate.
pub(crate) struct Bucket<C: Clock> {
    gcra: KeyedGcra<C>,
    /// Cells per minute on this replica (also the burst).
    burst: NonZeroU32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BucketId {
    tenant: TenantId,
    limit: Limit,
    /// The configured (tenant-wide) rate; a reload that changes it gets a fresh bucket.
    rate: u32,
}

/// The limiter of one replica.
pub struct Limiter<C: Clock = DefaultClock> {
    shards: u32,
    clock: C,
    start: C::Instant,
    buckets: DashMap<BucketId, Arc<Bucket<C>>>,
    tokens: DashMap<(TenantId, Limit, Subject), TokenAccount>,
    streams: DashMap<TenantId, Arc<AtomicU32>>,
    /// Clock reading (nanoseconds since `start`) after which the next sweep runs.
    next_sweep: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("shards", &self.shards)
            .field("buckets", &self.buckets.len())
            .field("token_accounts", &self.tokens.len())
            .field("stream_counters", &self.streams.len())
            .finish()
    }
}

impl Limiter<DefaultClock> {
    /// A limiter enforcing `1/shards` of each configured rate.
    pub fn new(shards: u32) -> Self {
        Self::with_clock(shards, DefaultClock::default())
    }
}

impl<C> Limiter<C>
where
    C: Clock + Clone + Send + Sync,
{
    /// Like [`Limiter::new`] with an explicit clock (tests pass a fake one).
    pub fn with_clock(shards: u32, clock: C) -> Self {
        let start = clock.now();
        Self {
            shards: shards.max(1),
            clock,
            start,
            buckets: DashMap::new(),
            tokens: DashMap::new(),
            streams: DashMap::new(),
            next_sweep: AtomicU64::new(duration_nanos(SWEEP_EVERY)),
        }
    }

    /// Replicas sharing each configured rate.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// This replica's share of a tenant-wide `rate`: at least one per minute.
    pub fn share(&self, rate: u32) -> NonZeroU32 {
        NonZeroU32::new(rate / self.shards).unwrap_or(NonZeroU32::MIN)
    }

    /// Admits or refuses one request by `caller` against the request-rate limits of its
    /// tenant, its API key or its end user.
    pub fn check_request(&self, caller: &Caller) -> Result<(), LimitExceeded> {
        self.maybe_sweep();
        let bundle = caller.tenant.bundle();
        for (limit, rate, subject) in levels(caller, &bundle.tenant.limits, false) {
            let bucket = self.bucket(caller.tenant.id, limit, rate);
            if let Err(not_until) = bucket.gcra.check_key(&subject) {
                return Err(self.refusal(limit, rate, &not_until));
            }
        }
        Ok(())
    }

    /// Takes one of the tenant's concurrent-stream slots (SSE, WebSocket); the slot is
    /// released when the permit drops.
    pub fn acquire_stream(
        &self,
        tenant: &Arc<TenantHandle>,
    ) -> Result<StreamPermit, LimitExceeded> {
        let cap = tenant.bundle().tenant.limits.concurrent_streams;
        let counter = self.streams.entry(tenant.id).or_default().clone();
        match cap {
            None => {
                counter.fetch_add(1, Ordering::AcqRel);
            }
            Some(configured) => {
                let share = self.share(configured).get();
                counter
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                        (open < share).then_some(open + 1)
                    })
                    .map_err(|_| LimitExceeded {
                        limit: Limit::Streams.as_str(),
                        retry_after_secs: 1,
                        message: format!(
                            "{}; close a stream and retry",
                            Limit::Streams.describe(configured)
                        ),
                    })?;
            }
        }
        Ok(StreamPermit { counter })
    }

    /// Streams the tenant has open on this replica.
    pub fn open_streams(&self, tenant: TenantId) -> u32 {
        self.streams
            .get(&tenant)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Drops limiter state that is indistinguishable from fresh state, and token accounts
    /// that are settled and idle. Runs by itself once a minute; public for tests.
    pub fn sweep(&self) {
        let now = self.elapsed_nanos();
        self.buckets.retain(|_, bucket| {
            bucket.gcra.retain_recent();
            bucket.gcra.shrink_to_fit();
            !bucket.gcra.is_empty()
        });
        self.tokens.retain(|_, account| account.keep(now));
        self.streams.retain(|_, counter| {
            Arc::strong_count(counter) > 1 || counter.load(Ordering::Acquire) > 0
        });
        self.buckets.shrink_to_fit();
        self.tokens.shrink_to_fit();
    }

    /// Limiter states held (keys across all buckets), for tests and debugging.
    pub fn tracked_keys(&self) -> usize {
        self.buckets.iter().map(|b| b.gcra.len()).sum::<usize>() + self.tokens.len()
    }

    fn maybe_sweep(&self) {
        let now = self.elapsed_nanos();
        let due = self.next_sweep.load(Ordering::Acquire);
        // Only the caller that moves the deadline sweeps; the others go on.
        if now >= due
            && self
                .next_sweep
                .compare_exchange(
                    due,
                    now + duration_nanos(SWEEP_EVERY),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.sweep();
        }
    }

    fn elapsed_nanos(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    fn bucket(&self, tenant: TenantId, limit: Limit, rate: u32) -> Arc<Bucket<C>> {
        let id = BucketId {
            tenant,
            limit,
            rate,
        };
        if let Some(bucket) = self.buckets.get(&id) {
            return bucket.clone();
        }
        self.buckets
            .entry(id)
            .or_insert_with(|| {
                let burst = self.share(rate);
                Arc::new(Bucket {
                    gcra: RateLimiter::new(
                        Quota::per_minute(burst),
                        DashMapStateStore::default(),
                        self.clock.clone(),
                    ),
                    burst,
                })
            })
            .clone()
    }

    fn refusal(
        &self,
        limit: Limit,
        configured: u32,
        not_until: &NotUntil<C::Instant>,
    ) -> LimitExceeded {
        let secs = ceil_secs(not_until.wait_time_from(self.clock.now()));
        LimitExceeded {
            limit: limit.as_str(),
            retry_after_secs: secs,
            message: format!("{}; retry in {secs} s", limit.describe(configured)),
        }
    }
}

/// A concurrent-stream slot; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamPermit {
    counter: Arc<AtomicU32>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whole seconds, rounded up, at least one: `Retry-After: 0` would invite a busy loop.
fn ceil_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
    }

    #[test]
    fn each_replica_enforces_its_share_and_at_least_one() {
        let limiter = Limiter::with_clock(3, governor::clock::FakeRelativeClock::default());
        assert_eq!(limiter.share(600).get(), 200);
        assert_eq!(limiter.share(2).get(), 1);
        assert_eq!(limiter.share(0).get(), 1);
        assert_eq!(Limiter::new(0).shards(), 1);
    }
}
