//! The events the TUI holds for its events view: the newest
//! [`MAX_HELD`], fetched by the poller, and where the view is scrolled.

use std::collections::VecDeque;

use api::Event;

/// Events held; older ones are dropped as new ones arrive.
pub(crate) const MAX_HELD: usize = 500;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EventFeed {
    /// Oldest first.
    events: VecDeque<Event>,
    /// How many of the newest events are scrolled past (0: the newest is
    /// on top).
    pub(crate) scroll: usize,
}

impl EventFeed {
    /// Takes events newer than those held; a view scrolled down stays on
    /// the same events.
    pub(crate) fn add(&mut self, new: Vec<Event>) {
        for event in new {
            if self.events.back().is_some_and(|last| event.seq <= last.seq) {
                continue;
            }
            if self.events.len() == MAX_HELD {
                self.events.pop_front();
            }
            self.events.push_back(event);
            if self.scroll > 0 {
                self.scroll += 1;
            }
        }
        self.scroll = self.scroll.min(self.events.len().saturating_sub(1));
    }

    /// Newest first, from the scroll position.
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().rev().skip(self.scroll)
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Scrolls `delta` events toward older (positive) or newer ones.
    pub(crate) fn scroll_by(&mut self, delta: isize) {
        let max = self.events.len().saturating_sub(1);
        self.scroll = self.scroll.saturating_add_signed(delta).min(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            at_unix_ms: seq,
            kind: api::EventKind::TunnelUp,
            subject: "e".into(),
            text: String::new(),
            node: None,
        }
    }

    fn top(feed: &EventFeed) -> Option<u64> {
        feed.newest_first().next().map(|e| e.seq)
    }

    #[test]
    fn holds_the_newest_and_a_scrolled_view_stays_put() {
        let mut feed = EventFeed::default();
        feed.add((1..=10).map(event).collect());
        feed.add(vec![event(5), event(10)]); // seen already
        assert_eq!((feed.len(), top(&feed)), (10, Some(10)));
        feed.scroll_by(3);
        assert_eq!(top(&feed), Some(7));
        feed.add(vec![event(11), event(12)]);
        assert_eq!(top(&feed), Some(7), "new events do not move what is being read");
        feed.scroll_by(-100);
        assert_eq!(top(&feed), Some(12));
        feed.scroll_by(100);
        assert_eq!(top(&feed), Some(1));
        feed.add((13..=13 + MAX_HELD as u64).map(event).collect());
        assert_eq!(feed.len(), MAX_HELD);
        assert_eq!(feed.newest_first().last().map(|e| e.seq), Some(14), "the oldest dropped");
    }
}
