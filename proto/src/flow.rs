//! Per-stream credit flow control, in cumulative byte offsets, with receive
//! windows that grow for streams that need them, out of a per-tunnel budget.
//!
//! The receiver of each direction of each stream grants a *limit*: the
//! total number of bytes the sender may have sent on the stream. It starts
//! at the window granted when the stream opens and only ever rises: as the
//! receiver consumes data (writes it on to its TCP socket) it reports a new
//! limit, `consumed + window`. Because limits are offsets rather than
//! deltas, a duplicated report can never inflate the credit (and one that
//! goes back is refused).
//!
//! A receiver never holds more than its current window per stream, so a slow
//! reader stalls its own stream and nothing else. Windows start small
//! ([`INITIAL_STREAM_WINDOW`]) and are tuned at each report:
//! - a stream whose window was the bottleneck (half of it consumed within
//!   two round trips of the previous report) doubles it, up to the
//!   configured maximum, if the tunnel's [`RecvBudget`] can pay for the
//!   growth;
//! - a stream that took much longer than that halves it again, back towards
//!   the initial window, and returns the difference to the budget.
//!
//! So what one tunnel can make its receiver hold is bounded by
//! `streams x initial window + budget`, not `streams x maximum window`,
//! while a bulk transfer still reaches the full window within a few hundred
//! KiB.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Window every stream starts with (or the configured maximum, if smaller).
pub const INITIAL_STREAM_WINDOW: u32 = 64 * 1024;

/// Round-trip time assumed while none is measured, and the least one used:
/// scheduling noise on a fast path must not decide the tuning.
const MIN_RTT: Duration = Duration::from_millis(1);

/// A broken flow-control rule. Coming from the peer, it is a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The peer sent more than its limit allowed.
    #[error("peer sent {received} bytes but only {allowed} were allowed")]
    WindowExceeded { received: u64, allowed: u64 },
    /// The peer's limit went backwards.
    #[error("peer's limit went back from {previous} to {limit}")]
    LimitRegressed { previous: u64, limit: u64 },
    /// The peer granted more than any window can be (windows are `u32`).
    #[error("peer's limit {limit} is more than a window beyond the {sent} bytes sent")]
    LimitTooFar { limit: u64, sent: u64 },
}

/// The sending half's view: how much more may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    limit: u64,
    sent: u64,
}

impl SendWindow {
    /// A fresh stream whose peer granted `window` bytes.
    pub fn new(window: u32) -> Self {
        Self { limit: u64::from(window), sent: 0 }
    }

    /// Bytes that may be sent now.
    pub fn available(&self) -> u64 {
        self.limit.saturating_sub(self.sent)
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
            return Err(FlowError::WindowExceeded { received: self.sent + n, allowed: self.limit });
        }
        self.sent += n;
        Ok(())
    }

    /// Applies the window the peer granted when it accepted the stream (the
    /// cloud's `OpenResult.window`): the limit becomes at least `window`. A
    /// `Window` that arrived first (in the same message) is kept, never
    /// replaced by the smaller initial grant.
    pub fn grant_initial(&mut self, window: u32) {
        self.limit = self.limit.max(u64::from(window));
    }

    /// Applies the peer's new limit. Returns whether credit grew (so a
    /// sender waiting for credit should be woken).
    ///
    /// # Errors
    /// If the limit is lower than an earlier one, or further beyond what was
    /// sent than a `u32` window can reach.
    pub fn on_window_update(&mut self, limit: u64) -> Result<bool, FlowError> {
        if limit < self.limit {
            return Err(FlowError::LimitRegressed { previous: self.limit, limit });
        }
        if limit - self.sent > u64::from(u32::MAX) {
            return Err(FlowError::LimitTooFar { limit, sent: self.sent });
        }
        let grew = limit > self.limit;
        self.limit = limit;
        Ok(grew)
    }
}

/// Bytes a tunnel's streams may add to their receive windows beyond the
/// initial window. Shared by the streams of one tunnel.
#[derive(Debug)]
pub struct RecvBudget {
    total: u64,
    left: AtomicU64,
    /// Times a window could not grow because too little was left.
    refused: AtomicU64,
}

