//! Serving one stream: allowlist, destination connect, relay.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::{OpenCode, ResetCode};
use tokio::net::TcpStream;
use tracing::{debug, info};
use tunnel::IncomingStream;

use crate::edge::EdgeShared;

/// Whether `host:port` is on the allowlist: exact entries, host names
/// compared without regard to case. Checked on every stream.
pub(crate) fn allowed(allow: &[config::HostPort], host: &str, port: u16) -> bool {
    allow.iter().any(|entry| entry.port == port && entry.host.eq_ignore_ascii_case(host))
}

fn open_code(e: &io::Error) -> OpenCode {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => OpenCode::Refused,
        io::ErrorKind::TimedOut => OpenCode::Timeout,
        _ => OpenCode::Unreachable,
    }
}

pub(crate) async fn serve(shared: Arc<EdgeShared>, stream: IncomingStream) {
    let (host, port) = (stream.host.clone(), stream.port);
    if shared.draining.load(Ordering::Relaxed) {
        stream.reject(OpenCode::Draining, "edge is shutting down").await;
        return;
    }
    if !allowed(&shared.config.allow, &host, port) {
        info!(%host, port, "destination not on the allowlist; refused");
        stream.reject(OpenCode::Denied, "destination not on the edge's allowlist").await;
        return;
    }
    let timeout = shared.config.connect_timeout;
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            shared.connects_failed.fetch_add(1, Ordering::Relaxed);
            info!(%host, port, error = %e, "destination connect failed");
            stream.reject(open_code(&e), &e.to_string()).await;
            return;
        }
        Err(_) => {
            shared.connects_failed.fetch_add(1, Ordering::Relaxed);
            info!(%host, port, ?timeout, "destination connect timed out");
            stream.reject(OpenCode::Timeout, &format!("no answer within {timeout:?}")).await;
            return;
        }
    };
    shared.connects_ok.fetch_add(1, Ordering::Relaxed);
    let Ok(stream) = stream.accept().await else { return };
    debug!(%host, port, "stream open");
    let outcome = tunnel::relay(
        tcp,
        stream,
        shared.abort_streams.clone(),
        ResetCode::Shutdown,
        &shared.bytes,
    )
    .await;
    debug!(sent = outcome.bytes_to_peer, received = outcome.bytes_from_peer, end = ?outcome.end,
        "stream closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_is_exact_on_port_and_case_blind_on_host() {
        let allow: Vec<config::HostPort> =
            vec!["db.internal:5432".parse().unwrap(), "127.0.0.1:22".parse().unwrap()];
        assert!(allowed(&allow, "db.internal", 5432));
        assert!(allowed(&allow, "DB.Internal", 5432));
        assert!(!allowed(&allow, "db.internal", 5433));
        assert!(!allowed(&allow, "db.internal.evil", 5432));
        assert!(allowed(&allow, "127.0.0.1", 22));
        assert!(!allowed(&allow, "127.0.0.2", 22));
        assert!(!allowed(&[], "127.0.0.1", 22));
    }
}
