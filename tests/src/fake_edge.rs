//! A hand-driven edge for tests that speak the tunnel protocol directly:
//! frames in WebSocket messages over tokio-tungstenite (so it also checks
//! that the agents' own WebSocket framing interoperates).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use proto::{Frame, NONCE_LEN, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The fake edge's socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Token of the edge `fake` in tests' cloud configs (not [`crate::TOKEN`]).
pub const FAKE_TOKEN: &str = "Hk2pW9xQv7LmT4sZr1NcY8bDf3GjE6aU";

/// One frame as a message payload.
pub fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

/// The frames of a message payload, up to the first that does not decode.
pub fn decode_all(mut bytes: Bytes) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Ok(Some(frame)) = proto::decode(&mut bytes, 1 << 20) {
        out.push(frame);
    }
    out
}

/// The frames of the next binary message (a message may batch several);
/// None after 5 s of silence, at the end, or on a frame that does not
/// decode.
pub async fn recv_frames(ws: &mut Ws) -> Option<Vec<Frame>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.ok()?? {
            Ok(Message::Binary(mut bytes)) => {
                let mut frames = Vec::new();
                while let Some(frame) = proto::decode(&mut bytes, 1 << 20).ok()? {
                    frames.push(frame);
                }
                return Some(frames);
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// The next message, which must hold exactly one frame (handshake).
pub async fn recv_frame(ws: &mut Ws) -> Option<Frame> {
    let mut frames = recv_frames(ws).await?;
    if frames.len() == 1 { frames.pop() } else { None }
}

/// Connects and reads the challenge; returns the socket and server nonce.
pub async fn challenge(cloud: SocketAddr) -> (Ws, [u8; NONCE_LEN]) {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{cloud}/tunnel")).await.expect("ws connect");
    let Some(Frame::Challenge { nonce, .. }) = recv_frame(&mut ws).await else {
        panic!("no challenge")
    };
    (ws, nonce)
}

/// The `Auth` answering `server_nonce` as `edge_id` with `token`.
pub fn auth(server_nonce: &[u8; NONCE_LEN], edge_id: &str, token: &str, version: u16) -> Frame {
    auth_from_run(server_nonce, edge_id, token, version, 1)
}

/// [`auth`] from the edge run (process) `epoch`.
pub fn auth_from_run(
    server_nonce: &[u8; NONCE_LEN],
    edge_id: &str,
    token: &str,
    version: u16,
    epoch: u64,
) -> Frame {
    let nonce = [7u8; NONCE_LEN];
    Frame::Auth {
        version,
        edge_id: edge_id.into(),
        epoch,
        agent_version: "test".into(),
        nonce,
        proof: proto::auth_proof(token.as_bytes(), server_nonce, &nonce, version, epoch, edge_id),
    }
}

/// Sends the handshake of edge `fake` from run `epoch` on a socket that
/// read its challenge: the socket once welcomed, or what the cloud answered
/// instead (`None`: nothing within 5 s, or the socket closed).
pub async fn finish_handshake(
    mut ws: Ws,
    server_nonce: &[u8; NONCE_LEN],
    epoch: u64,
) -> Result<Ws, Option<Frame>> {
    let auth = auth_from_run(server_nonce, "fake", FAKE_TOKEN, PROTOCOL_VERSION, epoch);
    ws.send(Message::Binary(encode(&auth))).await.map_err(|_| None)?;
    match recv_frame(&mut ws).await {
        Some(Frame::Welcome { .. }) => Ok(ws),
        other => Err(other),
    }
}

/// Runs a full handshake as edge `fake`; returns the established socket.
pub async fn fake_edge(cloud: SocketAddr) -> Ws {
    let (mut ws, nonce) = challenge(cloud).await;
    ws.send(Message::Binary(encode(&auth(&nonce, "fake", FAKE_TOKEN, PROTOCOL_VERSION))))
        .await
        .expect("send auth");
    match recv_frame(&mut ws).await {
        Some(Frame::Welcome { .. }) => ws,
        other => panic!("fake edge not welcomed: {other:?}"),
    }
}
