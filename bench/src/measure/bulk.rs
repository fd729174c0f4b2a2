//! Bulk throughput over N parallel connections, one direction at a time.
//!
//! - Up (client → service): each connection writes 256 KiB buffers to the
//!   sink for the run's duration, half-closes, and waits for the sink's
//!   byte count. Bytes = what the sink received (checked equal to what was
//!   written); time = from the start until the last count arrived, so
//!   bytes still buffered in the relay are not counted as moved.
//! - Down (service → client): the source writes as fast as it can; each
//!   connection reads for the run's duration. Bytes = what the client
//!   read; time = until the last read.
//!
//! All connections are open before the clock starts.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use super::IO_TIMEOUT;
use crate::targets::BULK_BUF;

/// After the writes stop, how long the sink may take to count the rest.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Direction {
    /// Client → service (to the sink).
    Up,
    /// Service → client (from the source).
    Down,
}

impl Direction {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Direction::Up => "client→service",
            Direction::Down => "service→client",
        }
    }
}

/// What one run moved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
}

/// A run's bytes per connection, as [`run_each`] measures them.
#[derive(Debug, Clone)]
pub(crate) struct Each {
    pub(crate) total: Transfer,
    pub(crate) per_stream: Vec<u64>,
}

impl Transfer {
    /// MiB per second.
    pub(crate) fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.secs.max(1e-9)
    }
}

/// One run: `streams` connections to `addr` (the sink for Up, the source
/// for Down) for `duration`.
pub(crate) async fn run(
    addr: SocketAddr,
    direction: Direction,
    streams: usize,
    duration: Duration,
) -> Result<Transfer> {
    Ok(run_each(addr, direction, streams, duration).await?.total)
}

/// [`run`], keeping what each connection moved.
pub(crate) async fn run_each(
    addr: SocketAddr,
    direction: Direction,
    streams: usize,
    duration: Duration,
) -> Result<Each> {
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let tcp = timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        conns.push(tcp);
    }
    let start = Instant::now();
    let until = start + duration;
    let mut tasks = JoinSet::new();
    for tcp in conns {
        match direction {
            Direction::Up => tasks.spawn(upload(tcp, until)),
            Direction::Down => tasks.spawn(download(tcp, until)),
        };
    }
    let mut bytes = 0;
    let mut end = start;
    let mut per_stream = Vec::with_capacity(streams);
    while let Some(joined) = tasks.join_next().await {
        let (moved, done) = joined.context("bulk task panicked")??;
        bytes += moved;
        per_stream.push(moved);
        end = end.max(done);
    }
    Ok(Each { total: Transfer { bytes, secs: (end - start).as_secs_f64() }, per_stream })
}

async fn upload(mut tcp: TcpStream, until: Instant) -> Result<(u64, Instant)> {
    let buf = vec![0x5au8; BULK_BUF];
    let mut sent = 0u64;
    while Instant::now() < until {
        timeout(IO_TIMEOUT, tcp.write_all(&buf))
            .await
            .context("write stalled for 5 s")?
            .context("write failed")?;
        sent += buf.len() as u64;
    }
    tcp.shutdown().await.context("half-close failed")?;
    let mut count = [0u8; 8];
    timeout(DRAIN_TIMEOUT, tcp.read_exact(&mut count))
        .await
        .context("the sink's byte count did not arrive within 30 s")?
        .context("reading the sink's byte count")?;
    let done = Instant::now();
    let received = u64::from_be_bytes(count);
    ensure!(received == sent, "the sink received {received} bytes, {sent} were sent");
    Ok((received, done))
}

async fn download(mut tcp: TcpStream, until: Instant) -> Result<(u64, Instant)> {
    let mut buf = vec![0u8; BULK_BUF];
    let mut received = 0u64;
    while Instant::now() < until {
        let n = timeout(IO_TIMEOUT, tcp.read(&mut buf))
            .await
            .context("read stalled for 5 s")?
            .context("read failed")?;
        if n == 0 {
            bail!("the source closed after {received} bytes");
        }
        received += n as u64;
    }
    Ok((received, Instant::now()))
}
