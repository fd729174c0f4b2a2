//! The measurements. Each takes the address to measure through, so the
//! same code runs against the direct target and against the relay.

pub(crate) mod bulk;
pub(crate) mod connect;
pub(crate) mod idle;
pub(crate) mod rtt;

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every single connect, read or write.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One 1-byte round trip with the echo service (no timeout: callers add it).
pub(crate) async fn echo_byte(tcp: &mut TcpStream) -> io::Result<()> {
    tcp.write_all(b"x").await?;
    let mut back = [0u8; 1];
    tcp.read_exact(&mut back).await?;
    if &back != b"x" {
        return Err(io::Error::other("echo returned a different byte"));
    }
    Ok(())
}

/// A histogram of durations in nanoseconds, 1 ns to 100 s, 3 digits.
pub(crate) fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 100_000_000_000, 3)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}"))
}

/// Records a duration, clamped into the histogram's range.
pub(crate) fn record(hist: &mut hdrhistogram::Histogram<u64>, elapsed: Duration) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    hist.saturating_record(ns.max(1));
}
