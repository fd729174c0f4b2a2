//! Serving one stream: allowlist, destination connect, relay; and
//! checking a probe's destination the same way.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use config::AllowEntry;
use proto::{OpenCode, ResetCode};
use tokio::net::TcpStream;
use tracing::{debug, info};
use tunnel::untrusted::escaped;
use tunnel::{IncomingProbe, IncomingStream};

use crate::edge::EdgeShared;
use crate::reload::StreamPolicy;

/// Whether the destination `host:port`, as the cloud sent it, is on the
/// allowlist (see [`AllowEntry::admits`]). Checked on every stream.
pub(crate) fn allowed(allow: &[AllowEntry], host: &str, port: u16) -> bool {
    allow.iter().any(|entry| entry.admits(host, port))
}

/// Why a destination gets no connection.
#[derive(Debug)]
pub(crate) enum NoConnect {
    /// Not on the allowlist, or (with `check_resolved`) resolved only to
    /// addresses outside it: the message says which.
    Denied(String),
    /// The name did not resolve, or no address took the connection.
    Failed(io::Error),
}

/// The addresses to connect to for an allowed `host:port`, resolved once:
/// an IP literal as it is; a name through `resolve`, keeping (with
/// `check_resolved`) only the addresses an address entry of `allow`
/// admits. The caller connects to exactly these, so what was checked is
/// what is dialled: a second lookup could answer differently.
///
/// # Errors
/// [`NoConnect::Failed`] if `resolve` fails or finds nothing;
/// [`NoConnect::Denied`] if `check_resolved` leaves no address.
pub(crate) async fn addresses<R, Fut>(
    allow: &[AllowEntry],
    check_resolved: bool,
    host: &str,
    port: u16,
    resolve: R,
) -> Result<Vec<SocketAddr>, NoConnect>
where
    R: FnOnce(String, u16) -> Fut,
    Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
{
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = resolve(host.to_owned(), port).await.map_err(NoConnect::Failed)?;
    if found.is_empty() {
        let e = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
        return Err(NoConnect::Failed(e));
    }
    if !check_resolved {
        return Ok(found);
    }
    let (kept, dropped): (Vec<SocketAddr>, Vec<SocketAddr>) =
        found.into_iter().partition(|a| allow.iter().any(|entry| entry.admits_addr(*a)));
    if !dropped.is_empty() {
        let dropped: Vec<String> = dropped.iter().map(|a| a.ip().to_string()).collect();
        info!(host = %escaped(&host), port, outside = %dropped.join(", "),
            "resolved addresses outside the allowlist's networks; not used");
    }
    if kept.is_empty() {
        return Err(NoConnect::Denied(format!(
            "{host} resolved only to addresses outside the edge's allowed networks"
        )));
    }
    Ok(kept)
}

/// The system resolver, as [`addresses`] takes it.
async fn lookup(host: String, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect())
}

fn open_code(e: &io::Error) -> OpenCode {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => OpenCode::Refused,
        io::ErrorKind::TimedOut => OpenCode::Timeout,
        _ => OpenCode::Unreachable,
    }
}

/// Resolves (once) and connects to the first address that answers.
async fn connect(policy: &StreamPolicy, host: &str, port: u16) -> Result<TcpStream, NoConnect> {
    let addrs = addresses(&policy.allow, policy.check_resolved, host, port, lookup).await?;
    TcpStream::connect(addrs.as_slice()).await.map_err(NoConnect::Failed)
}

