//! The tunnel: many streams over one WebSocket.
//!
//! Two tasks serve each tunnel. The *reader* owns the WebSocket's receiving
//! half: it decodes frames, applies them to streams, and runs the heartbeat.
//! The *writer* owns the sending half: it takes frames from two queues and
//! batches them into WebSocket messages.
//!
//! The reader never waits on the writer. Data, window updates and opens go
//! through a bounded queue that only stream tasks wait on; the few frames
//! the tunnel itself must send (pong, reset, go-away) use a separate queue
//! whose length is bounded by construction (one pong outstanding, one reset
//! per stream, one go-away). This is what keeps two peers that are both
//! busy writing from deadlocking each other.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use proto::{
    DEFAULT_MAX_FRAME_PAYLOAD, DEFAULT_MAX_STREAMS, DEFAULT_STREAM_WINDOW, Frame, GoAwayCode,
    OpenCode, ResetCode, StreamIds,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::stream::{Inbound, MuxStream, StreamShared};

/// Which end of the tunnel this is. Only the cloud opens streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The public side: opens streams for client connections.
    Cloud,
    /// The on-prem side: accepts streams and connects them on.
    Edge,
}

/// Limits and timings of one tunnel.
#[derive(Debug, Clone)]
pub struct MuxSettings {
    /// How often to ping the peer.
    pub heartbeat_interval: Duration,
    /// Silence after which the tunnel is declared dead.
    pub heartbeat_timeout: Duration,
    /// Streams open at once; the opener must stay under it.
    pub max_streams: u32,
    /// Largest frame payload accepted from the peer.
    pub max_frame_payload: u32,
    /// Largest frame payload the peer accepts (data is chunked to fit).
    pub peer_max_frame_payload: u32,
    /// Receive window granted to the peer on each stream.
    pub stream_window: u32,
    /// Frames that may wait in the outbound queue.
    pub queue_frames: usize,
}

impl Default for MuxSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(6),
            max_streams: DEFAULT_MAX_STREAMS,
            max_frame_payload: DEFAULT_MAX_FRAME_PAYLOAD,
            peer_max_frame_payload: DEFAULT_MAX_FRAME_PAYLOAD,
            stream_window: DEFAULT_STREAM_WINDOW,
            queue_frames: 256,
        }
    }
}

/// Largest WebSocket message the writer builds from queued frames.
const MAX_BATCH: usize = 256 * 1024;

/// The tunnel is closed; streams can no longer be opened on it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("tunnel closed: {0}")]
pub struct TunnelClosed(pub String);

/// Why [`Tunnel::open_stream`] failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The edge answered with a failure.
    #[error("edge refused the stream ({code:?}): {message}")]
    Refused { code: OpenCode, message: String },
    /// The tunnel has as many streams as it allows.
    #[error("tunnel is at its limit of {0} streams")]
    TooManyStreams(u32),
    /// The edge said it is draining.
    #[error("edge is draining")]
    Draining,
    /// The tunnel is gone.
    #[error(transparent)]
    Closed(#[from] TunnelClosed),
}

#[derive(Debug)]
struct Entry {
    stream: Arc<StreamShared>,
    inbound: mpsc::UnboundedSender<Inbound>,
    /// Cloud side: waiting for the edge's open result.
    pending_open: Option<oneshot::Sender<(OpenCode, u32, String)>>,
}

#[derive(Debug, Default)]
struct StreamTable {
    map: HashMap<u32, Entry>,
    ids: StreamIds,
    closed: bool,
}

