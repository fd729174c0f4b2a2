//! `[proxy_protocol]`: a real `relay-cloud` behind a real HAProxy sending
//! PROXY protocol v2 and v1 headers, and clients that try to forge one.
//!
//! Every client here is on loopback, from an address of its own in
//! 127.0.0.0/8 (bound before connecting): the mapping admits 127.0.0.2
//! only, and the load balancer (HAProxy, or this test acting as one)
//! connects from 127.0.0.1, the only address in `from`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_edge::Edge;
use e2e_tests::skip::cannot_run;
use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, STARTUP, TOKEN, cloud_toml_with_control, edge_config, edge_toml,
    eventually, free_port, listen_addr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};

/// The cloud's log filter (passed through `env`, which execs the agent).
const CLOUD_LOG: &str = "RUST_LOG=info,agent_cloud::mapping=debug";

/// How long a client waits for its echo, or for the close of a refusal.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The address the mapping's allowlist admits, and one it does not.
const ALLOWED: [u8; 4] = [127, 0, 0, 2];
const NOT_ALLOWED: [u8; 4] = [127, 0, 0, 3];

/// An echo service that counts the connections reaching it: what got
/// through the cloud and the edge.
async fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// A cloud process with mapping `web` (admitting [`ALLOWED`] only) behind
/// `[proxy_protocol]` trusting 127.0.0.1, an edge, and the control API.
struct Relay {
    cloud: Agent,
    edge: Edge,
    api: Api,
    /// The mapping's public address.
    web: SocketAddr,
    /// Connections that reached the service.
    served: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// `mapping_keys` are added to `web`'s table.
    async fn start(timeout: &str, mapping_keys: &str) -> Relay {
        let dir = tempfile::tempdir().expect("temp dir");
        let (echo, served) = counting_echo().await;
        let mut toml = cloud_toml_with_control(
            "127.0.0.1:0",
            &[("web", &echo.to_string())],
            &dir.path().join("state.json"),
        );
        toml.push_str(&format!(
            "allow = [\"{}/32\"]\n{mapping_keys}\n\n[proxy_protocol]\nfrom = [\"127.0.0.1\"]\ntimeout = \"{timeout}\"\n",
            IpAddr::from(ALLOWED)
        ));
        // The mapping's debug lines show each stream's client and the
        // load balancers' health checks.
        let mut cloud = Agent::spawn_wrapped(&["env", CLOUD_LOG], "relay-cloud", &toml);
        let tunnel =
            listen_addr(&cloud.wait_for_log(&["listening for edge tunnels"], STARTUP).await);
        let web =
            listen_addr(&cloud.wait_for_log(&["mapping listening", "mapping=web "], STARTUP).await);
        let control = listen_addr(&cloud.wait_for_log(&["control API listening"], STARTUP).await);
        let api = Api::new(control, Some(ADMIN_TOKEN));
        let edge = Edge::start(edge_config(&edge_toml(tunnel, &[echo.to_string()], TOKEN)))
            .expect("edge starts");
        cloud.wait_for_log(&["edge connected", "edge=e1"], STARTUP).await;
        Relay { cloud, edge, api, web, served, _dir: dir }
    }

    /// `web`'s figures: (total, failed, active) connections.
    async fn figures(&self) -> (u64, u64, u64) {
        let (status, m) = self.api.call("GET", "/v1/mappings/web", None).await;
        assert_eq!(status, 200, "{m}");
        let n = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("no {k} in {m}"));
        (n("total_connections"), n("failed_connections"), n("active_connections"))
    }

    /// Waits until the figures read `(total, failed, 0 active)`.
    async fn figures_settle(&self, total: u64, failed: u64) {
        let settled =
            eventually(IO_TIMEOUT, || async { self.figures().await == (total, failed, 0) }).await;
        assert!(
            settled,
            "figures never read total {total}, failed {failed}, none active: {:?}",
            self.figures().await
        );
    }

    async fn stop(self) {
        self.edge.shutdown().await;
    }
}

