//! The last N events in memory, oldest first.

use std::collections::VecDeque;
use std::sync::Arc;

use api::Event;

/// A ring of at most `cap` events with increasing `seq`.
#[derive(Debug)]
pub(super) struct Ring {
    events: VecDeque<Arc<Event>>,
    cap: usize,
    /// The newest seq ever recorded (kept when the ring is empty).
    last_seq: u64,
}

impl Ring {
    pub(super) fn new(cap: usize) -> Self {
        Self { events: VecDeque::with_capacity(cap.min(1024)), cap: cap.max(1), last_seq: 0 }
    }

    /// Adds `event` (whose seq is greater than every held one), dropping
    /// the oldest when full.
    pub(super) fn push(&mut self, event: Arc<Event>) {
        if self.events.len() == self.cap {
            self.events.pop_front();
        }
        self.last_seq = self.last_seq.max(event.seq);
        self.events.push_back(event);
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub(super) fn oldest_seq(&self) -> Option<u64> {
        self.events.front().map(|e| e.seq)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    /// At most `limit` events with `seq > since`, oldest first.
    pub(super) fn since(&self, since: u64, limit: usize) -> Vec<Arc<Event>> {
        // Seqs increase along the ring: binary search for the first one.
        let start = self.events.partition_point(|e| e.seq <= since);
        self.events.range(start..).take(limit).cloned().collect()
    }

    /// Every held event, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.events.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            at_unix_ms: seq * 10,
            kind: api::EventKind::TunnelUp,
            subject: "e".into(),
            text: format!("event {seq}"),
            node: None,
        })
    }

    fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn keeps_the_last_cap_events_and_answers_since_with_a_limit() {
        let mut ring = Ring::new(3);
        assert_eq!((ring.oldest_seq(), ring.last_seq()), (None, 0));
        for seq in 1..=5 {
            ring.push(event(seq));
        }
        assert_eq!(ring.len(), 3);
        assert_eq!((ring.oldest_seq(), ring.last_seq()), (Some(3), 5));
        assert_eq!(seqs(&ring.since(0, 10)), [3, 4, 5]);
        assert_eq!(seqs(&ring.since(3, 10)), [4, 5]);
        assert_eq!(seqs(&ring.since(0, 2)), [3, 4]);
        assert!(ring.since(5, 10).is_empty());
        assert!(ring.since(99, 10).is_empty());
    }
}
