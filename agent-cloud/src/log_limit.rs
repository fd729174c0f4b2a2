//! Bounded logging of events that anyone on the network can repeat.
//!
//! A refused handshake or a client outside a mapping's allowlist is worth a
//! log line, but a scan makes thousands a second, and one line each would
//! fill the disk. A [`LogLimit`] lets [`LINES_PER_INTERVAL`] lines through
//! per [`INTERVAL`] and counts the rest; the count is logged as one line
//! when the next interval begins (at the next event or at the next
//! [`flush`](LogLimit::flush), which the owner calls on a timer), so every
//! event is accounted for. Each check is O(1) and the state is a few
//! integers, whatever the number of sources.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

/// Lines logged per interval by one limit.
pub(crate) const LINES_PER_INTERVAL: u32 = 10;
/// The interval [`LINES_PER_INTERVAL`] applies to.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// How often owners call [`LogLimit::flush`]: a summary comes at most this
/// long after its interval ends.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Window {
    /// When the current interval began (at its first event).
    started: Option<Instant>,
    logged: u32,
    /// Events not logged since the last summary.
    suppressed: u64,
}

/// One kind of repeatable event; see the module docs.
#[derive(Debug)]
pub(crate) struct LogLimit {
    /// What the events are, for the summary line ("refused handshakes").
    what: String,
    window: Mutex<Window>,
}

impl LogLimit {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self { what: what.into(), window: Mutex::new(Window::default()) }
    }

    /// Whether this event may be logged; if not, it is counted.
    pub(crate) fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    /// Logs how many events were not logged, once their interval is over.
    pub(crate) fn flush(&self) {
        self.flush_at(Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut w = self.lock();
        if w.started.is_none_or(|t| now.duration_since(t) >= INTERVAL) {
            self.summarise(&mut w);
            w.started = Some(now);
            w.logged = 0;
        }
        if w.logged < LINES_PER_INTERVAL {
            w.logged += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    fn flush_at(&self, now: Instant) {
        let mut w = self.lock();
        if w.started.is_some_and(|t| now.duration_since(t) >= INTERVAL) {
            self.summarise(&mut w);
        }
    }

    fn summarise(&self, w: &mut Window) {
        if w.suppressed > 0 {
            warn!(
                suppressed = w.suppressed,
                "{}: {} more not logged (at most {LINES_PER_INTERVAL} lines per {INTERVAL:?})",
                self.what,
                w.suppressed
            );
            w.suppressed = 0;
        }
    }

    #[cfg(test)]
    fn suppressed(&self) -> u64 {
        self.lock().suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_a_bounded_number_of_lines_and_counts_the_rest() {
        let limit = LogLimit::new("test events");
        let t0 = Instant::now();
        let logged = (0..10_000).filter(|_| limit.allow_at(t0)).count();
        assert_eq!(logged, LINES_PER_INTERVAL as usize);
        assert_eq!(limit.suppressed(), 10_000 - u64::from(LINES_PER_INTERVAL));
        // Before the interval is over nothing is summarised.
        limit.flush_at(t0 + INTERVAL / 2);
        assert_eq!(limit.suppressed(), 10_000 - u64::from(LINES_PER_INTERVAL));
        // After it, the count is logged once and the next lines get through.
        limit.flush_at(t0 + INTERVAL);
        assert_eq!(limit.suppressed(), 0);
        assert!(limit.allow_at(t0 + INTERVAL));
    }

    #[test]
    fn the_next_interval_starts_with_a_summary_and_a_fresh_budget() {
        let limit = LogLimit::new("test events");
        let t0 = Instant::now();
        for _ in 0..(LINES_PER_INTERVAL + 5) {
            limit.allow_at(t0);
        }
        assert_eq!(limit.suppressed(), 5);
        let later = t0 + INTERVAL + Duration::from_millis(1);
        let logged = (0..100).filter(|_| limit.allow_at(later)).count();
        assert_eq!(logged, LINES_PER_INTERVAL as usize);
        assert_eq!(
            limit.suppressed(),
            100 - u64::from(LINES_PER_INTERVAL),
            "the 5 were summarised"
        );
    }
}
