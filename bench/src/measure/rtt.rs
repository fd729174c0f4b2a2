//! Request/response round trips on one connection: write a message to the
//! echo service, read the same number of bytes back, repeat.
//!
//! The direct and the relayed connection take turns in blocks of 100
//! round trips, so a disturbance (another process, a frequency change)
//! hits both alike. The round trips are spread over several fresh
//! connections: relayed latency differs from one connection to the next
//! (which tunnel, which worker threads), and one connection would show
//! only one of them. Blocking sockets on a thread of their own: the client
//! adds as little as possible (no event loop wake-up) to what is measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hdrhistogram::Histogram;

use super::{IO_TIMEOUT, histogram, record};

/// Round trips not recorded, on each connection, to warm up.
pub(crate) const WARMUP: usize = 200;
/// Round trips on one connection before the other takes its turn.
const BLOCK: usize = 100;
/// Bound on one whole measurement.
const MAX_TIME: Duration = Duration::from_secs(120);

/// Round trips through each of `addrs` (direct, relay): `count` in all,
/// spread over `reps` fresh connection pairs. Returns, per address, the
/// merged histogram and each connection's p50 (ns).
pub(crate) async fn measure(
    addrs: [SocketAddr; 2],
    size: usize,
    count: usize,
    reps: usize,
) -> Result<[(Histogram<u64>, Vec<u64>); 2]> {
    let reps = reps.clamp(1, count.max(1));
    let mut out = [(histogram(), Vec::new()), (histogram(), Vec::new())];
    for rep in 0..reps {
        let n = count / reps + usize::from(rep < count % reps);
        let hists = tokio::task::spawn_blocking(move || round_trips(addrs, size, n))
            .await
            .context("round-trip thread panicked")??;
        for ((merged, p50s), hist) in out.iter_mut().zip(hists) {
            merged.add(&hist).context("merging histograms")?;
            p50s.push(hist.value_at_quantile(0.5));
        }
    }
    Ok(out)
}

fn round_trips(addrs: [SocketAddr; 2], size: usize, count: usize) -> Result<[Histogram<u64>; 2]> {
    let mut conns = [connect(addrs[0])?, connect(addrs[1])?];
    let message: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; size];
    let mut hists = [histogram(), histogram()];
    let started = Instant::now();
    for tcp in &mut conns {
        for _ in 0..WARMUP {
            round_trip(tcp, &message, &mut back)?;
        }
    }
    let mut done = 0;
    while done < count {
        let n = BLOCK.min(count - done);
        for (tcp, hist) in conns.iter_mut().zip(&mut hists) {
            for _ in 0..n {
                record(hist, round_trip(tcp, &message, &mut back)?);
            }
        }
        done += n;
        if started.elapsed() > MAX_TIME {
            bail!("{count} round trips took more than {MAX_TIME:?}");
        }
    }
    Ok(hists)
}

fn round_trip(tcp: &mut TcpStream, message: &[u8], back: &mut [u8]) -> Result<Duration> {
    let t = Instant::now();
    tcp.write_all(message).context("write to the echo service")?;
    tcp.read_exact(back).context("read from the echo service")?;
    let elapsed = t.elapsed();
    ensure!(back == message, "the echo returned different bytes");
    Ok(elapsed)
}

/// A blocking connection with timeouts on connect, reads and writes, and
/// Nagle off (each message goes out at once).
pub(crate) fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(tcp)
}
