//! The client's HTTP upgrade to WebSocket (RFC 6455, section 4.1).
//!
//! Done here rather than by a library so that bytes the server sends
//! right after its 101 response (the cloud's challenge) stay with the
//! connection: they are handed to the framing as its first input.

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use super::{Side, WsConn};

/// Largest upgrade response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The upgrade did not succeed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered, but not with a WebSocket upgrade.
    #[error("{0}")]
    Refused(String),
}

/// Upgrades `io` to a WebSocket for `path` on `host:port`.
///
/// # Errors
/// [`UpgradeError`] if the socket fails or the server does not switch
/// protocols correctly.
pub async fn client_upgrade<S>(
    mut io: S,
    host: &str,
    port: u16,
    path: &str,
    max_message: usize,
) -> Result<WsConn<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = generate_key();
    let host =
        if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;

    let mut buf = BytesMut::with_capacity(4096);
    let head_len = loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(UpgradeError::Refused(
                "connection closed before the upgrade response".into(),
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                check_response(&response, &key)?;
                break n;
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(UpgradeError::Refused("upgrade response head too large".into()));
            }
            Err(e) => return Err(UpgradeError::Refused(format!("malformed HTTP response: {e}"))),
        }
    };
    let leftover = buf.split_off(head_len);
    Ok(WsConn::new(io, Side::Client, max_message, leftover))
}

fn check_response(response: &httparse::Response<'_, '_>, key: &str) -> Result<(), UpgradeError> {
    let code = response.code.unwrap_or(0);
    if code != 101 {
        let reason = response.reason.unwrap_or("");
        return Err(UpgradeError::Refused(format!("HTTP error: {code} {reason}").trim().into()));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let upgrade = header("Upgrade").unwrap_or_default();
    let connection = header("Connection").unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket")
        || !connection.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    {
        return Err(UpgradeError::Refused("server did not switch to WebSocket".into()));
    }
    if header("Sec-WebSocket-Accept").as_deref() != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return Err(UpgradeError::Refused("wrong Sec-WebSocket-Accept in the response".into()));
    }
    Ok(())
}
