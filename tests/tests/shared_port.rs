//! Many services on one public port, routed by name: real `relay-cloud`
//! (a process), a real edge, TLS services with their own certificates
//! (rustls), HTTP services, clients with real TLS stacks (rustls) and
//! curl, and HAProxy as a TLS service reading the PROXY header.
//!
//! TLS is not terminated by the relay: each client verifies the
//! certificate of the service it reached, so a wrong route fails the
//! handshake, not just an assertion.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_edge::Edge;
use e2e_tests::haproxy::{Frontend, Haproxy, HaproxyConfig};
use e2e_tests::skip::cannot_run;
use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, STARTUP, TOKEN, cloud_toml_with_control, edge_config, edge_toml,
    free_port, listen_addr, named_http_service,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients connect from here: not the edge's or anyone else's address.
const CLIENT: [u8; 4] = [127, 0, 0, 2];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `names`, as DER, and its key.
fn certificate(names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::generate_simple_self_signed(names).expect("generate cert");
    let pem = format!("{}{}", cert.cert.pem(), cert.signing_key.serialize_pem());
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    (cert.cert.der().clone(), key, pem)
}

/// A TLS service named `name` with its own certificate for `names`: to
/// each line it answers `name`, then closes. Returns its address and the
/// certificate a client must trust.
async fn tls_service(name: &'static str, names: &[&str]) -> (SocketAddr, CertificateDer<'static>) {
    let (cert, key, _) = certificate(names);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut tls = BufReader::new(tls);
                let mut line = String::new();
                if tls.read_line(&mut line).await.is_ok() {
                    let _ = tls.get_mut().write_all(format!("{name}\n").as_bytes()).await;
                    let _ = tls.get_mut().shutdown().await;
                }
            });
        }
    });
    (addr, cert)
}

