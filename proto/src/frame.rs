//! Frames and their binary encoding.
//!
//! Every frame is a 9-byte header followed by a payload:
//!
//! ```text
//! kind: u8 | stream_id: u32 (big endian) | length: u32 (big endian) | payload[length]
//! ```
//!
//! Stream 0 carries tunnel-level frames (handshake, ping, drain, go-away);
//! every other id names one multiplexed TCP connection.

use bytes::{Buf, BufMut, Bytes};
use thiserror::Error;

use crate::enrolment::ENROL_SECRET_LEN;
use crate::handshake::{AUTH_PROOF_LEN, NONCE_LEN, RefuseCode};
use crate::nodes::{self, NodeAddr, NodeLink};
use crate::origin::{self, StreamOrigin};

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 9;

/// Longest UTF-8 text (host names, mapping names, reasons) a frame may carry.
pub const MAX_TEXT_LEN: usize = 255;

mod kind {
    pub(super) const OPEN: u8 = 0x01;
    pub(super) const OPEN_RESULT: u8 = 0x02;
    pub(super) const DATA: u8 = 0x03;
    pub(super) const WINDOW: u8 = 0x04;
    pub(super) const FIN: u8 = 0x05;
    pub(super) const RESET: u8 = 0x06;
    pub(super) const PING: u8 = 0x07;
    pub(super) const PONG: u8 = 0x08;
    pub(super) const DRAIN: u8 = 0x09;
    pub(super) const GO_AWAY: u8 = 0x0A;
    pub(super) const REPORT: u8 = 0x0B;
    pub(super) const NODES: u8 = 0x0C;
    pub(super) const NODE_LINKS: u8 = 0x0D;
    pub(super) const PROBE: u8 = 0x0E;
    pub(super) const PROBE_RESULT: u8 = 0x0F;
    pub(super) const CHALLENGE: u8 = 0x10;
    pub(super) const AUTH: u8 = 0x11;
    pub(super) const WELCOME: u8 = 0x12;
    pub(super) const REFUSE: u8 = 0x13;
    pub(super) const ENROLL: u8 = 0x14;
    pub(super) const ENROLLED: u8 = 0x15;
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Cloud to edge: open stream `stream` to `host:port` for `mapping`.
    /// `window` is the receive window the opener grants for this stream.
    /// From version 8 it carries the stream's `origin`: its client, and
    /// whether to pass that on to the destination in a PROXY header.
    Open {
        stream: u32,
        window: u32,
        mapping: String,
        host: String,
        port: u16,
        /// Boxed: opens are rare, and every queued frame is as large as
        /// the largest variant.
        origin: Option<Box<StreamOrigin>>,
    },
    /// Edge to cloud: the outcome of an [`Frame::Open`]. On success `window`
    /// is the receive window the edge grants.
    OpenResult { stream: u32, code: OpenCode, window: u32, message: String },
    /// Stream bytes.
    Data { stream: u32, payload: Bytes },
    /// The sender may have sent up to `limit` bytes on the stream in total
    /// (a cumulative offset, not a delta; it never goes down).
    Window { stream: u32, limit: u64 },
    /// The sender will send no more data on the stream (TCP half-close).
    Fin { stream: u32 },
    /// Abort the stream in both directions.
    Reset { stream: u32, code: ResetCode, message: String },
    /// Liveness and round-trip probe; the peer echoes `nonce` in a pong.
    Ping { nonce: u64 },
    /// Answer to [`Frame::Ping`].
    Pong { nonce: u64 },
    /// The sender is shutting down: open no new streams towards it.
    Drain,
    /// The sender closes the tunnel, and says why.
    GoAway { code: GoAwayCode, message: String },
    /// Edge to cloud, every few seconds: the edge's own figures.
    Report(EdgeReport),
    /// Cloud to edge (version 4, in a cluster): the cluster's nodes, right
    /// after the `Welcome` and again whenever the list changes. Bounded as
    /// [`crate::nodes`] says.
    Nodes { this_node: String, nodes: Vec<NodeAddr> },
    /// Edge to cloud (version 4), with each report while the edge knows a
    /// node list: its tunnels to each node, and why it cannot reach one.
    NodeLinks { links: Vec<NodeLink> },
    /// Cloud to edge (version 6): check that `host:port` is reachable from
    /// the edge, under the edge's allowlist, within `timeout_ms`. Not a
    /// stream: no data, no client. From version 7 it may carry an
    /// `exchange`: after connecting, send its bytes and expect its text.
    Probe {
        id: u32,
        timeout_ms: u32,
        mapping: String,
        host: String,
        port: u16,
        exchange: Option<ProbeExchange>,
    },
    /// Edge to cloud (version 6): the outcome of [`Frame::Probe`] `id`, and
    /// how long the edge's connect took, in microseconds.
    ProbeResult { id: u32, code: OpenCode, connect_us: u32, message: String },
    /// Handshake step 1, cloud to edge: supported versions and a fresh nonce.
    Challenge { min_version: u16, max_version: u16, nonce: [u8; NONCE_LEN] },
    /// Handshake step 2, edge to cloud: who it is and proof of its token.
    Auth {
        version: u16,
        edge_id: String,
        /// Identifies one run of the edge process; the newest run wins.
        epoch: u64,
        agent_version: String,
        nonce: [u8; NONCE_LEN],
        proof: [u8; AUTH_PROOF_LEN],
    },
    /// Handshake step 3a, cloud to edge: accepted, with the tunnel's limits
    /// and the cloud's own proof that it knows the token.
    Welcome {
        version: u16,
        tunnel_id: u64,
        heartbeat_ms: u32,
        max_streams: u32,
        max_frame_payload: u32,
        proof: [u8; AUTH_PROOF_LEN],
    },
    /// Handshake step 3b, cloud to edge: refused, and why.
    Refuse { code: RefuseCode, message: String },
    /// Enrolment (version 6), edge to cloud, instead of [`Frame::Auth`]:
    /// the secret of a one-time enrolment code, sent only once the cloud's
    /// key matched the code's pin. `hostname` is shown to the operator.
    Enroll { version: u16, secret: [u8; ENROL_SECRET_LEN], hostname: String, agent_version: String },
    /// Enrolment, cloud to edge: the code was redeemed; the edge's id and
    /// its own long-term token. The cloud closes the connection after it.
    Enrolled { edge_id: String, token: String },
}

