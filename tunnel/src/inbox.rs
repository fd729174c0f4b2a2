//! What one stream received and has not yet written to its socket.
//!
//! The receive window bounds the *bytes* a peer may make a stream hold; this
//! makes the *memory* they take follow the bytes, whatever the frame sizes.
//! A payload that arrives while the stream's reader is idle is handed over
//! as it came (a slice of the WebSocket read buffer, no copy): it is written
//! at once. One that must wait behind earlier data is copied into blocks of
//! [`BLOCK`] bytes, each filled before the next is started, so a flood of
//! 1-byte frames costs one byte each plus at most one partly filled block,
//! and no waiting payload pins a read buffer that holds other streams' data
//! (which can be 12 times its size).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Size of the blocks that waiting data is copied into. A stream holds at
/// most one partly filled block beyond its data.
pub(crate) const BLOCK: usize = 16 * 1024;

/// Received data in order, then perhaps the peer's FIN.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    chunks: VecDeque<Bytes>,
    /// The block being filled; its bytes come after `chunks`.
    tail: BytesMut,
    /// The peer's FIN arrived (after everything in the queue).
    fin: bool,
    /// The FIN was handed to the reader.
    fin_taken: bool,
}

impl Inbox {
    /// Queues `payload`. `waits` says whether it must wait behind data that
    /// is not yet written (then it is copied, see the module docs).
    pub(crate) fn push(&mut self, payload: Bytes, waits: bool) {
        if !waits && self.is_empty() {
            self.chunks.push_back(payload);
            return;
        }
        let mut data = &payload[..];
        while !data.is_empty() {
            if self.tail.capacity() == self.tail.len() {
                if !self.tail.is_empty() {
                    self.chunks.push_back(self.tail.split().freeze());
                }
                if data.len() >= BLOCK {
                    self.chunks.push_back(Bytes::copy_from_slice(data));
                    return;
                }
                self.tail = BytesMut::with_capacity(BLOCK);
            }
            let n = (self.tail.capacity() - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    /// Records the peer's FIN, which follows the queued data.
    pub(crate) fn push_fin(&mut self) {
        self.fin = true;
    }

    /// The next piece of data, in order.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Some(chunk);
        }
        // `split` keeps the block's spare room as the tail: later data
        // fills the same allocation.
        (!self.tail.is_empty()).then(|| self.tail.split().freeze())
    }

    /// The FIN, once every byte before it was taken; only once.
    pub(crate) fn take_fin(&mut self) -> bool {
        if self.fin && !self.fin_taken && self.is_empty() {
            self.fin_taken = true;
            return true;
        }
        false
    }

    /// Drops everything queued (the stream was reset).
    pub(crate) fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.tail = BytesMut::new();
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }

    /// Bytes of memory the queued data occupies (allocations, not lengths;
    /// zero-copy slices count their length, their buffer is shared).
    #[cfg(test)]
    pub(crate) fn memory(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum::<usize>() + self.tail.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(inbox: &mut Inbox) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = inbox.pop() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[test]
    fn an_idle_reader_gets_the_payload_itself() {
        let read_buffer = Bytes::from(vec![1u8; 100_000]);
        let payload = read_buffer.slice(10..5000);
        let mut inbox = Inbox::default();
        inbox.push(payload.clone(), false);
        let got = inbox.pop().unwrap();
        assert!(std::ptr::eq(got.as_ptr(), payload.as_ptr()), "no copy when nothing waits");
    }

    #[test]
    fn waiting_payloads_are_copied_and_keep_their_order() {
        let read_buffer = Bytes::from((0..=255u8).cycle().take(300_000).collect::<Vec<u8>>());
        let mut inbox = Inbox::default();
        let mut expected = Vec::new();
        let mut at = 0;
        for (i, len) in [1usize, 7, 16_000, 1, 40_000, 3, 16_384, 100_000, 2].iter().enumerate() {
            let payload = read_buffer.slice(at..at + len);
            expected.extend_from_slice(&payload);
            inbox.push(payload.clone(), i > 0);
            at += len;
        }
        inbox.push_fin();
        assert!(!inbox.take_fin(), "the FIN comes after the data");
        let got = drain(&mut inbox);
        assert_eq!(got, expected);
        assert!(inbox.take_fin());
        assert!(!inbox.take_fin(), "a FIN is handed over once");
    }

    #[test]
    fn a_flood_of_one_byte_payloads_takes_memory_close_to_its_bytes() {
        let mut inbox = Inbox::default();
        let n = 64 * 1024;
        for i in 0..n {
            inbox.push(Bytes::copy_from_slice(&[(i % 251) as u8]), true);
        }
        // 64 KiB of data in four full blocks: no per-frame allocation.
        assert!(inbox.memory() <= n + BLOCK, "{} bytes held for {n}", inbox.memory());
        assert!(inbox.chunks.len() <= n / BLOCK + 1);
        assert_eq!(drain(&mut inbox).len(), n);
    }

    #[test]
    fn taking_part_of_a_block_keeps_filling_the_same_allocation() {
        let mut inbox = Inbox::default();
        inbox.push(Bytes::from_static(b"ab"), true);
        assert_eq!(inbox.pop().unwrap(), Bytes::from_static(b"ab"));
        inbox.push(Bytes::from_static(b"cd"), true);
        assert_eq!(inbox.memory(), BLOCK - 2, "the rest of the first block");
        assert_eq!(inbox.pop().unwrap(), Bytes::from_static(b"cd"));
    }

    #[test]
    fn clear_drops_everything() {
        let mut inbox = Inbox::default();
        inbox.push(Bytes::from(vec![0u8; 50_000]), true);
        inbox.clear();
        assert_eq!(inbox.memory(), 0);
        assert!(inbox.pop().is_none());
    }
}
