//! Retries with exponential backoff and full jitter, and a circuit breaker per provider.
//! Time and randomness are injected ([`Clock`], a seedable RNG) so tests control them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

/// A source of monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset_nanos: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock frozen at the current instant.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            offset_nanos: AtomicU64::new(0),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

/// Retry policy of one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls of one model, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Ceiling of the first backoff.
    pub initial_backoff: Duration,
    /// Ceiling of any backoff.
    pub max_backoff: Duration,
    /// Longest `Retry-After` we wait for; a longer one moves on to the next model at once.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(20),
        }
    }
}

/// Computes backoff delays with "full jitter": a uniform draw in `[0, min(max, initial × 2ⁿ)]`
/// (AWS architecture blog, "Exponential Backoff And Jitter"), which spreads retries of many
/// clients instead of synchronising them.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    rng: Mutex<SmallRng>,
}

impl Backoff {
    /// A backoff drawing from `seed` when given, from the OS otherwise.
    pub fn new(policy: RetryPolicy, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand::make_rng::<SmallRng>(),
        };
        Self {
            policy,
            rng: Mutex::new(rng),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The ceiling of the jittered delay after failed attempt `retry` (0 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial_backoff
            .saturating_mul(factor)
            .min(self.policy.max_backoff)
    }

    /// The delay before retry number `retry` (0-based). With a `Retry-After`, the delay is
    /// at least that long; `None` when the `Retry-After` exceeds the cap (do not retry).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let ceiling = self.ceiling(retry);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(self.rng.lock().random_range(0..=nanos));
        match retry_after {
            Some(wait) if wait > self.policy.max_retry_after => None,
            Some(wait) => Some(wait.max(jittered)),
            None => Some(jittered),
        }
    }
}

/// Circuit breaker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before one trial call is let through.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The state of a breaker, as exported by `agentry_provider_circuit_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the pause ends.
    Open,
    /// The pause ended: one trial call decides.
    HalfOpen,
}

impl CircuitState {
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

/// A circuit breaker: closed → (N consecutive failures) → open → (pause) → half-open → one
/// trial: success closes, failure opens again.
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    gauge: Option<Gauge>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker; `gauge` (if any) follows its state.
    pub fn new(policy: BreakerPolicy, clock: Arc<dyn Clock>, gauge: Option<Gauge>) -> Self {
        let breaker = Self {
            policy,
            clock,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            gauge,
        };
        breaker.publish(CircuitState::Closed);
        breaker
    }

    /// The state now (an open breaker whose pause ended reads as half-open).
    pub fn state(&self) -> CircuitState {
        let mut inner = self.inner.lock();
        self.advance(&mut inner)
    }

    /// Asks to make a call. `None` when the circuit is open, or half-open with the trial
    /// already in flight.
    pub fn try_acquire(self: &Arc<Self>) -> Option<BreakerPermit> {
        let mut inner = self.inner.lock();
        match self.advance(&mut inner) {
            CircuitState::Closed => Some(BreakerPermit::new(self.clone(), false)),
            CircuitState::Open => None,
            CircuitState::HalfOpen => match &mut *inner {
                Inner::HalfOpen { trial_in_flight } if !*trial_in_flight => {
                    *trial_in_flight = true;
                    Some(BreakerPermit::new(self.clone(), true))
                }
                _ => None,
            },
        }
    }

