//! The control API's HTTP/1.1 server: hyper driven by hand rather than
//! through `axum::serve`, which has neither of the two limits that keep a
//! slow or stalled client (slow-loris) from locking operators out:
//!
//! - a header-read timeout: each request's headers must arrive within
//!   `request_timeout` (hyper starts the clock when it waits for a request,
//!   so an idle keep-alive connection is closed after it too; the body gets
//!   the same time, see `routes`);
//! - a connection cap: at most `max_connections` are served at once; the
//!   next waits in the kernel's accept queue until one closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// How long open connections may finish their request at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How often "at the connection limit" is logged at most.
const LOG_FULL_EVERY: Duration = Duration::from_secs(10);

/// The server's limits, from `[control]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) request_timeout: Duration,
    pub(super) max_connections: usize,
}

/// Serves `app` on `listener` until `stop` fires, then lets open
/// connections finish their request (within [`SHUTDOWN_WAIT`]).
pub(super) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.request_timeout);
    let mut logged_full: Option<Instant> = None;
    loop {
        if slots.available_permits() == 0
            && logged_full.is_none_or(|t| t.elapsed() >= LOG_FULL_EVERY)
        {
            warn!(
                max_connections = limits.max_connections,
                "control API at its connection limit; new connections wait to be accepted"
            );
            logged_full = Some(Instant::now());
        }
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (tcp, peer): (_, SocketAddr) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "control API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let conn = http
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()))
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_WAIT, conn.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "control API connection ended");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
