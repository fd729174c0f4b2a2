//! A sequence of peer actions driven through the stream and flow-control
//! rules: no sequence may panic, and the receiver may never hold more than
//! its current window nor leak budget, whatever the peer claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

use proto::{RecvBudget, RecvWindow, SendWindow, StreamIds, StreamState};

fuzz_target!(|data: &[u8]| {
    let budget = RecvBudget::new(4096);
    let mut now = Instant::now();
    let mut rx = RecvWindow::new(1024, 4096, now);
    let mut tx = SendWindow::new(1024);
    let mut state = StreamState::new();
    let mut ids = StreamIds::new();
    for chunk in data.chunks(3) {
        let (op, a, b) = (chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0));
        let n = u64::from(u16::from_be_bytes([a, b]));
        match op % 7 {
            0 => {
                if state.on_data().is_ok() {
                    let _ = rx.on_data(n);
                }
            }
            1 => {
                // The gap since the last report decides growth or shrinking.
                now += Duration::from_micros(u64::from(a) * 100);
                let _ = rx.on_consumed(n, now, Duration::from_millis(1), &budget);
            }
            2 => {
                let _ = tx.on_window_update(n);
            }
            3 => {
                let _ = tx.record_sent(n.min(tx.available()));
            }
            4 => {
                let _ = state.on_fin();
            }
            5 => state.on_reset(),
            _ => {
                let _ = ids.accept(u32::from(u16::from_be_bytes([a, b])));
            }
        }
        assert!(rx.buffered() <= u64::from(rx.window()));
        assert_eq!(budget.left() + rx.borrowed(), 4096);
    }
});
