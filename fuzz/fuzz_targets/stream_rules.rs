//! A sequence of peer actions driven through the stream and flow-control
//! rules: no sequence may panic, and the receiver may never hold more than
//! its window, whatever the peer claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{RecvWindow, SendWindow, StreamIds, StreamState};

fuzz_target!(|data: &[u8]| {
    let window = 1024;
    let mut rx = RecvWindow::new(window);
    let mut tx = SendWindow::new(window);
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
                let _ = rx.on_consumed(n);
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
        assert!(rx.buffered() <= u64::from(window));
    }
});