async fn connect_from_client(to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((CLIENT, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// A TLS client for `sni` trusting only `root`: sends a line, returns the
/// answer, or the handshake's error.
async fn tls_ask(
    to: SocketAddr,
    sni: &str,
    root: &CertificateDer<'static>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server = ServerName::try_from(sni.to_owned()).unwrap();
    let tcp = connect_from_client(to).await;
    tokio::time::timeout(IO_TIMEOUT, async {
        let mut tls = connector.connect(server, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"hello\n").await.map_err(|e| e.to_string())?;
        let mut back = String::new();
        tls.read_to_string(&mut back).await.map_err(|e| e.to_string())?;
        Ok(back.trim().to_owned())
    })
    .await
    .expect("TLS exchange in time")
}

struct Relay {
    _cloud: Agent,
    edge: Edge,
    api: Api,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// A cloud with `mappings` (TOML `[[mappings]]` tables) and an edge
    /// allowed to reach `allow`.
    async fn start(mappings: &str, allow: &[SocketAddr]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = cloud_toml_with_control("127.0.0.1:0", &[], &dir.path().join("state.json"));
        toml.push_str(mappings);
        let mut cloud = Agent::spawn("relay-cloud", &toml);
        let tunnel =
            listen_addr(&cloud.wait_for_log(&["listening for edge tunnels"], STARTUP).await);
        let control = listen_addr(&cloud.wait_for_log(&["control API listening"], STARTUP).await);
        let allow: Vec<String> = allow.iter().map(ToString::to_string).collect();
        let edge =
            Edge::start(edge_config(&edge_toml(tunnel, &allow, TOKEN))).expect("edge starts");
        cloud.wait_for_log(&["edge connected", "edge=e1"], STARTUP).await;
        Relay { _cloud: cloud, edge, api: Api::new(control, Some(ADMIN_TOKEN)), _dir: dir }
    }

    /// The `/metrics` sample `relay_shared_port_connections_total` for
    /// `listen` and `outcome`.
    async fn port_count(&self, listen: SocketAddr, outcome: &str) -> u64 {
        let (_, body) = self.api.call("GET", "/metrics", None).await;
        let text = body.as_str().unwrap_or_default().to_owned();
        let key = format!(
            "relay_shared_port_connections_total{{listen=\"{listen}\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /metrics:\n{text}"))
    }
}

fn mapping(name: &str, listen: SocketAddr, host: &str, target: SocketAddr, extra: &str) -> String {
    format!(
        "[[mappings]]\nname = \"{name}\"\nlisten = \"{listen}\"\nedge = \"e1\"\n\
         target = \"{target}\"\nhost = \"{host}\"\n{extra}"
    )
}

fn curl_available(test: &str) -> bool {
    let found = std::process::Command::new("curl").arg("--version").output();
    if found.is_ok_and(|o| o.status.success()) {
        return true;
    }
    cannot_run(test, "curl not found: apt-get install curl");
    false
}

/// curl's output for `args`.
async fn curl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--interface", "127.0.0.2"])
        .args(args)
        .output()
        .await
        .expect("run curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_services_share_one_port_by_server_name_each_with_its_own_certificate() {
    let (a, a_cert) = tls_service("a", &["a.example.com"]).await;
    let (wild, wild_cert) = tls_service("wild", &["*.w.example.com"]).await;
    let (exact, exact_cert) = tls_service("exact", &["x.w.example.com"]).await;
    let (default, default_cert) =
        tls_service("default", &["*.example.com", "deep.y.w.example.com"]).await;
    let (b, b_cert) = tls_service("b", &["b.example.com"]).await;
    let (shared, lone) = (free_port(), free_port());
    let mappings = [
        mapping("a", shared, "a.example.com", a, ""),
        mapping("wild", shared, "*.w.example.com", wild, ""),
        mapping("exact", shared, "x.w.example.com", exact, ""),
        mapping("default", shared, "*", default, ""),
        mapping("b", lone, "b.example.com", b, ""),
    ]
    .concat();
    let relay = Relay::start(&mappings, &[a, wild, exact, default, b]).await;

    for (sni, root, expected) in [
        ("a.example.com", &a_cert, "a"),
        ("A.Example.COM", &a_cert, "a"),
        ("y.w.example.com", &wild_cert, "wild"),
        ("x.w.example.com", &exact_cert, "exact"),
        ("nobody.example.com", &default_cert, "default"),
        ("deep.y.w.example.com", &default_cert, "default"),
    ] {
        let got = tls_ask(shared, sni, root).await;
        assert_eq!(got.as_deref(), Ok(expected), "{sni}");
    }
    // Where no default takes it: the alert, and the client says so.
    let refused = tls_ask(lone, "nobody.example.com", &b_cert).await.unwrap_err();
    assert!(refused.contains("UnrecognisedName"), "{refused}");
    assert_eq!(tls_ask(lone, "b.example.com", &b_cert).await.as_deref(), Ok("b"));
    assert_eq!(relay.port_count(lone, "unknown_tls").await, 1);
    assert_eq!(relay.port_count(lone, "routed").await, 1);
    assert_eq!(relay.port_count(shared, "routed").await, 6);
    // The mappings as the API shows them: one address, the host each takes.
    let (_, list) = relay.api.call("GET", "/v1/mappings", None).await;
    let wild_view = list.as_array().unwrap().iter().find(|m| m["name"] == "wild").unwrap();
    assert_eq!(wild_view["host"], "*.w.example.com");
    assert_eq!(wild_view["bound"], shared.to_string());
    relay.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_services_share_one_port_by_host_and_keep_alive_stays_with_the_first() {
    if !curl_available("shared_port_http") {
        return;
    }
    let (web1, web2) = (named_http_service("web1").await, named_http_service("web2").await);
    let port = free_port();
    let mappings = [
        mapping("web1", port, "web1.example.com", web1, ""),
        mapping("web2", port, "web2.example.com", web2, ""),
    ]
    .concat();
    let relay = Relay::start(&mappings, &[web1, web2]).await;
    let url = |host: &str, path: &str| format!("http://{host}:{}{path}", port.port());
    let resolve = |host: &str| format!("{host}:{}:127.0.0.1", port.port());

    // By Host, whatever its case, with the port curl adds.
    let one =
        curl(&["--resolve", &resolve("WEB2.example.com"), &url("WEB2.example.com", "/")]).await;
    assert_eq!(one.trim(), format!("web2 WEB2.example.com:{}", port.port()));
    // Keep-alive: curl reuses the connection for the second URL.
    let both = curl(&[
        "--resolve",
        &resolve("web1.example.com"),
        "-w",
        "connects=%{num_connects}\n",
        &url("web1.example.com", "/one"),
        &url("web1.example.com", "/two"),
    ])
    .await;
    let lines: Vec<&str> = both.lines().collect();
    let host = format!("web1.example.com:{}", port.port());
    assert_eq!(
        lines,
        [format!("web1 {host}").as_str(), "connects=1", &format!("web1 {host}"), "connects=0"],
        "two answers over one connection"
    );
    // The first request decides the connection's route: a second Host on
    // the same connection stays with the first service.
    let mut tcp = connect_from_client(port).await;
    let mut answers = String::new();
    for h in ["web1.example.com", "web2.example.com"] {
        let req = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(IO_TIMEOUT, tcp.read(&mut chunk)).await.unwrap().unwrap();
        answers.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert!(answers.contains("web1 web1.example.com") && answers.contains("web1 web2.example.com"));
    // Nobody's host: 421.
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: nope.example.com",
        &format!("http://{port}/"),
    ])
    .await;
    assert_eq!(code, "421");
    assert_eq!(relay.port_count(port, "unknown_http").await, 1);
    relay.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_service_behind_a_shared_port_reads_the_client_and_server_name_from_proxy_v2() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _, pem) = certificate(&["pp.example.com"]);
    let pem_path = dir.path().join("pp.pem");
    std::fs::write(&pem_path, pem).unwrap();
    let config = HaproxyConfig::new(vec![Frontend::proxy_reporter_tls("svc", pem_path)]);
    let Some(haproxy) = Haproxy::start("shared_port_proxy_v2", config).await else { return };
    let service = haproxy.frontend_addr("svc");
    let port = free_port();
    let mappings = mapping("pp", port, "pp.example.com", service, "proxy_protocol = \"v2\"\n");
    let relay = Relay::start(&mappings, &[service]).await;
    let said = https_get(port, "pp.example.com", &cert).await;
    let (src, rest) = said.split_once(' ').unwrap();
    assert!(src.starts_with("src=127.0.0.2:"), "the client's address: {said}");
    assert!(rest.ends_with("authority=pp.example.com"), "the server name: {said}");
    drop(haproxy);
    relay.edge.shutdown().await;
}

/// GET / over TLS for `sni`, trusting `root`: the body.
async fn https_get(to: SocketAddr, sni: &str, root: &CertificateDer<'static>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = connect_from_client(to).await;
    let server = ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = connector.connect(server, tcp).await.expect("TLS to the service");
    let req = format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, tls.read_to_end(&mut back)).await;
    let text = String::from_utf8_lossy(&back).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_added_moved_and_drained_at_run_time_on_a_live_port() {
    let (a, a_cert) = tls_service("a", &["a.example.com"]).await;
    let (b, b_cert) = tls_service("b", &["b.example.com"]).await;
    let (a2, a2_cert) = tls_service("a2", &["a.example.com"]).await;
    let relay = Relay::start("", &[a, b, a2]).await;
    let port = free_port();
    let spec = |name: &str, host: Option<&str>, target: SocketAddr| {
        let mut s = serde_json::json!({
            "name": name, "listen": port.to_string(), "edge": "e1", "target": target.to_string(),
        });
        if let Some(h) = host {
            s["host"] = h.into();
        }
        s
    };
    let add = |body: serde_json::Value| relay.api.call("POST", "/v1/mappings", Some(body));
    assert_eq!(add(spec("a", Some("a.example.com"), a)).await.0, 201);
    assert_eq!(add(spec("b", Some("b.example.com"), b)).await.0, 201);
    let (status, body) = add(spec("a-twin", Some("A.example.com"), a2)).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("already taken by mapping \\\"a\\\""), "{body}");
    let (status, body) = add(spec("alone", None, a2)).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("only when each names a host"), "{body}");
    let (status, body) = add(spec("bad", Some("a.example.com:443"), a2)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.starts_with("host: invalid host")), "{body}");
    assert_eq!(tls_ask(port, "a.example.com", &a_cert).await.as_deref(), Ok("a"));
    assert_eq!(tls_ask(port, "b.example.com", &b_cert).await.as_deref(), Ok("b"));

    // One batch moves a.example.com to another service: the port stays up
    // and the new route takes the next connection.
    let batch = serde_json::json!({"changes": [
        {"op": "drain", "name": "a", "deadline_secs": 1},
        {"op": "add", "name": "a2", "listen": port.to_string(), "edge": "e1",
         "target": a2.to_string(), "host": "a.example.com"},
    ]});
    let (status, body) = relay.api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(tls_ask(port, "a.example.com", &a2_cert).await.as_deref(), Ok("a2"));
    assert_eq!(tls_ask(port, "b.example.com", &b_cert).await.as_deref(), Ok("b"));

    // The last routes go: the address closes.
    for name in ["a2", "b"] {
        let (status, body) = relay.api.call("DELETE", &format!("/v1/mappings/{name}"), None).await;
        assert!(status == 200 || status == 204, "{status} {body}");
    }
    let closed =
        e2e_tests::eventually(IO_TIMEOUT, || async { TcpStream::connect(port).await.is_err() })
            .await;
    assert!(closed, "the shared address closed with its last mapping");
    relay.edge.shutdown().await;
}
