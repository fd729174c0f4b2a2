//! Starting and stopping the cloud agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use config::CloudConfig;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::edges::EdgeRegistry;
use crate::mapping::{self, MappingRuntime};
use crate::tunnel_listener::{self, TunnelListener};

/// The cloud agent could not start at all (a single mapping failing to
/// bind is not this: that mapping is reported and the rest serve).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// The tunnel listener's address could not be bound.
    #[error("cannot listen for edge tunnels on {addr}: {source}")]
    TunnelBind { addr: SocketAddr, source: std::io::Error },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tunnel::tls::TlsError),
}

/// Where a mapping stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingStatus {
    /// Listening on this address.
    Listening(SocketAddr),
    /// Could not bind; the reason.
    Failed(String),
}

/// A running cloud agent.
#[derive(Debug)]
pub struct Cloud {
    tunnel_addr: SocketAddr,
    mappings: BTreeMap<String, MappingStatus>,
    edges: Arc<EdgeRegistry>,
    /// Stops accepting (tunnels and clients).
    stop_accepting: CancellationToken,
    /// Aborts relayed connections still open after the grace period.
    abort_connections: CancellationToken,
    connections: TaskTracker,
    accept_loops: TaskTracker,
    grace: Duration,
}

impl Cloud {
    /// Binds the tunnel listener and every mapping's listener, then serves.
    /// A mapping whose address cannot be bound is logged and reported in
    /// [`mappings`](Self::mappings); the others serve regardless.
    ///
    /// # Errors
    /// [`StartError`] if the tunnel listener or its TLS setup fails.
    pub async fn start(config: CloudConfig) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let tls = match &config.tunnel.tls {
            Some(files) => Some(tunnel::tls::server_config(&files.cert, &files.key)?),
            None => {
                warn!(
                    listen = %config.tunnel.listen,
                    "tunnel listener is plain ws:// without TLS; use [tunnel.tls] in production"
                );
                None
            }
        };
        let listener = TcpListener::bind(config.tunnel.listen)
            .await
            .map_err(|source| StartError::TunnelBind { addr: config.tunnel.listen, source })?;
        let tunnel_addr = listener
            .local_addr()
            .map_err(|source| StartError::TunnelBind { addr: config.tunnel.listen, source })?;

        let edges = Arc::new(EdgeRegistry::new(config.tunnel.max_tunnels_per_edge));
        let stop_accepting = CancellationToken::new();
        let abort_connections = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();

        let tunnels = TunnelListener {
            config: Arc::clone(&config),
            tls,
            edges: Arc::clone(&edges),
            stop: stop_accepting.clone(),
        };
        accept_loops.spawn(tunnel_listener::run(tunnels, listener));
        info!(listen = %tunnel_addr, tls = config.tunnel.tls.is_some(), "listening for edge tunnels");

        let mut mappings = BTreeMap::new();
        for m in &config.mappings {
            let status = match TcpListener::bind(m.listen).await {
                Ok(listener) => {
                    let addr = listener.local_addr().unwrap_or(m.listen);
                    info!(mapping = %m.name, listen = %addr, edge = %m.edge, target = %m.target, "mapping listening");
                    let runtime = MappingRuntime::new(
                        m.clone(),
                        Arc::clone(&edges),
                        connections.clone(),
                        abort_connections.clone(),
                    );
                    accept_loops.spawn(mapping::run(runtime, listener, stop_accepting.clone()));
                    MappingStatus::Listening(addr)
                }
                Err(e) => {
                    let reason = format!("cannot listen on {}: {e}", m.listen);
                    error!(mapping = %m.name, %reason, "mapping failed; the other mappings keep serving");
                    MappingStatus::Failed(reason)
                }
            };
            mappings.insert(m.name.clone(), status);
        }

        Ok(Self {
            tunnel_addr,
            mappings,
            edges,
            stop_accepting,
            abort_connections,
            connections,
            accept_loops,
            grace: config.shutdown_grace,
        })
    }

    /// The address edges dial (useful when configured with port 0).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// Every configured mapping and whether it is listening.
    pub fn mappings(&self) -> &BTreeMap<String, MappingStatus> {
        &self.mappings
    }

    /// The bound address of a listening mapping.
    pub fn mapping_addr(&self, name: &str) -> Option<SocketAddr> {
        match self.mappings.get(name) {
            Some(MappingStatus::Listening(addr)) => Some(*addr),
            _ => None,
        }
    }

    /// Live tunnels of `edge_id` right now.
    pub fn live_tunnels(&self, edge_id: &str) -> usize {
        self.edges.live_tunnels(edge_id)
    }

    /// Graceful stop: stop accepting tunnels and clients, let open
    /// connections finish within the grace period, reset the rest, then
    /// close every tunnel.
    pub async fn shutdown(self) {
        info!(grace = ?self.grace, open = self.connections.len(), "shutting down: no new connections");
        self.stop_accepting.cancel();
        self.accept_loops.close();
        self.accept_loops.wait().await;
        self.connections.close();
        if tokio::time::timeout(self.grace, self.connections.wait()).await.is_err() {
            warn!(open = self.connections.len(), "grace period over; resetting open connections");
            self.abort_connections.cancel();
            self.connections.wait().await;
        }
        self.edges.close_all("cloud agent shutting down").await;
        info!("stopped");
    }
}
