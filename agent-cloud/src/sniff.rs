//! What name a connection on a shared listen address asks for, from its
//! first bytes: a TLS ClientHello's server name (SNI), or an HTTP/1.x
//! request's `Host`. Nothing is terminated or answered here: [`peek`] is
//! pure and looks at the bytes so far; [`read_name`] reads, bounded in
//! bytes and time, until it can say. The caller replays every byte read to
//! the destination.
//!
//! The ClientHello is parsed by rustls' [`Acceptor`] (records split over
//! segments, a hello split over records); the request by `httparse`.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The most bytes read from a connection before its name is known.
pub(crate) const MAX_PEEK: usize = 16 * 1024;
/// Most headers looked through for `Host`.
const MAX_HEADERS: usize = 100;
/// A TLS record of type handshake starts with this byte.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peeked {
    /// A TLS ClientHello; its server name, normalized (none if it sent
    /// none).
    Tls(Option<String>),
    /// A TLS handshake record that is not a ClientHello rustls can read.
    BadTls,
    /// An HTTP/1.x request; its `Host` without the port, normalized (none
    /// if it has none).
    Http(Option<String>),
    /// Neither.
    Other,
}

/// What `buf`, the first bytes of a connection, says, or `None` when more
/// bytes are needed to tell.
pub(crate) fn peek(buf: &[u8]) -> Option<Peeked> {
    let first = *buf.first()?;
    if first == TLS_HANDSHAKE {
        return client_hello(buf);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let host = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(host_without_port);
            Some(Peeked::Http(host))
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Peeked::Other),
    }
}

fn client_hello(buf: &[u8]) -> Option<Peeked> {
    let mut acceptor = Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(Peeked::BadTls),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            Some(Peeked::Tls(accepted.client_hello().server_name().map(config::normalize_host)))
        }
        Ok(None) => None,
        Err(_) => Some(Peeked::BadTls),
    }
}

/// `example.com:8080` → `example.com`, `[::1]:8080` → `[::1]`, normalized.
fn host_without_port(value: &str) -> String {
    let value = value.trim();
    let host = if value.starts_with('[') {
        value.find(']').map_or(value, |end| &value[..=end])
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => value,
        }
    };
    config::normalize_host(host)
}

/// Why no name came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeekError {
    /// The deadline passed; `0` bytes had come (a silent client) or some.
    Timeout(usize),
    /// [`MAX_PEEK`] bytes came and they still did not say.
    TooLarge,
    /// The client closed or reset first.
    Closed,
    /// Peeked bytes of all connections together are at their budget.
    Overloaded,
}

/// Reads from `tcp` until [`peek`] can say, [`MAX_PEEK`] bytes came, the
/// client closes, or `deadline` passes. Nothing is allocated before the
/// first byte arrives; what is held is taken from `budget` (permits of
/// 1 KiB each). Returns what it said and every byte read.
pub(crate) async fn read_name(
    tcp: &TcpStream,
    deadline: Instant,
    budget: &std::sync::Arc<Semaphore>,
) -> Result<(Peeked, Bytes), PeekError> {
    // Grown only as bytes come (no scratch array: a silent connection's
    // state is a few hundred bytes, however many wait).
    let mut buf = BytesMut::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        match tokio::time::timeout_at(deadline, tcp.readable()).await {
            Err(_) => return Err(PeekError::Timeout(buf.len())),
            Ok(Err(_)) => return Err(PeekError::Closed),
            Ok(Ok(())) => {}
        }
        // Doubling from 512 bytes, never past the bound.
        let room = (MAX_PEEK - buf.len()).min(buf.len().max(512));
        buf.reserve(room);
        match tcp.try_read_buf(&mut (&mut buf).limit(room)) {
            Ok(0) => return Err(PeekError::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(PeekError::Closed),
        }
        let kib = buf.len().div_ceil(1024) as u32;
        let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
        if kib > have {
            let more = std::sync::Arc::clone(budget)
                .try_acquire_many_owned(kib - have)
                .map_err(|_| PeekError::Overloaded)?;
            match &mut held {
                Some(p) => p.merge(more),
                None => held = Some(more),
            }
        }
        if let Some(peeked) = peek(&buf) {
            return Ok((peeked, buf.freeze()));
        }
        if buf.len() >= MAX_PEEK {
            return Err(PeekError::TooLarge);
        }
    }
}