impl RecvBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Self { total: bytes, left: AtomicU64::new(bytes), refused: AtomicU64::new(0) }
    }

    /// The whole budget.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes not yet taken.
    pub fn left(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }

    /// How many times [`take`](Self::take) found too little left: windows
    /// that would have grown and did not.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if that many are left.
    pub fn take(&self, bytes: u64) -> bool {
        let taken = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(bytes))
            .is_ok();
        if !taken {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Returns `bytes` taken earlier.
    pub fn give_back(&self, bytes: u64) {
        let before = self.left.fetch_add(bytes, Ordering::Relaxed);
        debug_assert!(before + bytes <= self.total, "budget repaid more than was taken");
    }
}

/// The receiving half's view: what the peer may still send, when to grant
/// more, and how large the window should be. Not `Clone`: it owes the
/// tunnel's budget what its window borrowed.
#[derive(Debug)]
pub struct RecvWindow {
    initial: u32,
    max: u32,
    window: u32,
    received: u64,
    consumed: u64,
    /// Consumed offset at the last report.
    advertised: u64,
    /// Limit granted to the peer.
    limit: u64,
    last_report: Instant,
    /// The peer sent its FIN: no more data will come.
    finished: bool,
}

impl RecvWindow {
    /// A fresh stream granting the peer `initial` bytes, whose window may
    /// grow up to `max` (not below `initial`). `now` starts the tuning clock.
    pub fn new(initial: u32, max: u32, now: Instant) -> Self {
        let max = max.max(initial);
        Self {
            initial,
            max,
            window: initial,
            received: 0,
            consumed: 0,
            advertised: 0,
            limit: u64::from(initial),
            last_report: now,
            finished: false,
        }
    }

    /// Bytes received but not yet consumed: at most the window.
    pub fn buffered(&self) -> u64 {
        self.received - self.consumed
    }

    /// The current window.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Bytes of the window taken from the tunnel's budget; give them back
    /// with [`RecvBudget::give_back`] when the stream ends.
    pub fn borrowed(&self) -> u64 {
        u64::from(self.window - self.initial)
    }

    /// Checks and records `n` bytes arriving from the peer.
    ///
    /// # Errors
    /// [`FlowError::WindowExceeded`] if the peer overran its credit.
    pub fn on_data(&mut self, n: u64) -> Result<(), FlowError> {
        let received = self.received.saturating_add(n);
        if received > self.limit {
            return Err(FlowError::WindowExceeded { received, allowed: self.limit });
        }
        self.received = received;
        Ok(())
    }

    /// Records the peer's FIN. No more data can arrive, so once what was
    /// received is consumed the window's growth goes back to the budget
    /// instead of waiting for the whole stream to end.
    pub fn on_fin(&mut self, budget: &RecvBudget) {
        self.finished = true;
        self.repay_if_drained(budget);
    }

    fn repay_if_drained(&mut self, budget: &RecvBudget) {
        if self.finished && self.buffered() == 0 && self.window > self.initial {
            budget.give_back(self.borrowed());
            self.window = self.initial;
        }
    }

