//! The control API: HTTP with JSON bodies on a private address, guarded by
//! the admin token. See `docs/control-api.md`.
//!
//! - `auth`: bearer-token check in constant time (every route but `/ready`).
//! - `routes`: the endpoints, thin wrappers over [`Mappings`] and
//!   [`EdgeRegistry`].
//! - `prometheus`: `/metrics` in Prometheus text format.

mod auth;
mod prometheus;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use api::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::edges::EdgeRegistry;
use crate::mappings::Mappings;

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct ControlState {
    pub(crate) mappings: Arc<Mappings>,
    pub(crate) edges: Arc<EdgeRegistry>,
    pub(crate) admin_token: config::Secret,
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    /// False once the agent starts shutting down (`/ready` says 503).
    pub(crate) ready: Arc<AtomicBool>,
}

/// Serves the control API on `listener` until `stop` fires.
pub(crate) async fn serve(state: ControlState, listener: TcpListener, stop: CancellationToken) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    if addr.is_some_and(|a| !a.ip().is_loopback()) {
        warn!(listen = ?addr, "the control API listens beyond loopback without TLS: \
            the admin token crosses the network in clear; keep it on 127.0.0.1 and use SSH");
    }
    info!(listen = ?addr, "control API listening");
    let app = routes::router(Arc::new(state));
    let result = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    if let Err(e) = result {
        warn!(error = %e, "control API stopped");
    }
}
