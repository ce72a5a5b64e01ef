//! Per-tool resilience: a circuit breaker, a bulkhead and the retry loop.
//!
//! Time and randomness come in through [`Clock`] and [`Jitter`] so tests can open a breaker,
//! move the clock past its pause and watch it half-open without sleeping.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ToolError;

/// Time as the tool runtime sees it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic now, for breaker pauses.
    fn now(&self) -> Instant;
    /// Wall-clock now, for `current_time`.
    fn utc(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn utc(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    state: Mutex<(Duration, DateTime<Utc>)>,
}

impl ManualClock {
    /// A clock showing `utc` as wall time.
    pub fn new(utc: DateTime<Utc>) -> Self {
        Self {
            base: Instant::now(),
            state: Mutex::new((Duration::ZERO, utc)),
        }
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock();
        state.0 += by;
        state.1 += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.state.lock().0
    }

    fn utc(&self) -> DateTime<Utc> {
        self.state.lock().1
    }
}

/// Picks a backoff between zero and a ceiling ("full jitter").
pub trait Jitter: Send + Sync + std::fmt::Debug {
    /// A value in `0..=max_ms`.
    fn pick(&self, max_ms: u64) -> u64;
}

/// Uniformly random jitter.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn pick(&self, max_ms: u64) -> u64 {
        rand::random_range(0..=max_ms)
    }
}

/// Always the ceiling; makes backoff deterministic in tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxJitter;

impl Jitter for MaxJitter {
    fn pick(&self, max_ms: u64) -> u64 {
        max_ms
    }
}

/// Breaker state, with the numbers exported by `agentry_tool_circuit_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls flow (0).
    Closed,
    /// Calls fail fast (1).
    Open,
    /// One trial call is let through (2).
    HalfOpen,
}

impl CircuitState {
    fn metric(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
struct BreakerInner {
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

/// Consecutive-failure circuit breaker: opens after `threshold` failed attempts in a row,
/// stays open for `pause`, then lets exactly one trial attempt through (half-open); the trial's
/// result closes or re-opens it.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: Option<u32>,
    pause: Duration,
    clock: Arc<dyn Clock>,
    gauge: Gauge,
    inner: Mutex<BreakerInner>,
}

impl CircuitBreaker {
    /// A closed breaker; `threshold = None` disables it. The gauge is set to 0.
    pub fn new(
        threshold: Option<u32>,
        pause: Duration,
        clock: Arc<dyn Clock>,
        gauge: Gauge,
    ) -> Self {
        gauge.set(CircuitState::Closed.metric());
        Self {
            threshold: threshold.filter(|t| *t > 0),
            pause,
            clock,
            gauge,
            inner: Mutex::new(BreakerInner {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                trial_in_flight: false,
            }),
        }
    }

    /// The current state (an open breaker whose pause is over reports half-open).
    pub fn state(&self) -> CircuitState {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner);
        inner.state
    }

    fn refresh(&self, inner: &mut BreakerInner) {
        if inner.state == CircuitState::Open
            && inner
                .opened_at
                .is_some_and(|at| self.clock.now().saturating_duration_since(at) >= self.pause)
        {
            self.set(inner, CircuitState::HalfOpen);
        }
    }

    fn set(&self, inner: &mut BreakerInner, state: CircuitState) {
        inner.state = state;
        self.gauge.set(state.metric());
    }

    /// Asks to make one attempt. `Err` carries the seconds until a trial is allowed.
    pub fn try_acquire(self: &Arc<Self>) -> Result<BreakerPermit, u64> {
        if self.threshold.is_none() {
            return Ok(BreakerPermit {
                breaker: self.clone(),
                trial: false,
                done: false,
            });
        }
        let mut inner = self.inner.lock();
        self.refresh(&mut inner);
        match inner.state {
            CircuitState::Closed => Ok(BreakerPermit {
                breaker: self.clone(),
                trial: false,
                done: false,
            }),
            CircuitState::HalfOpen if !inner.trial_in_flight => {
                inner.trial_in_flight = true;
                Ok(BreakerPermit {
                    breaker: self.clone(),
                    trial: true,
                    done: false,
                })
            }
            CircuitState::HalfOpen => Err(1),
            CircuitState::Open => {
                let elapsed = inner
                    .opened_at
                    .map(|at| self.clock.now().saturating_duration_since(at))
                    .unwrap_or_default();
                Err(self.pause.saturating_sub(elapsed).as_secs().max(1))
            }
        }
    }

    fn record(&self, trial: bool, success: bool) {
        let Some(threshold) = self.threshold else {
            return;
        };
        let mut inner = self.inner.lock();
        if trial {
            inner.trial_in_flight = false;
        }
        if success {
            inner.consecutive_failures = 0;
            if inner.state != CircuitState::Closed {
                inner.opened_at = None;
                self.set(&mut inner, CircuitState::Closed);
            }
            return;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let reopen = trial || inner.state == CircuitState::HalfOpen;
        if reopen || inner.consecutive_failures >= threshold {
            inner.opened_at = Some(self.clock.now());
            self.set(&mut inner, CircuitState::Open);
        }
    }

    fn abandon_trial(&self) {
        let mut inner = self.inner.lock();
        inner.trial_in_flight = false;
    }
}

/// Permission for one attempt; report its result with [`BreakerPermit::success`] or
/// [`BreakerPermit::failure`]. Dropped unreported (the call was cancelled), a trial permit frees
/// the half-open slot without judging the upstream.
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    trial: bool,
    done: bool,
}

impl BreakerPermit {
    /// The attempt succeeded (or failed in a way that says nothing about upstream health).
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(self.trial, true);
    }

