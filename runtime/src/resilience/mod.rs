//! Resilience shared by model calls (`llm`) and tool calls (`tools`): the injectable
//! [`Clock`], the [`CircuitBreaker`] and the exponential backoff ceiling that both retry loops
//! draw their full-jitter delays under.

mod breaker;
mod clock;

use std::time::Duration;

pub use breaker::{BreakerPermit, BreakerPolicy, CircuitBreaker, CircuitState};
pub use clock::{Clock, ManualClock, SystemClock};

/// The ceiling of the delay before retry `retry` (0-based): `min(max, initial × 2^retry)`.
/// The delay itself is drawn uniformly from `[0, ceiling]` ("full jitter", AWS architecture
/// blog, "Exponential Backoff And Jitter"), which spreads the retries of many clients instead
/// of synchronising them.
pub fn backoff_ceiling(initial: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_maximum() {
        let ms = Duration::from_millis;
        let got: Vec<_> = [0, 1, 2, 3, 40]
            .into_iter()
            .map(|n| backoff_ceiling(ms(100), ms(350), n).as_millis())
            .collect();
        assert_eq!(got, [100, 200, 350, 350, 350]);
    }
}
