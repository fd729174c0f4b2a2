//! Copies bytes between a TCP socket and a stream, both ways.
//!
//! EOF on the socket becomes a FIN on the stream and a FIN from the peer
//! becomes a write shutdown on the socket, so half-closed protocols work
//! end to end. An error on either side resets the stream, and a reset
//! from the peer aborts the socket with an RST, so a client sees what a
//! direct connection would have shown.
//!
//! No buffer is held while a connection is idle: the copy loop waits for
//! the socket to become readable, then allocates at most the peer's
//! current credit.
//!
//! Half-open connections are reaped: the socket's error state is watched
//! for the whole relay, so an RST from the local peer is seen even while
//! the stream waits for credit or after one direction has finished; TCP
//! keepalive finds a local peer that vanished without a word; and a reset
//! from the tunnel aborts a write stuck on a local reader that stopped.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use proto::ResetCode;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::buffers;
use crate::rate::RateLimiter;
use crate::stream::{Inbound, MuxStream, StreamReceiver, StreamSender};

/// Largest read from the socket, and so the largest data frame.
const READ_CHUNK: usize = buffers::LARGE;
/// First read size; each read that fills its buffer doubles the next one
/// (up to [`READ_CHUNK`]), each that fills less than half halves it. A
/// request/response connection stays at a few KiB per read, a bulk one
/// reaches 256 KiB reads and frames after a few reads.
const FIRST_READ: usize = 16 * 1024;
/// TCP keepalive on relayed sockets: first probe after a minute of
/// silence, then every 10 s; after 6 unanswered probes (about two minutes
/// in all) the kernel fails the socket and the stream is reset.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;

/// Live byte counts of one or many relays (a mapping's, an edge's),
/// updated as each chunk moves so throughput can be sampled while
/// connections are open.
#[derive(Debug, Default)]
pub struct ByteCounters {
    sent: AtomicU64,
    received: AtomicU64,
}