    /// Records `n` bytes consumed locally at `now`. Once at least half the
    /// window has been consumed since the last report (frequent enough to
    /// keep the sender busy, rare enough to cost one small frame per half
    /// window), tunes the window (see the module docs; `rtt` is the
    /// tunnel's latest round trip, zero if unknown; a peer that delays its
    /// pongs only makes growth easier, which the budget still bounds) and
    /// returns the new limit to report. None after the peer's FIN: it needs
    /// no more credit.
    pub fn on_consumed(
        &mut self,
        n: u64,
        now: Instant,
        rtt: Duration,
        budget: &RecvBudget,
    ) -> Option<u64> {
        self.consumed = self.consumed.saturating_add(n).min(self.received);
        self.repay_if_drained(budget);
        if self.finished {
            return None;
        }
        if self.consumed - self.advertised < u64::from(self.window / 2).max(1) {
            return None;
        }
        let since_last = now.saturating_duration_since(self.last_report);
        let rtt = rtt.max(MIN_RTT);
        if since_last < 2 * rtt && self.window < self.max {
            let grown = self.window.saturating_mul(2).min(self.max);
            if budget.take(u64::from(grown - self.window)) {
                self.window = grown;
            }
        } else if since_last > 16 * rtt && self.window > self.initial {
            // Half the window (rounded up) is never below what is still
            // outstanding, so the limit cannot go back.
            let shrunk = (self.window - self.window / 2).max(self.initial);
            budget.give_back(u64::from(self.window - shrunk));
            self.window = shrunk;
        }
        self.advertised = self.consumed;
        self.last_report = now;
        self.limit = self.limit.max(self.consumed + u64::from(self.window));
        Some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(10);

    #[test]
    fn an_initial_grant_never_lowers_a_limit_that_arrived_first() {
        // OpenResult and a Window in one message: the Window is applied
        // before the OpenResult's window (issue 17, bug 1).
        let mut send = SendWindow::new(0);
        assert_eq!(send.on_window_update(200_000), Ok(true));
        send.grant_initial(65_536);
        assert_eq!(send.available(), 200_000);
        let mut fresh = SendWindow::new(0);
        fresh.grant_initial(65_536);
        assert_eq!(fresh.available(), 65_536);
    }

    #[test]
    fn sender_stops_at_limit_and_resumes_on_update() {
        let mut tx = SendWindow::new(100);
        assert_eq!(tx.available(), 100);
        tx.record_sent(60).unwrap();
        tx.record_sent(40).unwrap();
        assert_eq!(tx.available(), 0);
        assert!(tx.record_sent(1).is_err());
        assert_eq!(tx.on_window_update(150), Ok(true));
        assert_eq!(tx.available(), 50);
        // A duplicate report changes nothing.
        assert_eq!(tx.on_window_update(150), Ok(false));
        assert_eq!(tx.available(), 50);
    }

    #[test]
    fn sender_rejects_impossible_updates() {
        let mut tx = SendWindow::new(100);
        tx.record_sent(10).unwrap();
        assert!(matches!(tx.on_window_update(99), Err(FlowError::LimitRegressed { .. })));
        assert!(matches!(tx.on_window_update(u64::MAX), Err(FlowError::LimitTooFar { .. })));
        assert_eq!(tx.on_window_update(10 + u64::from(u32::MAX)), Ok(true));
    }

    #[test]
    fn receiver_rejects_overrun() {
        let budget = RecvBudget::new(0);
        let mut rx = RecvWindow::new(100, 100, Instant::now());
        rx.on_data(100).unwrap();
        assert!(matches!(rx.on_data(1), Err(FlowError::WindowExceeded { .. })));
        assert!(rx.on_data(u64::MAX).is_err());
        assert_eq!(rx.buffered(), 100);
        assert_eq!(rx.on_consumed(100, Instant::now(), RTT, &budget), Some(200));
    }

    #[test]
    fn receiver_reports_after_half_a_window() {
        let budget = RecvBudget::new(0);
        let t = Instant::now();
        let mut rx = RecvWindow::new(100, 100, t);
        rx.on_data(100).unwrap();
        assert_eq!(rx.on_consumed(30, t, RTT, &budget), None);
        assert_eq!(rx.on_consumed(20, t, RTT, &budget), Some(150));
        assert_eq!(rx.on_consumed(49, t, RTT, &budget), None);
        assert_eq!(rx.on_consumed(1, t, RTT, &budget), Some(200));
        // The peer may now send a full window again.
        rx.on_data(100).unwrap();
        assert!(rx.on_data(1).is_err());
    }

    #[test]
    fn a_window_that_is_the_bottleneck_doubles_up_to_the_max() {
        let budget = RecvBudget::new(1000);
        let t = Instant::now();
        let mut rx = RecvWindow::new(100, 400, t);
        rx.on_data(100).unwrap();
        // Half the window consumed within two round trips: grow.
        assert_eq!(rx.on_consumed(50, t + RTT, RTT, &budget), Some(50 + 200));
        assert_eq!((rx.window(), rx.borrowed(), budget.left()), (200, 100, 900));
        rx.on_data(150).unwrap();
        assert_eq!(rx.on_consumed(200, t + 2 * RTT, RTT, &budget), Some(250 + 400));
        rx.on_data(400).unwrap();
        assert_eq!(rx.on_consumed(400, t + 3 * RTT, RTT, &budget), Some(650 + 400));
        assert_eq!((rx.window(), budget.left()), (400, 700));
    }

    #[test]
    fn growth_stops_when_the_tunnel_budget_is_spent() {
        let budget = RecvBudget::new(150);
        let t = Instant::now();
        let mut a = RecvWindow::new(100, 1000, t);
        let mut b = RecvWindow::new(100, 1000, t);
        a.on_data(100).unwrap();
        b.on_data(100).unwrap();
        a.on_consumed(100, t, RTT, &budget).unwrap();
        assert_eq!((a.window(), budget.left()), (200, 50));
        // b would need 100 more; only 50 are left, so it keeps its window.
        assert_eq!(b.on_consumed(100, t, RTT, &budget), Some(200));
        assert_eq!((b.window(), budget.refused()), (100, 1));
        budget.give_back(a.borrowed());
        assert_eq!(budget.left(), 150);
    }

    #[test]
    fn a_slow_stream_shrinks_back_and_returns_the_budget() {
        let budget = RecvBudget::new(1000);
        let t = Instant::now();
        let mut rx = RecvWindow::new(100, 800, t);
        let mut now = t;
        // Grow to 800 with fast reports.
        while rx.window() < 800 {
            rx.on_data(rx.limit - rx.received).unwrap();
            rx.on_consumed(rx.buffered(), now, RTT, &budget).unwrap();
        }
        assert_eq!(budget.left(), 300);
        // Then slow ones: each halves the window; the limit never goes back.
        let mut limit = rx.limit;
        for expected in [400, 200, 100, 100] {
            now += Duration::from_secs(1);
            let half = u64::from(rx.window() / 2);
            rx.on_data(half).unwrap();
            let new_limit = rx.on_consumed(half, now, RTT, &budget).unwrap();
            assert!(new_limit >= limit);
            limit = new_limit;
            assert_eq!(rx.window(), expected);
        }
        assert_eq!(budget.left(), 1000);
    }

    #[test]
    fn growth_is_repaid_once_a_finished_stream_is_drained() {
        let budget = RecvBudget::new(1000);
        let t = Instant::now();
        let mut rx = RecvWindow::new(100, 400, t);
        rx.on_data(100).unwrap();
        rx.on_consumed(100, t, RTT, &budget).unwrap();
        rx.on_data(150).unwrap();
        assert_eq!((rx.window(), budget.left()), (200, 900));
        // FIN with 150 bytes still buffered: the window stays until they go.
        rx.on_fin(&budget);
        assert_eq!(budget.left(), 900);
        assert_eq!(rx.on_consumed(150, t, RTT, &budget), None);
        assert_eq!((rx.window(), rx.borrowed(), budget.left()), (100, 0, 1000));
    }

    #[test]
    fn a_pair_moves_any_amount_without_violations() {
        // Drive sender and receiver together with odd chunk sizes and
        // alternating fast and slow reports: every update the receiver
        // emits must be accepted by the sender, and the receiver's buffer
        // must never exceed its window.
        let budget = RecvBudget::new(5000);
        let t = Instant::now();
        let mut tx = SendWindow::new(1000);
        let mut rx = RecvWindow::new(1000, 8000, t);
        let (mut total, mut step, mut now) = (0u64, 0u32, t);
        while total < 1_000_000 {
            step += 1;
            now += if step % 50 == 0 { Duration::from_secs(1) } else { Duration::from_micros(100) };
            let n = tx.available().min(337);
            if n > 0 {
                tx.record_sent(n).unwrap();
                rx.on_data(n).unwrap();
                total += n;
            }
            assert!(rx.buffered() <= u64::from(rx.window()));
            if let Some(limit) = rx.on_consumed(rx.buffered().min(211), now, RTT, &budget) {
                tx.on_window_update(limit).unwrap();
            }
            assert_eq!(budget.left() + rx.borrowed(), 5000);
        }
    }
}