    /// The attempt failed in a way that counts against the upstream.
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(self.trial, false);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.done && self.trial {
            self.breaker.abandon_trial();
        }
    }
}

/// At most `max` calls of one tool in flight on this replica; the rest fail fast.
#[derive(Debug)]
pub struct Bulkhead {
    slots: Option<Arc<Semaphore>>,
}

impl Bulkhead {
    /// `None` means unbounded.
    pub fn new(max: Option<u32>) -> Self {
        Self {
            slots: max.map(|m| Arc::new(Semaphore::new(m.max(1) as usize))),
        }
    }

    /// A slot, or `None` when all are taken. The slot is released when the guard drops.
    pub fn try_enter(&self) -> Option<Option<OwnedSemaphorePermit>> {
        match &self.slots {
            None => Some(None),
            Some(s) => s.clone().try_acquire_owned().ok().map(Some),
        }
    }
}

/// When a failed attempt may be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Never (the error will not change on a repeat).
    Never,
    /// Only when the call is idempotent or the tool allows retrying it anyway.
    IfIdempotent,
    /// Always: the request never reached the upstream (connect failure).
    Always,
}

/// A failed attempt with what the retry loop and the breaker need to know about it.
#[derive(Debug)]
pub(crate) struct AttemptError {
    pub error: ToolError,
    pub retry: Retry,
    /// Counts against the breaker (transport failures, timeouts, 5xx, 429).
    pub upstream_failure: bool,
    /// A `Retry-After` the upstream asked for.
    pub retry_after: Option<Duration>,
}

impl AttemptError {
    /// A failure that is final and says nothing about the upstream's health.
    pub fn permanent(error: ToolError) -> Self {
        Self {
            error,
            retry: Retry::Never,
            upstream_failure: false,
            retry_after: None,
        }
    }
}

/// The retry policy of one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPlan {
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub attempt_timeout: Duration,
    /// The call may be repeated after it reached the upstream.
    pub repeatable: bool,
    pub deadline: Option<Instant>,
}

/// Runs `attempt` under the breaker with per-attempt timeouts and retries.
pub(crate) async fn run<T, F, Fut>(
    plan: RetryPlan,
    breaker: &Arc<CircuitBreaker>,
    jitter: &dyn Jitter,
    mut attempt: F,
) -> Result<T, ToolError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let mut n: u32 = 0;
    let mut last: Option<ToolError> = None;
    loop {
        let permit = match breaker.try_acquire() {
            Ok(p) => p,
            // Opened by this call's own failures: the upstream's error says more.
            Err(retry_after_secs) => {
                return Err(last.unwrap_or(ToolError::CircuitOpen { retry_after_secs }));
            }
        };
        let timeout = match remaining(plan.deadline) {
            Some(left) if left.is_zero() => return Err(ToolError::DeadlineExceeded),
            Some(left) => plan.attempt_timeout.min(left),
            None => plan.attempt_timeout,
        };
        let result = match tokio::time::timeout(timeout, attempt()).await {
            Ok(r) => r,
            Err(_) => Err(AttemptError {
                error: ToolError::Timeout {
                    after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
                retry: Retry::IfIdempotent,
                upstream_failure: true,
                retry_after: None,
            }),
        };
        let failed = match result {
            Ok(value) => {
                permit.success();
                return Ok(value);
            }
            Err(failed) => failed,
        };
        if failed.upstream_failure {
            permit.failure();
        } else {
            permit.success();
        }
        let may_retry = match failed.retry {
            Retry::Never => false,
            Retry::IfIdempotent => plan.repeatable,
            Retry::Always => true,
        };
        if !may_retry || n >= plan.max_retries {
            return Err(failed.error);
        }
        let ceiling = backoff_ceiling(plan, n);
        let mut wait = Duration::from_millis(
            jitter.pick(u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX)),
        );
        if let Some(asked) = failed.retry_after {
            wait = wait.max(asked.min(plan.max_backoff));
        }
        if remaining(plan.deadline).is_some_and(|left| left <= wait) {
            return Err(failed.error);
        }
        tokio::time::sleep(wait).await;
        last = Some(failed.error);
        n += 1;
    }
}

