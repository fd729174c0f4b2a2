//! Single frames over a WebSocket, for the handshake.

use std::time::Duration;

use proto::Frame;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ws::{OutMessage, WsConn, WsError, WsMessage};

/// Largest handshake frame payload: handshake frames are small and fixed.
pub const MAX_HANDSHAKE_PAYLOAD: u32 = 1024;

/// A handshake step failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The WebSocket failed or closed.
    #[error("websocket: {0}")]
    WebSocket(#[from] WsError),
    /// The peer closed before the handshake finished.
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// The peer sent something that is not exactly one valid frame.
    #[error("invalid handshake message: {0}")]
    Invalid(String),
    /// The peer did not answer in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// Sends one frame as one WebSocket message.
///
/// # Errors
/// [`WireError::WebSocket`] if the send fails.
pub async fn send_frame<S>(ws: &mut WsConn<S>, frame: &Frame) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite,
{
    let mut message = OutMessage::new(ws.side());
    message.push(frame.clone());
    ws.writer.send(&mut message).await.map_err(WsError::from)?;
    Ok(())
}

/// Receives one message that must hold exactly one frame, within `timeout`.
///
/// # Errors
/// A [`WireError`] on timeout, close, or anything but one valid frame.
pub async fn recv_frame<S>(ws: &mut WsConn<S>, timeout: Duration) -> Result<Frame, WireError>
where
    S: AsyncRead + AsyncWrite,
{
    let next = async {
        loop {
            match ws.reader.next().await? {
                None | Some(WsMessage::Close(_)) => return Err(WireError::Closed),
                Some(WsMessage::Binary(mut bytes)) => {
                    let frame = proto::decode(&mut bytes, MAX_HANDSHAKE_PAYLOAD)
                        .map_err(|e| WireError::Invalid(e.to_string()))?
                        .ok_or_else(|| WireError::Invalid("truncated frame".into()))?;
                    if !bytes.is_empty() {
                        return Err(WireError::Invalid("more than one frame".into()));
                    }
                    return Ok(frame);
                }
                Some(WsMessage::Ping | WsMessage::Pong) => continue,
                Some(WsMessage::Text) => {
                    return Err(WireError::Invalid("non-binary message".into()));
                }
            }
        }
    };
    tokio::time::timeout(timeout, next).await.map_err(|_| WireError::Timeout(timeout))?
}
