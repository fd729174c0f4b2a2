//! `relayctl events`: the cloud agent's event log, as a table or JSON
//! lines, and `-f` to follow it like `tail -f` over the
//! `/v1/events/stream` WebSocket, reconnecting (to the next endpoint, if
//! several) and resuming after the last seq seen when the connection
//! drops.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, UNIX_EPOCH};

use api::{Event, EventsPage, MAX_EVENTS_LIMIT};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

use crate::cli::Output;
use crate::client::{ClientError, ControlClient};
use crate::format::fit;

/// Silence after which a followed stream is pinged; a second silence
/// drops the connection and reconnects (a dead peer sends no close).
const STREAM_IDLE: Duration = Duration::from_secs(15);
/// First wait before reconnecting; doubled up to [`RECONNECT_MAX`].
const RECONNECT_START: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest message accepted from the stream (an event is far smaller).
const MAX_MESSAGE: usize = 64 * 1024;

/// Prints the events after `since`; with `follow`, then every new one
/// until interrupted.
///
/// # Errors
/// A [`ClientError`] when the agent cannot be reached or refuses the token
/// (when following: only before the first event arrived).
pub(crate) fn run(
    client: &ControlClient,
    since: u64,
    follow: bool,
    output: Output,
) -> Result<(), ClientError> {
    let mut printer = Printer::new(output);
    if follow {
        return follow_stream(client, since, &mut printer);
    }
    let mut since = since;
    let mut first = true;
    loop {
        let page = client.events(since, MAX_EVENTS_LIMIT)?;
        if first {
            warn_if_missed(since, &page);
            first = false;
        }
        for event in &page.events {
            printer.print(event);
        }
        match page.events.last() {
            Some(last) if last.seq < page.last_seq => since = last.seq,
            _ => return Ok(()),
        }
    }
}

/// Says on stderr when events after `since` are gone from the log.
fn warn_if_missed(since: u64, page: &EventsPage) {
    if let Some(oldest) = page.oldest_seq {
        if oldest > since + 1 && since > 0 {
            eprintln!(
                "relayctl: events {} to {} are no longer held by the agent",
                since + 1,
                oldest - 1
            );
        }
    }
}

fn follow_stream(
    client: &ControlClient,
    since: u64,
    printer: &mut Printer,
) -> Result<(), ClientError> {
    let mut last_seen = since;
    let mut wait = RECONNECT_START;
    let mut ever_connected = false;
    let mut endpoint = 0;
    let endpoints = client.endpoints();
    loop {
        let url = &endpoints[endpoint % endpoints.len()];
        match open_stream(client, url, last_seen) {
            Ok(mut socket) => {
                ever_connected = true;
                wait = RECONNECT_START;
                let why = read_stream(&mut socket, &mut last_seen, printer);
                eprintln!("relayctl: event stream from {url} ended ({why}); reconnecting");
            }
            Err(error) => {
                let (unreachable, e) = match error {
                    StreamError::Unauthorized => {
                        return Err(ClientError::Unauthorized { endpoint: url.clone() });
                    }
                    StreamError::Unreachable(e) => (true, e),
                    StreamError::Other(e) => (false, e),
                };
                if !ever_connected && endpoint + 1 >= endpoints.len() {
                    let reason = format!("cannot follow events: {e}");
                    return Err(if unreachable {
                        // Exit code 2, as for any other call that finds no agent.
                        ClientError::Unreachable { endpoint: url.clone(), reason }
                    } else {
                        ClientError::BadAnswer { endpoint: url.clone(), reason }
                    });
                }
                if ever_connected {
                    eprintln!("relayctl: cannot reach {url} ({e}); retrying in {wait:?}");
                }
                endpoint += 1;
            }
        }
        if ever_connected {
            std::thread::sleep(wait);
            wait = (wait * 2).min(RECONNECT_MAX);
        }
    }
}

#[derive(Debug)]
enum StreamError {
    Unauthorized,
    /// No TCP connection: the agent is down or not there.
    Unreachable(String),
    Other(String),
}

type Socket = tungstenite::WebSocket<TcpStream>;