/// What an edge tells the cloud about itself in a [`Frame::Report`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeReport {
    /// Tunnels the edge is configured to keep open.
    pub tunnels_configured: u16,
    /// Host CPU use over all cores, in tenths of a percent (0..=1000).
    pub cpu_permille: u16,
    /// Host memory in use, bytes.
    pub memory_used: u64,
    /// Host memory in total, bytes.
    pub memory_total: u64,
    /// Destination connects that succeeded since the edge started.
    pub connects_ok: u64,
    /// Destination connects that failed (refused, timed out, unreachable)
    /// since the edge started; allowlist denials are not counted.
    pub connects_failed: u64,
    /// The edge agent's version.
    pub agent_version: String,
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The byte that stands for this value on the wire.
            pub fn to_u8(self) -> u8 {
                match self { $(Self::$variant => $value),+ }
            }

            /// The value for a wire byte, if it is one this version knows.
            pub fn from_u8(value: u8) -> Option<Self> {
                match value { $($value => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}
pub(crate) use wire_enum;

/// A probe's short conversation (version 7): after the connect, the edge
/// writes `send` (may be empty: a service that speaks first, like SSH)
/// and reads until `expect` appears. Each at most 255 bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeExchange {
    pub send: String,
    pub expect: String,
}

wire_enum! {
    /// Outcome of opening a stream at the edge.
    OpenCode {
        /// Connected to the destination.
        Ok = 0,
        /// The destination refused the connection.
        Refused = 1,
        /// The destination is not on the edge's allowlist.
        Denied = 2,
        /// Connecting to the destination timed out.
        Timeout = 3,
        /// The destination could not be resolved or reached.
        Unreachable = 4,
        /// The edge is draining and takes no new streams.
        Draining = 5,
        /// Any other failure; the message says more.
        Error = 6,
    }
}

wire_enum! {
    /// Why a stream was reset.
    ResetCode {
        /// One side's TCP connection was reset or failed.
        ConnectionReset = 0,
        /// The agent is shutting down and its grace period ended.
        Shutdown = 1,
        /// The peer broke a stream rule (flow control, data after FIN).
        ProtocolError = 2,
        /// A drain deadline passed.
        Drained = 3,
        /// Any other cause; the message says more.
        Other = 4,
    }
}

wire_enum! {
    /// Why a tunnel is being closed.
    GoAwayCode {
        /// Orderly close (shutdown finished).
        Normal = 0,
        /// The peer sent an invalid or out-of-order frame.
        ProtocolError = 1,
        /// No frame arrived within the heartbeat timeout.
        Timeout = 2,
        /// A newer session of the same edge replaced this one.
        Superseded = 3,
        /// An internal failure; the message says more.
        Internal = 4,
    }
}

/// Why bytes could not be decoded into a frame. Any of these closes the
/// tunnel: there is no way to resynchronise a corrupted byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length field exceeds the negotiated maximum. Checked before the
    /// payload is read or any memory is allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u32, max: u32 },
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A frame that belongs on stream 0 arrived on another stream or the
    /// other way round.
    #[error("frame kind {kind:#04x} not allowed on stream {stream}")]
    BadStream { kind: u8, stream: u32 },
    /// The payload is shorter or longer than its kind requires, or a field
    /// inside it is invalid.
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: &'static str },
}

