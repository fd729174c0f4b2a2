//! Accepts edge tunnels: TCP, then TLS when configured, then WebSocket,
//! then the handshake, all within one handshake timeout and behind the
//! admission [`Gate`](crate::gate::Gate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use config::CloudConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use tunnel::ws::WsConn;
use tunnel::{MuxSettings, Role, Tunnel};

use crate::edges::EdgeRegistry;
use crate::gate::{Gate, Ticket};
use crate::handshake::{self, HandshakeError};

#[derive(Debug)]
pub(crate) struct TunnelListener {
    pub(crate) config: Arc<CloudConfig>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) edges: Arc<EdgeRegistry>,
    pub(crate) stop: CancellationToken,
}

pub(crate) async fn run(this: TunnelListener, listener: TcpListener) {
    let this = Arc::new(this);
    let gate = Arc::new(Gate::default());
    let acceptor = this.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let next_id = AtomicU64::new(1);
    loop {
        let (tcp, peer) = tokio::select! {
            () = this.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually out of file descriptors: back off, don't spin.
                    warn!(error = %e, "accepting a tunnel connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(ticket) = gate.admit(peer.ip()) else {
            drop(tcp);
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(&this);
        let acceptor = acceptor.clone();
        let span = info_span!("tunnel", tunnel = id, %peer);
        tokio::spawn(
            async move {
                let _ = tcp.set_nodelay(true);
                // One deadline for TLS, the upgrade and the handshake
                // together, so a slow drip cannot stretch it step by step.
                let deadline = tokio::time::Instant::now() + this.config.tunnel.handshake_timeout;
                match acceptor {
                    Some(acceptor) => {
                        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => serve(&this, tls, id, ticket, deadline).await,
                            Ok(Err(e)) => info!(error = %e, "TLS handshake failed"),
                            Err(_) => info!("TLS handshake timed out"),
                        }
                    }
                    None => serve(&this, tcp, id, ticket, deadline).await,
                }
            }
            .instrument(span),
        );
    }
}

async fn serve<S>(
    this: &TunnelListener,
    stream: S,
    id: u64,
    ticket: Ticket,
    deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tunnel_config = &this.config.tunnel;
    // tokio-tungstenite serves the HTTP upgrade; the tunnel frames its own
    // messages from there (see `tunnel::ws`). Nothing is lost in between:
    // the edge sends nothing until it has read our challenge.
    let upgrade = tokio_tungstenite::accept_async(stream);
    let mut ws = match tokio::time::timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => WsConn::accepted(ws.into_inner()),
        Ok(Err(e)) => {
            info!(error = %e, "not a WebSocket tunnel request; closed");
            return;
        }
        Err(_) => {
            info!("WebSocket upgrade timed out; closed");
            return;
        }
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let admitted = match handshake::accept(&mut ws, &this.config, &this.edges, id, remaining).await
    {
        Ok(admitted) => admitted,
        Err(HandshakeError::Refused { code, message, edge_id }) => {
            warn!(edge = %edge_id, ?code, %message, "edge refused");
            return;
        }
        Err(HandshakeError::Wire(e)) => {
            info!(error = %e, "tunnel handshake failed");
            return;
        }
    };
    drop(ticket);
    let settings = MuxSettings {
        heartbeat_interval: tunnel_config.heartbeat_interval,
        heartbeat_timeout: tunnel_config.heartbeat_timeout,
        max_streams: tunnel_config.max_streams_per_tunnel,
        stream_window: tunnel_config.stream_window,
        window_budget: u64::from(tunnel_config.window_budget),
        ..MuxSettings::default()
    };
    let (tunnel, _no_incoming) = Tunnel::spawn(ws, Role::Cloud, id, settings);
    info!(edge = %admitted.edge_id, epoch = admitted.epoch, version = %admitted.agent_version,
        "edge connected");
    this.edges.add(&admitted.edge_id, admitted.epoch, tunnel.clone());
    tunnel.closed().await;
    info!(edge = %admitted.edge_id, reason = tunnel.close_reason().unwrap_or_default(),
        "edge tunnel closed");
    debug!("tunnel task done");
}
