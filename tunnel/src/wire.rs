//! Single frames over a WebSocket, for the handshake, and the WebSocket
//! limits both agents use.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use proto::Frame;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest handshake frame payload: handshake frames are small and fixed.
pub const MAX_HANDSHAKE_PAYLOAD: u32 = 1024;

/// WebSocket limits for a tunnel whose frames are at most
/// `max_frame_payload` bytes: a message holds a batch of frames, so the cap
/// leaves room for one full batch plus one maximal frame. Anything larger
/// is refused by the WebSocket layer before it is buffered.
pub fn websocket_config(max_frame_payload: u32) -> WebSocketConfig {
    let max_message = 512 * 1024 + max_frame_payload as usize + proto::HEADER_LEN;
    WebSocketConfig::default().max_message_size(Some(max_message)).max_frame_size(Some(max_message))
}

/// A handshake step failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The WebSocket failed or closed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
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
pub async fn send_frame<S>(ws: &mut WebSocketStream<S>, frame: &Frame) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    ws.send(Message::Binary(buf.freeze())).await?;
    Ok(())
}

/// Receives one message that must hold exactly one frame, within `timeout`.
///
/// # Errors
/// A [`WireError`] on timeout, close, or anything but one valid frame.
pub async fn recv_frame<S>(
    ws: &mut WebSocketStream<S>,
    timeout: Duration,
) -> Result<Frame, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let next = async {
        loop {
            match ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Err(WireError::Closed),
                Some(Err(e)) => return Err(WireError::WebSocket(e)),
                Some(Ok(Message::Binary(mut bytes))) => {
                    let frame = proto::decode(&mut bytes, MAX_HANDSHAKE_PAYLOAD)
                        .map_err(|e| WireError::Invalid(e.to_string()))?
                        .ok_or_else(|| WireError::Invalid("truncated frame".into()))?;
                    if !bytes.is_empty() {
                        return Err(WireError::Invalid("more than one frame".into()));
                    }
                    return Ok(frame);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(_)) => return Err(WireError::Invalid("non-binary message".into())),
            }
        }
    };
    tokio::time::timeout(timeout, next).await.map_err(|_| WireError::Timeout(timeout))?
}