impl DecodeError {
    fn malformed(kind: &'static str, reason: &'static str) -> Self {
        Self::Malformed { kind, reason }
    }
}

/// How many bytes the next frame at the start of `buf` occupies, header
/// included, or `None` if the header itself is not complete yet.
///
/// # Errors
/// [`DecodeError::TooLarge`] if the declared payload exceeds `max_payload`.
pub fn frame_len(buf: &[u8], max_payload: u32) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if len > max_payload {
        return Err(DecodeError::TooLarge { len, max: max_payload });
    }
    Ok(Some(HEADER_LEN + len as usize))
}

/// Decodes the frame at the start of `buf` and advances past it.
///
/// Returns `Ok(None)` and leaves `buf` untouched when it does not yet hold a
/// whole frame ("need more bytes" is not an error). Data payloads share
/// `buf`'s memory instead of being copied.
///
/// # Errors
/// A [`DecodeError`] when the bytes can never form a valid frame.
pub fn decode(buf: &mut Bytes, max_payload: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(total) = frame_len(buf, max_payload)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let kind = buf[0];
    let stream = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let mut frame = buf.split_to(total);
    frame.advance(HEADER_LEN);
    decode_payload(kind, stream, frame).map(Some)
}

fn decode_payload(kind: u8, stream: u32, mut p: Bytes) -> Result<Frame, DecodeError> {
    let on_stream = matches!(
        kind,
        kind::OPEN | kind::OPEN_RESULT | kind::DATA | kind::WINDOW | kind::FIN | kind::RESET
    );
    let known = on_stream
        || matches!(
            kind,
            kind::PING
                | kind::PONG
                | kind::DRAIN
                | kind::GO_AWAY
                | kind::REPORT
                | kind::NODES
                | kind::NODE_LINKS
                | kind::PROBE
                | kind::PROBE_RESULT
                | kind::CHALLENGE
                | kind::AUTH
                | kind::WELCOME
                | kind::REFUSE
                | kind::ENROLL
                | kind::ENROLLED
        );
    if !known {
        return Err(DecodeError::UnknownKind(kind));
    }
    if on_stream == (stream == 0) {
        return Err(DecodeError::BadStream { kind, stream });
    }
    let frame = match kind {
        kind::OPEN => {
            let mut r = Reader::new("open", &mut p);
            let window = r.u32()?;
            let port = r.u16()?;
            let host = r.text()?;
            let mapping = r.text()?;
            // Version 8: the origin follows; older clouds end here.
            let origin = if r.buf.has_remaining() {
                Some(Box::new(origin::read_origin(&mut r)?))
            } else {
                None
            };
            r.finish()?;
            if host.is_empty() {
                return Err(DecodeError::malformed("open", "empty host"));
            }
            Frame::Open { stream, window, mapping, host, port, origin }
        }
        kind::OPEN_RESULT => {
            let mut r = Reader::new("open result", &mut p);
            let code = r.u8()?;
            let code = OpenCode::from_u8(code)
                .ok_or(DecodeError::malformed("open result", "unknown code"))?;
            let window = r.u32()?;
            let message = r.text()?;
            r.finish()?;
            Frame::OpenResult { stream, code, window, message }
        }
        // An empty `Data` moves nothing and would cost the receiver a queue
        // entry each: no sender needs one, so it is refused (version 3).
        kind::DATA if p.is_empty() => return Err(DecodeError::malformed("data", "empty payload")),
        kind::DATA => Frame::Data { stream, payload: p },
        kind::WINDOW => {
            let mut r = Reader::new("window", &mut p);
            let limit = r.u64()?;
            r.finish()?;
            Frame::Window { stream, limit }
        }
        kind::FIN => {
            Reader::new("fin", &mut p).finish()?;
            Frame::Fin { stream }
        }
        kind::RESET => {
            let mut r = Reader::new("reset", &mut p);
            let code = ResetCode::from_u8(r.u8()?)
                .ok_or(DecodeError::malformed("reset", "unknown code"))?;
            let message = r.text()?;
            r.finish()?;
            Frame::Reset { stream, code, message }
        }
        kind::PING | kind::PONG => {
            let name = if kind == kind::PING { "ping" } else { "pong" };
            let mut r = Reader::new(name, &mut p);
            let nonce = r.u64()?;
            r.finish()?;
            if kind == kind::PING { Frame::Ping { nonce } } else { Frame::Pong { nonce } }
        }
        kind::DRAIN => {
            Reader::new("drain", &mut p).finish()?;
            Frame::Drain
        }
        kind::GO_AWAY => {
            let mut r = Reader::new("go-away", &mut p);
            let code = GoAwayCode::from_u8(r.u8()?)
                .ok_or(DecodeError::malformed("go-away", "unknown code"))?;
            let message = r.text()?;
            r.finish()?;
            Frame::GoAway { code, message }
        }
        kind::REPORT => {
            let mut r = Reader::new("report", &mut p);
            let report = EdgeReport {
                tunnels_configured: r.u16()?,
                cpu_permille: r.u16()?,
                memory_used: r.u64()?,
                memory_total: r.u64()?,
                connects_ok: r.u64()?,
                connects_failed: r.u64()?,
                agent_version: r.text()?,
            };
            r.finish()?;
            Frame::Report(report)
        }
        kind::NODES => {
            let mut r = Reader::new("nodes", &mut p);
            let (this_node, nodes) = nodes::read_nodes(&mut r)?;
            r.finish()?;
            Frame::Nodes { this_node, nodes }
        }
        kind::NODE_LINKS => {
            let mut r = Reader::new("node links", &mut p);
            let links = nodes::read_links(&mut r)?;
            r.finish()?;
            Frame::NodeLinks { links }
        }
        kind::PROBE => {
            let mut r = Reader::new("probe", &mut p);
            let id = r.u32()?;
            let timeout_ms = r.u32()?;
            let port = r.u16()?;
            let host = r.text()?;
            let mapping = r.text()?;
            // Version 7: an exchange follows; older clouds end here.
            let exchange = if r.buf.has_remaining() {
                let send = r.text()?;
                let expect = r.text()?;
                if expect.is_empty() {
                    return Err(DecodeError::malformed("probe", "empty expect"));
                }
                Some(ProbeExchange { send, expect })
            } else {
                None
            };
            r.finish()?;
            if host.is_empty() {
                return Err(DecodeError::malformed("probe", "empty host"));
            }
            Frame::Probe { id, timeout_ms, mapping, host, port, exchange }
        }
        kind::PROBE_RESULT => {
            let mut r = Reader::new("probe result", &mut p);
            let id = r.u32()?;
            let code = OpenCode::from_u8(r.u8()?)
                .ok_or(DecodeError::malformed("probe result", "unknown code"))?;
            let connect_us = r.u32()?;
            let message = r.text()?;
            r.finish()?;
            Frame::ProbeResult { id, code, connect_us, message }
        }
        kind::CHALLENGE => {
            let mut r = Reader::new("challenge", &mut p);
            let min_version = r.u16()?;
            let max_version = r.u16()?;
            let nonce = r.array()?;
            r.finish()?;
            Frame::Challenge { min_version, max_version, nonce }
        }
        kind::AUTH => {
            let mut r = Reader::new("auth", &mut p);
            let version = r.u16()?;
            let epoch = r.u64()?;
            let nonce = r.array()?;
            let proof = r.array()?;
            let edge_id = r.text()?;
            let agent_version = r.text()?;
            r.finish()?;
            Frame::Auth { version, edge_id, epoch, agent_version, nonce, proof }
        }
        kind::WELCOME => {
            let mut r = Reader::new("welcome", &mut p);
            let version = r.u16()?;
            let tunnel_id = r.u64()?;
            let heartbeat_ms = r.u32()?;
            let max_streams = r.u32()?;
            let max_frame_payload = r.u32()?;
            let proof = r.array()?;
            r.finish()?;
            Frame::Welcome {
                version,
                tunnel_id,
                heartbeat_ms,
                max_streams,
                max_frame_payload,
                proof,
            }
        }
        kind::REFUSE => {
            let mut r = Reader::new("refuse", &mut p);
            let code = RefuseCode::from_u8(r.u8()?)
                .ok_or(DecodeError::malformed("refuse", "unknown code"))?;
            let message = r.text()?;
            r.finish()?;
            Frame::Refuse { code, message }
        }
        kind::ENROLL => {
            let mut r = Reader::new("enroll", &mut p);
            let version = r.u16()?;
            let secret = r.array()?;
            let hostname = r.text()?;
            let agent_version = r.text()?;
            r.finish()?;
            Frame::Enroll { version, secret, hostname, agent_version }
        }
        kind::ENROLLED => {
            let mut r = Reader::new("enrolled", &mut p);
            let edge_id = r.text()?;
            let token = r.text()?;
            r.finish()?;
            if edge_id.is_empty() || token.is_empty() {
                return Err(DecodeError::malformed("enrolled", "empty edge id or token"));
            }
            Frame::Enrolled { edge_id, token }
        }
        _ => return Err(DecodeError::UnknownKind(kind)),
    };
    Ok(frame)
}

