//! A consecutive-failure circuit breaker, one per (tenant, provider) for model calls and per
//! (tenant, tool) for tool calls.
//!
//! closed → (`failure_threshold` consecutive failures) → open → (`open_for`) → half-open → one
//! trial call: success closes, failure opens again for another pause. Its state is mirrored
//! into a gauge (0 closed, 1 open, 2 half-open: `agentry_provider_circuit_state`,
//! `agentry_tool_circuit_state`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;

use super::Clock;

/// Circuit breaker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit; 0 disables the breaker.
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

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through (gauge 0).
    Closed,
    /// Calls are refused until the pause ends (gauge 1).
    Open,
    /// The pause ended: one trial call decides (gauge 2).
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

/// A circuit breaker (see the module documentation).
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    gauge: Option<Gauge>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("policy", &self.policy)
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

    fn enabled(&self) -> bool {
        self.policy.failure_threshold > 0
    }

    /// The state now (an open breaker whose pause ended reads as half-open).
    pub fn state(&self) -> CircuitState {
        let mut inner = self.inner.lock();
        self.advance(&mut inner)
    }

    /// Asks to make a call. `Err` carries how long until a trial may go (zero when a trial is
    /// already in flight) when the circuit is open, or half-open with its trial taken.
    pub fn try_acquire(self: &Arc<Self>) -> Result<BreakerPermit, Duration> {
        if !self.enabled() {
            return Ok(BreakerPermit::new(self.clone(), false));
        }
        let mut inner = self.inner.lock();
        match self.advance(&mut inner) {
            CircuitState::Closed => Ok(BreakerPermit::new(self.clone(), false)),
            CircuitState::Open => match &*inner {
                Inner::Open { until } => Err(until.saturating_duration_since(self.clock.now())),
                _ => Err(Duration::ZERO),
            },
            CircuitState::HalfOpen => match &mut *inner {
                Inner::HalfOpen { trial_in_flight } if !*trial_in_flight => {
                    *trial_in_flight = true;
                    Ok(BreakerPermit::new(self.clone(), true))
                }
                _ => Err(Duration::ZERO),
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
        if !self.enabled() {
            return;
        }
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
        // the upstream) frees the slot for the next trial.
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

/// Leave to make one call; report how it went with [`Self::success`] or [`Self::failure`].
/// Dropped without a report (the call was cancelled), it counts as neither, and a trial frees
/// the half-open slot.
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

    /// The call succeeded, or failed in a way that says the upstream is alive (a 4xx).
    pub fn success(mut self) {
        self.done = true;
        self.breaker.on_success();
    }

    /// The call failed in a way that blames the upstream.
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
    use crate::resilience::ManualClock;

    fn breaker(threshold: u32) -> (Arc<CircuitBreaker>, Arc<ManualClock>, Gauge) {
        let clock = Arc::new(ManualClock::new());
        let gauge = Gauge::default();
        let breaker = Arc::new(CircuitBreaker::new(
            BreakerPolicy {
                failure_threshold: threshold,
                open_for: Duration::from_secs(10),
            },
            clock.clone(),
            Some(gauge.clone()),
        ));
        (breaker, clock, gauge)
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let (breaker, clock, gauge) = breaker(2);
        breaker.try_acquire().unwrap().failure();
        // A success in between resets the count of consecutive failures.
        breaker.try_acquire().unwrap().success();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(gauge.get(), 1);
        assert_eq!(breaker.try_acquire().unwrap_err(), Duration::from_secs(10));
        clock.advance(Duration::from_secs(4));
        assert_eq!(breaker.try_acquire().unwrap_err(), Duration::from_secs(6));
        clock.advance(Duration::from_secs(6));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert_eq!(gauge.get(), 2);
        let trial = breaker.try_acquire().unwrap();
        // Only one trial at a time.
        assert_eq!(breaker.try_acquire().unwrap_err(), Duration::ZERO);
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

    #[test]
    fn late_results_of_calls_from_before_the_opening() {
        let (breaker, clock, _) = breaker(1);
        let (first, second) = (
            breaker.try_acquire().unwrap(),
            breaker.try_acquire().unwrap(),
        );
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), CircuitState::Open);
        // A late failure does not extend the pause...
        clock.advance(Duration::from_secs(5));
        first.failure();
        clock.advance(Duration::from_secs(5));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        // ...and a late failure in half-open does not reopen it: only the trial decides.
        second.failure();
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(
            breaker.try_acquire().is_ok(),
            "the trial slot is still free"
        );
    }

    #[test]
    fn a_zero_threshold_disables_the_breaker() {
        let (breaker, _, gauge) = breaker(0);
        for _ in 0..10 {
            breaker.try_acquire().unwrap().failure();
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(gauge.get(), 0);
    }
}
