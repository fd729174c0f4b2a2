//! Reading the PROXY protocol header (v1 text, v2 binary) a load balancer
//! sends before its client's bytes, so the mapping sees the real client.
//!
//! The read is bounded and exact: it takes only the header's bytes (a v1
//! line of at most [`V1_MAX_LEN`] bytes ending in CRLF; a v2 16-byte prefix
//! then the length it declares, at most [`V2_MAX_BODY`]) and never a byte
//! past it, so whatever follows in the same segment is the client's and
//! reaches the service unchanged. Parsing is the `ppp` crate's.
//!
//! Whom to believe is the caller's business: only peers in
//! `[proxy_protocol] from` get this far (see [`crate::mapping`]).

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v1;
use ppp::v2;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, CRLF included (the protocol's own limit).
pub(crate) const V1_MAX_LEN: usize = 107;
/// The most bytes accepted after a v2 header's 16-byte prefix: addresses
/// (36 bytes for IPv6) and TLVs. A larger declared length is refused
/// before it is read.
pub(crate) const V2_MAX_BODY: usize = 1024;
/// A v2 header's fixed part: signature, version and command, family and
/// protocol, length.
const V2_PREFIX_LEN: usize = 16;
/// Bytes that tell v1 (`PROXY`) from v2 (the start of its signature).
const SNIFF_LEN: usize = 5;

/// A v2 header with the `LOCAL` command.
pub(crate) const V2_LOCAL: &str = "v2 LOCAL";
/// A v1 header with the `UNKNOWN` protocol.
pub(crate) const V1_UNKNOWN: &str = "v1 UNKNOWN";
/// A connection closed or reset before its first byte.
pub(crate) const SILENT: &str = "closed before any byte";
/// A header whose source is the load balancer's own connection.
pub(crate) const ITSELF: &str = "the load balancer's own address";

/// What a well-formed header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// A client connection: its address, as the load balancer saw it.
    Client(SocketAddr),
    /// Not a client: a v2 `LOCAL` command or a v1 `UNKNOWN` line, a
    /// header naming the load balancer's own connection (health checks),
    /// or a connection closed or reset before its first byte (a plain TCP
    /// check). The connection is closed without opening a stream. Which
    /// of them, for the log: [`V2_LOCAL`], [`V1_UNKNOWN`], [`ITSELF`] or
    /// [`SILENT`].
    Check(&'static str),
}

/// Why no client address could be taken from a connection.
#[derive(Debug, Error)]
#[non_exhaustive]
pub(crate) enum HeaderError {
    /// The whole header did not arrive within the configured timeout.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection partway through the header.
    #[error("connection closed after {0} bytes, in the middle of the PROXY header")]
    Truncated(usize),
    /// The first bytes are neither `PROXY` nor the v2 signature.
    #[error("not a PROXY protocol header (it starts with {0})")]
    NotProxy(String),
    /// A v1 line without CRLF within [`V1_MAX_LEN`] bytes.
    #[error("PROXY v1 header longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A v2 header declaring more than [`V2_MAX_BODY`] bytes.
    #[error(
        "PROXY v2 header declares {0} bytes of addresses and TLVs, more than the {V2_MAX_BODY} accepted"
    )]
    V2TooLong(usize),
    /// A malformed v1 header.
    #[error("invalid PROXY v1 header: {0}")]
    V1(#[from] v1::BinaryParseError),
    /// A malformed v2 header.
    #[error("invalid PROXY v2 header: {0}")]
    V2(#[from] v2::ParseError),
    /// A well-formed header that names no TCP client (a UDP, UNIX socket
    /// or unspecified source with the `PROXY` command).
    #[error("PROXY v2 header names no TCP client address ({0})")]
    NoClient(&'static str),
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[source] std::io::Error),
}

/// Reads one header from `io`, a connection from the load balancer at
/// `peer`, within `timeout`; see the module docs. A header whose source
/// is `peer` itself, address and port, is the load balancer speaking for
/// itself: HAProxy's v1 health checks carry the check connection's own
/// addresses (its v2 checks say `LOCAL`). It is a [`Header::Check`].
///
/// # Errors
/// [`HeaderError`] when the header is late, cut short, too long or
/// malformed, or names no client.
pub(crate) async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<Header, HeaderError> {
    let header = tokio::time::timeout(timeout, read_header(io))
        .await
        .unwrap_or(Err(HeaderError::Timeout(timeout)))?;
    Ok(match header {
        Header::Client(client) if same_socket(client, peer) => Header::Check(ITSELF),
        other => other,
    })
}

/// Whether `a` and `b` are one socket address, IPv4-mapped IPv6 counted
/// as IPv4.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<Header, HeaderError> {
    let mut buf = [0u8; V2_PREFIX_LEN + V2_MAX_BODY];
    let mut got = 0;
    // The first bytes, a few reads at most; none at all is a TCP check
    // (which may end with a reset).
    while got < SNIFF_LEN {
        match io.read(&mut buf[got..SNIFF_LEN]).await {
            Ok(0) if got == 0 => return Ok(Header::Check(SILENT)),
            Err(e) if got == 0 && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(Header::Check(SILENT));
            }
            Ok(0) => return Err(HeaderError::Truncated(got)),
            Ok(n) => got += n,
            Err(e) => return Err(HeaderError::Io(e)),
        }
    }
    if buf[..SNIFF_LEN] == *v1::PROTOCOL_PREFIX.as_bytes() {
        read_v1(io, &mut buf[..V1_MAX_LEN]).await
    } else if buf[..SNIFF_LEN] == v2::PROTOCOL_PREFIX[..SNIFF_LEN] {
        read_v2(io, &mut buf).await
    } else {
        Err(HeaderError::NotProxy(shown(&buf[..SNIFF_LEN])))
    }
}

