//! Redial delays: capped exponential growth with jitter.
//!
//! Each delay is drawn uniformly from `[d/2, d]`, where `d` doubles from the
//! initial delay up to the cap. Keeping half of `d` as a floor stops a
//! fast retry loop; drawing the rest at random spreads the redials of many
//! edges that lost the same cloud at the same moment.

use std::time::Duration;

/// The retry schedule of one tunnel slot.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A schedule starting at `initial` and never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self { initial, max: max.max(initial), current: initial }
    }

    /// The next delay, given a random draw `unit` in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_stays_within_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for ceiling in ceilings {
            let ceiling = Duration::from_millis(ceiling);
            let mut probe = b.clone();
            assert_eq!(probe.next_delay(0.0), ceiling / 2);
            let mut probe = b.clone();
            assert_eq!(probe.next_delay(1.0), ceiling);
            let d = b.next_delay(0.5);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            b.next_delay(1.0);
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..10 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            distinct.insert(b.next_delay(f64::from(i) / 10.0));
        }
        assert_eq!(distinct.len(), 10);
    }
}