/// Connects to `endpoint`'s event stream from `since`.
fn open_stream(client: &ControlClient, endpoint: &str, since: u64) -> Result<Socket, StreamError> {
    let other = |e: &dyn std::fmt::Display| StreamError::Other(e.to_string());
    let base = endpoint.strip_prefix("http://").ok_or_else(|| {
        StreamError::Other(format!("{endpoint}: only http:// endpoints can be followed"))
    })?;
    let host = base.split('/').next().unwrap_or(base);
    let url = format!("ws://{base}/v1/events/stream?since={since}");
    let mut request = url.as_str().into_client_request().map_err(|e| other(&e))?;
    if let Some(token) = client.token() {
        let value =
            format!("Bearer {token}").parse().map_err(|_| other(&"token is not a header"))?;
        request.headers_mut().insert("authorization", value);
    }
    let tcp = connect(host).map_err(|e| StreamError::Unreachable(e.to_string()))?;
    tcp.set_read_timeout(Some(STREAM_IDLE)).map_err(|e| other(&e))?;
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    match tungstenite::client::client_with_config(request, tcp, Some(config)) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)))
            if response.status().as_u16() == 401 =>
        {
            Err(StreamError::Unauthorized)
        }
        Err(tungstenite::HandshakeError::Failure(e)) => Err(other(&e)),
        Err(tungstenite::HandshakeError::Interrupted(_)) => Err(other(&"handshake interrupted")),
    }
}

fn connect(host: &str) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::other(format!("{host}: no address"));
    for addr in host.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, crate::client::CONNECT_TIMEOUT) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Prints events until the stream ends; returns why it ended.
fn read_stream(socket: &mut Socket, last_seen: &mut u64, printer: &mut Printer) -> String {
    let mut pinged = false;
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => {
                pinged = false;
                let event: Event = match serde_json::from_str(&text) {
                    Ok(e) => e,
                    Err(e) => return format!("not an event: {e}"),
                };
                if event.seq <= *last_seen {
                    continue;
                }
                if event.seq > *last_seen + 1 && *last_seen > 0 {
                    eprintln!(
                        "relayctl: events {} to {} were missed (no longer held by the agent)",
                        *last_seen + 1,
                        event.seq - 1
                    );
                }
                *last_seen = event.seq;
                printer.print(&event);
            }
            Ok(Message::Close(_)) => return "closed by the agent".into(),
            Ok(_) => pinged = false,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if pinged {
                    return format!("no answer for {:?}", STREAM_IDLE * 2);
                }
                pinged = true;
                if let Err(e) = socket.send(Message::Ping(Vec::new().into())) {
                    return e.to_string();
                }
            }
            Err(e) => return e.to_string(),
        }
    }
}

/// Prints events as a table (a header once, then one aligned line each,
/// so a followed stream lines up too) or as JSON lines.
#[derive(Debug)]
struct Printer {
    output: Output,
    header_done: bool,
}

/// Column widths of the table: time, kind, subject; the text follows.
const KIND_WIDTH: usize = 16;
const SUBJECT_WIDTH: usize = 20;

impl Printer {
    fn new(output: Output) -> Self {
        Self { output, header_done: false }
    }

    fn print(&mut self, event: &Event) {
        let mut out = std::io::stdout().lock();
        let line = match self.output {
            Output::Json => serde_json::to_string(event).unwrap_or_default(),
            Output::Table => {
                if !self.header_done {
                    let _ = writeln!(out, "{}", table_line("TIME", "KIND", "SUBJECT", "TEXT"));
                    self.header_done = true;
                }
                let subject = tunnel::untrusted::escape(&event.subject);
                let text = tunnel::untrusted::escape(&event.text);
                table_line(&time(event.at_unix_ms), event.kind.as_str(), &subject, &text)
            }
        };
        // A closed pipe (`| head`) ends the output, not the process.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
}

fn table_line(time: &str, kind: &str, subject: &str, text: &str) -> String {
    let subject = fit(subject, SUBJECT_WIDTH);
    format!("{time:<20}  {kind:<KIND_WIDTH$}  {subject:<SUBJECT_WIDTH$}  {text}")
}

/// `2026-12-02T06:44:25Z` (UTC, to the second).
pub(crate) fn time(at_unix_ms: u64) -> String {
    // humantime writes years up to 9999 only.
    const LAST_MS: u64 = 253_402_300_799_000;
    let at = UNIX_EPOCH + Duration::from_millis(at_unix_ms.min(LAST_MS));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_align_and_escape_nothing_twice() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_764_662_665_123), "2025-12-02T08:04:25Z");
        let line = table_line("1970-01-01T00:00:00Z", "tunnel_up", "site-a", "tunnel 1 up");
        assert_eq!(
            line,
            "1970-01-01T00:00:00Z  tunnel_up         site-a                tunnel 1 up"
        );
        let long = table_line("t", "limit_hit", &"x".repeat(30), "text");
        assert!(long.contains(&format!("{}…  text", "x".repeat(19))), "{long}");
    }
}
