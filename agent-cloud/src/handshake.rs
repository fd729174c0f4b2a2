//! Server side of the tunnel handshake (see `docs/protocol.md`).

use std::sync::Arc;
use std::time::Duration;

use config::CloudConfig;
use proto::{Frame, MIN_PROTOCOL_VERSION, NONCE_LEN, PROTOCOL_VERSION, RefuseCode};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncWrite};
use tunnel::wire::{self, WireError};
use tunnel::ws::WsConn;

use crate::edges::{Admission, EdgeRegistry};
use crate::fleet::Credential;

/// How long a refusal may take to send before the connection is dropped.
const REFUSE_SEND_LIMIT: Duration = Duration::from_secs(2);

/// An edge that proved its token and was admitted.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Its place among the edge's tunnels, until the tunnel is added.
    pub(crate) admission: Admission,
    /// As the edge reported it: untrusted text.
    pub(crate) agent_version: String,
    /// The protocol version agreed (3 to the newest this build speaks).
    pub(crate) version: u16,
    /// Which of the edge's tokens it proved.
    pub(crate) credential: Credential,
    /// The `Welcome` to send once the tunnel is registered (so it can
    /// carry streams by the time the edge reads it).
    pub(crate) welcome: Frame,
}

/// What a handshake produced: a tunnel, or a request to redeem an
/// enrolment code (answered by [`crate::enrolment`]).
#[derive(Debug)]
pub(crate) enum Accepted {
    Tunnel(Admitted),
    Enrol(EnrolRequest),
}

/// An `Enroll` frame, checked for its version.
#[derive(Debug)]
pub(crate) struct EnrolRequest {
    pub(crate) secret: [u8; proto::ENROL_SECRET_LEN],
    /// As the edge sent them: untrusted text.
    pub(crate) hostname: String,
    pub(crate) agent_version: String,
}

/// Why a handshake did not produce a tunnel.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("refused ({code:?}): {message}")]
    Refused { code: RefuseCode, message: String, edge_id: String },
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Runs the handshake on a fresh WebSocket: challenge, verify the edge's
/// proof, apply session fencing, then refuse, or answer the `Welcome` to
/// send (the caller sends it once the tunnel is registered).
pub(crate) async fn accept<S>(
    ws: &mut WsConn<S>,
    config: &CloudConfig,
    edges: &Arc<EdgeRegistry>,
    tunnel_id: u64,
    timeout: Duration,
) -> Result<Accepted, HandshakeError>
where
    S: AsyncRead + AsyncWrite,
{
    let mut server_nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut server_nonce)
        .map_err(|_| WireError::Invalid("system random source failed".into()))?;
    let challenge = Frame::Challenge {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        nonce: server_nonce,
    };
    wire::send_frame(ws, &challenge).await?;

    let auth = match wire::recv_frame(ws, timeout).await {
        Ok(frame) => frame,
        // Anything but one well-formed frame in one binary message (an
        // oversized or malformed frame, two frames, a trailing byte, an empty
        // or text message) is told why before the close, like a frame of
        // the wrong kind.
        Err(WireError::Invalid(why)) => {
            return refuse(ws, RefuseCode::ProtocolError, &why, "").await;
        }
        Err(e) => return Err(e.into()),
    };
    if let Frame::Enroll { version, secret, hostname, agent_version } = auth {
        if !(proto::ENROL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            let message = format!(
                "enrolment at protocol version {version} not supported (this cloud enrols at {}..={PROTOCOL_VERSION})",
                proto::ENROL_VERSION
            );
            return refuse(ws, RefuseCode::VersionMismatch, &message, "").await;
        }
        return Ok(Accepted::Enrol(EnrolRequest { secret, hostname, agent_version }));
    }
    let Frame::Auth { version, edge_id, epoch, agent_version, nonce, proof } = auth else {
        return refuse(ws, RefuseCode::ProtocolError, "expected an auth frame", "").await;
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        let message = format!(
            "protocol version {version} not supported (this cloud speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION})"
        );
        return refuse(ws, RefuseCode::VersionMismatch, &message, &edge_id).await;
    }
    let verify = |token: &[u8]| {
        proto::verify_auth_proof(token, &server_nonce, &nonce, version, epoch, &edge_id, &proof)
    };
    let (token, credential) = match edges.authenticate(&edge_id, crate::clock::unix_ms(), verify) {
        Ok(found) => found,
        Err(RefuseCode::UnknownEdge) => {
            return refuse(ws, RefuseCode::UnknownEdge, "unknown edge id", &edge_id).await;
        }
        Err(RefuseCode::Revoked) => {
            // Older edges do not know the code; the sentence says it.
            let code = if version >= proto::FLEET_VERSION {
                RefuseCode::Revoked
            } else {
                RefuseCode::BadToken
            };
            let message = "this edge was revoked by the cloud's operator: it needs a new token \
                (relayctl edges rotate-token)";
            return refuse(ws, code, message, &edge_id).await;
        }
        Err(_) => {
            return refuse(ws, RefuseCode::BadToken, "token proof does not match", &edge_id).await;
        }
    };
    let token = token.expose();
    let admission = match edges.admit(&edge_id, epoch, token) {
        Ok(admission) => admission,
        Err(code) => {
            let message = match code {
                RefuseCode::Superseded => "a newer run of this edge id is connected",
                RefuseCode::UnknownEdge => "unknown edge id (removed just now)",
                _ => "this edge has as many tunnels as allowed",
            };
            return refuse(ws, code, message, &edge_id).await;
        }
    };
    let welcome = Frame::Welcome {
        version,
        tunnel_id,
        heartbeat_ms: u32::try_from(config.tunnel.heartbeat_interval.as_millis())
            .unwrap_or(u32::MAX),
        max_streams: config.tunnel.max_streams_per_tunnel,
        max_frame_payload: proto::DEFAULT_MAX_FRAME_PAYLOAD,
        proof: proto::server_proof(token, &server_nonce, &nonce, tunnel_id),
    };
    Ok(Accepted::Tunnel(Admitted { admission, agent_version, version, credential, welcome }))
}

async fn refuse<S, T>(
    ws: &mut WsConn<S>,
    code: RefuseCode,
    message: &str,
    edge_id: &str,
) -> Result<T, HandshakeError>
where
    S: AsyncRead + AsyncWrite,
{
    send_last(ws, &Frame::Refuse { code, message: message.to_owned() }).await;
    Err(HandshakeError::Refused { code, message: message.to_owned(), edge_id: edge_id.to_owned() })
}

/// Sends the last frame of a connection (a refusal, or `Enrolled`) and
/// closes it, bounded: a peer that does not read must not hold the
/// handshake slot.
pub(crate) async fn send_last<S>(ws: &mut WsConn<S>, frame: &Frame)
where
    S: AsyncRead + AsyncWrite,
{
    let _ = tokio::time::timeout(REFUSE_SEND_LIMIT, async {
        let _ = wire::send_frame(ws, frame).await;
        let _ = ws.close().await;
    })
    .await;
}