impl ByteCounters {
    /// Bytes read from sockets and sent to the peer.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes received from the peer and written to sockets.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes sent.
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` more bytes received.
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
}

/// How a relayed connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed in order.
    Closed,
    /// The stream or the socket failed, or the peer reset the stream.
    Reset(String),
    /// Stopped by the caller (shutdown grace over, drain deadline).
    Cancelled,
}

/// What a finished relay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Bytes read from the socket and sent to the peer.
    pub bytes_to_peer: u64,
    /// Bytes received from the peer and written to the socket.
    pub bytes_from_peer: u64,
    /// How it ended.
    pub end: RelayEnd,
}

/// Relays between `tcp` and `stream` until both directions are finished,
/// either side fails, or `cancel` fires (which resets the stream with
/// `cancel_code`). Bytes are added to `counters` as they move.
pub async fn relay(
    tcp: TcpStream,
    stream: MuxStream,
    cancel: CancellationToken,
    cancel_code: ResetCode,
    counters: &ByteCounters,
) -> RelayOutcome {
    let none = RelayLimits::default();
    relay_after(Bytes::new(), tcp, stream, cancel, cancel_code, counters, &none).await
}

/// Byte rates a relay keeps to, shared with other relays (a mapping's).
#[derive(Debug, Clone, Default)]
pub struct RelayLimits {
    /// From the socket to the peer.
    pub to_peer: Option<std::sync::Arc<RateLimiter>>,
    /// From the peer to the socket.
    pub from_peer: Option<std::sync::Arc<RateLimiter>>,
}

/// [`relay`], sending `first` to the peer before anything read from `tcp`:
/// bytes already read from the socket (to route the connection by name),
/// sent within the stream's credit like any others.
pub async fn relay_after(
    first: Bytes,
    tcp: TcpStream,
    stream: MuxStream,
    cancel: CancellationToken,
    cancel_code: ResetCode,
    counters: &ByteCounters,
    limits: &RelayLimits,
) -> RelayOutcome {
    let _ = tcp.set_nodelay(true);
    set_keepalive(&tcp);
    let (sender, mut receiver) = stream.split();
    let mut to_peer = 0u64;
    let mut from_peer = 0u64;
    let end = {
        let (to_limit, from_limit) = (limits.to_peer.as_deref(), limits.from_peer.as_deref());
        let upstream = socket_to_stream(first, &tcp, &sender, &mut to_peer, counters, to_limit);
        let downstream =
            stream_to_socket(&tcp, &mut receiver, &sender, &mut from_peer, counters, from_limit);
        tokio::pin!(upstream, downstream);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                result = &mut upstream, if !up_done => match result {
                    Ok(()) => up_done = true,
                    Err(why) => break RelayEnd::Reset(why),
                },
                result = &mut downstream, if !down_done => match result {
                    Ok(()) => down_done = true,
                    Err(why) => break RelayEnd::Reset(why),
                },
                () = cancel.cancelled() => {
                    sender.reset(cancel_code, "connection stopped by the agent");
                    break RelayEnd::Cancelled;
                }
                why = socket_failed(&tcp) => {
                    sender.reset(ResetCode::ConnectionReset, &why);
                    break RelayEnd::Reset(why);
                }
            }
            if up_done && down_done {
                break RelayEnd::Closed;
            }
        }
    };
    if end != RelayEnd::Closed {
        abort(&tcp);
    }
    RelayOutcome { bytes_to_peer: to_peer, bytes_from_peer: from_peer, end }
}

fn set_keepalive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Resolves once the socket is in error (an RST arrived, keepalive gave
/// up), with the error's text.
async fn socket_failed(tcp: &TcpStream) -> String {
    let failed = tcp
        .async_io(Interest::ERROR, || match tcp.take_error() {
            Ok(Some(e)) | Err(e) => Ok(e),
            // Taken by a read or write meanwhile, which reports it itself;
            // wait for the next one (this clears the readiness).
            Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
        })
        .await;
    match failed {
        Ok(e) | Err(e) => format!("socket failed: {e}"),
    }
}

/// Closes the socket with an RST instead of a FIN, as a direct connection
/// that failed would.
fn abort(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

async fn socket_to_stream(
    mut first: Bytes,
    tcp: &TcpStream,
    sender: &StreamSender,
    total: &mut u64,
    counters: &ByteCounters,
    limit: Option<&RateLimiter>,
) -> Result<(), String> {
    while !first.is_empty() {
        let credit = sender.credit(first.len()).await.map_err(|e| e.reason)?;
        let credit = match limit {
            Some(limit) => limit.grant(credit).await,
            None => credit,
        };
        let chunk = first.split_to(credit.min(first.len()));
        *total += chunk.len() as u64;
        counters.add_sent(chunk.len() as u64);
        sender.send(chunk).await.map_err(|e| e.reason)?;
    }
    let mut read_size = FIRST_READ;
    loop {
        let credit = sender.credit(read_size).await.map_err(|e| e.reason)?;
        tcp.readable().await.map_err(|e| e.to_string())?;
        // Granted once there is something to read: an idle connection
        // holds no turn. What it may not read stays in the kernel.
        let credit = match limit {
            Some(limit) => limit.grant(credit).await,
            None => credit,
        };
        let read = buffers::try_read_chunk(tcp, credit);
        if let Some(limit) = limit {
            limit.give_back(credit - read.as_ref().map_or(0, Bytes::len));
        }
        match read {
            Ok(chunk) if chunk.is_empty() => {
                sender.finish().await.map_err(|e| e.reason)?;
                return Ok(());
            }
            Ok(chunk) => {
                let n = chunk.len();
                read_size = next_read_size(read_size, credit, n);
                *total += n as u64;
                counters.add_sent(n as u64);
                sender.send(chunk).await.map_err(|e| e.reason)?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                sender.reset(ResetCode::ConnectionReset, &e.to_string());
                return Err(format!("socket read failed: {e}"));
            }
        }
    }
}

/// The size of the next read after `n` bytes came into a `capacity`-byte
/// buffer when `current` was asked for (the capacity may have been lower,
/// capped by the peer's credit; only a full buffer proves demand).
fn next_read_size(current: usize, capacity: usize, n: usize) -> usize {
    if n >= capacity && capacity == current {
        (current * 2).min(READ_CHUNK)
    } else if n < current / 2 {
        (current / 2).max(FIRST_READ)
    } else {
        current
    }
}

async fn stream_to_socket(
    tcp: &TcpStream,
    receiver: &mut StreamReceiver,
    sender: &StreamSender,
    total: &mut u64,
    counters: &ByteCounters,
    limit: Option<&RateLimiter>,
) -> Result<(), String> {
    loop {
        match receiver.recv().await {
            Inbound::Data(bytes) => {
                let len = bytes.len();
                let written = tokio::select! {
                    written = write_limited(tcp, bytes, limit) => written,
                    () = receiver.reset_signal() => {
                        return Err("reset while writing to a slow socket".to_owned());
                    }
                };
                if let Err(e) = written {
                    sender.reset(ResetCode::ConnectionReset, &e.to_string());
                    return Err(format!("socket write failed: {e}"));
                }
                *total += len as u64;
                counters.add_received(len as u64);
                receiver.consumed(len).await.map_err(|e| e.reason)?;
            }
            Inbound::Fin => {
                let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Inbound::Reset { message, .. } => return Err(format!("reset by peer: {message}")),
        }
    }
}

/// [`write_all`], in grants of `limit` when there is one. The bytes wait
/// in the stream's receive window (not yet consumed), so the peer slows.
async fn write_limited(
    tcp: &TcpStream,
    mut bytes: Bytes,
    limit: Option<&RateLimiter>,
) -> io::Result<()> {
    let Some(limit) = limit else { return write_all(tcp, bytes).await };
    while !bytes.is_empty() {
        let n = limit.grant(bytes.len()).await;
        write_all(tcp, bytes.split_to(n.min(bytes.len()))).await?;
    }
    Ok(())
}

async fn write_all(tcp: &TcpStream, mut bytes: Bytes) -> io::Result<()> {
    let mut detached = false;
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(&bytes) {
            Ok(n) => bytes.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The local reader is slow and the rest must wait for it,
                // not pin the tunnel's read buffer it is a slice of.
                if !detached {
                    bytes = Bytes::copy_from_slice(&bytes);
                    detached = true;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_grows_on_full_reads_and_shrinks_on_small_ones() {
        let mut size = FIRST_READ;
        for _ in 0..10 {
            size = next_read_size(size, size, size);
        }
        assert_eq!(size, READ_CHUNK);
        // A read capped by the peer's credit proves nothing about demand.
        assert_eq!(next_read_size(FIRST_READ, 100, 100), FIRST_READ);
        for _ in 0..10 {
            size = next_read_size(size, size, 1);
        }
        assert_eq!(size, FIRST_READ);
        assert_eq!(next_read_size(64 * 1024, 64 * 1024, 40 * 1024), 64 * 1024);
    }
}