/// Reads the rest of a v1 line, one byte at a time: its end is known only
/// once the LF arrives, and nothing after it may be taken. At most
/// [`V1_MAX_LEN`] reads, for a peer that is a trusted load balancer.
async fn read_v1<R: AsyncRead + Unpin>(io: &mut R, line: &mut [u8]) -> Result<Header, HeaderError> {
    let mut len = SNIFF_LEN;
    loop {
        if len == line.len() {
            return Err(HeaderError::V1TooLong);
        }
        if io.read(&mut line[len..=len]).await.map_err(HeaderError::Io)? == 0 {
            return Err(HeaderError::Truncated(len));
        }
        len += 1;
        if line[len - 1] == b'\n' {
            break;
        }
    }
    match v1::Header::try_from(&line[..len])?.addresses {
        v1::Addresses::Tcp4(a) => Ok(Header::Client((a.source_address, a.source_port).into())),
        v1::Addresses::Tcp6(a) => Ok(Header::Client((a.source_address, a.source_port).into())),
        v1::Addresses::Unknown => Ok(Header::Check(V1_UNKNOWN)),
    }
}

/// Reads the rest of a v2 header: the prefix, then exactly the length it
/// declares.
async fn read_v2<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> Result<Header, HeaderError> {
    let prefix = V2_PREFIX_LEN;
    exact(io, buf, SNIFF_LEN, prefix).await?;
    if buf[..v2::PROTOCOL_PREFIX.len()] != *v2::PROTOCOL_PREFIX {
        return Err(v2::ParseError::Prefix.into());
    }
    let body = usize::from(u16::from_be_bytes([buf[prefix - 2], buf[prefix - 1]]));
    if body > V2_MAX_BODY {
        return Err(HeaderError::V2TooLong(body));
    }
    exact(io, buf, prefix, prefix + body).await?;
    let header = v2::Header::try_from(&buf[..prefix + body])?;
    if header.command == v2::Command::Local {
        return Ok(Header::Check(V2_LOCAL));
    }
    if header.protocol == v2::Protocol::Datagram {
        return Err(HeaderError::NoClient("a datagram (UDP) source"));
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Ok(Header::Client((a.source_address, a.source_port).into())),
        v2::Addresses::IPv6(a) => Ok(Header::Client((a.source_address, a.source_port).into())),
        v2::Addresses::Unix(_) => Err(HeaderError::NoClient("a UNIX socket source")),
        v2::Addresses::Unspecified => Err(HeaderError::NoClient("an unspecified source")),
    }
}

