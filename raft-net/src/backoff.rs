//! Retry delays: exponential, capped, with jitter. One rule for every retry loop of a node
//! (dialing a peer, openraft's retries to an unreachable peer, asking to join), and pure: the
//! random part is a parameter, so the rule is tested alone.

use std::time::Duration;

/// Exponential backoff from `min_ms` to `max_ms` with "equal jitter": retry `attempt` waits
/// between half and all of `min_ms · 2^attempt` (capped at `max_ms`). The random half keeps
/// nodes that failed together (a partition healing, a leader restarting) from retrying in
/// lockstep; the fixed half keeps the delay growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The delay before retry `attempt` (0 is the first), `unit` in `[0, 1]` choosing where in
    /// the jitter window. Never overflows, whatever `attempt`.
    pub fn delay_ms_at(&self, attempt: u32, unit: f64) -> u64 {
        let ceiling = self
            .min_ms
            .saturating_mul(1u64 << attempt.min(32))
            .min(self.max_ms)
            .max(self.min_ms);
        let floor = ceiling / 2;
        floor + ((ceiling - floor) as f64 * unit.clamp(0.0, 1.0)) as u64
    }

    /// The delay before retry `attempt`, jittered at random.
    pub fn delay(&self, attempt: u32) -> Duration {
        Duration::from_millis(self.delay_ms_at(attempt, rand::random::<f64>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        min_ms: 20,
        max_ms: 1000,
    };

    #[test]
    fn delays_double_within_half_and_all_of_their_ceiling_up_to_the_cap() {
        for (attempt, ceiling) in [(0, 20), (1, 40), (2, 80), (5, 640), (6, 1000), (40, 1000)] {
            assert_eq!(BACKOFF.delay_ms_at(attempt, 0.0), ceiling / 2, "{attempt}");
            assert_eq!(BACKOFF.delay_ms_at(attempt, 1.0), ceiling, "{attempt}");
            let middle = BACKOFF.delay_ms_at(attempt, 0.5);
            assert!(
                ceiling / 2 <= middle && middle <= ceiling,
                "{attempt}: {middle}"
            );
        }
    }

    #[test]
    fn no_attempt_overflows_and_units_outside_the_window_are_clamped() {
        let huge = Backoff {
            min_ms: u64::MAX / 2,
            max_ms: u64::MAX,
        };
        assert!(huge.delay_ms_at(u32::MAX, 1.0) >= u64::MAX / 4);
        assert_eq!(BACKOFF.delay_ms_at(u32::MAX, 7.0), 1000);
        assert_eq!(BACKOFF.delay_ms_at(3, -1.0), 80);
    }

    #[test]
    fn random_delays_spread_over_the_window() {
        let delays: std::collections::BTreeSet<u128> =
            (0..200).map(|_| BACKOFF.delay(6).as_millis()).collect();
        assert!(
            delays.iter().all(|d| (500..=1000).contains(d)),
            "{delays:?}"
        );
        assert!(
            delays.len() > 20,
            "jittered: {} distinct delays",
            delays.len()
        );
    }
}
