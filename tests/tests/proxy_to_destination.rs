//! `proxy_protocol` on a mapping: the edge writes a PROXY header naming
//! the real client to the destination, and a parser this project did not
//! write reads it: HAProxy with `accept-proxy` as the on-prem service,
//! answering each request with the source it parsed. Real binaries: the
//! cloud a process, the edge in-process, HAProxy a process.
//!
//! Every client connects from an address of its own in 127.0.0.0/8 with
//! a port the kernel chose, so the address the service reports can only be
//! the client's if the header carried it (the edge and the load balancer
//! connect from 127.0.0.1).

use std::net::SocketAddr;
use std::time::Duration;

use agent_edge::Edge;
use e2e_tests::haproxy::{Frontend, Haproxy, HaproxyConfig, SendProxy, Server};
use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, STARTUP, TOKEN, cloud_toml_with_control, edge_config, edge_toml,
    listen_addr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The client's own address: not the edge's, not the load balancer's.
const CLIENT: [u8; 4] = [127, 0, 0, 2];

/// The service: HAProxy requiring a PROXY header and reporting it.
async fn reporter(test: &str) -> Option<(Haproxy, SocketAddr)> {
    let config = HaproxyConfig::new(vec![Frontend::proxy_reporter("svc")]);
    let haproxy = Haproxy::start(test, config).await?;
    let addr = haproxy.frontend_addr("svc");
    Some((haproxy, addr))
}

/// A GET through `to` from [`CLIENT`]: the client's own address and the
/// response body.
async fn get_from_client(to: SocketAddr) -> (SocketAddr, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((CLIENT, 0))).unwrap();
    let mut tcp: TcpStream = socket.connect(to).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let answer = tokio::time::timeout(IO_TIMEOUT, async {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n").await?;
        let mut back = Vec::new();
        tcp.read_to_end(&mut back).await?;
        std::io::Result::Ok(back)
    })
    .await
    .expect("the service answered in time")
    .unwrap_or_else(|e| panic!("request through {to}: {e}"));
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "the service took the header: {text:?}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned();
    (me, body)
}

struct Relay {
    cloud: Agent,
    edge: Edge,
    api: Api,
    control: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// A cloud with mapping `v2` (in its file) to `service`, `extra` added
    /// to the file, and an edge allowed to reach `service`.
    async fn start(service: SocketAddr, extra: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let mut toml =
            cloud_toml_with_control("127.0.0.1:0", &[("v2", &service.to_string())], &state);
        toml.push_str("proxy_protocol = \"v2\"\n");
        toml.push_str(extra);
        let mut cloud = Agent::spawn("relay-cloud", &toml);
        let tunnel =
            listen_addr(&cloud.wait_for_log(&["listening for edge tunnels"], STARTUP).await);
        let control = listen_addr(&cloud.wait_for_log(&["control API listening"], STARTUP).await);
        let edge = Edge::start(edge_config(&edge_toml(tunnel, &[service.to_string()], TOKEN)))
            .expect("edge starts");
        cloud.wait_for_log(&["edge connected", "edge=e1"], STARTUP).await;
        Relay { cloud, edge, api: Api::new(control, Some(ADMIN_TOKEN)), control, _dir: dir }
    }

    async fn listen_of(&mut self, mapping: &str) -> SocketAddr {
        let needle = format!("mapping={mapping} ");
        listen_addr(&self.cloud.wait_for_log(&["mapping listening", &needle], STARTUP).await)
    }
}

#[tokio::test]
async fn the_service_reads_the_real_client_from_a_v1_or_v2_header() {
    let Some((_service, service)) = reporter("proxy_to_destination").await else { return };
    let mut relay = Relay::start(service, "").await;
    let v2 = relay.listen_of("v2").await;
    // v1 added at run time, through the API.
    let spec = serde_json::json!({
        "name": "v1", "listen": "127.0.0.1:0", "edge": "e1",
        "target": service.to_string(), "proxy_protocol": "v1",
    });
    let (status, body) = relay.api.call("POST", "/v1/mappings", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["proxy_protocol"], "v1", "the API shows it: {body}");
    let v1 = relay.listen_of("v1").await;

    for (name, public) in [("v1", v1), ("v2", v2)] {
        let (me, said) = get_from_client(public).await;
        assert_eq!(
            said,
            format!("src={me} dst={public} authority="),
            "{name}: the header names the client and the public address it reached"
        );
    }
    relay.edge.shutdown().await;
}

#[tokio::test]
async fn behind_the_load_balancer_the_service_sees_the_original_client() {
    let Some((_service, service)) = reporter("proxy_to_destination_behind_lb").await else {
        return;
    };
    // The cloud believes 127.0.0.1's headers (HAProxy's), as in a cluster.
    let from = "\n[proxy_protocol]\nfrom = [\"127.0.0.1\"]\n";
    let mut relay = Relay::start(service, from).await;
    let web = relay.listen_of("v2").await;
    let ready = relay.control;
    let lb = HaproxyConfig::new(vec![Frontend::new(
        "public",
        vec![Server::new("a", web, ready).send_proxy(SendProxy::V2)],
    )]);
    let Some(lb) = Haproxy::start("proxy_to_destination_behind_lb", lb).await else { return };
    lb.wait_server_state("public", "a", "UP", STARTUP).await;
    let (me, said) = get_from_client(lb.frontend_addr("public")).await;
    let src = said.split(' ').next().unwrap_or_default();
    assert_eq!(src, format!("src={me}"), "the client, not HAProxy's connection: {said}");
    relay.edge.shutdown().await;
}
