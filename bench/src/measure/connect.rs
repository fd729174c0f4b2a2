//! New-connection latency: connect, send one byte, wait for the echo's
//! byte back, close; repeated on fresh connections, one at a time, the
//! direct and the relayed address taking turns.
//!
//! Through the relay this covers the cloud accepting the client, opening
//! a stream over the tunnel, the edge connecting to the service, and the
//! first byte crossing both ways.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;

use super::rtt::connect;
use super::{histogram, record};

/// Connections not recorded, per address.
pub(crate) const WARMUP: usize = 20;
/// Bound on one whole measurement.
const MAX_TIME: Duration = Duration::from_secs(120);

/// `count` fresh connections to the echo service through each of `addrs`
/// (direct, relay); one histogram per address.
pub(crate) async fn measure(addrs: [SocketAddr; 2], count: usize) -> Result<[Histogram<u64>; 2]> {
    tokio::task::spawn_blocking(move || fresh_connections(addrs, count))
        .await
        .context("connection thread panicked")?
}

fn fresh_connections(addrs: [SocketAddr; 2], count: usize) -> Result<[Histogram<u64>; 2]> {
    let mut hists = [histogram(), histogram()];
    let started = Instant::now();
    for i in 0..WARMUP + count {
        for (addr, hist) in addrs.iter().zip(&mut hists) {
            let elapsed = one(*addr).with_context(|| format!("connection {i} to {addr}"))?;
            if i >= WARMUP {
                record(hist, elapsed);
            }
        }
        if started.elapsed() > MAX_TIME {
            bail!("{count} connections took more than {MAX_TIME:?}");
        }
    }
    Ok(hists)
}

fn one(addr: SocketAddr) -> Result<Duration> {
    let t = Instant::now();
    let mut tcp = connect(addr)?;
    tcp.write_all(b"x").context("write the first byte")?;
    let mut back = [0u8; 1];
    tcp.read_exact(&mut back).context("first byte back")?;
    let elapsed = t.elapsed();
    ensure!(&back == b"x", "the echo returned a different byte");
    Ok(elapsed)
}
