//! The tunnel's WebSocket framing, after the HTTP upgrade.
//!
//! tokio-tungstenite serves the cloud's HTTP upgrade (with its header
//! limits); from then on both agents frame messages here, because the data
//! path is the hot path and a general-purpose WebSocket library costs two
//! extra copies per byte on it: tunnel frames were encoded into a message,
//! the message copied again into the library's output buffer, and every
//! read zero-filled its buffer first. Here the cloud writes a batch of
//! tunnel frames as one binary message with a single vectored write whose
//! data payloads are the relay's own buffers (no copy); the edge, which as
//! the client must mask (RFC 6455, 5.3), encodes and masks a batch in one
//! buffer (one copy). Received payloads are unmasked in place and handed
//! on as slices of the read buffer.
//!
//! Scope: binary messages (fragmented ones are reassembled), ping, pong
//! and close; no extensions. Pings from the peer count as a sign of life
//! and are not answered: tunnel liveness is the tunnel's own ping frame,
//! and our peers never send WebSocket pings.

use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use proto::Frame;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

pub mod frame;
mod upgrade;

pub use upgrade::{UpgradeError, client_upgrade};

use frame::{FrameError, MAX_HEADER_LEN};

/// Which end of the WebSocket this is: the client masks what it sends, the
/// server requires masked frames and sends unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The edge, which dialled.
    Client,
    /// The cloud, which accepted.
    Server,
}

/// What went wrong on the WebSocket.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WsError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A frame header broke the protocol or a limit.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// Masking the wrong way round for the sender's side.
    #[error("{0}")]
    Masking(&'static str),
    /// Fragments out of order, or a reassembled message over the limit.
    #[error("{0}")]
    Fragments(String),
    /// The connection ended inside a frame.
    #[error("connection closed in the middle of a WebSocket frame")]
    Truncated,
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A binary message: tunnel frames.
    Binary(Bytes),
    /// A text message (not part of the tunnel protocol).
    Text,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// A close, with the reason the peer gave.
    Close(String),
}

/// Smallest free space offered to a read; a frame announced larger gets
/// room for all of it, so a large frame arrives in few reads.
const MIN_READ: usize = 64 * 1024;

/// The receiving half.
#[derive(Debug)]
pub struct WsReader<R> {
    io: R,
    side: Side,
    max_message: usize,
    buf: BytesMut,
    /// Bytes needed before the next parse can succeed.
    need: usize,
    /// A fragmented binary message being reassembled.
    partial: Option<BytesMut>,
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    fn new(io: R, side: Side, max_message: usize, leftover: BytesMut) -> Self {
        Self { io, side, max_message, buf: leftover, need: 0, partial: None }
    }

    /// The next message; `Ok(None)` when the peer closed the connection
    /// between frames.
    ///
    /// Cancel-safe: nothing is consumed until a whole frame is buffered.
    ///
    /// # Errors
    /// [`WsError`] when the socket fails or the peer breaks the protocol;
    /// the connection is then unusable.
    pub async fn next(&mut self) -> Result<Option<WsMessage>, WsError> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(Some(message));
            }
            let want = self.need.saturating_sub(self.buf.len()).max(MIN_READ);
            self.buf.reserve(want);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() && self.partial.is_none() {
                    return Ok(None);
                }
                return Err(WsError::Truncated);
            }
        }
    }

    /// Takes complete frames off the buffer until one finishes a message.
    fn parse(&mut self) -> Result<Option<WsMessage>, WsError> {
        loop {
            let Some(h) = frame::parse_header(&self.buf, self.max_message)? else {
                self.need = MAX_HEADER_LEN;
                return Ok(None);
            };
            match (self.side, h.mask.is_some()) {
                (Side::Server, false) => {
                    return Err(WsError::Masking("unmasked frame from client"));
                }
                (Side::Client, true) => return Err(WsError::Masking("masked frame from server")),
                _ => {}
            }
            // Fits in usize: parse_header checked it against max_message.
            let total = h.header_len + h.payload_len as usize;
            if self.buf.len() < total {
                self.need = total;
                return Ok(None);
            }
            let mut payload = self.buf.split_to(total);
            payload.advance(h.header_len);
            if let Some(key) = h.mask {
                frame::apply_mask(&mut payload, key);
            }
            match h.opcode {
                frame::OP_BINARY | frame::OP_TEXT if self.partial.is_some() => {
                    return Err(WsError::Fragments("new message inside a fragmented one".into()));
                }
                frame::OP_BINARY if h.fin => return Ok(Some(WsMessage::Binary(payload.freeze()))),
                frame::OP_BINARY => self.partial = Some(payload),
                frame::OP_TEXT => return Ok(Some(WsMessage::Text)),
                frame::OP_CONTINUATION => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(WsError::Fragments("continuation without a message".into()));
                    };
                    if partial.len() + payload.len() > self.max_message {
                        return Err(WsError::Fragments(format!(
                            "fragmented message over the limit of {} bytes",
                            self.max_message
                        )));
                    }
                    partial.extend_from_slice(&payload);
                    if h.fin {
                        let message = self.partial.take().unwrap_or_default().freeze();
                        return Ok(Some(WsMessage::Binary(message)));
                    }
                }
                frame::OP_PING => return Ok(Some(WsMessage::Ping)),
                frame::OP_PONG => return Ok(Some(WsMessage::Pong)),
                _ => return Ok(Some(WsMessage::Close(close_reason(&payload)))),
            }
        }
    }
}