/// Reads fixed fields from a payload, failing with the frame's name.
pub(crate) struct Reader<'a> {
    kind: &'static str,
    buf: &'a mut Bytes,
}

impl<'a> Reader<'a> {
    fn new(kind: &'static str, buf: &'a mut Bytes) -> Self {
        Self { kind, buf }
    }

    pub(crate) fn malformed(&self, reason: &'static str) -> DecodeError {
        DecodeError::malformed(self.kind, reason)
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::malformed(self.kind, "payload too short"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    /// A length-prefixed (u8) UTF-8 string.
    pub(crate) fn text(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u8()?);
        self.utf8(len)
    }

    /// A long text: length-prefixed (u16) UTF-8 (version 4).
    pub(crate) fn long_text(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        self.utf8(len)
    }

    fn utf8(&mut self, len: usize) -> Result<String, DecodeError> {
        self.need(len)?;
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec())
            .map_err(|_| DecodeError::malformed(self.kind, "text is not UTF-8"))
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            Err(DecodeError::malformed(self.kind, "trailing bytes"))
        } else {
            Ok(())
        }
    }
}

/// Truncates `s` to at most [`MAX_TEXT_LEN`] bytes on a character boundary,
/// so long reasons degrade instead of failing to encode.
fn clip(s: &str) -> &str {
    nodes::clip_to(s, MAX_TEXT_LEN)
}

