//! Dialling the cloud: TCP, TLS for `wss://`, WebSocket, handshake.

use std::sync::Arc;
use std::time::Duration;

use config::{CloudUrl, EdgeConfig};
use proto::{Frame, MIN_PROTOCOL_VERSION, NONCE_LEN, PROTOCOL_VERSION, RefuseCode};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tunnel::wire::{self, WireError};
use tunnel::ws::{self, WsConn};
use tunnel::{IncomingStream, MuxSettings, Role, Tunnel};

/// Each dial step must finish within this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Smallest frame payload limit a cloud may announce.
const MIN_PEER_FRAME_PAYLOAD: u32 = 1024;

/// Why a dial did not produce a tunnel.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DialError {
    /// TCP connect, TLS or WebSocket upgrade failed.
    #[error("cannot reach the cloud at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The cloud refused the handshake.
    #[error("cloud refused this edge ({code:?}): {message}")]
    Refused { code: RefuseCode, message: String },
    /// The cloud could not prove it knows this edge's token.
    #[error("the cloud's proof of the token is wrong: not our cloud, or a different token")]
    BadServerProof,
    /// The handshake broke down.
    #[error("handshake failed: {0}")]
    Handshake(#[from] WireError),
}

impl DialError {
    /// Whether retrying soon can help; a refusal for a wrong token or an
    /// unknown id needs an operator, so the pool backs off longer.
    pub fn is_transient(&self) -> bool {
        match self {
            DialError::Refused { code, .. } => code.is_transient(),
            DialError::BadServerProof => false,
            _ => true,
        }
    }
}

/// An established tunnel, and the streams the cloud opens on it.
#[derive(Debug)]
pub(crate) struct Dialled {
    pub(crate) tunnel: Tunnel,
    pub(crate) incoming: mpsc::UnboundedReceiver<IncomingStream>,
}

async fn step<T, E: std::fmt::Display>(
    url: &str,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, DialError> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            Err(DialError::Connect { url: url.to_owned(), reason: format!("{what}: {e}") })
        }
        Err(_) => Err(DialError::Connect {
            url: url.to_owned(),
            reason: format!("{what} timed out after {STEP_TIMEOUT:?}"),
        }),
    }
}

/// Dials one tunnel to `cloud` (the configured URL, or a node's), with
/// the trust settings in `tls` for `wss://`.
pub(crate) async fn dial(
    config: &EdgeConfig,
    cloud: &CloudUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    epoch: u64,
) -> Result<Dialled, DialError> {
    let url = cloud.to_string();
    let tls = match (cloud.tls, tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => {
            return Err(DialError::Connect {
                url,
                reason: "wss:// needs trust settings that did not load (see ca_file)".into(),
            });
        }
    };
    let target = (cloud.host.as_str(), cloud.port);
    let tcp = step(&url, "TCP connect", TcpStream::connect(target)).await?;
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(tls) => {
            let name = ServerName::try_from(cloud.host.clone()).map_err(|e| {
                DialError::Connect { url: url.clone(), reason: format!("bad TLS server name: {e}") }
            })?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            let stream = step(&url, "TLS", connector.connect(name, tcp)).await?;
            upgrade(config, cloud, &url, stream, epoch).await
        }
        None => upgrade(config, cloud, &url, tcp, epoch).await,
    }
}

async fn upgrade<S>(
    config: &EdgeConfig,
    cloud: &CloudUrl,
    url: &str,
    stream: S,
    epoch: u64,
) -> Result<Dialled, DialError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ws = step(
        url,
        "WebSocket upgrade",
        ws::client_upgrade(
            stream,
            &cloud.host,
            cloud.port,
            &cloud.path,
            ws::max_message_len(proto::DEFAULT_MAX_FRAME_PAYLOAD),
        ),
    )
    .await?;
    let welcome = handshake(&mut ws, config, epoch).await?;
    let settings = MuxSettings {
        heartbeat_interval: welcome.heartbeat,
        heartbeat_timeout: welcome.heartbeat * 3,
        max_streams: welcome.max_streams,
        peer_max_frame_payload: welcome.max_frame_payload,
        stream_window: config.stream_window,
        window_budget: u64::from(config.window_budget),
        version: welcome.version,
        ..MuxSettings::default()
    };
    let (tunnel, incoming) = Tunnel::spawn(ws, Role::Edge, welcome.tunnel_id, settings);
    Ok(Dialled { tunnel, incoming })
}