/// Reads one header from `data` as the listener would, without a runtime
/// (a slice never blocks), and checks that the read took no byte past the
/// header's limits. Returns how many bytes it took. For the
/// `proxy_header` fuzz target.
pub(crate) fn fuzz_read(data: &[u8]) -> usize {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let mut rest = data;
    let result = {
        let mut read = std::pin::pin!(read_header(&mut rest));
        match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("reading from a slice never waits"),
        }
    };
    let used = data.len() - rest.len();
    assert!(used <= V2_PREFIX_LEN + V2_MAX_BODY, "read {used} bytes");
    if data.starts_with(v1::PROTOCOL_PREFIX.as_bytes()) {
        assert!(used <= V1_MAX_LEN, "read {used} bytes of a v1 header");
        if result.is_ok() {
            assert!(data[..used].ends_with(b"\r\n"), "a v1 header ends in CRLF");
        }
    }
    used
}

/// Fills `buf[from..to]`, reporting a close as [`HeaderError::Truncated`].
async fn exact<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut [u8],
    from: usize,
    to: usize,
) -> Result<(), HeaderError> {
    let mut at = from;
    while at < to {
        match io.read(&mut buf[at..to]).await.map_err(HeaderError::Io)? {
            0 => return Err(HeaderError::Truncated(at)),
            n => at += n,
        }
    }
    Ok(())
}