/// State shared by the tunnel's tasks and handles.
pub(crate) struct Shared {
    pub(crate) id: u64,
    role: Role,
    pub(crate) settings: MuxSettings,
    streams: Mutex<StreamTable>,
    active: AtomicUsize,
    data_tx: mpsc::Sender<Frame>,
    control_tx: mpsc::UnboundedSender<Frame>,
    pong_queued: AtomicBool,
    going_away: AtomicBool,
    peer_draining: AtomicBool,
    rtt_micros: AtomicU64,
    /// Unix time in milliseconds of the last message from the peer.
    last_heard_ms: AtomicU64,
    /// The edge's latest report (cloud side).
    last_report: Mutex<Option<proto::EdgeReport>>,
    close_reason: Mutex<Option<String>>,
    closed: CancellationToken,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").field("id", &self.id).field("role", &self.role).finish()
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, StreamTable> {
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn closed_error(&self) -> TunnelClosed {
        let reason = self.close_reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
        TunnelClosed(reason.unwrap_or_else(|| "closed".into()))
    }

    /// Queues a stream frame, waiting while the outbound queue is full.
    pub(crate) async fn send_frame(&self, frame: Frame) -> Result<(), crate::StreamClosed> {
        self.data_tx
            .send(frame)
            .await
            .map_err(|_| crate::StreamClosed { reason: self.closed_error().0 })
    }

    /// Queues a tunnel-level frame without waiting (see the module docs for
    /// why this queue stays bounded).
    pub(crate) fn send_control(&self, frame: Frame) {
        let _ = self.control_tx.send(frame);
    }

    pub(crate) fn remove_stream(&self, id: u32) {
        let mut table = self.table();
        if table.map.remove(&id).is_some() {
            self.active.store(table.map.len(), Ordering::Relaxed);
        }
    }

    fn set_close_reason(&self, reason: String) {
        let mut slot = self.close_reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
    }

    /// Closes the tunnel after telling the peer why.
    fn go_away(&self, code: GoAwayCode, message: String) {
        if self.going_away.swap(true, Ordering::Relaxed) {
            return;
        }
        self.send_control(Frame::GoAway { code, message: message.clone() });
        self.set_close_reason(message);
        // The writer stops after sending the go-away; if the peer does not
        // read, this bounds how long we wait for it.
        let closed = self.closed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            closed.cancel();
        });
    }

    /// Resets every stream and refuses new ones. Called once when the
    /// tunnel ends, whatever the cause.
    fn fail_all_streams(&self) {
        let reason = self.closed_error().0;
        let entries: Vec<Entry> = {
            let mut table = self.table();
            table.closed = true;
            self.active.store(0, Ordering::Relaxed);
            table.map.drain().map(|(_, e)| e).collect()
        };
        for entry in entries {
            entry.stream.mark_reset(&reason);
            let _ = entry.inbound.send(Inbound::Reset {
                code: ResetCode::ConnectionReset,
                message: format!("tunnel lost: {reason}"),
            });
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why the reader stops on a frame.
#[derive(Debug)]
enum Stop {
    /// A frame the peer should not have sent. Closes the tunnel with a
    /// protocol-error go-away.
    Violation(String),
    /// The peer said it is closing the tunnel.
    PeerGoAway(String),
}

impl<E: fmt::Display> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Violation(e.to_string())
    }
}

/// A stream the cloud asked the edge to open. The edge decides, then calls
/// [`accept`](Self::accept) or [`reject`](Self::reject); dropping it rejects.
#[derive(Debug)]
pub struct IncomingStream {
    /// Mapping name the cloud gave (for logs).
    pub mapping: String,
    /// Destination host.
    pub host: String,
    /// Destination port.
    pub port: u16,
    stream: MuxStream,
}

impl IncomingStream {
    /// The stream's id on its tunnel.
    pub fn id(&self) -> u32 {
        self.stream.id()
    }

    /// Tells the cloud the destination is connected; data may flow.
    ///
    /// # Errors
    /// [`crate::StreamClosed`] if the stream was reset meanwhile or the
    /// tunnel is gone.
    pub async fn accept(self) -> Result<MuxStream, crate::StreamClosed> {
        let tunnel = Arc::clone(&self.stream.sender_tunnel());
        let frame = Frame::OpenResult {
            stream: self.stream.id(),
            code: OpenCode::Ok,
            window: tunnel.settings.stream_window,
            message: String::new(),
        };
        tunnel.send_frame(frame).await?;
        Ok(self.stream)
    }

