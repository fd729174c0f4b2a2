//! The tunnel: many streams over one WebSocket.
//!
//! Two tasks serve each tunnel. The *reader* owns the WebSocket's receiving
//! half: it decodes frames, applies them to streams, and runs the heartbeat.
//! The *writer* owns the sending half: it takes frames from two queues and
//! batches them into WebSocket messages.
//!
//! The reader never waits on the writer. Every frame of a stream (open,
//! data, window, FIN, open result and reset) goes through one ordered
//! *stream queue*, so per-stream order holds on the wire: a reset never
//! overtakes its stream's open or data. Stream tasks wait for room in it
//! (`queue_frames` frames); a reset never waits, and there is at most one
//! per stream. The few frames the tunnel itself sends jump the queue
//! through a separate one whose length is bounded by construction: one
//! ping, one pong and one report outstanding (a peer that stops reading
//! stalls the writer, and the heartbeat must not pile up behind it), one
//! drain, one go-away, and one cluster frame (the cloud's node list or the
//! edge's node links; a newer one replaces the one waiting). This is what keeps two peers that are both busy
//! writing from deadlocking each other.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::{
    DEFAULT_MAX_FRAME_PAYLOAD, DEFAULT_MAX_STREAMS, DEFAULT_STREAM_WINDOW,
    DEFAULT_TUNNEL_WINDOW_BUDGET, Frame, GoAwayCode, INITIAL_STREAM_WINDOW, NODES_VERSION,
    NodeAddr, NodeLink, OpenCode, PROTOCOL_VERSION, RecvBudget, ResetCode, StreamIds,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::stream::{MuxStream, StreamShared};
use crate::ws::WsConn;

mod probe;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

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
    /// Largest receive window a stream grows to (each starts at
    /// [`proto::INITIAL_STREAM_WINDOW`], or this if smaller).
    pub stream_window: u32,
    /// Bytes this tunnel's streams may add to their receive windows beyond
    /// the initial window, together: with `max_streams`, what bounds the
    /// data a peer can make this side hold for one tunnel.
    pub window_budget: u64,
    /// Frames that may wait in the stream queue (resets aside).
    pub queue_frames: usize,
    /// The protocol version the handshake agreed. The cluster frames
    /// (`Nodes`, `NodeLinks`) need [`proto::NODES_VERSION`]: on an older
    /// tunnel they are never sent, and receiving one is a violation.
    pub version: u16,
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
            window_budget: DEFAULT_TUNNEL_WINDOW_BUDGET,
            queue_frames: 256,
            version: PROTOCOL_VERSION,
        }
    }
}

/// Largest WebSocket message the writer builds from queued frames.
const MAX_BATCH: usize = 256 * 1024;

/// How much of a tunnel's window budget its streams use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowBudget {
    /// Bytes the streams' receive windows have grown by, together.
    pub used: u64,
    /// The whole budget (`window_budget`).
    pub total: u64,
    /// Times a window that would have grown did not, for lack of budget.
    pub refused: u64,
}

/// The cluster's nodes as the cloud last listed them on a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeList {
    /// The node this tunnel reached.
    pub this_node: String,
    /// Every node, with the URL edges dial to reach it.
    pub nodes: Vec<NodeAddr>,
}

pub use probe::{IncomingProbe, ProbeAnswer, ProbeError};

/// Holds a tunnel's first frame back: see [`Tunnel::spawn_held`].
#[derive(Debug)]
pub struct Held {
    go: Option<oneshot::Sender<()>>,
}

impl Held {
    /// Lets the writer send the first frame, then everything queued.
    pub fn release(mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }
}

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
    /// Every stream id of the tunnel was used; it is being replaced.
    #[error("tunnel has used every stream id")]
    IdsExhausted,
    /// The tunnel is gone.
    #[error(transparent)]
    Closed(#[from] TunnelClosed),
    /// The edge speaks a protocol version too old for what the stream
    /// needs.
    #[error("the edge speaks protocol {version}; {what} needs {need}")]
    Unsupported { version: u16, need: u16, what: &'static str },
}

#[derive(Debug)]
struct Entry {
    stream: Arc<StreamShared>,
    /// Cloud side: waiting for the edge's open result.
    pending_open: Option<oneshot::Sender<(OpenCode, String)>>,
}

/// A frame in the stream queue, holding its room there (none for a reset,
/// which must never wait).
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) frame: Frame,
    _room: Option<OwnedSemaphorePermit>,
}

