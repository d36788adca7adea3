//! Reconnect delays: exponential with full jitter above a floor, so clients that a server restart disconnected
//! together do not come back together — not even once they all reached the cap.

use rand::Rng;
use std::time::Duration;

/// The reconnect schedule (see `docs/protocol.md`, *Backoff*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The shortest delay, and the base of the exponential.
    pub min: Duration,
    /// The longest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { min: Duration::from_millis(500), cap: Duration::from_secs(20) }
    }
}

impl Backoff {
    /// The upper end of the jitter before attempt `attempt` (0, 1, 2, …): `min × 2^attempt`, at most
    /// `cap - min`.
    pub fn spread(&self, attempt: u32) -> Duration {
        let room = self.cap.saturating_sub(self.min);
        self.min.checked_mul(1u32 << attempt.min(20)).map_or(room, |d| d.min(room))
    }

    /// The delay before attempt `attempt`: `min + uniform[0, spread(attempt))`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let spread = self.spread(attempt).as_micros() as u64;
        let jitter = if spread == 0 { 0 } else { rng.random_range(0..spread) };
        self.min + Duration::from_micros(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_within_the_floor_and_the_cap() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..40 {
            let ceiling = b.min + b.spread(attempt);
            for _ in 0..500 {
                let d = b.delay(attempt, &mut rng);
                assert!(d >= b.min && d < ceiling.max(b.min + Duration::from_micros(1)), "{attempt}: {d:?}");
                assert!(d <= b.cap);
            }
        }
        assert_eq!(b.spread(0), Duration::from_millis(500));
        assert_eq!(b.spread(3), Duration::from_millis(4000));
        assert_eq!(b.spread(6), Duration::from_millis(19_500));
        assert_eq!(b.spread(1000), Duration::from_millis(19_500)); // no overflow
    }

    #[test]
    fn the_ceiling_grows_then_holds() {
        let b = Backoff::default();
        let spreads: Vec<_> = (0..12).map(|a| b.spread(a)).collect();
        assert!(spreads.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(spreads[11], b.cap - b.min);
    }

    #[test]
    fn jitter_does_not_collapse_at_the_cap() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut samples: Vec<f64> = (0..2000).map(|_| b.delay(30, &mut rng).as_secs_f64()).collect();
        samples.sort_by(f64::total_cmp);
        // Uniform over [0.5, 20): quartiles near 5.4, 10.25, 15.1 s; every 2-second bucket is used.
        let q = |p: f64| samples[(p * samples.len() as f64) as usize];
        assert!((4.4..6.4).contains(&q(0.25)), "{}", q(0.25));
        assert!((9.2..11.3).contains(&q(0.5)), "{}", q(0.5));
        assert!((14.1..16.1).contains(&q(0.75)), "{}", q(0.75));
        for bucket in 0..9 {
            let lo = 0.5 + 2.0 * bucket as f64;
            assert!(samples.iter().any(|&s| s >= lo && s < lo + 2.0), "no delay in [{lo}, {})", lo + 2.0);
        }
    }
}