struct Welcome {
    version: u16,
    tunnel_id: u64,
    heartbeat: Duration,
    max_streams: u32,
    max_frame_payload: u32,
}

async fn handshake<S>(
    ws: &mut WsConn<S>,
    config: &EdgeConfig,
    epoch: u64,
) -> Result<Welcome, DialError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Frame::Challenge { min_version, max_version, nonce: server_nonce } =
        wire::recv_frame(ws, STEP_TIMEOUT).await?
    else {
        return Err(WireError::Invalid("expected a challenge".into()).into());
    };
    let version = version_to_speak(min_version, max_version).unwrap_or_else(|| {
        // Still authenticate with our version: the cloud then refuses with
        // a version mismatch and logs it on its side too.
        tracing::warn!(
            ours = PROTOCOL_VERSION,
            cloud_min = min_version,
            cloud_max = max_version,
            "the cloud does not speak our protocol version"
        );
        PROTOCOL_VERSION
    });
    let mut edge_nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut edge_nonce)
        .map_err(|_| WireError::Invalid("system random source failed".into()))?;
    let token = config.token.expose();
    let auth = Frame::Auth {
        version,
        edge_id: config.edge_id.clone(),
        epoch,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        nonce: edge_nonce,
        proof: proto::auth_proof(
            token,
            &server_nonce,
            &edge_nonce,
            version,
            epoch,
            &config.edge_id,
        ),
    };
    wire::send_frame(ws, &auth).await?;
    let sent = version;
    match wire::recv_frame(ws, STEP_TIMEOUT).await? {
        Frame::Welcome {
            version,
            tunnel_id,
            heartbeat_ms,
            max_streams,
            max_frame_payload,
            proof,
        } => {
            if !proto::verify_server_proof(token, &server_nonce, &edge_nonce, tunnel_id, &proof) {
                return Err(DialError::BadServerProof);
            }
            // Data is cut into frames of at most this size: a tiny value
            // would make every stream fail its flow-control accounting.
            if max_frame_payload < MIN_PEER_FRAME_PAYLOAD {
                return Err(WireError::Invalid(format!(
                    "cloud accepts frames of only {max_frame_payload} bytes \
                     (at least {MIN_PEER_FRAME_PAYLOAD} needed)"
                ))
                .into());
            }
            Ok(Welcome {
                // The cloud agrees to the version we sent; never more.
                version: version.min(sent),
                tunnel_id,
                heartbeat: Duration::from_millis(u64::from(heartbeat_ms.max(100))),
                max_streams,
                max_frame_payload,
            })
        }
        Frame::Refuse { code, message } => Err(DialError::Refused { code, message }),
        other => Err(WireError::Invalid(format!("expected welcome, got {other:?}")).into()),
    }
}

/// The newest version both this edge and a cloud offering
/// `min..=max` speak, so an edge upgraded before its cloud still connects
/// (without what the newer version adds); `None` when there is none.
fn version_to_speak(min: u16, max: u16) -> Option<u16> {
    let version = PROTOCOL_VERSION.min(max);
    (version >= MIN_PROTOCOL_VERSION && version >= min).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_speaks_the_newest_version_the_cloud_offers() {
        assert_eq!(version_to_speak(3, PROTOCOL_VERSION + 2), Some(PROTOCOL_VERSION));
        assert_eq!(version_to_speak(3, 4), Some(4), "an older cloud");
        assert_eq!(version_to_speak(1, 2), None, "too old");
        assert_eq!(version_to_speak(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2), None);
    }
}