/// Checks a probe's destination as a stream's would be (the same
/// allowlist, resolution and connect), closes the connection at once and
/// answers. Counts as no connection in the edge's figures.
pub(crate) async fn probe(shared: Arc<EdgeShared>, tunnel: tunnel::Tunnel, probe: IncomingProbe) {
    let (host, port) = (probe.host.as_str(), probe.port);
    let answer = |code: OpenCode, took: Duration, message: &str| {
        tunnel.answer_probe(probe.id, code, took, message);
    };
    if shared.draining.load(Ordering::Relaxed) {
        return answer(OpenCode::Draining, Duration::ZERO, "edge is shutting down");
    }
    let policy = shared.policy();
    if !allowed(&policy.allow, host, port) {
        return answer(OpenCode::Denied, Duration::ZERO, "destination not on the edge's allowlist");
    }
    let timeout = policy.connect_timeout.min(probe.timeout);
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, connect(&policy, host, port)).await {
        Ok(Ok(tcp)) => {
            let took = started.elapsed();
            let Some(exchange) = &probe.exchange else {
                drop(tcp);
                return answer(OpenCode::Ok, took, "");
            };
            // The rest of the cloud's limit is the exchange's.
            let left = probe.timeout.saturating_sub(took);
            match converse(tcp, exchange, left).await {
                Ok(()) => answer(OpenCode::Ok, took, ""),
                Err((code, why)) => answer(code, took, &why),
            }
        }
        Ok(Err(NoConnect::Denied(why))) => answer(OpenCode::Denied, started.elapsed(), &why),
        Ok(Err(NoConnect::Failed(e))) => answer(open_code(&e), started.elapsed(), &e.to_string()),
        Err(_) => answer(OpenCode::Timeout, timeout, &format!("no answer within {timeout:?}")),
    }
}

/// Most bytes a probe reads looking for its `expect`: a probe checks a
/// greeting, it does not download.
const MAX_PROBE_READ: usize = 4096;