/// Bytes as an escaped string literal, for a log line about a peer's
/// garbage.
fn shown(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use tokio::io::AsyncWriteExt;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    /// The load balancer the tests' headers come from.
    const LB: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);

    /// A v2 header: `command` 0x20 (LOCAL) or 0x21 (PROXY), family and
    /// protocol byte `fam`, then `body`.
    fn v2(command: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.extend([command, fam]);
        h.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend(body);
        h
    }

    fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend([127, 0, 0, 1]);
        body.extend(port.to_be_bytes());
        body.extend(443u16.to_be_bytes());
        v2(0x21, 0x11, &body)
    }

    /// Reads a header from `input` followed by `rest`, all sent at once,
    /// and returns it with the bytes left for the service.
    async fn read_all(input: &[u8]) -> (Result<Header, HeaderError>, Vec<u8>) {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        theirs.write_all(input).await.unwrap();
        drop(theirs);
        let header = read(&mut ours, LB, SECOND).await;
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        (header, rest)
    }

    fn client(s: &str) -> Header {
        Header::Client(s.parse().unwrap())
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6_give_the_source_and_leave_the_rest() {
        let (h, rest) =
            read_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(h.unwrap(), client("192.0.2.7:40000"));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (h, rest) = read_all(b"PROXY TCP6 2001:db8::7 ::1 40001 443\r\n\r\n\r\n\0x").await;
        assert_eq!(h.unwrap(), client("[2001:db8::7]:40001"));
        assert_eq!(rest, b"\r\n\r\n\0x", "bytes that look like a header are the client's");
    }

    #[tokio::test]
    async fn v2_tcp4_and_tcp6_give_the_source_and_leave_the_rest() {
        let mut input = v2_tcp4([198, 51, 100, 9], 50000);
        input.extend(b"hello");
        let (h, rest) = read_all(&input).await;
        assert_eq!(h.unwrap(), client("198.51.100.9:50000"));
        assert_eq!(rest, b"hello");

        let mut body = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).octets().to_vec();
        body.extend(Ipv6Addr::LOCALHOST.octets());
        body.extend(50001u16.to_be_bytes());
        body.extend(443u16.to_be_bytes());
        // A TLV (type 0x04 NOOP, 3 bytes) after the addresses is skipped.
        body.extend([0x04, 0, 3, 1, 2, 3]);
        let mut input = v2(0x21, 0x21, &body);
        input.extend(b"PROXY TCP4 is data here");
        let (h, rest) = read_all(&input).await;
        assert_eq!(h.unwrap(), client("[2001:db8::9]:50001"));
        assert_eq!(rest, b"PROXY TCP4 is data here");
    }

    #[tokio::test]
    async fn local_unknown_itself_and_silence_are_checks() {
        let (h, rest) = read_all(&v2(0x20, 0x00, &[])).await;
        assert_eq!(h.unwrap(), Header::Check(V2_LOCAL));
        assert!(rest.is_empty());
        // LOCAL ignores whatever addresses it carries.
        let local4 = [v2(0x20, 0x11, &[0; 12]), b"x".to_vec()].concat();
        let (h, rest) = read_all(&local4).await;
        assert_eq!(h.unwrap(), Header::Check(V2_LOCAL));
        assert_eq!(rest, b"x");
        let (h, _) = read_all(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(h.unwrap(), Header::Check(V1_UNKNOWN));
        let (h, _) = read_all(b"PROXY UNKNOWN ::1 ::1 1 2\r\n").await;
        assert_eq!(h.unwrap(), Header::Check(V1_UNKNOWN), "with addresses");
        let (h, _) = read_all(b"").await;
        assert_eq!(h.unwrap(), Header::Check(SILENT));
        // HAProxy's v1 checks name the check connection itself.
        let (h, rest) = read_all(b"PROXY TCP4 127.0.0.1 127.0.0.1 5000 443\r\nx").await;
        assert_eq!(h.unwrap(), Header::Check(ITSELF));
        assert_eq!(rest, b"x");
        let (h, _) = read_all(&v2_tcp4([127, 0, 0, 1], 5000)).await;
        assert_eq!(h.unwrap(), Header::Check(ITSELF), "v2 too");
        let (h, _) = read_all(b"PROXY TCP6 ::ffff:127.0.0.1 ::1 5000 443\r\n").await;
        assert_eq!(h.unwrap(), Header::Check(ITSELF), "IPv4-mapped");
        // Another port of the same host is a client.
        let (h, _) = read_all(b"PROXY TCP4 127.0.0.1 127.0.0.1 5001 443\r\n").await;
        assert_eq!(h.unwrap(), client("127.0.0.1:5001"));
    }

    #[tokio::test]
    async fn truncated_headers_are_refused() {
        let whole = v2_tcp4([10, 0, 0, 1], 1);
        for cut in [1, 4, 5, 12, 15, 16, 27] {
            let (h, _) = read_all(&whole[..cut]).await;
            assert!(
                matches!(h, Err(HeaderError::Truncated(n)) if n == cut),
                "v2 cut at {cut}: {h:?}"
            );
        }
        let (h, _) = read_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r").await;
        assert!(matches!(h, Err(HeaderError::Truncated(33))), "{h:?}");
    }

    #[tokio::test]
    async fn oversized_headers_are_refused_before_they_are_read() {
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        long.extend(b"\r\n");
        let (h, rest) = read_all(&long).await;
        assert!(matches!(h, Err(HeaderError::V1TooLong)), "{h:?}");
        assert_eq!(rest.len(), 200 + 2 - V1_MAX_LEN, "read no further than the limit");

        let big = v2(0x21, 0x11, &vec![0; V2_MAX_BODY + 1]);
        let (h, rest) = read_all(&big).await;
        assert!(matches!(h, Err(HeaderError::V2TooLong(1025))), "{h:?}");
        assert_eq!(rest.len(), V2_MAX_BODY + 1, "the declared body is not read");
        // At the limit, TLVs and all, it is accepted.
        let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0x04];
        body.extend(u16::try_from(V2_MAX_BODY - 15).unwrap().to_be_bytes());
        body.resize(V2_MAX_BODY, 0);
        let (h, _) = read_all(&v2(0x21, 0x11, &body)).await;
        assert_eq!(h.unwrap(), client("10.0.0.1:1"));
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let (h, rest) = read_all(b"GET / HTTP/1.1\r\n\r\n").await;
        let err = h.unwrap_err();
        assert!(matches!(err, HeaderError::NotProxy(_)), "{err:?}");
        assert_eq!(err.to_string(), "not a PROXY protocol header (it starts with \"GET /\")");
        assert_eq!(rest, b" HTTP/1.1\r\n\r\n", "five bytes were enough to tell");
        let (h, _) = read_all(b"\x16\x03\x01\x02\x00").await;
        assert!(h.unwrap_err().to_string().contains("\\x16\\x03\\x01\\x02\\x00"));

        for bad in [
            &b"PROXY TCP4 10.0.0.1\r\n"[..],
            b"PROXY TCP4 300.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY TCP5 10.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 99999\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n",
            b"PROXYTCP4 10.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4 \xff.0.0.1 10.0.0.2 1 2\r\n",
        ] {
            let (h, _) = read_all(bad).await;
            assert!(matches!(h, Err(HeaderError::V1(_))), "{:?}: {h:?}", bad.escape_ascii());
        }
        let mut wrong_signature = v2_tcp4([10, 0, 0, 1], 1);
        wrong_signature[8] = b'X';
        let version_one =
            [&v2_tcp4([10, 0, 0, 1], 1)[..12], &[0x11], &v2_tcp4([10, 0, 0, 1], 1)[13..]].concat();
        let short_addresses = v2(0x21, 0x11, &[10, 0, 0, 1]);
        let bad_command = v2(0x2f, 0x11, &[0; 12]);
        for bad in [wrong_signature, version_one, short_addresses, bad_command] {
            let (h, _) = read_all(&bad).await;
            assert!(matches!(h, Err(HeaderError::V2(_))), "{:?}: {h:?}", bad.escape_ascii());
        }
        for (fam, what) in [(0x12, "datagram"), (0x31, "UNIX"), (0x01, "unspecified")] {
            let body = if fam == 0x31 { vec![0; 216] } else { vec![0; 12] };
            let (h, _) = read_all(&v2(0x21, fam, &body)).await;
            let err = h.unwrap_err().to_string();
            assert!(err.contains("names no TCP client") && err.contains(what), "{fam:#x}: {err}");
        }
    }

    #[test]
    fn the_fuzz_entry_takes_exactly_the_header() {
        let v1 = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n";
        assert_eq!(fuzz_read(&[&v1[..], b"rest"].concat()), v1.len());
        let v2 = v2_tcp4([10, 0, 0, 1], 1);
        assert_eq!(fuzz_read(&[&v2[..], b"rest"].concat()), v2.len());
        assert_eq!(fuzz_read(b"GET / HTTP/1.1\r\n"), 5);
        assert_eq!(fuzz_read(b""), 0);
    }

    #[tokio::test]
    async fn a_slow_header_times_out() {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        // Half a header, then nothing: the peer keeps the connection open.
        theirs.write_all(b"PROXY TCP4 10.0.0.1 ").await.unwrap();
        let timeout = Duration::from_millis(100);
        let h = read(&mut ours, LB, timeout).await;
        assert!(matches!(h, Err(HeaderError::Timeout(t)) if t == timeout), "{h:?}");
        drop(theirs);

        // A header that trickles in a byte at a time is fine: the timeout
        // is for the whole header, and it arrives well within it.
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            for b in b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n" {
                tokio::time::sleep(Duration::from_millis(2)).await;
                theirs.write_all(&[*b]).await.unwrap();
            }
            theirs
        });
        assert_eq!(
            read(&mut ours, LB, Duration::from_secs(30)).await.unwrap(),
            client("10.0.0.1:1")
        );
        drop(writer.await.unwrap());
    }
}