pub(crate) fn put_text(out: &mut impl BufMut, s: &str) {
    let s = clip(s);
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

pub(crate) fn text_len(s: &str) -> usize {
    1 + clip(s).len()
}

impl Frame {
    /// The stream this frame belongs to; 0 for tunnel-level frames.
    pub fn stream(&self) -> u32 {
        match self {
            Frame::Open { stream, .. }
            | Frame::OpenResult { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::Window { stream, .. }
            | Frame::Fin { stream }
            | Frame::Reset { stream, .. } => *stream,
            _ => 0,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Open { .. } => kind::OPEN,
            Frame::OpenResult { .. } => kind::OPEN_RESULT,
            Frame::Data { .. } => kind::DATA,
            Frame::Window { .. } => kind::WINDOW,
            Frame::Fin { .. } => kind::FIN,
            Frame::Reset { .. } => kind::RESET,
            Frame::Ping { .. } => kind::PING,
            Frame::Pong { .. } => kind::PONG,
            Frame::Drain => kind::DRAIN,
            Frame::GoAway { .. } => kind::GO_AWAY,
            Frame::Report(_) => kind::REPORT,
            Frame::Nodes { .. } => kind::NODES,
            Frame::NodeLinks { .. } => kind::NODE_LINKS,
            Frame::Probe { .. } => kind::PROBE,
            Frame::ProbeResult { .. } => kind::PROBE_RESULT,
            Frame::Challenge { .. } => kind::CHALLENGE,
            Frame::Auth { .. } => kind::AUTH,
            Frame::Welcome { .. } => kind::WELCOME,
            Frame::Refuse { .. } => kind::REFUSE,
            Frame::Enroll { .. } => kind::ENROLL,
            Frame::Enrolled { .. } => kind::ENROLLED,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Open { mapping, host, origin, .. } => {
                let origin = origin.as_deref().map_or(0, origin::origin_len);
                4 + 2 + text_len(host) + text_len(mapping) + origin
            }
            Frame::OpenResult { message, .. } => 1 + 4 + text_len(message),
            Frame::Data { payload, .. } => payload.len(),
            Frame::Window { .. } | Frame::Ping { .. } | Frame::Pong { .. } => 8,
            Frame::Fin { .. } | Frame::Drain => 0,
            Frame::Reset { message, .. }
            | Frame::GoAway { message, .. }
            | Frame::Refuse { message, .. } => 1 + text_len(message),
            Frame::Report(r) => 2 + 2 + 8 * 4 + text_len(&r.agent_version),
            Frame::Nodes { this_node, nodes } => nodes::nodes_len(this_node, nodes),
            Frame::NodeLinks { links } => nodes::links_len(links),
            Frame::Probe { mapping, host, exchange, .. } => {
                let exchange =
                    exchange.as_ref().map_or(0, |x| text_len(&x.send) + text_len(&x.expect));
                4 + 4 + 2 + text_len(host) + text_len(mapping) + exchange
            }
            Frame::ProbeResult { message, .. } => 4 + 1 + 4 + text_len(message),
            Frame::Challenge { .. } => 2 + 2 + NONCE_LEN,
            Frame::Auth { edge_id, agent_version, .. } => {
                2 + 8 + NONCE_LEN + AUTH_PROOF_LEN + text_len(edge_id) + text_len(agent_version)
            }
            Frame::Welcome { .. } => 2 + 8 + 4 + 4 + 4 + AUTH_PROOF_LEN,
            Frame::Enroll { hostname, agent_version, .. } => {
                2 + ENROL_SECRET_LEN + text_len(hostname) + text_len(agent_version)
            }
            Frame::Enrolled { edge_id, token } => text_len(edge_id) + text_len(token),
        }
    }

    /// Bytes this frame occupies on the wire, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Appends the frame to `out`. Texts longer than [`MAX_TEXT_LEN`] bytes
    /// are truncated on a character boundary.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u8(self.kind());
        out.put_u32(self.stream());
        out.put_u32(self.payload_len() as u32);
        match self {
            Frame::Open { window, mapping, host, port, origin, .. } => {
                out.put_u32(*window);
                out.put_u16(*port);
                put_text(out, host);
                put_text(out, mapping);
                if let Some(o) = origin {
                    origin::put_origin(out, o);
                }
            }
            Frame::OpenResult { code, window, message, .. } => {
                out.put_u8(code.to_u8());
                out.put_u32(*window);
                put_text(out, message);
            }
            Frame::Data { payload, .. } => out.put_slice(payload),
            Frame::Window { limit, .. } => out.put_u64(*limit),
            Frame::Fin { .. } | Frame::Drain => {}
            Frame::Reset { code, message, .. } => {
                out.put_u8(code.to_u8());
                put_text(out, message);
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => out.put_u64(*nonce),
            Frame::GoAway { code, message } => {
                out.put_u8(code.to_u8());
                put_text(out, message);
            }
            Frame::Report(r) => {
                out.put_u16(r.tunnels_configured);
                out.put_u16(r.cpu_permille);
                out.put_u64(r.memory_used);
                out.put_u64(r.memory_total);
                out.put_u64(r.connects_ok);
                out.put_u64(r.connects_failed);
                put_text(out, &r.agent_version);
            }
            Frame::Nodes { this_node, nodes } => nodes::put_nodes(out, this_node, nodes),
            Frame::NodeLinks { links } => nodes::put_links(out, links),
            Frame::Probe { id, timeout_ms, mapping, host, port, exchange } => {
                out.put_u32(*id);
                out.put_u32(*timeout_ms);
                out.put_u16(*port);
                put_text(out, host);
                put_text(out, mapping);
                if let Some(x) = exchange {
                    put_text(out, &x.send);
                    put_text(out, &x.expect);
                }
            }
            Frame::ProbeResult { id, code, connect_us, message } => {
                out.put_u32(*id);
                out.put_u8(code.to_u8());
                out.put_u32(*connect_us);
                put_text(out, message);
            }
            Frame::Challenge { min_version, max_version, nonce } => {
                out.put_u16(*min_version);
                out.put_u16(*max_version);
                out.put_slice(nonce);
            }
            Frame::Auth { version, edge_id, epoch, agent_version, nonce, proof } => {
                out.put_u16(*version);
                out.put_u64(*epoch);
                out.put_slice(nonce);
                out.put_slice(proof);
                put_text(out, edge_id);
                put_text(out, agent_version);
            }
            Frame::Welcome {
                version,
                tunnel_id,
                heartbeat_ms,
                max_streams,
                max_frame_payload,
                proof,
            } => {
                out.put_u16(*version);
                out.put_u64(*tunnel_id);
                out.put_u32(*heartbeat_ms);
                out.put_u32(*max_streams);
                out.put_u32(*max_frame_payload);
                out.put_slice(proof);
            }
            Frame::Refuse { code, message } => {
                out.put_u8(code.to_u8());
                put_text(out, message);
            }
            Frame::Enroll { version, secret, hostname, agent_version } => {
                out.put_u16(*version);
                out.put_slice(secret);
                put_text(out, hostname);
                put_text(out, agent_version);
            }
            Frame::Enrolled { edge_id, token } => {
                put_text(out, edge_id);
                put_text(out, token);
            }
        }
    }

    /// Encodes only the header of a data frame, so a caller can write the
    /// payload from its own buffer without copying it into a frame first.
    pub fn encode_data_header(stream: u32, payload_len: u32, out: &mut impl BufMut) {
        out.put_u8(kind::DATA);
        out.put_u32(stream);
        out.put_u32(payload_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn round_trip(frame: &Frame) -> Frame {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        assert_eq!(buf.len(), frame.encoded_len());
        let mut bytes = buf.freeze();
        let decoded = decode(&mut bytes, u32::MAX).unwrap().unwrap();
        assert!(bytes.is_empty());
        decoded
    }

    #[test]
    fn data_frame_bytes_are_exact() {
        let frame = Frame::Data { stream: 7, payload: Bytes::from_static(b"hi") };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        assert_eq!(&buf[..], &[0x03, 0, 0, 0, 7, 0, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn an_empty_data_frame_is_malformed() {
        let mut bytes = Bytes::from_static(&[0x03, 0, 0, 0, 7, 0, 0, 0, 0]);
        assert_eq!(
            decode(&mut bytes, 1024),
            Err(DecodeError::Malformed { kind: "data", reason: "empty payload" })
        );
    }

    #[test]
    fn open_frame_bytes_are_exact() {
        let frame = Frame::Open {
            stream: 1,
            window: 0x0004_0000,
            mapping: "db".into(),
            host: "h".into(),
            port: 5432,
            origin: None,
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let expected: &[u8] = &[
            0x01, 0, 0, 0, 1, 0, 0, 0, 11, // header
            0, 4, 0, 0, // window
            0x15, 0x38, // port 5432
            1, b'h', // host
            2, b'd', b'b', // mapping
        ];
        assert_eq!(&buf[..], expected);
    }

    #[test]
    fn an_open_with_its_origin_has_exact_bytes() {
        let frame = Frame::Open {
            stream: 1,
            window: 0x0004_0000,
            mapping: "db".into(),
            host: "h".into(),
            port: 5432,
            origin: Some(Box::new(StreamOrigin {
                client: "192.0.2.7:40000".parse().unwrap(),
                public: "[2001:db8::1]:443".parse().unwrap(),
                server_name: "a.example".into(),
                send_proxy: Some(crate::SendProxy::V2),
            })),
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let mut expected: Vec<u8> = vec![
            0x01, 0, 0, 0, 1, 0, 0, 0, 48, // header
            0, 4, 0, 0, // window
            0x15, 0x38, // port 5432
            1, b'h', // host
            2, b'd', b'b', // mapping
            2,    // PROXY v2
            4, 192, 0, 2, 7, 0x9c, 0x40, // client 192.0.2.7:40000
            6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01,
            0xbb, // public
            9,    // server name
        ];
        expected.extend_from_slice(b"a.example");
        assert_eq!(&buf[..], &expected[..]);
        assert_eq!(round_trip(&frame), frame);
    }

    #[test]
    fn an_origin_with_an_unknown_family_or_proxy_version_is_malformed() {
        let open = |tail: &[u8]| {
            let mut p = vec![0, 0, 0, 1, 0, 1, 1, b'h', 1, b'm'];
            p.extend_from_slice(tail);
            let mut buf = vec![0x01, 0, 0, 0, 1];
            buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
            buf.extend_from_slice(&p);
            decode(&mut Bytes::from(buf), 1024)
        };
        let v4 = [4, 127, 0, 0, 1, 0, 1];
        let good = [&[1u8][..], &v4, &v4, &[0]].concat();
        assert!(matches!(open(&good), Ok(Some(Frame::Open { origin: Some(_), .. }))));
        let family = [&[1u8][..], &[5, 127, 0, 0, 1, 0, 1], &v4, &[0]].concat();
        assert_eq!(open(&family), Err(DecodeError::malformed("open", "unknown address family")));
        let version = [&[3u8][..], &v4, &v4, &[0]].concat();
        let err = DecodeError::malformed("open", "unknown proxy header version");
        assert_eq!(open(&version), Err(err));
        assert!(open(&good[..good.len() - 1]).is_err(), "a cut origin");
    }

    #[test]
    fn incomplete_input_is_not_an_error() {
        let frame = Frame::Ping { nonce: 42 };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        for cut in 0..buf.len() {
            let mut partial = Bytes::copy_from_slice(&buf[..cut]);
            assert_eq!(decode(&mut partial, 1024), Ok(None), "cut at {cut}");
            assert_eq!(partial.len(), cut, "partial input must not be consumed");
        }
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        // Only the header is present: the decoder must refuse on the length
        // field without waiting for (or allocating) the payload.
        let mut header = BytesMut::new();
        Frame::encode_data_header(1, 1_000_001, &mut header);
        let mut bytes = header.freeze();
        assert_eq!(
            decode(&mut bytes, 1_000_000),
            Err(DecodeError::TooLarge { len: 1_000_001, max: 1_000_000 })
        );
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let mut bytes = Bytes::from_static(&[0x7f, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&mut bytes, 1024), Err(DecodeError::UnknownKind(0x7f)));
    }

    #[test]
    fn stream_frames_need_a_stream_and_tunnel_frames_need_zero() {
        let mut data_on_zero = Bytes::from_static(&[kind::DATA, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(decode(&mut data_on_zero, 1024), Err(DecodeError::BadStream { .. })));
        let mut ping_on_stream =
            Bytes::from_static(&[kind::PING, 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(decode(&mut ping_on_stream, 1024), Err(DecodeError::BadStream { .. })));
    }

    #[test]
    fn trailing_and_missing_bytes_are_malformed() {
        let mut long_fin = Bytes::from_static(&[kind::FIN, 0, 0, 0, 1, 0, 0, 0, 1, 0]);
        assert!(matches!(decode(&mut long_fin, 1024), Err(DecodeError::Malformed { .. })));
        let mut short_window = Bytes::from_static(&[kind::WINDOW, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0]);
        assert!(matches!(decode(&mut short_window, 1024), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn invalid_utf8_text_is_malformed() {
        let mut bytes = Bytes::from_static(&[kind::GO_AWAY, 0, 0, 0, 0, 0, 0, 0, 3, 0, 1, 0xff]);
        assert!(matches!(decode(&mut bytes, 1024), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn long_texts_are_clipped_on_a_char_boundary() {
        let message = "é".repeat(200); // 400 bytes
        let frame = Frame::GoAway { code: GoAwayCode::Normal, message };
        let Frame::GoAway { message, .. } = round_trip(&frame) else { panic!("wrong kind") };
        assert_eq!(message.len(), 254);
        assert!(message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn several_frames_in_one_buffer_decode_in_order() {
        let frames = [
            Frame::Window { stream: 1, limit: 9 },
            Frame::Data { stream: 1, payload: Bytes::from_static(b"abc") },
            Frame::Fin { stream: 1 },
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        let mut bytes = buf.freeze();
        for f in &frames {
            assert_eq!(decode(&mut bytes, 1024).unwrap().as_ref(), Some(f));
        }
        assert_eq!(decode(&mut bytes, 1024), Ok(None));
    }

    #[test]
    fn an_enrolled_frame_without_a_token_is_malformed() {
        let frame = Frame::Enrolled { edge_id: "e".into(), token: String::new() };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        assert!(decode(&mut buf.freeze(), 1024).is_err());
    }

    #[test]
    fn every_kind_round_trips() {
        let frames = vec![
            Frame::Open {
                stream: 1,
                window: 5,
                mapping: "m".into(),
                host: "::1".into(),
                port: 1,
                origin: None,
            },
            Frame::OpenResult {
                stream: 2,
                code: OpenCode::Denied,
                window: 0,
                message: "no".into(),
            },
            Frame::Data { stream: 3, payload: Bytes::from_static(b"x") },
            Frame::Window { stream: 4, limit: u64::MAX },
            Frame::Fin { stream: 5 },
            Frame::Reset { stream: 6, code: ResetCode::Drained, message: String::new() },
            Frame::Ping { nonce: 1 },
            Frame::Pong { nonce: 2 },
            Frame::Drain,
            Frame::GoAway { code: GoAwayCode::Superseded, message: "new session".into() },
            Frame::Report(EdgeReport {
                tunnels_configured: 2,
                cpu_permille: 125,
                memory_used: 1 << 30,
                memory_total: 1 << 34,
                connects_ok: 10,
                connects_failed: 1,
                agent_version: "0.1.0".into(),
            }),
            Frame::Challenge { min_version: 1, max_version: 3, nonce: [7; NONCE_LEN] },
            Frame::Auth {
                version: 1,
                edge_id: "edge-a".into(),
                epoch: 99,
                agent_version: "0.1.0".into(),
                nonce: [1; NONCE_LEN],
                proof: [2; AUTH_PROOF_LEN],
            },
            Frame::Welcome {
                version: 1,
                tunnel_id: 8,
                heartbeat_ms: 2000,
                max_streams: 10,
                max_frame_payload: 65536,
                proof: [3; AUTH_PROOF_LEN],
            },
            Frame::Refuse { code: RefuseCode::BadToken, message: "bad token".into() },
            Frame::Refuse { code: RefuseCode::CodeUsed, message: "used".into() },
            Frame::Enroll {
                version: 6,
                secret: [9; ENROL_SECRET_LEN],
                hostname: "site-a-gw".into(),
                agent_version: "0.1.0".into(),
            },
            Frame::Enrolled { edge_id: "site-a".into(), token: "ab".repeat(32) },
            Frame::Probe {
                id: 7,
                timeout_ms: 3000,
                mapping: "db".into(),
                host: "10.0.0.5".into(),
                port: 5432,
                exchange: None,
            },
            Frame::Probe {
                id: 8,
                timeout_ms: 3000,
                mapping: "redis".into(),
                host: "10.0.0.6".into(),
                port: 6379,
                exchange: Some(ProbeExchange { send: "PING\r\n".into(), expect: "+PONG".into() }),
            },
            Frame::ProbeResult {
                id: 7,
                code: OpenCode::Refused,
                connect_us: 812,
                message: "no".into(),
            },
        ];
        for frame in frames {
            assert_eq!(round_trip(&frame), frame);
        }
    }
}