/// The status code and reason of a close frame, for logs.
fn close_reason(payload: &[u8]) -> String {
    match payload {
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let reason = String::from_utf8_lossy(reason);
            if reason.is_empty() { format!("({code})") } else { format!("({code}): {reason}") }
        }
        _ => String::new(),
    }
}

/// Tunnel frames smaller than this are copied into the message's own
/// buffer; larger data payloads are written from where they are.
const ZERO_COPY_MIN: usize = 4 * 1024;

/// A binary message being assembled from tunnel frames.
#[derive(Debug)]
pub struct OutMessage {
    /// Encoded frames (all of them when `zero_copy` is off).
    meta: BytesMut,
    /// Where `meta` ends and a borrowed payload goes, in order.
    parts: Vec<(usize, Bytes)>,
    len: usize,
    zero_copy: bool,
}

impl OutMessage {
    /// An empty message for a writer on `side` (only the server, which
    /// does not mask, can leave payloads where they are).
    pub fn new(side: Side) -> Self {
        Self {
            meta: BytesMut::with_capacity(16 * 1024),
            parts: Vec::new(),
            len: 0,
            zero_copy: side == Side::Server,
        }
    }

    /// Appends a frame.
    pub fn push(&mut self, frame: Frame) {
        self.len += frame.encoded_len();
        match frame {
            Frame::Data { stream, payload } if self.zero_copy && payload.len() >= ZERO_COPY_MIN => {
                // Lossless: a payload is capped far below 4 GiB.
                Frame::encode_data_header(stream, payload.len() as u32, &mut self.meta);
                self.parts.push((self.meta.len(), payload));
            }
            other => other.encode(&mut self.meta),
        }
    }

    /// Encoded length so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no frame was pushed since the last send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.meta.clear();
        self.parts.clear();
        self.len = 0;
        // A burst of small frames can grow the buffer; do not keep it.
        if self.meta.capacity() > 1024 * 1024 {
            self.meta = BytesMut::with_capacity(16 * 1024);
        }
    }
}

/// Masking keys for the client side, drawn from the system's secure
/// source a batch at a time (RFC 6455 asks for unpredictable keys).
#[derive(Debug)]
struct MaskKeys {
    pool: [u8; 256],
    used: usize,
}

impl MaskKeys {
    fn new() -> Self {
        Self { pool: [0; 256], used: 256 }
    }

    fn next(&mut self) -> io::Result<[u8; 4]> {
        if self.used + 4 > self.pool.len() {
            SystemRandom::new()
                .fill(&mut self.pool)
                .map_err(|_| io::Error::other("system random source failed"))?;
            self.used = 0;
        }
        let key = &self.pool[self.used..self.used + 4];
        self.used += 4;
        Ok([key[0], key[1], key[2], key[3]])
    }
}

