//! Accepts edge tunnels: TCP, then TLS when configured, then WebSocket,
//! then the handshake, all within one handshake timeout and behind the
//! admission [`Gate`](crate::gate::Gate). What a connection that has not
//! authenticated makes us log goes through a [`LogLimit`], and text the
//! peer chose is escaped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use config::CloudConfig;
use proto::RefuseCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use tunnel::untrusted::escaped;
use tunnel::ws::WsConn;
use tunnel::{MuxSettings, Role, Tunnel};

use crate::directory::{self, NodeDirectory};
use crate::edges::EdgeRegistry;
use crate::enrolment::{Enrolment, Redeemed};
use crate::events::EventLog;
use crate::gate::{self, Gate, Refusal, Ticket};
use crate::handshake::{self, Accepted, EnrolRequest, HandshakeError};
use crate::log_limit::{self, LogLimit};

/// What strangers can make the listener log, each kind bounded.
#[derive(Debug)]
struct Logs {
    /// Connections the gate refused.
    gate: LogLimit,
    /// Handshakes that failed or were refused: TLS, upgrade, proof, fencing.
    handshakes: LogLimit,
}

#[derive(Debug)]
pub(crate) struct TunnelListener {
    pub(crate) config: Arc<CloudConfig>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) edges: Arc<EdgeRegistry>,
    /// The cluster's nodes, told to every version 4 tunnel.
    pub(crate) directory: watch::Receiver<Arc<NodeDirectory>>,
    pub(crate) stop: CancellationToken,
    pub(crate) events: EventLog,
    /// Redeems enrolment codes; set once the control API is (codes are
    /// made there).
    pub(crate) enrolment: Option<Arc<Enrolment>>,
}

pub(crate) async fn run(this: TunnelListener, listener: TcpListener) {
    let this = Arc::new(this);
    let ipv6_prefix = u8::try_from(this.config.tunnel.ipv6_source_prefix).unwrap_or(128);
    let gate = Arc::new(Gate::new(ipv6_prefix));
    let logs = Arc::new(Logs {
        gate: LogLimit::new("connections refused by the handshake gate"),
        handshakes: LogLimit::new("refused tunnel handshakes"),
    });
    let mut flush = tokio::time::interval(log_limit::FLUSH_EVERY);
    let acceptor = this.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let next_id = AtomicU64::new(1);
    loop {
        let (tcp, peer) = tokio::select! {
            () = this.stop.cancelled() => return,
            _ = flush.tick() => {
                logs.gate.flush();
                logs.handshakes.flush();
                continue;
            }
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
        let ticket = match gate.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                drop(tcp);
                if logs.gate.allow() {
                    let (source, limit, full) = match refusal {
                        Refusal::SourceFull { source } => {
                            (source, gate::MAX_PENDING_PER_SOURCE, "from its source")
                        }
                        Refusal::Full { source, limit } => (source, limit, "open to its source"),
                    };
                    warn!(%peer, %source, limit,
                        "too many unauthenticated tunnel connections {full}; refused");
                }
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(&this);
        let logs = Arc::clone(&logs);
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
                            Ok(Ok(tls)) => {
                                serve(&this, &logs, tls, peer, id, ticket, deadline).await;
                            }
                            Ok(Err(e)) if logs.handshakes.allow() => {
                                info!(error = %escaped(e), "TLS handshake failed");
                            }
                            Err(_) if logs.handshakes.allow() => info!("TLS handshake timed out"),
                            _ => {}
                        }
                    }
                    None => serve(&this, &logs, tcp, peer, id, ticket, deadline).await,
                }
            }
            .instrument(span),
        );
    }
}

