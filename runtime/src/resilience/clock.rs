//! Time as the runtime's resilience code sees it: monotonic for breaker pauses, wall-clock for
//! `current_time`. Injected so that tests open a breaker, move the clock past its pause and
//! watch it half-open without sleeping.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

/// A source of time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Wall-clock now.
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

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    state: Mutex<(Duration, DateTime<Utc>)>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock frozen at the current instant.
    pub fn new() -> Self {
        Self::at(Utc::now())
    }

    /// A clock frozen now, showing `utc` as wall time.
    pub fn at(utc: DateTime<Utc>) -> Self {
        Self {
            base: Instant::now(),
            state: Mutex::new((Duration::ZERO, utc)),
        }
    }

    /// Moves both times forward.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = Utc::now();
        let clock = ManualClock::at(start);
        let before = clock.now();
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - before, Duration::from_secs(90));
        assert_eq!(clock.utc() - start, chrono::Duration::seconds(90));
    }
}
