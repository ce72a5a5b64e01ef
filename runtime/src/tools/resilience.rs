//! Per-tool resilience: the retry loop under the tool's circuit breaker, and the bulkhead.
//!
//! The breaker and the clock are the runtime's shared ones ([`crate::resilience`]); backoff
//! randomness comes in through [`Jitter`] so tests are deterministic.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ToolError;
pub use crate::resilience::{
    BreakerPermit, BreakerPolicy, CircuitBreaker, CircuitState, Clock, ManualClock, SystemClock,
};

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
            Err(wait) => {
                return Err(last.unwrap_or(ToolError::CircuitOpen {
                    retry_after_secs: retry_after_secs(wait),
                }));
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
    crate::resilience::backoff_ceiling(plan.initial_backoff, plan.max_backoff, n)
}

/// Whole seconds until an open breaker lets a trial through, at least 1 (`Retry-After`).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(clock: Arc<ManualClock>) -> Arc<CircuitBreaker> {
        let policy = BreakerPolicy {
            failure_threshold: 2,
            open_for: Duration::from_secs(30),
        };
        Arc::new(CircuitBreaker::new(policy, clock, None))
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_200)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
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
        let b = breaker(Arc::new(ManualClock::new()));
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
        let b = breaker(Arc::new(ManualClock::new()));
        let mut once = plan(3);
        once.repeatable = false;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let _ = run(once, &b, &MaxJitter, || {
            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(unavailable()) }
        })
        .await;
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
        let b = breaker(Arc::new(ManualClock::new()));
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