    /// Tells the cloud the stream could not be opened, and why.
    pub async fn reject(self, code: OpenCode, message: &str) {
        let tunnel = Arc::clone(&self.stream.sender_tunnel());
        let id = self.stream.id();
        let frame = Frame::OpenResult { stream: id, code, window: 0, message: message.to_owned() };
        // Mark closed first so dropping the stream sends no reset on top.
        self.stream.mark_closed_quietly();
        let _ = tunnel.send_frame(frame).await;
        tunnel.remove_stream(id);
    }
}

/// A handle to a running tunnel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tunnel {
    shared: Arc<Shared>,
}

impl Tunnel {
    /// Starts the reader and writer tasks on an established (handshaken)
    /// WebSocket. On the edge, streams the cloud opens arrive on the
    /// returned receiver; on the cloud it never yields anything.
    pub fn spawn<S>(
        ws: WebSocketStream<S>,
        role: Role,
        id: u64,
        settings: MuxSettings,
    ) -> (Tunnel, mpsc::UnboundedReceiver<IncomingStream>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (data_tx, data_rx) = mpsc::channel(settings.queue_frames.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id,
            role,
            settings,
            streams: Mutex::new(StreamTable::default()),
            active: AtomicUsize::new(0),
            data_tx,
            control_tx,
            pong_queued: AtomicBool::new(false),
            going_away: AtomicBool::new(false),
            peer_draining: AtomicBool::new(false),
            rtt_micros: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(unix_ms()),
            last_report: Mutex::new(None),
            close_reason: Mutex::new(None),
            closed: CancellationToken::new(),
        });
        let (sink, stream) = ws.split();
        let span = info_span!("tunnel", tunnel = id);
        tokio::spawn(
            write_loop(Arc::clone(&shared), sink, data_rx, control_rx).instrument(span.clone()),
        );
        tokio::spawn(read_loop(Arc::clone(&shared), stream, incoming_tx).instrument(span));
        (Tunnel { shared }, incoming_rx)
    }

    /// This tunnel's id (unique within the cloud agent's run).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Streams open right now.
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Whether the tunnel has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Waits until the tunnel has ended.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    /// Why the tunnel ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.shared.close_reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the peer announced it is shutting down.
    pub fn peer_draining(&self) -> bool {
        self.shared.peer_draining.load(Ordering::Relaxed)
    }

    /// Latest round-trip time measured by the heartbeat.
    pub fn rtt(&self) -> Option<Duration> {
        match self.shared.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Unix time in milliseconds when the peer was last heard from.
    pub fn last_heard_unix_ms(&self) -> u64 {
        self.shared.last_heard_ms.load(Ordering::Relaxed)
    }

    /// Cloud side: the edge's latest report on this tunnel.
    pub fn last_report(&self) -> Option<proto::EdgeReport> {
        self.shared.last_report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Edge side: sends a report to the cloud. Reports are sent every few
    /// seconds, so they need no queue of their own.
    pub fn send_report(&self, report: proto::EdgeReport) {
        self.shared.send_control(Frame::Report(report));
    }

    /// Tells the peer to open no new streams towards this side.
    pub fn drain(&self) {
        self.shared.send_control(Frame::Drain);
    }

    /// Closes the tunnel, telling the peer why. Open streams are reset.
    pub fn close(&self, code: GoAwayCode, message: &str) {
        self.shared.go_away(code, message.to_owned());
    }

    /// Cloud side: opens a stream to `host:port` at the edge and waits for
    /// the edge's answer. Dropping the future before it finishes resets the
    /// stream at the edge.
    ///
    /// # Errors
    /// [`OpenError`] if the tunnel is closed, full or draining, or the edge
    /// refused.
    pub async fn open_stream(
        &self,
        mapping: &str,
        host: &str,
        port: u16,
    ) -> Result<MuxStream, OpenError> {
        let shared = &self.shared;
        if shared.peer_draining.load(Ordering::Relaxed) {
            return Err(OpenError::Draining);
        }
        let (result_tx, result_rx) = oneshot::channel();
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let stream = {
            let mut table = shared.table();
            if table.closed {
                return Err(shared.closed_error().into());
            }
            if table.map.len() >= shared.settings.max_streams as usize {
                return Err(OpenError::TooManyStreams(shared.settings.max_streams));
            }
            let id = table.ids.allocate().map_err(|e| TunnelClosed(e.to_string()))?;
            // No send credit until the edge grants its window.
            let stream = Arc::new(StreamShared::new(id, 0, shared.settings.stream_window));
            table.map.insert(
                id,
                Entry {
                    stream: Arc::clone(&stream),
                    inbound: inbound_tx,
                    pending_open: Some(result_tx),
                },
            );
            shared.active.store(table.map.len(), Ordering::Relaxed);
            stream
        };
        let id = stream.id;
        let mux_stream = MuxStream::new(Arc::clone(&stream), Arc::clone(shared), inbound_rx);
        let open = Frame::Open {
            stream: id,
            window: shared.settings.stream_window,
            mapping: mapping.to_owned(),
            host: host.to_owned(),
            port,
        };
        shared.send_frame(open).await.map_err(|e| TunnelClosed(e.reason))?;
        match result_rx.await {
            Ok((OpenCode::Ok, window, _)) => {
                stream.lock().send = proto::SendWindow::new(window);
                stream.wake_sender();
                Ok(mux_stream)
            }
            Ok((code, _, message)) => {
                mux_stream.mark_closed_quietly();
                shared.remove_stream(id);
                Err(OpenError::Refused { code, message })
            }
            Err(_) => Err(shared.closed_error().into()),
        }
    }
}

impl MuxStream {
    fn sender_tunnel(&self) -> Arc<Shared> {
        Arc::clone(&self.sender.tunnel)
    }

    /// Marks the stream closed so that dropping it sends no reset (the peer
    /// already knows it failed).
    fn mark_closed_quietly(&self) {
        self.sender.stream.mark_reset("open failed");
    }
}

async fn write_loop<S>(
    shared: Arc<Shared>,
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut data_rx: mpsc::Receiver<Frame>,
    mut control_rx: mpsc::UnboundedReceiver<Frame>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // A go-away waits until the data frames queued before it are written
    // (a stream's last data and FIN must not be lost to a graceful close);
    // `flush_first` counts them.
    let mut go_away: Option<(Frame, usize)> = None;
    loop {
        tokio::select! {
            biased;
            () = shared.closed.cancelled() => break,
            Some(frame) = control_rx.recv() => take_control(&shared, frame, &mut buf, &mut go_away, &data_rx),
            Some(frame) = data_rx.recv() => encode_data(frame, &mut buf, &mut go_away),
            else => break,
        }
        // Batch whatever else is ready into the same message: fewer, larger
        // WebSocket messages and syscalls. Control frames go first.
        while buf.len() < MAX_BATCH {
            if let Ok(frame) = control_rx.try_recv() {
                take_control(&shared, frame, &mut buf, &mut go_away, &data_rx);
            } else if go_away.as_ref().is_some_and(|(_, n)| *n == 0) {
                break;
            } else if let Ok(frame) = data_rx.try_recv() {
                encode_data(frame, &mut buf, &mut go_away);
            } else {
                break;
            }
        }
        let last = match &go_away {
            Some((frame, 0)) if buf.len() < MAX_BATCH => {
                frame.encode(&mut buf);
                true
            }
            _ => false,
        };
        if !buf.is_empty() {
            if let Err(e) = sink.send(Message::Binary(buf.split().freeze())).await {
                shared.set_close_reason(format!("websocket write failed: {e}"));
                break;
            }
        }
        if last {
            let _ = sink.close().await;
            break;
        }
        if buf.capacity() > 4 * MAX_BATCH {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    shared.closed.cancel();
}

fn encode_data(frame: Frame, buf: &mut BytesMut, go_away: &mut Option<(Frame, usize)>) {
    frame.encode(buf);
    if let Some((_, flush_first)) = go_away {
        *flush_first = flush_first.saturating_sub(1);
    }
}

fn take_control(
    shared: &Shared,
    frame: Frame,
    buf: &mut BytesMut,
    go_away: &mut Option<(Frame, usize)>,
    data_rx: &mpsc::Receiver<Frame>,
) {
    match frame {
        Frame::GoAway { .. } => {
            if go_away.is_none() {
                *go_away = Some((frame, data_rx.len()));
            }
        }
        Frame::Pong { .. } => {
            shared.pong_queued.store(false, Ordering::Relaxed);
            frame.encode(buf);
        }
        _ => frame.encode(buf),
    }
}

async fn read_loop<S>(
    shared: Arc<Shared>,
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    incoming_tx: mpsc::UnboundedSender<IncomingStream>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = shared.settings.clone();
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // Fires `heartbeat_timeout` after the last message; moved forward
    // lazily (only when it fires early) rather than on every message.
    let silence = tokio::time::sleep(settings.heartbeat_timeout);
    tokio::pin!(silence);
    let mut ping: (u64, Instant) = (0, Instant::now());
    let reason = loop {
        tokio::select! {
            () = shared.closed.cancelled() => break None,
            () = &mut silence => {
                let deadline = last_heard + settings.heartbeat_timeout;
                if deadline > Instant::now() {
                    silence.as_mut().reset(deadline);
                    continue;
                }
                let why = format!("no frame from peer for {:?}", last_heard.elapsed());
                shared.go_away(GoAwayCode::Timeout, why.clone());
                break Some(why);
            }
            msg = stream.next() => match msg {
                None => break Some("connection closed by peer".to_owned()),
                Some(Err(e)) => break Some(format!("websocket error: {e}")),
                Some(Ok(Message::Binary(bytes))) => {
                    last_heard = Instant::now();
                    shared.last_heard_ms.store(unix_ms(), Ordering::Relaxed);
                    match on_message(&shared, bytes, &incoming_tx, &mut ping) {
                        Ok(()) => {}
                        Err(Stop::Violation(why)) => {
                            warn!(reason = %why, "protocol violation; closing tunnel");
                            shared.go_away(GoAwayCode::ProtocolError, why.clone());
                            break Some(format!("protocol violation: {why}"));
                        }
                        Err(Stop::PeerGoAway(why)) => break Some(why),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    break Some(format!("peer closed the websocket {why}").trim_end().to_owned());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => last_heard = Instant::now(),
                Some(Ok(_)) => {
                    let why = "non-binary websocket message".to_owned();
                    shared.go_away(GoAwayCode::ProtocolError, why.clone());
                    break Some(why);
                }
            },
            _ = heartbeat.tick() => {
                ping = (ping.0.wrapping_add(1), Instant::now());
                shared.send_control(Frame::Ping { nonce: ping.0 });
            }
        }
    };
    if let Some(reason) = reason {
        shared.set_close_reason(reason);
    }
    if shared.going_away.load(Ordering::Relaxed) {
        // Let the writer deliver the go-away; it cancels when done, or the
        // go-away timer does.
        shared.closed.cancelled().await;
    }
    shared.closed.cancel();
    shared.fail_all_streams();
    debug!(reason = ?shared.close_reason.lock().ok().and_then(|r| r.clone()), "tunnel ended");
}

fn on_message(
    shared: &Arc<Shared>,
    mut bytes: Bytes,
    incoming_tx: &mpsc::UnboundedSender<IncomingStream>,
    ping: &mut (u64, Instant),
) -> Result<(), Stop> {
    while !bytes.is_empty() {
        let Some(frame) = proto::decode(&mut bytes, shared.settings.max_frame_payload)? else {
            return Err(Stop::Violation("truncated frame at end of message".into()));
        };
        on_frame(shared, frame, incoming_tx, ping)?;
    }
    Ok(())
}

fn on_frame(
    shared: &Arc<Shared>,
    frame: Frame,
    incoming_tx: &mpsc::UnboundedSender<IncomingStream>,
    ping: &mut (u64, Instant),
) -> Result<(), Stop> {
    match frame {
        Frame::Data { stream, payload } => {
            let table = shared.table();
            // Data for a stream we already reset or closed is normal for a
            // moment (it was in flight); drop it.
            let Some(entry) = table.map.get(&stream) else { return Ok(()) };
            {
                let mut inner = entry.stream.lock();
                inner.state.on_data().map_err(|e| format!("stream {stream}: {e}"))?;
                inner
                    .recv
                    .on_data(payload.len() as u64)
                    .map_err(|e| format!("stream {stream}: {e}"))?;
            }
            let _ = entry.inbound.send(Inbound::Data(payload));
        }
        Frame::Window { stream, consumed } => {
            let table = shared.table();
            let Some(entry) = table.map.get(&stream) else { return Ok(()) };
            let grew = entry
                .stream
                .lock()
                .send
                .on_window_update(consumed)
                .map_err(|e| format!("stream {stream}: {e}"))?;
            if grew {
                entry.stream.wake_sender();
            }
        }
        Frame::Fin { stream } => {
            let mut table = shared.table();
            let Some(entry) = table.map.get(&stream) else { return Ok(()) };
            let closed = {
                let mut inner = entry.stream.lock();
                inner.state.on_fin().map_err(|e| format!("stream {stream}: {e}"))?;
                inner.state.is_closed()
            };
            let _ = entry.inbound.send(Inbound::Fin);
            if closed {
                table.map.remove(&stream);
                shared.active.store(table.map.len(), Ordering::Relaxed);
            }
        }
        Frame::Reset { stream, code, message } => {
            let mut table = shared.table();
            if let Some(entry) = table.map.remove(&stream) {
                shared.active.store(table.map.len(), Ordering::Relaxed);
                drop(table);
                entry.stream.mark_reset(&format!("reset by peer: {message}"));
                let _ = entry.inbound.send(Inbound::Reset { code, message });
            }
        }
        Frame::Open { stream, window, mapping, host, port } => {
            if shared.role != Role::Edge {
                return Err(Stop::Violation("only the cloud may open streams".into()));
            }
            let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
            let stream_shared = {
                let mut table = shared.table();
                if table.closed {
                    return Ok(());
                }
                table.ids.accept(stream)?;
                if table.map.len() >= shared.settings.max_streams as usize {
                    return Err(Stop::Violation(format!(
                        "peer exceeded the limit of {} streams",
                        shared.settings.max_streams
                    )));
                }
                let s = Arc::new(StreamShared::new(stream, window, shared.settings.stream_window));
                table.map.insert(
                    stream,
                    Entry { stream: Arc::clone(&s), inbound: inbound_tx, pending_open: None },
                );
                shared.active.store(table.map.len(), Ordering::Relaxed);
                s
            };
            let stream = MuxStream::new(stream_shared, Arc::clone(shared), inbound_rx);
            let _ = incoming_tx.send(IncomingStream { mapping, host, port, stream });
        }
        Frame::OpenResult { stream, code, window, message } => {
            if shared.role != Role::Cloud {
                return Err(Stop::Violation("only the edge answers opens".into()));
            }
            let mut table = shared.table();
            if let Some(pending) = table.map.get_mut(&stream).and_then(|e| e.pending_open.take()) {
                let _ = pending.send((code, window, message));
            }
        }
        Frame::Ping { nonce } => {
            // One pong outstanding at most: a ping flood costs the peer, not us.
            if !shared.pong_queued.swap(true, Ordering::Relaxed) {
                shared.send_control(Frame::Pong { nonce });
            }
        }
        Frame::Pong { nonce } => {
            if nonce == ping.0 {
                let rtt = ping.1.elapsed().as_micros().clamp(1, u128::from(u64::MAX)) as u64;
                shared.rtt_micros.store(rtt, Ordering::Relaxed);
            }
        }
        Frame::Drain => shared.peer_draining.store(true, Ordering::Relaxed),
        Frame::Report(report) => {
            if shared.role != Role::Cloud {
                return Err(Stop::Violation("only the edge sends reports".into()));
            }
            *shared.last_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        }
        Frame::GoAway { code, message } => {
            return Err(Stop::PeerGoAway(format!("peer closed the tunnel ({code:?}): {message}")));
        }
        other => {
            return Err(Stop::Violation(format!("unexpected frame after handshake: {other:?}")));
        }
    }
    Ok(())
}