impl Queued {
    /// Whether this is a stream's last frame, queued without room
    /// ([`Shared::send_final`]).
    pub(crate) fn is_final(&self) -> bool {
        self._room.is_none()
    }
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
    /// The stream queue (see the module docs) and the room left in it.
    stream_tx: mpsc::UnboundedSender<Queued>,
    stream_room: Arc<Semaphore>,
    control_tx: mpsc::UnboundedSender<Frame>,
    pong_queued: AtomicBool,
    /// Nonce of the latest ping received: the queued pong answers it, not
    /// the one that queued it.
    pong_nonce: AtomicU64,
    /// Resets (and refusing open results) in the stream queue. Each stream
    /// has at most one, but a
    /// peer that stops reading while its streams keep failing could queue
    /// one for every stream it ever opened: past [`Shared::max_queued_resets`]
    /// the tunnel is closed instead.
    resets_queued: AtomicUsize,
    /// Every stream id was used: the tunnel opens no more streams and is
    /// closed once its last stream ends (the edge redials).
    ids_exhausted: AtomicBool,
    ping_queued: AtomicBool,
    report_queued: AtomicBool,
    drain_queued: AtomicBool,
    going_away: AtomicBool,
    peer_draining: AtomicBool,
    rtt_micros: AtomicU64,
    /// What the streams' receive windows may grow into.
    recv_budget: Arc<RecvBudget>,
    /// Unix time in milliseconds of the last message from the peer.
    last_heard_ms: AtomicU64,
    /// The edge's latest report (cloud side).
    last_report: Mutex<Option<proto::EdgeReport>>,
    /// The cluster frame waiting to be written (`Nodes` from the cloud,
    /// `NodeLinks` from the edge): a newer one replaces it, so one at most
    /// is queued however often the list changes.
    cluster_out: Mutex<Option<Frame>>,
    cluster_queued: AtomicBool,
    /// Edge side: the cloud's latest node list.
    nodes_in: watch::Sender<Option<NodeList>>,
    /// Cloud side: the edge's latest links to the nodes.
    node_links_in: Mutex<Option<Vec<NodeLink>>>,
    close_reason: Mutex<Option<String>>,
    closed: CancellationToken,
    probes: probe::Probes,
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

    /// Waits for room in the stream queue.
    async fn stream_room(&self) -> Result<OwnedSemaphorePermit, TunnelClosed> {
        Arc::clone(&self.stream_room).acquire_owned().await.map_err(|_| self.closed_error())
    }

    /// Queues a stream frame, waiting while the stream queue is full.
    pub(crate) async fn send_frame(&self, frame: Frame) -> Result<(), crate::StreamClosed> {
        let room = self.stream_room().await.map_err(|e| crate::StreamClosed { reason: e.0 })?;
        self.stream_tx
            .send(Queued { frame, _room: Some(room) })
            .map_err(|_| crate::StreamClosed { reason: self.closed_error().0 })
    }

    /// Queues a stream's reset behind its earlier frames, without waiting
    /// (callers reset a stream at most once: [`StreamShared::mark_reset`]).
    pub(crate) fn send_reset(&self, stream: u32, code: ResetCode, message: &str) {
        self.send_final(Frame::Reset { stream, code, message: message.to_owned() });
    }

    /// Queues a stream's last frame (a reset, or a refusing open result)
    /// without waiting for room: it must go even when the caller is
    /// cancelled, and each stream has at most one.
    fn send_final(&self, frame: Frame) {
        if self.resets_queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued_resets() {
            self.go_away(GoAwayCode::Internal, "peer does not read: too many resets queued".into());
            return;
        }
        let _ = self.stream_tx.send(Queued { frame, _room: None });
    }

