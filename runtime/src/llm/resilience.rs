//! Retries of model calls with exponential backoff and full jitter (a seedable RNG, so tests
//! control it). The circuit breaker and the clock are the runtime's shared ones
//! ([`crate::resilience`]).

use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

pub use crate::resilience::{
    BreakerPermit, BreakerPolicy, CircuitBreaker, CircuitState, Clock, ManualClock, SystemClock,
};

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
        crate::resilience::backoff_ceiling(
            self.policy.initial_backoff,
            self.policy.max_backoff,
            retry,
        )
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
}
