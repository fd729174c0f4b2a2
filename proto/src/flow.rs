//! Per-stream credit flow control, in cumulative byte offsets.
//!
//! Each direction of each stream has a receive window `W` (fixed when the
//! stream opens). The receiver reports how many bytes it has *consumed* in
//! total (written on to its TCP socket); the sender may have sent at most
//! `consumed + W` bytes. Because reports are offsets rather than deltas, a
//! lost, duplicated or reordered report can never inflate the credit, and a
//! stream could later resume elsewhere from the last acknowledged offset.
//!
//! A receiver therefore never buffers more than `W` bytes per stream: a slow
//! reader stalls its own stream and nothing else.

use thiserror::Error;

/// A broken flow-control rule. Coming from the peer, it is a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The peer sent more than the window allowed.
    #[error("peer sent {received} bytes but only {allowed} were allowed")]
    WindowExceeded { received: u64, allowed: u64 },
    /// The peer reported consuming bytes that were never sent.
    #[error("peer reports {consumed} bytes consumed but only {sent} were sent")]
    ConsumedBeyondSent { consumed: u64, sent: u64 },
    /// The peer's consumed offset went backwards.
    #[error("peer's consumed offset went back from {previous} to {consumed}")]
    ConsumedRegressed { previous: u64, consumed: u64 },
}

/// The sending half's view: how much more may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    window: u32,
    sent: u64,
    peer_consumed: u64,
}

impl SendWindow {
    /// A fresh stream whose peer granted `window` bytes.
    pub fn new(window: u32) -> Self {
        Self { window, sent: 0, peer_consumed: 0 }
    }

    /// Bytes that may be sent now.
    pub fn available(&self) -> u64 {
        (self.peer_consumed + u64::from(self.window)).saturating_sub(self.sent)
    }

    /// Total bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Records `n` bytes handed to the tunnel. Callers must not exceed
    /// [`available`](Self::available); doing so is a local bug.
    ///
    /// # Errors
    /// [`FlowError::WindowExceeded`] if `n` is more than is available.
    pub fn record_sent(&mut self, n: u64) -> Result<(), FlowError> {
        if n > self.available() {
            return Err(FlowError::WindowExceeded {
                received: self.sent + n,
                allowed: self.peer_consumed + u64::from(self.window),
            });
        }
        self.sent += n;
        Ok(())
    }

    /// Applies the peer's cumulative consumed offset. Returns whether credit
    /// grew (so a sender waiting for credit should be woken).
    ///
    /// # Errors
    /// If the offset is beyond what was sent or lower than an earlier one.
    pub fn on_window_update(&mut self, consumed: u64) -> Result<bool, FlowError> {
        if consumed > self.sent {
            return Err(FlowError::ConsumedBeyondSent { consumed, sent: self.sent });
        }
        if consumed < self.peer_consumed {
            return Err(FlowError::ConsumedRegressed { previous: self.peer_consumed, consumed });
        }
        let grew = consumed > self.peer_consumed;
        self.peer_consumed = consumed;
        Ok(grew)
    }
}

/// The receiving half's view: what the peer may still send, and when to
/// tell it that more was consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow {
    window: u32,
    received: u64,
    consumed: u64,
    advertised: u64,
}

impl RecvWindow {
    /// A fresh stream granting the peer `window` bytes.
    pub fn new(window: u32) -> Self {
        Self { window, received: 0, consumed: 0, advertised: 0 }
    }

    /// Bytes received but not yet consumed: at most the window.
    pub fn buffered(&self) -> u64 {
        self.received - self.consumed
    }

    /// Checks and records `n` bytes arriving from the peer.
    ///
    /// # Errors
    /// [`FlowError::WindowExceeded`] if the peer overran its credit.
    pub fn on_data(&mut self, n: u64) -> Result<(), FlowError> {
        let allowed = self.advertised + u64::from(self.window);
        let received = self.received.saturating_add(n);
        if received > allowed {
            return Err(FlowError::WindowExceeded { received, allowed });
        }
        self.received = received;
        Ok(())
    }

    /// Records `n` bytes consumed locally. Returns the offset to report in a
    /// window update once at least half the window has been consumed since
    /// the last report: frequent enough to keep the sender busy, rare enough
    /// to cost one small frame per half window.
    pub fn on_consumed(&mut self, n: u64) -> Option<u64> {
        self.consumed = (self.consumed + n).min(self.received);
        if self.consumed - self.advertised >= u64::from(self.window / 2).max(1) {
            self.advertised = self.consumed;
            Some(self.consumed)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_stops_at_window_and_resumes_on_update() {
        let mut tx = SendWindow::new(100);
        assert_eq!(tx.available(), 100);
        tx.record_sent(60).unwrap();
        tx.record_sent(40).unwrap();
        assert_eq!(tx.available(), 0);
        assert!(tx.record_sent(1).is_err());
        assert_eq!(tx.on_window_update(50), Ok(true));
        assert_eq!(tx.available(), 50);
        // A duplicate report changes nothing.
        assert_eq!(tx.on_window_update(50), Ok(false));
        assert_eq!(tx.available(), 50);
    }

    #[test]
    fn sender_rejects_impossible_updates() {
        let mut tx = SendWindow::new(100);
        tx.record_sent(10).unwrap();
        assert!(matches!(tx.on_window_update(11), Err(FlowError::ConsumedBeyondSent { .. })));
        tx.on_window_update(10).unwrap();
        assert!(matches!(tx.on_window_update(5), Err(FlowError::ConsumedRegressed { .. })));
        assert!(tx.on_window_update(u64::MAX).is_err());
    }

    #[test]
    fn receiver_rejects_overrun() {
        let mut rx = RecvWindow::new(100);
        rx.on_data(100).unwrap();
        assert!(matches!(rx.on_data(1), Err(FlowError::WindowExceeded { .. })));
        assert!(rx.on_data(u64::MAX).is_err());
        assert_eq!(rx.buffered(), 100);
    }

    #[test]
    fn receiver_reports_after_half_a_window() {
        let mut rx = RecvWindow::new(100);
        rx.on_data(100).unwrap();
        assert_eq!(rx.on_consumed(30), None);
        assert_eq!(rx.on_consumed(20), Some(50));
        assert_eq!(rx.on_consumed(49), None);
        assert_eq!(rx.on_consumed(1), Some(100));
        // The peer may now send a full window again.
        rx.on_data(100).unwrap();
        assert!(rx.on_data(1).is_err());
    }

    #[test]
    fn a_pair_moves_any_amount_without_violations() {
        // Drive sender and receiver together with odd chunk sizes: every
        // update the receiver emits must be accepted by the sender, and the
        // receiver's buffer must never exceed the window.
        let mut tx = SendWindow::new(1000);
        let mut rx = RecvWindow::new(1000);
        let mut total = 0u64;
        while total < 1_000_000 {
            let n = tx.available().min(337);
            if n > 0 {
                tx.record_sent(n).unwrap();
                rx.on_data(n).unwrap();
                total += n;
            }
            assert!(rx.buffered() <= 1000);
            if let Some(consumed) = rx.on_consumed(rx.buffered().min(211)) {
                tx.on_window_update(consumed).unwrap();
            }
        }
    }
}