    /// As many resets as streams may be open, plus one for each frame the
    /// queue can hold: more means the peer stopped reading long ago.
    fn max_queued_resets(&self) -> usize {
        self.settings.max_streams as usize + self.settings.queue_frames
    }

    /// Queues a tunnel-level frame without waiting (see the module docs for
    /// why this queue stays bounded).
    pub(crate) fn send_control(&self, frame: Frame) {
        let _ = self.control_tx.send(frame);
    }

    /// Queues `frame` as the cluster frame to send, replacing one not yet
    /// written; nothing on a tunnel whose version predates them.
    fn send_cluster(&self, frame: Frame) {
        if self.settings.version < NODES_VERSION {
            return;
        }
        *self.cluster_out.lock().unwrap_or_else(|p| p.into_inner()) = Some(frame);
        if !self.cluster_queued.swap(true, Ordering::SeqCst) {
            // A marker: the writer sends what the slot holds when it gets here.
            self.send_control(Frame::NodeLinks { links: Vec::new() });
        }
    }

    /// The cluster frame to write now (the writer got the marker).
    pub(crate) fn take_cluster(&self) -> Option<Frame> {
        // Cleared before taking: a frame stored after this queues a marker
        // of its own.
        self.cluster_queued.store(false, Ordering::SeqCst);
        self.cluster_out.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The receive window every stream starts with.
    fn initial_window(&self) -> u32 {
        INITIAL_STREAM_WINDOW.min(self.settings.stream_window)
    }

    /// Shared state for a new stream whose peer granted `send_window`.
    fn new_stream(&self, id: u32, send_window: u32) -> Arc<StreamShared> {
        Arc::new(StreamShared::new(
            id,
            send_window,
            proto::RecvWindow::new(
                self.initial_window(),
                self.settings.stream_window,
                std::time::Instant::now(),
            ),
            Arc::clone(&self.recv_budget),
        ))
    }

    /// The latest heartbeat round trip, zero while none was measured.
    pub(crate) fn rtt(&self) -> Duration {
        Duration::from_micros(self.rtt_micros.load(Ordering::Relaxed))
    }

    pub(crate) fn remove_stream(&self, id: u32) {
        let mut table = self.table();
        if table.map.remove(&id).is_some() {
            self.active.store(table.map.len(), Ordering::Relaxed);
        }
        let retire = table.map.is_empty() && self.ids_exhausted.load(Ordering::Relaxed);
        drop(table);
        if retire {
            self.retire();
        }
    }

    /// Closes a tunnel whose stream ids are used up, once it is idle.
    fn retire(&self) {
        self.go_away(GoAwayCode::Normal, "stream ids used up; redial for a new tunnel".into());
    }

    pub(super) fn set_close_reason(&self, reason: String) {
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
            entry.stream.mark_reset(ResetCode::ConnectionReset, &format!("tunnel lost: {reason}"));
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    /// Who the stream is for (version 8 clouds send it).
    pub origin: Option<Box<proto::StreamOrigin>>,
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
            window: tunnel.initial_window(),
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
        // Mark closed first so dropping the stream sends no reset on top;
        // queued without waiting, so the answer goes even if this caller is
        // cancelled right after (the cloud would wait 30 s for it).
        self.stream.mark_closed_quietly();
        tunnel.send_final(frame);
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
        ws: WsConn<S>,
        role: Role,
        id: u64,
        settings: MuxSettings,
    ) -> (Tunnel, mpsc::UnboundedReceiver<IncomingStream>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(ws, role, id, settings, None)
    }

    /// Cloud side: like [`spawn`](Self::spawn), but the writer first holds
    /// `first` (the handshake's `Welcome`) until [`Held::release`], then
    /// writes it ahead of anything queued meanwhile. The cloud registers
    /// the tunnel in between, so that it can carry streams from the moment
    /// the edge believes it is up. Dropping the [`Held`] closes the tunnel
    /// without writing `first`.
    pub fn spawn_held<S>(
        ws: WsConn<S>,
        role: Role,
        id: u64,
        settings: MuxSettings,
        first: Frame,
    ) -> (Tunnel, mpsc::UnboundedReceiver<IncomingStream>, Held)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (go, gate) = oneshot::channel();
        let (tunnel, incoming) = Self::start(ws, role, id, settings, Some((first, gate)));
        (tunnel, incoming, Held { go: Some(go) })
    }