/// A probe's send/expect on the connection just made: writes `send`, then
/// reads until `expect` appears, the service closes, [`MAX_PROBE_READ`]
/// bytes came without it, or `limit` passes.
async fn converse(
    mut tcp: TcpStream,
    exchange: &proto::ProbeExchange,
    limit: Duration,
) -> Result<(), (OpenCode, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let expect = exchange.expect.as_bytes();
    let talk = async {
        if !exchange.send.is_empty() {
            tcp.write_all(exchange.send.as_bytes())
                .await
                .map_err(|e| (OpenCode::Error, format!("sending: {e}")))?;
        }
        let mut seen = Vec::with_capacity(256);
        let mut chunk = [0u8; 1024];
        loop {
            let room = MAX_PROBE_READ - seen.len();
            let n = tcp
                .read(&mut chunk[..room.min(1024)])
                .await
                .map_err(|e| (OpenCode::Error, format!("reading: {e}")))?;
            seen.extend_from_slice(&chunk[..n]);
            if contains(&seen, expect) {
                return Ok(());
            }
            if n == 0 || seen.len() >= MAX_PROBE_READ {
                let how = if n == 0 { "closed after" } else { "sent" };
                return Err((OpenCode::Error, mismatch(expect, &seen, how)));
            }
        }
    };
    match tokio::time::timeout(limit, talk).await {
        Ok(outcome) => outcome,
        Err(_) => Err((OpenCode::Timeout, format!("no {} within {limit:?}", shown(expect)))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// `"+PONG" expected; the service closed after 6 bytes: "-ERR x"`.
fn mismatch(expect: &[u8], seen: &[u8], how: &str) -> String {
    let start = &seen[..seen.len().min(60)];
    format!("{} expected; the service {how} {} bytes: {}", shown(expect), seen.len(), shown(start))
}

/// Bytes as escaped text in quotes (service output is untrusted).
fn shown(bytes: &[u8]) -> String {
    format!("\"{}\"", escaped(&String::from_utf8_lossy(bytes)))
}

pub(crate) async fn serve(shared: Arc<EdgeShared>, stream: IncomingStream) {
    let (host, port) = (stream.host.clone(), stream.port);
    if shared.draining.load(Ordering::Relaxed) {
        stream.reject(OpenCode::Draining, "edge is shutting down").await;
        return;
    }
    let policy = shared.policy();
    if !allowed(&policy.allow, &host, port) {
        shared.denied.fetch_add(1, Ordering::Relaxed);
        info!(host = %escaped(&host), port, "destination not on the allowlist; refused");
        stream.reject(OpenCode::Denied, "destination not on the edge's allowlist").await;
        return;
    }
    let timeout = policy.connect_timeout;
    let mut tcp = match tokio::time::timeout(timeout, connect(&policy, &host, port)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(NoConnect::Denied(why))) => {
            shared.denied.fetch_add(1, Ordering::Relaxed);
            info!(host = %escaped(&host), port, why = %escaped(&why), "refused");
            stream.reject(OpenCode::Denied, &why).await;
            return;
        }
        Ok(Err(NoConnect::Failed(e))) => {
            shared.connects_failed.fetch_add(1, Ordering::Relaxed);
            info!(host = %escaped(&host), port, error = %e, "destination connect failed");
            stream.reject(open_code(&e), &e.to_string()).await;
            return;
        }
        Err(_) => {
            shared.connects_failed.fetch_add(1, Ordering::Relaxed);
            info!(host = %escaped(&host), port, ?timeout, "destination connect timed out");
            stream.reject(OpenCode::Timeout, &format!("no answer within {timeout:?}")).await;
            return;
        }
    };
    let client = stream.origin.as_ref().map(|o| o.client);
    if let Some((origin, kind)) = stream.origin.as_ref().and_then(|o| Some((o, o.send_proxy?))) {
        // Before the stream is accepted, so it is the destination's first
        // bytes: no client byte can overtake it.
        if let Err(e) = write_proxy_header(&mut tcp, origin, kind).await {
            shared.connects_failed.fetch_add(1, Ordering::Relaxed);
            info!(host = %escaped(&host), port, error = %e, "writing the PROXY header failed");
            stream.reject(OpenCode::Error, &format!("writing the PROXY header: {e}")).await;
            return;
        }
    }
    shared.connects_ok.fetch_add(1, Ordering::Relaxed);
    let Ok(stream) = stream.accept().await else { return };
    debug!(host = %escaped(&host), port, client = ?client, "stream open");
    let outcome = tunnel::relay(
        tcp,
        stream,
        shared.abort_streams.clone(),
        ResetCode::Shutdown,
        &shared.bytes,
    )
    .await;
    debug!(sent = outcome.bytes_to_peer, received = outcome.bytes_from_peer, end = ?outcome.end,
        "stream closed");
}

async fn write_proxy_header(
    tcp: &mut TcpStream,
    origin: &proto::StreamOrigin,
    kind: proto::SendProxy,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&crate::proxy_header::encode(origin, kind)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[&str]) -> Vec<AllowEntry> {
        list.iter().map(|e| e.parse().unwrap()).collect()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_probe_expectation_is_found_anywhere_and_a_miss_says_what_came() {
        assert!(contains(b"SSH-2.0-OpenSSH_9.6\r\n", b"SSH-"));
        assert!(contains(b"xx+PONG\r\n", b"+PONG"));
        assert!(!contains(b"-ERR unknown", b"+PONG"));
        assert_eq!(
            mismatch(b"+PONG", b"-ERR\x1b[2J", "closed after"),
            "\"+PONG\" expected; the service closed after 8 bytes: \"-ERR\\u{1b}[2J\""
        );
    }

    #[tokio::test]
    async fn converse_passes_fails_and_times_out_against_a_real_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A tiny Redis-like service: +PONG to PING, nothing to anything else.
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if buf[..n].starts_with(b"PING") {
                        let _ = s.write_all(b"+PONG\r\n").await;
                    } else if buf[..n].starts_with(b"QUIT") {
                        let _ = s.write_all(b"-ERR bye\r\n").await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        let ask = |send: &str, expect: &str| proto::ProbeExchange {
            send: send.into(),
            expect: expect.into(),
        };
        let limit = Duration::from_millis(300);
        let tcp = TcpStream::connect(addr).await.unwrap();
        assert_eq!(converse(tcp, &ask("PING\r\n", "+PONG"), limit).await, Ok(()));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (code, why) = converse(tcp, &ask("QUIT\r\n", "+PONG"), limit).await.unwrap_err();
        assert_eq!(code, OpenCode::Error);
        assert!(why.contains("closed after 10 bytes") && why.contains("-ERR bye"), "{why}");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (code, why) = converse(tcp, &ask("HELLO\r\n", "+PONG"), limit).await.unwrap_err();
        assert_eq!((code, why.as_str()), (OpenCode::Timeout, "no \"+PONG\" within 300ms"));
    }

    #[test]
    fn allowlist_is_exact_on_port_and_case_blind_on_host() {
        let allow = entries(&["db.internal:5432", "127.0.0.1:22"]);
        assert!(allowed(&allow, "db.internal", 5432));
        assert!(allowed(&allow, "DB.Internal", 5432));
        assert!(!allowed(&allow, "db.internal", 5433));
        assert!(!allowed(&allow, "db.internal.evil", 5432));
        assert!(allowed(&allow, "127.0.0.1", 22));
        assert!(!allowed(&allow, "127.0.0.2", 22));
        assert!(!allowed(&[], "127.0.0.1", 22));
    }

    #[test]
    fn networks_admit_addresses_and_never_names() {
        let allow = entries(&["10.0.0.0/8:22", "[fd00::]/8:*"]);
        assert!(allowed(&allow, "10.9.8.7", 22));
        assert!(!allowed(&allow, "10.9.8.7", 23));
        assert!(allowed(&allow, "fd00::1", 5432));
        assert!(!allowed(&allow, "ten.internal", 22), "a name needs its own entry");
    }

    /// A resolver that answers `answer` once.
    fn answers(
        answer: &[&str],
    ) -> impl FnOnce(String, u16) -> std::future::Ready<io::Result<Vec<SocketAddr>>> {
        let answer = addrs(answer);
        move |_, _| std::future::ready(Ok(answer))
    }

    #[tokio::test]
    async fn checked_names_keep_only_addresses_in_the_allowed_networks() {
        let allow = entries(&["db.internal:22", "10.0.0.0/8:*", "192.0.2.7:22"]);
        let dns = answers(&["169.254.169.254:22", "10.1.2.3:22", "127.0.0.1:22", "192.0.2.7:22"]);
        let kept = addresses(&allow, true, "db.internal", 22, dns).await.unwrap();
        assert_eq!(kept, addrs(&["10.1.2.3:22", "192.0.2.7:22"]));
    }

    #[tokio::test]
    async fn a_checked_name_resolving_only_outside_is_denied() {
        let allow = entries(&["db.internal:22", "10.0.0.0/8:*", "192.0.2.7:23"]);
        let dns = answers(&["169.254.169.254:22", "127.0.0.1:22", "192.0.2.7:22"]);
        match addresses(&allow, true, "db.internal", 22, dns).await {
            Err(NoConnect::Denied(why)) => assert!(why.contains("db.internal resolved"), "{why}"),
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unchecked_names_use_every_resolved_address_and_literals_skip_the_resolver() {
        let allow = entries(&["db.internal:22"]);
        let dns = answers(&["169.254.169.254:22", "10.1.2.3:22"]);
        let all = addresses(&allow, false, "db.internal", 22, dns).await.unwrap();
        assert_eq!(all, addrs(&["169.254.169.254:22", "10.1.2.3:22"]));
        let never = |_: String, _: u16| async { panic!("an IP literal was resolved") };
        let literal = addresses(&allow, true, "10.0.0.1", 22, never).await.unwrap();
        assert_eq!(literal, addrs(&["10.0.0.1:22"]));
    }

    #[tokio::test]
    async fn a_name_without_addresses_fails_to_connect() {
        let allow = entries(&["db.internal:22", "10.0.0.0/8:*"]);
        let result = addresses(&allow, true, "db.internal", 22, answers(&[])).await;
        assert!(matches!(result, Err(NoConnect::Failed(_))), "{result:?}");
    }
}
