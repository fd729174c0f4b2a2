//! One multiplexed stream: its shared state and the two halves a relay uses.
//!
//! The tunnel's reader loop and the stream's own task both touch a stream:
//! the reader applies the peer's data, window updates, FIN and reset; the
//! task sends data and reports what it consumed. They meet in
//! [`StreamShared`], behind a mutex held only for a few field updates.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use proto::{Frame, RecvBudget, RecvWindow, ResetCode, SendWindow, StreamState};

use crate::inbox::Inbox;
use thiserror::Error;
use tokio::sync::Notify;

use crate::mux::Shared as TunnelShared;

/// Something that arrived from the peer for this stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes to write to the local socket.
    Data(Bytes),
    /// The peer half-closed: write EOF to the local socket.
    Fin,
    /// The stream was aborted (by the peer, or because the tunnel died).
    Reset { code: ResetCode, message: String },
}

/// The stream can no longer carry data: reset by either side or the tunnel
/// is gone.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("stream closed: {reason}")]
pub struct StreamClosed {
    /// Why, for logs.
    pub reason: String,
}

/// Why a stream was reset, and by whom (for the reader's [`Inbound::Reset`]).
#[derive(Debug, Clone)]
pub(crate) struct ResetCause {
    pub(crate) code: ResetCode,
    pub(crate) message: String,
}

#[derive(Debug)]
pub(crate) struct StreamInner {
    pub(crate) send: SendWindow,
    pub(crate) recv: RecvWindow,
    pub(crate) state: StreamState,
    /// What arrived and is not yet written on.
    pub(crate) inbox: Inbox,
    /// The receiving half is parked in [`StreamReceiver::recv`]: data that
    /// arrives now is taken at once, so it need not be copied.
    pub(crate) reader_parked: bool,
    /// Why the stream was reset, once it was.
    pub(crate) reset: Option<ResetCause>,
}

/// State shared by the tunnel's reader loop and the stream's halves.
#[derive(Debug)]
pub(crate) struct StreamShared {
    pub(crate) id: u32,
    inner: Mutex<StreamInner>,
    /// Woken when send credit grows or the stream is reset.
    credit: Notify,
    /// Woken when something arrives for the receiving half, or the stream
    /// is reset.
    arrived: Notify,
    /// The tunnel's budget, which the receive window borrows from as it
    /// grows; repaid once the peer's FIN is consumed, or when the stream's
    /// state is dropped.
    pub(crate) budget: Arc<RecvBudget>,
}

impl StreamShared {
    pub(crate) fn new(
        id: u32,
        send_window: u32,
        recv: RecvWindow,
        budget: Arc<RecvBudget>,
    ) -> Self {
        Self {
            id,
            inner: Mutex::new(StreamInner {
                send: SendWindow::new(send_window),
                recv,
                state: StreamState::new(),
                inbox: Inbox::default(),
                reader_parked: false,
                reset: None,
            }),
            credit: Notify::new(),
            arrived: Notify::new(),
            budget,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, StreamInner> {
        // A poisoned lock means a panic elsewhere already broke an invariant;
        // the plain data inside is still consistent enough to tear down.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn wake_sender(&self) {
        self.credit.notify_one();
    }

    pub(crate) fn wake_receiver(&self) {
        self.arrived.notify_one();
    }

    /// Marks the stream reset, dropping what it received and waking both
    /// halves. Returns false if it already was closed.
    pub(crate) fn mark_reset(&self, code: ResetCode, message: &str) -> bool {
        let mut inner = self.lock();
        if inner.state.is_closed() {
            return false;
        }
        inner.state.on_reset();
        inner.inbox.clear();
        inner.reset = Some(ResetCause { code, message: message.to_owned() });
        drop(inner);
        self.wake_sender();
        self.wake_receiver();
        true
    }
}

impl Drop for StreamShared {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.budget.give_back(inner.recv.borrowed());
    }
}

/// Resets the stream when the last half is dropped without closing it, so
/// an abandoned stream never lingers in the tunnel's table.
#[derive(Debug)]
struct StreamGuard {
    stream: Arc<StreamShared>,
    tunnel: Arc<TunnelShared>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.stream.mark_reset(ResetCode::Other, "stream dropped") {
            self.tunnel.send_reset(self.stream.id, ResetCode::Other, "stream abandoned");
        }
        self.tunnel.remove_stream(self.stream.id);
    }
}

/// An open stream, before it is split for relaying.
#[derive(Debug)]
pub struct MuxStream {
    pub(crate) sender: StreamSender,
    pub(crate) receiver: StreamReceiver,
}

impl MuxStream {
    pub(crate) fn new(stream: Arc<StreamShared>, tunnel: Arc<TunnelShared>) -> Self {
        let guard =
            Arc::new(StreamGuard { stream: Arc::clone(&stream), tunnel: Arc::clone(&tunnel) });
        Self {
            sender: StreamSender {
                stream: Arc::clone(&stream),
                tunnel: Arc::clone(&tunnel),
                _guard: Arc::clone(&guard),
            },
            receiver: StreamReceiver { stream, tunnel, _guard: guard },
        }
    }

    /// The stream's id on its tunnel.
    pub fn id(&self) -> u32 {
        self.sender.stream.id
    }

    /// The id of the tunnel carrying this stream.
    pub fn tunnel_id(&self) -> u64 {
        self.sender.tunnel.id
    }

    /// Splits into the half that sends towards the peer and the half that
    /// receives from it.
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.sender, self.receiver)
    }
}