    fn start<S>(
        ws: WsConn<S>,
        role: Role,
        id: u64,
        settings: MuxSettings,
        first: Option<(Frame, oneshot::Receiver<()>)>,
    ) -> (Tunnel, mpsc::UnboundedReceiver<IncomingStream>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (stream_tx, stream_rx) = mpsc::unbounded_channel();
        let stream_room = Arc::new(Semaphore::new(settings.queue_frames.max(1)));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let recv_budget = Arc::new(RecvBudget::new(settings.window_budget));
        let shared = Arc::new(Shared {
            id,
            role,
            settings,
            streams: Mutex::new(StreamTable::default()),
            active: AtomicUsize::new(0),
            stream_tx,
            stream_room,
            control_tx,
            pong_queued: AtomicBool::new(false),
            pong_nonce: AtomicU64::new(0),
            resets_queued: AtomicUsize::new(0),
            ids_exhausted: AtomicBool::new(false),
            ping_queued: AtomicBool::new(false),
            report_queued: AtomicBool::new(false),
            drain_queued: AtomicBool::new(false),
            going_away: AtomicBool::new(false),
            peer_draining: AtomicBool::new(false),
            rtt_micros: AtomicU64::new(0),
            recv_budget,
            last_heard_ms: AtomicU64::new(unix_ms()),
            last_report: Mutex::new(None),
            cluster_out: Mutex::new(None),
            cluster_queued: AtomicBool::new(false),
            nodes_in: watch::channel(None).0,
            node_links_in: Mutex::new(None),
            close_reason: Mutex::new(None),
            closed: CancellationToken::new(),
            probes: probe::Probes::new(),
        });
        let WsConn { reader, writer } = ws;
        let span = info_span!("tunnel", tunnel = id);
        tokio::spawn(
            writer::write_loop(Arc::clone(&shared), writer, stream_rx, control_rx, first)
                .instrument(span.clone()),
        );
        tokio::spawn(reader::read_loop(Arc::clone(&shared), reader, incoming_tx).instrument(span));
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

    /// Whether new streams may be opened here: the tunnel is up, the peer is
    /// not draining, and stream ids are left.
    pub fn accepts_streams(&self) -> bool {
        !self.is_closed()
            && !self.peer_draining()
            && !self.shared.ids_exhausted.load(Ordering::Relaxed)
    }

    /// How much of this side's window budget the streams use now.
    pub fn window_budget(&self) -> WindowBudget {
        let budget = &self.shared.recv_budget;
        WindowBudget {
            used: budget.total() - budget.left(),
            total: budget.total(),
            refused: budget.refused(),
        }
    }

    /// Latest round-trip time measured by the heartbeat.
    pub fn rtt(&self) -> Option<Duration> {
        Some(self.shared.rtt()).filter(|rtt| !rtt.is_zero())
    }

    /// Unix time in milliseconds when the peer was last heard from.
    pub fn last_heard_unix_ms(&self) -> u64 {
        self.shared.last_heard_ms.load(Ordering::Relaxed)
    }

    /// Cloud side: the edge's latest report on this tunnel.
    pub fn last_report(&self) -> Option<proto::EdgeReport> {
        self.shared.last_report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Edge side: sends a report to the cloud. While the previous one is
    /// still queued (the writer is stalled) the new one is dropped.
    pub fn send_report(&self, report: proto::EdgeReport) {
        if !self.shared.report_queued.swap(true, Ordering::Relaxed) {
            self.shared.send_control(Frame::Report(report));
        }
    }

    /// The protocol version agreed for this tunnel.
    pub fn version(&self) -> u16 {
        self.shared.settings.version
    }

    /// Whether this tunnel carries the cluster frames (version 4 on).
    pub fn carries_nodes(&self) -> bool {
        self.version() >= NODES_VERSION
    }

    /// Cloud side: tells the edge the cluster's nodes. A list not yet
    /// written is replaced, never queued behind; on a version 3 tunnel
    /// nothing is sent.
    pub fn send_nodes(&self, this_node: &str, nodes: &[NodeAddr]) {
        self.shared
            .send_cluster(Frame::Nodes { this_node: this_node.to_owned(), nodes: nodes.to_vec() });
    }

    /// Edge side: the cloud's node list as it last arrived on this tunnel
    /// (`None` until one does; a cloud that runs alone never sends one).
    pub fn nodes(&self) -> watch::Receiver<Option<NodeList>> {
        self.shared.nodes_in.subscribe()
    }

    /// Edge side: tells the cloud the edge's links to each node. Links not
    /// yet written are replaced; on a version 3 tunnel nothing is sent.
    pub fn send_node_links(&self, links: Vec<NodeLink>) {
        self.shared.send_cluster(Frame::NodeLinks { links });
    }

    /// Cloud side: the edge's latest node links on this tunnel.
    pub fn last_node_links(&self) -> Option<Vec<NodeLink>> {
        self.shared.node_links_in.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tells the peer to open no new streams towards this side.
    pub fn drain(&self) {
        // One is enough, and repeated calls must not pile up behind a
        // stalled writer.
        if !self.shared.drain_queued.swap(true, Ordering::Relaxed) {
            self.shared.send_control(Frame::Drain);
        }
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
        origin: Option<proto::StreamOrigin>,
    ) -> Result<MuxStream, OpenError> {
        let shared = &self.shared;
        if shared.peer_draining.load(Ordering::Relaxed) {
            return Err(OpenError::Draining);
        }
        let version = shared.settings.version;
        // An older edge would take the origin for trailing garbage: it is
        // only told where that is harmless to leave out.
        let origin = match origin {
            Some(o) if version < proto::ORIGIN_VERSION && o.send_proxy.is_some() => {
                let (need, what) = (proto::ORIGIN_VERSION, "a PROXY header to the destination");
                return Err(OpenError::Unsupported { version, need, what });
            }
            Some(_) if version < proto::ORIGIN_VERSION => None,
            origin => origin,
        };
        let (result_tx, result_rx) = oneshot::channel();
        // The edge requires strictly increasing ids, so the id is taken and
        // its Open queued under one lock: take room in the queue first (the
        // only wait), so nothing awaits while the lock is held.
        let room = shared.stream_room().await?;
        let stream = {
            let mut table = shared.table();
            if table.closed {
                return Err(shared.closed_error().into());
            }
            if table.map.len() >= shared.settings.max_streams as usize {
                return Err(OpenError::TooManyStreams(shared.settings.max_streams));
            }
            let Ok(id) = table.ids.allocate() else {
                return Err(OpenError::IdsExhausted);
            };
            if table.ids.is_exhausted() {
                // This was the last id: no more streams here, and the tunnel
                // goes once this one ends (`remove_stream`).
                shared.ids_exhausted.store(true, Ordering::Relaxed);
            }
            // No send credit until the edge grants its window (the reader
            // applies it with the open result).
            let stream = shared.new_stream(id, 0);
            table
                .map
                .insert(id, Entry { stream: Arc::clone(&stream), pending_open: Some(result_tx) });
            shared.active.store(table.map.len(), Ordering::Relaxed);
            let open = Frame::Open {
                stream: id,
                window: shared.initial_window(),
                mapping: mapping.to_owned(),
                host: host.to_owned(),
                port,
                origin: origin.map(Box::new),
            };
            let _ = shared.stream_tx.send(Queued { frame: open, _room: Some(room) });
            stream
        };
        let id = stream.id;
        let mux_stream = MuxStream::new(Arc::clone(&stream), Arc::clone(shared));
        match result_rx.await {
            Ok((OpenCode::Ok, _)) => Ok(mux_stream),
            Ok((code, message)) => {
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
        self.sender.stream.mark_reset(ResetCode::Other, "open failed");
    }
}