fn backoff_ceiling(plan: RetryPlan, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n);
    plan.initial_backoff
        .saturating_mul(factor)
        .min(plan.max_backoff)
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(clock: Arc<ManualClock>) -> (Arc<CircuitBreaker>, Gauge) {
        let gauge = Gauge::default();
        let b = CircuitBreaker::new(Some(2), Duration::from_secs(30), clock, gauge.clone());
        (Arc::new(b), gauge)
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (b, gauge) = breaker(clock.clone());
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Closed);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(gauge.get(), 1);
        assert_eq!(b.try_acquire().unwrap_err(), 30);
        clock.advance(Duration::from_secs(31));
        let trial = b.try_acquire().unwrap();
        assert_eq!(gauge.get(), 2);
        // Only one trial at a time.
        assert!(b.try_acquire().is_err());
        trial.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn failed_trial_reopens_and_abandoned_trial_frees_the_slot() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (b, _) = breaker(clock.clone());
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        clock.advance(Duration::from_secs(30));
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        clock.advance(Duration::from_secs(30));
        drop(b.try_acquire().unwrap());
        assert!(
            b.try_acquire().is_ok(),
            "an abandoned trial must free the slot"
        );
    }

    #[test]
    fn success_resets_the_failure_count() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (b, _) = breaker(clock);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let plan = RetryPlan {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            attempt_timeout: Duration::from_secs(1),
            repeatable: true,
            deadline: None,
        };
        let got: Vec<_> = (0..4)
            .map(|n| backoff_ceiling(plan, n).as_millis())
            .collect();
        assert_eq!(got, [100, 200, 350, 350]);
    }

    fn unavailable() -> AttemptError {
        AttemptError {
            error: ToolError::HttpStatus {
                status: 503,
                body: String::new(),
            },
            retry: Retry::IfIdempotent,
            upstream_failure: true,
            retry_after: None,
        }
    }

    fn plan(max_retries: u32) -> RetryPlan {
        RetryPlan {
            max_retries,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(1),
            repeatable: true,
            deadline: None,
        }
    }

    #[tokio::test]
    async fn retries_stop_when_the_breaker_opens_and_report_the_upstream_error() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (b, _) = breaker(clock);
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let err = run(plan(5), &b, &MaxJitter, || {
            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(unavailable()) }
        })
        .await
        .unwrap_err();
        assert_eq!(attempts.into_inner(), 2);
        assert_eq!(err.code(), "http_status");
        let err = run(plan(5), &b, &MaxJitter, || async {
            Ok::<_, AttemptError>(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.code(), "circuit_open");
    }

    #[tokio::test]
    async fn non_repeatable_calls_are_tried_once_unless_nothing_was_sent() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let (b, _) = breaker(clock);
        let mut once = plan(3);
        once.repeatable = false;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let _ = run(once, &b, &MaxJitter, || {
            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(unavailable()) }
        })
        .await;
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
        let (b, _) = breaker(Arc::new(ManualClock::new(Utc::now())));
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result = run(once, &b, &MaxJitter, || {
            let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    let mut e = unavailable();
                    e.retry = Retry::Always;
                    e.upstream_failure = false;
                    Err(e)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result, Ok(1));
    }

    #[test]
    fn bulkhead_bounds_slots() {
        let b = Bulkhead::new(Some(1));
        let first = b.try_enter().unwrap();
        assert!(b.try_enter().is_none());
        drop(first);
        assert!(b.try_enter().is_some());
        assert!(Bulkhead::new(None).try_enter().is_some());
    }
}
