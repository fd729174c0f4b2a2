//! One public listener per mapping: client allowlist, stream open, relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use config::MappingConfig;
use proto::ResetCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::edges::EdgeRegistry;

/// How long the edge may take to answer an open (its own connect timeout
/// is shorter; this only guards against a stuck edge).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct MappingRuntime {
    config: MappingConfig,
    edges: Arc<EdgeRegistry>,
    connections: TaskTracker,
    abort: CancellationToken,
    slots: Option<Arc<Semaphore>>,
}

impl MappingRuntime {
    pub(crate) fn new(
        config: MappingConfig,
        edges: Arc<EdgeRegistry>,
        connections: TaskTracker,
        abort: CancellationToken,
    ) -> Self {
        let slots = config.max_connections.map(|n| Arc::new(Semaphore::new(n as usize)));
        Self { config, edges, connections, abort, slots }
    }

    fn client_allowed(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.config.allow.is_empty() || self.config.allow.iter().any(|net| net.contains(&ip))
    }
}

/// Closes a client connection with an RST, as a refused or failed direct
/// connection would look.
fn reset(tcp: TcpStream) {
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
}

pub(crate) async fn run(this: MappingRuntime, listener: TcpListener, stop: CancellationToken) {
    let this = Arc::new(this);
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(mapping = %this.config.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !this.client_allowed(peer) {
            info!(mapping = %this.config.name, %peer, "client not in the mapping's allowlist; closed");
            reset(tcp);
            continue;
        }
        let permit = match &this.slots {
            Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    info!(mapping = %this.config.name, %peer, "mapping at its connection limit; closed");
                    reset(tcp);
                    continue;
                }
            },
            None => None,
        };
        let span = info_span!("conn", mapping = %this.config.name, %peer);
        let conn = Arc::clone(&this);
        this.connections.spawn(
            async move {
                serve_client(&conn, tcp).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!(mapping = %this.config.name, "listener closed");
}

async fn serve_client(this: &MappingRuntime, tcp: TcpStream) {
    let m = &this.config;
    let Some(tunnel) = this.edges.pick(&m.edge) else {
        info!(edge = %m.edge, "no live tunnel to the edge; client closed");
        reset(tcp);
        return;
    };
    let open = tunnel.open_stream(&m.name, &m.target.host, m.target.port);
    let stream = match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            info!(tunnel = tunnel.id(), error = %e, "stream not opened; client closed");
            reset(tcp);
            return;
        }
        Err(_) => {
            warn!(tunnel = tunnel.id(), "edge did not answer the open in time; client closed");
            reset(tcp);
            return;
        }
    };
    let stream_id = stream.id();
    debug!(tunnel = tunnel.id(), stream = stream_id, "stream open");
    let outcome = tunnel::relay(tcp, stream, this.abort.clone(), ResetCode::Shutdown).await;
    debug!(tunnel = tunnel.id(), stream = stream_id, sent = outcome.bytes_to_peer,
        received = outcome.bytes_from_peer, end = ?outcome.end, "stream closed");
}
