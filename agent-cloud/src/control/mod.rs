//! The control API: HTTP with JSON bodies on a private address, guarded by
//! the admin token. See `docs/control-api.md`.
//!
//! - `auth`: bearer-token check in constant time (every route but `/ready`).
//! - `routes`: the endpoints, thin wrappers over [`Mappings`] and
//!   [`EdgeRegistry`]; `fleet_routes`: adding, removing, rotating and
//!   revoking edges.
//! - `events`: `/v1/events` and its live stream.
//! - `prometheus`: `/metrics` in Prometheus text format.
//! - `server`: HTTP/1.1 with a header-read timeout and a connection cap.

mod auth;
mod events;
mod fleet_routes;
mod peers;
mod prometheus;
mod routes;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

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
    /// Set when the agent is a cluster node.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Time a client has to send a request's headers, and then its body.
    pub(crate) request_timeout: Duration,
    /// Connections served at once.
    pub(crate) max_connections: usize,
    pub(crate) events: crate::events::EventLog,
    /// Makes enrolment codes (set with the control API).
    pub(crate) enrolment: Option<Arc<crate::enrolment::Enrolment>>,
}

/// Serves the control API on `listener` until `stop` fires.
pub(crate) async fn serve(state: ControlState, listener: TcpListener, stop: CancellationToken) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    if addr.is_some_and(|a| !a.ip().is_loopback()) {
        warn!(listen = ?addr, "the control API listens beyond loopback without TLS: \
            the admin token crosses the network in clear; keep it on 127.0.0.1 and use SSH");
    }
    info!(listen = ?addr, "control API listening");
    let limits = server::Limits {
        request_timeout: state.request_timeout,
        max_connections: state.max_connections,
    };
    server::run(listener, routes::router(Arc::new(state)), limits, stop).await;
}