/// The sending half.
#[derive(Debug)]
pub struct WsWriter<W> {
    io: W,
    side: Side,
    keys: MaskKeys,
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    fn new(io: W, side: Side) -> Self {
        Self { io, side, keys: MaskKeys::new() }
    }

    /// Sends `message` as one binary WebSocket message and empties it.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn send(&mut self, message: &mut OutMessage) -> io::Result<()> {
        let result = self.send_inner(message).await;
        message.clear();
        result
    }

    async fn send_inner(&mut self, message: &mut OutMessage) -> io::Result<()> {
        let mut header = [0u8; MAX_HEADER_LEN];
        let mask = match self.side {
            Side::Client => Some(self.keys.next()?),
            Side::Server => None,
        };
        let header_len = frame::encode_header(&mut header, frame::OP_BINARY, message.len, mask);
        if let Some(key) = mask {
            // The client copied everything into `meta`; mask it in place.
            frame::apply_mask(&mut message.meta, key);
        }
        let mut slices = Vec::with_capacity(2 + 2 * message.parts.len());
        slices.push(IoSlice::new(&header[..header_len]));
        let mut start = 0;
        for (end, payload) in &message.parts {
            slices.push(IoSlice::new(&message.meta[start..*end]));
            slices.push(IoSlice::new(payload));
            start = *end;
        }
        slices.push(IoSlice::new(&message.meta[start..]));
        slices.retain(|s| !s.is_empty());
        self.write_all_vectored(&mut slices).await?;
        self.io.flush().await
    }

    async fn write_all_vectored(&mut self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        let mut slices = slices;
        while !slices.is_empty() {
            let n = self.io.write_vectored(slices).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    /// Sends a close frame with `code` (1000 is a normal close) and shuts
    /// the connection down for writing.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn close(&mut self, code: u16) -> io::Result<()> {
        let mut header = [0u8; MAX_HEADER_LEN];
        let mask = match self.side {
            Side::Client => Some(self.keys.next()?),
            Side::Server => None,
        };
        let n = frame::encode_header(&mut header, frame::OP_CLOSE, 2, mask);
        let mut body = code.to_be_bytes();
        if let Some(key) = mask {
            frame::apply_mask(&mut body, key);
        }
        let mut frame = header[..n].to_vec();
        frame.extend_from_slice(&body);
        self.io.write_all(&frame).await?;
        self.io.shutdown().await
    }
}

/// An upgraded WebSocket connection, both halves.
#[derive(Debug)]
pub struct WsConn<S> {
    /// The receiving half.
    pub reader: WsReader<ReadHalf<S>>,
    /// The sending half.
    pub writer: WsWriter<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> WsConn<S> {
    /// Frames a connection whose HTTP upgrade is done. `leftover` holds
    /// bytes read past the upgrade response (the client's case).
    pub fn new(io: S, side: Side, max_message: usize, leftover: BytesMut) -> Self {
        let (read, write) = tokio::io::split(io);
        Self {
            reader: WsReader::new(read, side, max_message, leftover),
            writer: WsWriter::new(write, side),
        }
    }

    /// The server's end of a tunnel whose HTTP upgrade was just served
    /// (the client sends nothing before reading our first message, so no
    /// bytes were read past the request), with the tunnel's message limit.
    pub fn accepted(io: S) -> Self {
        Self::new(
            io,
            Side::Server,
            max_message_len(proto::DEFAULT_MAX_FRAME_PAYLOAD),
            BytesMut::new(),
        )
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.writer.side
    }

    /// Sends a close frame (1000, normal closure) and shuts down writing.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn close(&mut self) -> io::Result<()> {
        self.writer.close(1000).await
    }
}

