//! Rate limiting of `limit_hit` events: a storm of refusals yields one
//! event per subject per interval, and the next one counts what was held
//! back. The time is passed in, so tests need no clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Subjects tracked at once; a flood of distinct subjects cannot grow the
/// table beyond this (new ones are held back until old ones expire).
const MAX_SUBJECTS: usize = 4096;

#[derive(Debug)]
struct Slot {
    last: Instant,
    held_back: u64,
}

/// When each subject last produced an event.
#[derive(Debug)]
pub(super) struct RateGate {
    interval: Duration,
    slots: HashMap<String, Slot>,
}

impl RateGate {
    pub(super) fn new(interval: Duration) -> Self {
        Self { interval, slots: HashMap::new() }
    }

    /// Whether `key` may produce an event at `now`: `Some(n)` with the
    /// number of hits held back since its last event, or `None` (this hit
    /// is counted and held back).
    pub(super) fn admit(&mut self, key: &str, now: Instant) -> Option<u64> {
        if let Some(slot) = self.slots.get_mut(key) {
            if now.saturating_duration_since(slot.last) < self.interval {
                slot.held_back = slot.held_back.saturating_add(1);
                return None;
            }
            let held_back = std::mem::take(&mut slot.held_back);
            slot.last = now;
            return Some(held_back);
        }
        if self.slots.len() >= MAX_SUBJECTS {
            let interval = self.interval;
            self.slots.retain(|_, s| now.saturating_duration_since(s.last) < interval);
            if self.slots.len() >= MAX_SUBJECTS {
                return None;
            }
        }
        self.slots.insert(key.to_owned(), Slot { last: now, held_back: 0 });
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_subject_per_interval_counting_the_rest() {
        let mut gate = RateGate::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(gate.admit("mapping/web", t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(gate.admit("mapping/web", t0 + Duration::from_millis(i)), None);
        }
        // Another subject is not held back by the first.
        assert_eq!(gate.admit("edge/site-a", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(gate.admit("mapping/web", t0 + Duration::from_secs(59)), None);
        assert_eq!(gate.admit("mapping/web", t0 + Duration::from_secs(60)), Some(1001));
        assert_eq!(gate.admit("mapping/web", t0 + Duration::from_secs(61)), None);
        assert_eq!(gate.admit("mapping/web", t0 + Duration::from_secs(120)), Some(1));
    }

    #[test]
    fn distinct_subjects_are_bounded() {
        let mut gate = RateGate::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_SUBJECTS {
            assert_eq!(gate.admit(&format!("s{i}"), t0), Some(0));
        }
        assert_eq!(gate.admit("one-too-many", t0), None);
        assert_eq!(gate.slots.len(), MAX_SUBJECTS);
        // Once the old ones expire there is room again.
        assert_eq!(gate.admit("one-too-many", t0 + Duration::from_secs(60)), Some(0));
        assert_eq!(gate.slots.len(), 1);
    }
}