    fn advance(&self, inner: &mut Inner) -> CircuitState {
        match inner {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { until } => {
                if self.clock.now() >= *until {
                    *inner = Inner::HalfOpen {
                        trial_in_flight: false,
                    };
                    self.publish(CircuitState::HalfOpen);
                    CircuitState::HalfOpen
                } else {
                    CircuitState::Open
                }
            }
            Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn on_success(&self) {
        let mut inner = self.inner.lock();
        if !matches!(*inner, Inner::Closed { failures: 0 }) {
            *inner = Inner::Closed { failures: 0 };
            self.publish(CircuitState::Closed);
        }
    }

    fn on_failure(&self, trial: bool) {
        let mut inner = self.inner.lock();
        let open = match &mut *inner {
            Inner::Closed { failures } => {
                *failures = failures.saturating_add(1);
                *failures >= self.policy.failure_threshold
            }
            // A failed trial reopens; a late failure of a call that began before the circuit
            // opened changes nothing.
            Inner::HalfOpen { .. } => trial,
            Inner::Open { .. } => false,
        };
        if open {
            *inner = Inner::Open {
                until: self.clock.now() + self.policy.open_for,
            };
            self.publish(CircuitState::Open);
        }
    }

    fn on_abandon(&self, trial: bool) {
        // A trial that ended with no verdict (cancelled, or an error that says nothing about
        // the provider) frees the slot for the next trial.
        if trial && let Inner::HalfOpen { trial_in_flight } = &mut *self.inner.lock() {
            *trial_in_flight = false;
        }
    }

    fn publish(&self, state: CircuitState) {
        if let Some(gauge) = &self.gauge {
            gauge.set(state.gauge_value());
        }
    }
}

/// Leave to make one call; report how it went. Dropped without a report, it counts as
/// neither success nor failure.
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    trial: bool,
    done: bool,
}

impl BreakerPermit {
    fn new(breaker: Arc<CircuitBreaker>, trial: bool) -> Self {
        Self {
            breaker,
            trial,
            done: false,
        }
    }

    /// The call succeeded.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.on_success();
    }

    /// The call failed in a way that blames the provider.
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.on_failure(self.trial);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.on_abandon(self.trial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
            max_retry_after: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_stays_within_the_exponential_ceiling() {
        let backoff = Backoff::new(policy(100, 1_000), Some(7));
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
        assert_eq!(backoff.ceiling(4), Duration::from_millis(1_000));
        assert_eq!(backoff.ceiling(200), Duration::from_millis(1_000));
        let mut distinct = std::collections::BTreeSet::new();
        for retry in 0..6 {
            for _ in 0..200 {
                let d = backoff.delay(retry, None).unwrap();
                assert!(d <= backoff.ceiling(retry), "{d:?} over the ceiling");
                distinct.insert(d);
            }
        }
        // Jitter really draws: not a constant.
        assert!(distinct.len() > 100);
    }

    #[test]
    fn backoff_is_reproducible_with_a_seed() {
        let a = Backoff::new(policy(100, 1_000), Some(42));
        let b = Backoff::new(policy(100, 1_000), Some(42));
        let da: Vec<_> = (0..5).map(|r| a.delay(r, None)).collect();
        let db: Vec<_> = (0..5).map(|r| b.delay(r, None)).collect();
        assert_eq!(da, db);
    }

    #[test]
    fn retry_after_is_a_floor_and_capped() {
        let backoff = Backoff::new(policy(1, 1), Some(1));
        let wait = Duration::from_millis(1_500);
        assert_eq!(backoff.delay(0, Some(wait)), Some(wait));
        assert_eq!(backoff.delay(0, Some(Duration::from_secs(3))), None);
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let clock = Arc::new(ManualClock::new());
        let gauge = Gauge::default();
        let breaker = Arc::new(CircuitBreaker::new(
            BreakerPolicy {
                failure_threshold: 2,
                open_for: Duration::from_secs(10),
            },
            clock.clone(),
            Some(gauge.clone()),
        ));
        breaker.try_acquire().unwrap().failure();
        // A success in between resets the count of consecutive failures.
        breaker.try_acquire().unwrap().success();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(gauge.get(), 1);
        assert!(breaker.try_acquire().is_none());
        clock.advance(Duration::from_secs(10));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert_eq!(gauge.get(), 2);
        let trial = breaker.try_acquire().unwrap();
        // Only one trial at a time.
        assert!(breaker.try_acquire().is_none());
        trial.failure();
        assert_eq!(breaker.state(), CircuitState::Open);
        clock.advance(Duration::from_secs(10));
        // An abandoned trial frees the slot.
        drop(breaker.try_acquire().unwrap());
        let trial = breaker.try_acquire().unwrap();
        trial.success();
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(gauge.get(), 0);
    }
}