async fn serve<S>(
    this: &TunnelListener,
    logs: &Logs,
    stream: S,
    peer: std::net::SocketAddr,
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
            if logs.handshakes.allow() {
                info!(error = %escaped(e), "not a WebSocket tunnel request; closed");
            }
            return;
        }
        Err(_) => {
            if logs.handshakes.allow() {
                info!("WebSocket upgrade timed out; closed");
            }
            return;
        }
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let admitted = match handshake::accept(&mut ws, &this.config, &this.edges, id, remaining).await
    {
        Ok(Accepted::Tunnel(admitted)) => admitted,
        Ok(Accepted::Enrol(request)) => {
            enrol(this, &mut ws, peer, &request).await;
            return;
        }
        Err(HandshakeError::Refused { code, message, edge_id }) => {
            if matches!(code, RefuseCode::Superseded | RefuseCode::TooManyTunnels) {
                ticket.authenticated(); // refused after proving its token
            }
            if code == RefuseCode::TooManyTunnels {
                this.events.limit_hit(
                    "max_tunnels_per_edge",
                    &edge_id,
                    &format!("edge {} refused a tunnel: {message}", escaped(&edge_id)),
                );
            }
            if logs.handshakes.allow() {
                warn!(edge = %escaped(&edge_id), ?code, %message, "edge refused");
            }
            return;
        }
        Err(HandshakeError::Wire(e)) => {
            if logs.handshakes.allow() {
                info!(error = %escaped(e), "tunnel handshake failed");
            }
            return;
        }
    };
    ticket.authenticated();
    drop(ticket);
    let settings = MuxSettings {
        heartbeat_interval: tunnel_config.heartbeat_interval,
        heartbeat_timeout: tunnel_config.heartbeat_timeout,
        max_streams: tunnel_config.max_streams_per_tunnel,
        stream_window: tunnel_config.stream_window,
        window_budget: u64::from(tunnel_config.window_budget),
        version: admitted.version,
        ..MuxSettings::default()
    };
    let welcome = admitted.welcome.clone();
    let (tunnel, _no_incoming, held) = Tunnel::spawn_held(ws, Role::Cloud, id, settings, welcome);
    // The node list goes right behind the welcome, and on every change.
    tokio::spawn(directory::follow(tunnel.clone(), this.directory.clone()).in_current_span());
    let edge_id = admitted.admission.edge_id().to_owned();
    let epoch = admitted.admission.epoch();
    // Logged once streams can be opened on it (tests wait for this line),
    // and not for a tunnel a newer run superseded meanwhile.
    let registered = this.edges.add(admitted.admission, tunnel.clone());
    // Welcome only now: the edge may take its tunnel for up (and retire
    // older ones) the moment it reads it, and by then the tunnel carries
    // streams here. Unregistered (superseded meanwhile), the go-away that
    // `add` queued follows the welcome.
    held.release();
    if registered {
        info!(edge = %edge_id, epoch, version = %escaped(&admitted.agent_version),
            protocol = admitted.version, credential = admitted.credential.as_str(),
            "edge connected");
        this.events.record(
            api::EventKind::TunnelUp,
            &edge_id,
            &format!(
                "tunnel {id} up (protocol {}, edge agent {})",
                admitted.version,
                escaped(&admitted.agent_version)
            ),
        );
    }
    tunnel.closed().await;
    // The reason may be the edge's go-away message.
    let reason = tunnel.close_reason().unwrap_or_default();
    info!(edge = %edge_id, reason = %escaped(&reason), "edge tunnel closed");
    if registered {
        // `record` escapes and cuts the edge's text.
        this.events.record(
            api::EventKind::TunnelDown,
            &edge_id,
            &format!("tunnel {id} down: {reason}"),
        );
    }
    debug!("tunnel task done");
}

/// Answers an `Enroll`: the edge's id and new token, or why not.
async fn enrol<S>(
    this: &TunnelListener,
    ws: &mut WsConn<S>,
    peer: std::net::SocketAddr,
    request: &EnrolRequest,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let redeemed = match &this.enrolment {
        Some(enrolment) => enrolment.redeem(peer.ip(), &request.secret, &request.hostname).await,
        None => Redeemed::Refused {
            code: RefuseCode::UnknownCode,
            message: "this cloud has no control API ([control]), so it makes no enrolment codes"
                .into(),
        },
    };
    let frame = match redeemed {
        Redeemed::Enrolled { edge_id, token } => proto::Frame::Enrolled { edge_id, token },
        Redeemed::Refused { code, message } => proto::Frame::Refuse { code, message },
    };
    debug!(agent_version = %escaped(&request.agent_version), "enrolment answered");
    handshake::send_last(ws, &frame).await;
}