/// A TCP connection to `to` from local address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    try_connect_from(from, to).await.unwrap_or_else(|e| panic!("connect {to} from {from:?}: {e}"))
}

/// [`connect_from`], failing with the error.
async fn try_connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Sends `first` in one write, then half-closes, and returns everything
/// that came back before the connection ended (cleanly or by a reset).
async fn exchange(mut tcp: TcpStream, first: &[u8]) -> Vec<u8> {
    tokio::time::timeout(IO_TIMEOUT, async {
        // A refused connection may be reset before or after this write.
        if tcp.write_all(first).await.is_ok() {
            let _ = tcp.shutdown().await;
        }
        let mut back = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return back,
                Ok(n) => back.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the connection neither answered nor closed")
}

/// A v2 PROXY header (TCP over IPv4) from `client` to `server`.
fn v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(s)) = (client, server) else { panic!("IPv4 only") };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend(c.ip().octets());
    h.extend(s.ip().octets());
    h.extend(c.port().to_be_bytes());
    h.extend(s.port().to_be_bytes());
    h
}

/// A v1 PROXY header from `client` to `server`.
fn v1_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {} {} {} {}\r\n", client.ip(), server.ip(), client.port(), server.port())
        .into_bytes()
}

/// HAProxy in `mode tcp` with two frontends relaying to one backend
/// server, one sending PROXY v2 and one v1, health checks on. Killed on
/// drop.
struct Haproxy {
    _child: Child,
    v2: SocketAddr,
    v1: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// `None` (after [`cannot_run`]) when haproxy is not installed.
    async fn start(test: &str, server: SocketAddr) -> Option<Haproxy> {
        let found = std::process::Command::new("haproxy").arg("-v").output();
        if !found.is_ok_and(|o| o.status.success()) {
            cannot_run(test, "haproxy is not installed: apt-get install haproxy");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let (v2, v1) = (free_port(), free_port());
        let cfg = format!(
            "global\n    maxconn 64\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend in_v2\n    bind {v2}\n    default_backend relay_v2\n\
             frontend in_v1\n    bind {v1}\n    default_backend relay_v1\n\
             backend relay_v2\n    server relay {server} send-proxy-v2 check inter 200ms\n\
             backend relay_v1\n    server relay {server} send-proxy check inter 200ms\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        check_config(&path);
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start haproxy");
        // Listening is all we wait for: a probe from an address nobody
        // admits goes no further than the allowlist, and counts nowhere.
        for frontend in [v2, v1] {
            let up = eventually(STARTUP, || async {
                let socket = TcpSocket::new_v4().expect("socket");
                socket.bind(SocketAddr::from(([127, 0, 0, 9], 0))).expect("bind probe");
                socket.connect(frontend).await.is_ok()
            })
            .await;
            assert!(up, "haproxy never listened on {frontend}");
        }
        Some(Haproxy { _child: child, v2, v1, _dir: dir })
    }
}

/// `haproxy -c`: a config it rejects fails here with its words.
fn check_config(path: &Path) {
    let out = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "haproxy rejects its config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_headers_put_the_real_client_before_the_allowlist() {
    let mut relay = Relay::start("5s", "").await;
    let Some(haproxy) =
        Haproxy::start("haproxy_headers_put_the_real_client_before_the_allowlist", relay.web).await
    else {
        return relay.stop().await;
    };
    let mut refused_ports = Vec::new();
    for (version, frontend) in [("v2", haproxy.v2), ("v1", haproxy.v1)] {
        // Both reach the cloud from HAProxy's 127.0.0.1; the header tells
        // them apart.
        let allowed = connect_from(ALLOWED, frontend).await;
        let port = allowed.local_addr().expect("client address").port();
        let back = exchange(allowed, b"hello through haproxy").await;
        assert_eq!(back, b"hello through haproxy", "{version}: the allowed client's echo");
        // Its stream is logged under its own address.
        let peer = format!("peer=127.0.0.2:{port} ");
        let line =
            relay.cloud.wait_for_log(&["stream open", &peer, "lb=127.0.0.1:"], IO_TIMEOUT).await;
        eprintln!("{version} stream logged: {line}");
        let refused = connect_from(NOT_ALLOWED, frontend).await;
        refused_ports.push(refused.local_addr().expect("client address").port());
        let back = exchange(refused, b"let me in").await;
        assert!(back.is_empty(), "{version}: the refused client got {back:?}");
    }
    // Each refused client is logged with its own address and port, as
    // HAProxy saw it, and the load balancer's (HAProxy retries a server
    // that resets at once, so there may be more than one line each).
    for port in refused_ports {
        let peer = format!("peer=127.0.0.3:{port} ");
        let line = relay
            .cloud
            .wait_for_log(
                &["client not in the mapping's allowlist", &peer, "lb=127.0.0.1:"],
                IO_TIMEOUT,
            )
            .await;
        eprintln!("refusal logged: {line}");
    }
    // HAProxy's health checks, every 200 ms per backend, arrive and are
    // closed without a stream: with v2 they say LOCAL, with v1 they name
    // the check connection's own address.
    let mut checks = 0;
    for kind in ["kind=\"v2 LOCAL\"", "kind=\"the load balancer's own address\""] {
        let needles = ["load balancer health check", kind, "lb=127.0.0.1:"];
        checks += relay.cloud.wait_for_logs(&needles, 2, IO_TIMEOUT).await.len();
    }
    // Two admitted (one per header version), none failed: the checks are
    // not failures.
    relay.figures_settle(2, 0).await;
    assert_eq!(relay.served.load(Ordering::SeqCst), 2, "connections that reached the service");
    // Neither a header HAProxy sent nor one of its checks was refused (a
    // v1 check naming 127.0.0.1 would be, by the allowlist, if it were
    // taken for a client).
    let logged = relay.cloud.logged();
    assert!(
        !logged.iter().any(|l| l.contains("bad PROXY protocol header")
            || (l.contains("allowlist") && l.contains("peer=127.0.0.1:"))),
        "HAProxy's header or check was refused:\n{}",
        logged.join("\n")
    );
    let figures = relay.figures().await;
    eprintln!("figures (total, failed, active): {figures:?}; {checks} health checks logged");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_header_from_outside_from_is_refused_unread() {
    let mut relay = Relay::start("5s", "").await;
    // 127.0.0.4 is not a configured load balancer; its header claims the
    // allowed client.
    let forger = [127, 0, 0, 4];
    let claimed = SocketAddr::from((ALLOWED, 40000));
    for header in [v2_header(claimed, relay.web), v1_header(claimed, relay.web)] {
        let forged = [header, b"GET /secret HTTP/1.0\r\n\r\n".to_vec()].concat();
        // Reset at once: the connect itself may already see it.
        match try_connect_from(forger, relay.web).await {
            Ok(tcp) => {
                let back = exchange(tcp, &forged).await;
                assert!(back.is_empty(), "the forger got {back:?}");
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    relay
        .cloud
        .wait_for_logs(&["not a configured load balancer", "peer=127.0.0.4:"], 2, IO_TIMEOUT)
        .await;
    // Refused before a stream was asked for: nothing counted, nothing served.
    assert_eq!(relay.figures().await, (0, 0, 0));
    assert_eq!(relay.served.load(Ordering::SeqCst), 0, "a forged header reached the service");

    // The same header from the load balancer's address is believed.
    let header = v2_header(claimed, relay.web);
    let back = exchange(connect_from([127, 0, 0, 1], relay.web).await, &header).await;
    assert!(back.is_empty(), "nothing to echo after the header");
    relay.figures_settle(1, 0).await;
    assert_eq!(relay.served.load(Ordering::SeqCst), 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancers_header_is_read_exactly_and_bad_ones_fail() {
    let mut relay = Relay::start("1s", "").await;
    let lb = [127, 0, 0, 1];
    let client = SocketAddr::from((ALLOWED, 40001));
    // The request travels in the same write, and segment, as the header;
    // it looks like another header, and must reach the service unchanged.
    let request =
        [&b"\r\n\r\n\0\r\nQUIT\n"[..], b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", &[0xff; 64]].concat();
    for header in [v2_header(client, relay.web), v1_header(client, relay.web)] {
        let back =
            exchange(connect_from(lb, relay.web).await, &[header, request.clone()].concat()).await;
        assert_eq!(back, request, "the bytes after the header, echoed");
    }
    relay.figures_settle(2, 0).await;

    // A header naming a client the allowlist refuses: logged with it.
    let outsider = SocketAddr::from((NOT_ALLOWED, 40002));
    let back = exchange(connect_from(lb, relay.web).await, &v1_header(outsider, relay.web)).await;
    assert!(back.is_empty());
    relay
        .cloud
        .wait_for_log(
            &["client not in the mapping's allowlist", "peer=127.0.0.3:40002"],
            IO_TIMEOUT,
        )
        .await;

    // Health checks (a v2 LOCAL; a connection reset before its first
    // byte): closed, not counted.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    assert!(exchange(connect_from(lb, relay.web).await, local).await.is_empty());
    relay
        .cloud
        .wait_for_log(&["load balancer health check", "kind=\"v2 LOCAL\""], IO_TIMEOUT)
        .await;
    let reset = connect_from(lb, relay.web).await;
    socket2::SockRef::from(&reset).set_linger(Some(Duration::ZERO)).expect("linger 0");
    drop(reset);

    // No header, and a header that never ends: both fail.
    let back =
        exchange(connect_from(lb, relay.web).await, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(back.is_empty());
    relay
        .cloud
        .wait_for_log(&["bad PROXY protocol header", "not a PROXY protocol header"], IO_TIMEOUT)
        .await;
    let mut slow = connect_from(lb, relay.web).await;
    slow.write_all(b"PROXY TCP4 127.0.0.2 ").await.expect("half a header");
    let closed = tokio::time::timeout(IO_TIMEOUT, slow.read(&mut [0u8; 16])).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "the slow header was not cut off: {closed:?}");
    relay.cloud.wait_for_log(&["no complete PROXY header within 1s"], IO_TIMEOUT).await;

    relay.figures_settle(4, 2).await;
    assert_eq!(relay.served.load(Ordering::SeqCst), 2, "only the two good headers were served");
    eprintln!("figures (total, failed, active): {:?}", relay.figures().await);
    for line in relay.cloud.logged().iter().filter(|l| l.contains("PROXY") || l.contains("check")) {
        eprintln!("{line}");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_being_read_holds_a_connection_slot() {
    let mut relay = Relay::start("30s", "max_connections = 1").await;
    let lb = [127, 0, 0, 1];
    // The load balancer connects and has not sent its header yet.
    let mut waiting = connect_from(lb, relay.web).await;
    waiting.write_all(b"PROXY TCP4 ").await.expect("the start of a header");
    // The one slot is taken: the next connection is refused at accept
    // (the connect itself may see the reset).
    if let Ok(tcp) = try_connect_from(lb, relay.web).await {
        let back = exchange(tcp, &v2_header(SocketAddr::from((ALLOWED, 1)), relay.web)).await;
        assert!(back.is_empty(), "a second connection got {back:?}");
    }
    relay
        .cloud
        .wait_for_log(&["mapping at its connection limit", "peer=127.0.0.1:"], IO_TIMEOUT)
        .await;
    // The first one finishes its header and is served.
    let rest =
        format!("{} {} 40003 {}\r\nslot", IpAddr::from(ALLOWED), relay.web.ip(), relay.web.port());
    assert_eq!(exchange(waiting, rest.as_bytes()).await, b"slot");
    relay.figures_settle(1, 0).await;
    relay.stop().await;
}