/// [`peek`] on `data` and on each prefix of it, for the `sniff` fuzz
/// target: any name found is normalized.
pub(crate) fn fuzz_peek(data: &[u8]) {
    for end in (0..=data.len()).step_by(data.len() / 16 + 1).chain([data.len()]) {
        if let Some(Peeked::Tls(Some(name)) | Peeked::Http(Some(name))) = peek(&data[..end]) {
            assert_eq!(name, config::normalize_host(&name), "a name as routing compares it");
        }
    }
}

/// The TLS alert a client whose server name no mapping takes gets:
/// fatal `unrecognized_name` (112), in a TLS 1.0 record as a server that
/// has not chosen a version sends it.
pub(crate) const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 112];

/// The answer an HTTP client whose `Host` no mapping takes gets.
pub(crate) const MISDIRECTED: &[u8] = b"HTTP/1.1 421 Misdirected Request\r\n\
    Content-Type: text/plain\r\nContent-Length: 44\r\nConnection: close\r\n\r\n\
    no service is configured for this host name\n";

/// How long a client on a shared address has to name its host, unless
/// `host_routing_timeout` says otherwise.
pub(crate) const DEFAULT_PEEK_TIMEOUT: Duration = config::DEFAULT_HOST_ROUTING_TIMEOUT;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello from rustls' client for `name`.
    fn client_hello_for(name: &str) -> Vec<u8> {
        // No roots: the hello is written before anything is verified.
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_client_hello_names_its_server_whole_or_in_pieces() {
        let hello = client_hello_for("App.Example.com");
        assert_eq!(peek(&hello), Some(Peeked::Tls(Some("app.example.com".into()))));
        for cut in [1, 5, 9, hello.len() / 2, hello.len() - 1] {
            assert_eq!(peek(&hello[..cut]), None, "{cut} of {} bytes", hello.len());
        }
    }

    #[test]
    fn a_client_hello_split_over_several_records_is_read() {
        let hello = client_hello_for("b.example.com");
        // Re-frame the handshake message into records of 50 bytes each.
        let (header, body) = hello.split_at(5);
        assert_eq!(header[0], TLS_HANDSHAKE);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let mut split = Vec::new();
        for part in body[..len].chunks(50) {
            split.extend_from_slice(&[TLS_HANDSHAKE, header[1], header[2]]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert!(split.len() > hello.len() + 5, "several records");
        assert_eq!(peek(&split), Some(Peeked::Tls(Some("b.example.com".into()))));
        assert_eq!(peek(&split[..split.len() - 10]), None);
    }

    #[test]
    fn tls_garbage_is_bad_tls() {
        assert_eq!(peek(&[0x16, 3, 1, 0, 4, 9, 9, 9, 9]), Some(Peeked::BadTls));
    }

    #[test]
    fn an_http_request_names_its_host_without_the_port() {
        let get = |host: &str| {
            let req = format!("GET / HTTP/1.1\r\nUser-Agent: t\r\nHOST: {host}\r\n\r\n");
            peek(req.as_bytes())
        };
        assert_eq!(get("Web.Example.com:8080"), Some(Peeked::Http(Some("web.example.com".into()))));
        assert_eq!(get("web.example.com"), Some(Peeked::Http(Some("web.example.com".into()))));
        assert_eq!(get("[::1]:80"), Some(Peeked::Http(Some("[::1]".into()))));
        assert_eq!(peek(b"GET / HTTP/1.0\r\n\r\n"), Some(Peeked::Http(None)));
        assert_eq!(peek(b"GET / HTTP/1.1\r\nHost: a"), None, "headers not finished");
        assert_eq!(peek(b"GE"), None);
    }

    #[test]
    fn anything_else_is_other() {
        assert_eq!(peek(b"\x00\x01garbage"), Some(Peeked::Other));
        assert_eq!(peek(b"SSH-2.0-OpenSSH_9.6\r\n"), Some(Peeked::Other));
        assert_eq!(peek(b""), None);
    }

    #[test]
    fn the_answers_are_well_formed() {
        let text = std::str::from_utf8(MISDIRECTED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert_eq!(UNRECOGNIZED_NAME_ALERT[0], 0x15);
    }
}