/// Sends data, FIN or reset towards the peer, respecting its window.
#[derive(Debug)]
pub struct StreamSender {
    pub(crate) stream: Arc<StreamShared>,
    pub(crate) tunnel: Arc<TunnelShared>,
    _guard: Arc<StreamGuard>,
}

impl StreamSender {
    /// Waits until the peer's window has room and returns how many bytes
    /// may be sent now (at most `max`).
    ///
    /// Cancel-safe: nothing is reserved until [`send`](Self::send).
    ///
    /// # Errors
    /// [`StreamClosed`] once the stream is reset or its tunnel is gone.
    pub async fn credit(&self, max: usize) -> Result<usize, StreamClosed> {
        loop {
            {
                let inner = self.stream.lock();
                if let Some(reason) = &inner.reset {
                    return Err(StreamClosed { reason: reason.message.clone() });
                }
                let available = inner.send.available();
                if available > 0 {
                    let cap = max.min(self.tunnel.settings.peer_max_frame_payload as usize);
                    return Ok(usize::try_from(available).unwrap_or(usize::MAX).min(cap));
                }
            }
            self.stream.credit.notified().await;
        }
    }

    /// Sends `data`, which must fit in the credit last returned by
    /// [`credit`](Self::credit).
    ///
    /// Not cancel-safe: the bytes count as sent before the frame is queued,
    /// so a caller that drops this future must reset the stream.
    ///
    /// # Errors
    /// [`StreamClosed`] if the stream was reset or the tunnel is gone.
    pub async fn send(&self, data: Bytes) -> Result<(), StreamClosed> {
        {
            let mut inner = self.stream.lock();
            if let Some(reason) = &inner.reset {
                return Err(StreamClosed { reason: reason.message.clone() });
            }
            inner
                .send
                .record_sent(data.len() as u64)
                .map_err(|e| StreamClosed { reason: format!("local flow-control bug: {e}") })?;
        }
        self.tunnel.send_frame(Frame::Data { stream: self.stream.id, payload: data }).await
    }

    /// Half-closes: the peer's socket sees EOF after the data sent so far.
    ///
    /// # Errors
    /// [`StreamClosed`] if the stream was reset or the tunnel is gone.
    pub async fn finish(&self) -> Result<(), StreamClosed> {
        self.tunnel.send_frame(Frame::Fin { stream: self.stream.id }).await?;
        let closed = {
            let mut inner = self.stream.lock();
            inner.state.on_sent_fin();
            inner.state.is_closed()
        };
        if closed {
            self.tunnel.remove_stream(self.stream.id);
        }
        Ok(())
    }

    /// Aborts the stream in both directions.
    pub fn reset(&self, code: ResetCode, message: &str) {
        if self.stream.mark_reset(code, message) {
            self.tunnel.send_reset(self.stream.id, code, message);
        }
        self.tunnel.remove_stream(self.stream.id);
    }
}

/// Receives what the peer sent, and returns credit as it is consumed.
#[derive(Debug)]
pub struct StreamReceiver {
    stream: Arc<StreamShared>,
    tunnel: Arc<TunnelShared>,
    _guard: Arc<StreamGuard>,
}

impl StreamReceiver {
    /// The next event from the peer. After [`Inbound::Fin`] or
    /// [`Inbound::Reset`] nothing more arrives.
    ///
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Inbound {
        loop {
            if let Some(event) = self.next_event() {
                return event;
            }
            self.stream.arrived.notified().await;
        }
    }

    /// The next event, or None after marking the receiver parked (under
    /// the same lock, so the reader sees it before it pushes more).
    fn next_event(&self) -> Option<Inbound> {
        let mut inner = self.stream.lock();
        let event = if let Some(cause) = &inner.reset {
            Some(Inbound::Reset { code: cause.code, message: cause.message.clone() })
        } else if let Some(chunk) = inner.inbox.pop() {
            Some(Inbound::Data(chunk))
        } else {
            inner.inbox.take_fin().then_some(Inbound::Fin)
        };
        inner.reader_parked = event.is_none();
        event
    }

    /// Waits until the stream is reset (by either side, or because the
    /// tunnel died). Cancel-safe; lets a relay blocked on a slow socket
    /// notice a reset without waiting for the write to finish.
    pub async fn reset_signal(&self) {
        loop {
            if self.stream.lock().reset.is_some() {
                return;
            }
            self.stream.arrived.notified().await;
        }
    }

    /// The current receive window.
    #[cfg(test)]
    pub(crate) fn recv_window(&self) -> u32 {
        self.stream.lock().recv.window()
    }

    /// Reports that `n` received bytes were written on, returning credit to
    /// the peer (a window update every half window, which also tunes the
    /// window: see [`proto::flow`]).
    ///
    /// Not cancel-safe: the new limit is recorded before its frame is
    /// queued, so a caller that drops this future must reset the stream
    /// (the peer could otherwise wait for credit that never comes).
    ///
    /// # Errors
    /// [`StreamClosed`] if the tunnel is gone.
    pub async fn consumed(&self, n: usize) -> Result<(), StreamClosed> {
        let now = std::time::Instant::now();
        let rtt = self.tunnel.rtt();
        let update = self.stream.lock().recv.on_consumed(n as u64, now, rtt, &self.stream.budget);
        match update {
            Some(limit) => {
                self.tunnel.send_frame(Frame::Window { stream: self.stream.id, limit }).await
            }
            None => Ok(()),
        }
    }
}