/// Largest message a tunnel peer may send: a batch of frames (the writer
/// starts a new message past 256 KiB) plus one maximal frame, with room.
pub fn max_message_len(max_frame_payload: u32) -> usize {
    512 * 1024 + max_frame_payload as usize + proto::HEADER_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both halves over an in-memory pipe.
    fn pair() -> (WsConn<tokio::io::DuplexStream>, WsConn<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let limit = max_message_len(proto::DEFAULT_MAX_FRAME_PAYLOAD);
        (
            WsConn::new(a, Side::Client, limit, BytesMut::new()),
            WsConn::new(b, Side::Server, limit, BytesMut::new()),
        )
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Data { stream: 1, payload: Bytes::from(vec![7u8; 100_000]) },
            Frame::Window { stream: 1, limit: 42 },
            Frame::Data { stream: 3, payload: Bytes::from_static(b"small") },
            Frame::Fin { stream: 3 },
            Frame::Data { stream: 5, payload: Bytes::from(vec![9u8; 5_000]) },
        ]
    }

    async fn exchange(from: &mut WsWriter<WriteHalf<tokio::io::DuplexStream>>, side: Side) {
        let mut message = OutMessage::new(side);
        for frame in frames() {
            message.push(frame);
        }
        from.send(&mut message).await.unwrap();
        assert!(message.is_empty());
    }

    async fn decode_all(reader: &mut WsReader<ReadHalf<tokio::io::DuplexStream>>) -> Vec<Frame> {
        let Some(WsMessage::Binary(mut bytes)) = reader.next().await.unwrap() else {
            panic!("expected a binary message")
        };
        let mut out = Vec::new();
        while let Some(frame) = proto::decode(&mut bytes, u32::MAX).unwrap() {
            out.push(frame);
        }
        out
    }

    #[tokio::test]
    async fn batches_cross_both_ways_intact() {
        let (mut client, mut server) = pair();
        let send = tokio::spawn(async move {
            exchange(&mut client.writer, Side::Client).await;
            client
        });
        assert_eq!(decode_all(&mut server.reader).await, frames());
        let mut client = send.await.unwrap();
        let send = tokio::spawn(async move { exchange(&mut server.writer, Side::Server).await });
        assert_eq!(decode_all(&mut client.reader).await, frames());
        send.await.unwrap();
    }

    #[tokio::test]
    async fn fragments_are_reassembled_and_close_ends_the_stream() {
        let (a, b) = tokio::io::duplex(4096);
        let mut server = WsConn::new(b, Side::Server, 1000, BytesMut::new());
        let mut raw = a;
        let key = [1, 2, 3, 4];
        let mut wire = Vec::new();
        for (first, fin, part) in [(true, false, &b"hel"[..]), (false, true, &b"lo"[..])] {
            let opcode = if first { frame::OP_BINARY } else { frame::OP_CONTINUATION };
            wire.push(if fin { 0x80 | opcode } else { opcode });
            wire.push(0x80 | part.len() as u8);
            wire.extend_from_slice(&key);
            let mut body = part.to_vec();
            frame::apply_mask(&mut body, key);
            wire.extend_from_slice(&body);
        }
        // A ping in between is fine; then a close.
        wire.extend_from_slice(&[0x89, 0x80, 0, 0, 0, 0]);
        wire.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
        raw.write_all(&wire).await.unwrap();
        drop(raw);
        let r = &mut server.reader;
        assert_eq!(r.next().await.unwrap(), Some(WsMessage::Binary(Bytes::from_static(b"hello"))));
        assert_eq!(r.next().await.unwrap(), Some(WsMessage::Ping));
        assert_eq!(r.next().await.unwrap(), Some(WsMessage::Close("(1000)".into())));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn protocol_breaks_are_errors() {
        let cases: [(&[u8], &str); 4] = [
            (&[0x82, 0x01, b'x'], "unmasked frame from client"),
            (&[0x80, 0x80, 0, 0, 0, 0], "continuation without a message"),
            (&[0x82, 0xFF, 0, 0, 0, 0, 1, 0, 0, 0], "over the limit"),
            (&[0x82, 0x85, 0, 0, 0, 0, b'a'], "in the middle of a WebSocket frame"),
        ];
        for (bytes, expected) in cases {
            let (mut raw, b) = tokio::io::duplex(4096);
            let mut server = WsConn::new(b, Side::Server, 1 << 20, BytesMut::new());
            raw.write_all(bytes).await.unwrap();
            drop(raw);
            let err = server.reader.next().await.unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }
}
