//! A mapping's traffic policy at the cloud: caps per client address
//! refuse what they should and nothing else, and byte rates slow streams
//! without losing or reordering a byte. Real `relay-cloud` process, real
//! edge, clients from addresses of their own in 127.0.0.0/8. How fast a
//! limited mapping goes is the bench's figure, not a test's.

use std::net::SocketAddr;
use std::time::Duration;

use agent_edge::Edge;
use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, STARTUP, TOKEN, cloud_toml_with_control, echo_server, edge_config,
    edge_toml, listen_addr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

struct Relay {
    _cloud: Agent,
    edge: Edge,
    api: Api,
    web: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Mapping `web` to an echo service, with `keys` in its table.
    async fn start(keys: &str) -> Relay {
        let echo = echo_server().await;
        let dir = tempfile::tempdir().unwrap();
        let mut toml = cloud_toml_with_control(
            "127.0.0.1:0",
            &[("web", &echo.to_string())],
            &dir.path().join("s"),
        );
        toml.push_str(keys);
        let mut cloud = Agent::spawn("relay-cloud", &toml);
        let tunnel =
            listen_addr(&cloud.wait_for_log(&["listening for edge tunnels"], STARTUP).await);
        let web =
            listen_addr(&cloud.wait_for_log(&["mapping listening", "mapping=web "], STARTUP).await);
        let control = listen_addr(&cloud.wait_for_log(&["control API listening"], STARTUP).await);
        let edge =
            Edge::start(edge_config(&edge_toml(tunnel, &[echo.to_string()], TOKEN))).unwrap();
        cloud.wait_for_log(&["edge connected", "edge=e1"], STARTUP).await;
        Relay { _cloud: cloud, edge, api: Api::new(control, Some(ADMIN_TOKEN)), web, _dir: dir }
    }

    async fn hits(&self) -> serde_json::Value {
        let (status, m) = self.api.call("GET", "/v1/mappings/web", None).await;
        assert_eq!(status, 200, "{m}");
        m["policy_hits"].clone()
    }
}

/// A connection from `from`; a refusal may already show in the connect
/// (the reset overtakes it), so that is the caller's to judge.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Whether the connection echoes a line: `false` when the cloud closed it.
async fn echoes(tcp: &mut std::io::Result<TcpStream>) -> bool {
    let Ok(tcp) = tcp else { return false };
    let io = async {
        tcp.write_all(b"ping\n").await?;
        let mut back = [0u8; 5];
        tcp.read_exact(&mut back).await?;
        std::io::Result::Ok(&back == b"ping\n")
    };
    tokio::time::timeout(IO_TIMEOUT, io).await.expect("an answer or a close").unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_connection_cap_is_refused_and_others_are_not() {
    let relay = Relay::start("max_connections_per_client = 2\n").await;
    let a = [127, 0, 0, 2];
    let mut first = connect_from(a, relay.web).await;
    let mut second = connect_from(a, relay.web).await;
    assert!(echoes(&mut first).await && echoes(&mut second).await);
    let mut third = connect_from(a, relay.web).await;
    assert!(!echoes(&mut third).await, "a third connection from the same client is closed");
    let mut other = connect_from([127, 0, 0, 3], relay.web).await;
    assert!(echoes(&mut other).await, "another client is not limited by the first");
    drop(first);
    // Once the cloud has seen the close (two connections left: the
    // second and the other client's), there is room again.
    let seen = e2e_tests::eventually(IO_TIMEOUT, || async {
        let (_, m) = relay.api.call("GET", "/v1/mappings/web", None).await;
        m["active_connections"] == 2
    })
    .await;
    assert!(seen, "the cloud saw the first connection close");
    let mut again = connect_from(a, relay.web).await;
    assert!(echoes(&mut again).await, "a closed connection makes room");
    assert_eq!(relay.hits().await["refused_concurrent"], 1);
    let (_, metrics) = relay.api.call("GET", "/metrics", None).await;
    let line = "relay_mapping_policy_refused_total{mapping=\"web\",limit=\"max_connections_per_client\"} 1";
    assert!(metrics.as_str().unwrap_or_default().contains(line), "{metrics}");
    relay.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_over_the_clients_rate_are_refused_until_its_bucket_refills() {
    // One per second: the second connection comes well within the second
    // even on a loaded machine, so the refusal does not hang on timing.
    let relay = Relay::start("new_connections_per_client = 1\n").await;
    let a = [127, 0, 0, 4];
    let mut first = connect_from(a, relay.web).await;
    assert!(echoes(&mut first).await, "the first within the rate");
    let mut over = connect_from(a, relay.web).await;
    assert!(!echoes(&mut over).await, "the second in the same second");
    let mut other = connect_from([127, 0, 0, 5], relay.web).await;
    assert!(echoes(&mut other).await, "another client has its own bucket");
    assert!(echoes(&mut first).await, "the open connection is not touched");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut later = connect_from(a, relay.web).await;
    assert!(echoes(&mut later).await, "a token came back");
    assert_eq!(relay.hits().await["refused_rate"], 1);
    relay.edge.shutdown().await;
}

/// Sends `total` bytes of a pattern and reads the echo back, checking
/// every byte in order.
async fn exact_echo(mut tcp: TcpStream, total: usize, seed: u8) {
    let (mut r, mut w) = tcp.split();
    let pattern = |i: usize| (i as u8).wrapping_mul(31).wrapping_add(seed);
    let send = async {
        let mut sent = 0;
        while sent < total {
            let n = (total - sent).min(32 * 1024);
            let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
            w.write_all(&chunk).await.unwrap();
            sent += n;
        }
        w.shutdown().await.unwrap();
    };
    let receive = async {
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < total {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {got} of {total} bytes");
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(got + k), "byte {}", got + k);
            }
            got += n;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(send, receive) })
        .await
        .expect("the limited transfer finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_rate_slows_streams_through_flow_control_and_loses_nothing() {
    // 2 MiB/s each way, for two connections at once moving 3 MiB each:
    // the limit has to bite, in both directions.
    let relay = Relay::start("rate_limit_in = \"2MiB\"\nrate_limit_out = \"2 MiB/s\"\n").await;
    let total = 3 * 1024 * 1024;
    let a = connect_from([127, 0, 0, 6], relay.web).await.unwrap();
    let b = connect_from([127, 0, 0, 7], relay.web).await.unwrap();
    tokio::join!(exact_echo(a, total, 1), exact_echo(b, total, 2));
    let hits = relay.hits().await;
    assert!(hits["throttled_in"].as_u64() > Some(0), "{hits}");
    assert!(hits["throttled_out"].as_u64() > Some(0), "{hits}");
    let (_, m) = relay.api.call("GET", "/v1/mappings/web", None).await;
    assert_eq!(m["rate_limit_in_bps"], 2 * 1024 * 1024);
    relay.edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_is_replaced_live_through_the_api_and_a_batch() {
    let relay = Relay::start("").await;
    // The same service as `web`: the one the edge allows.
    let (_, web) = relay.api.call("GET", "/v1/mappings/web", None).await;
    let spec = serde_json::json!({
        "name": "rt", "listen": "127.0.0.1:0", "edge": "e1", "target": web["target"],
        "max_connections_per_client": 1,
    });
    let (status, view) = relay.api.call("POST", "/v1/mappings", Some(spec)).await;
    assert_eq!(status, 201, "{view}");
    let rt: SocketAddr = view["bound"].as_str().unwrap().parse().unwrap();
    let a = [127, 0, 0, 8];
    let mut one = connect_from(a, rt).await;
    assert!(echoes(&mut one).await);
    let mut two = connect_from(a, rt).await;
    assert!(!echoes(&mut two).await, "one per client");

    // Raised to two, live: the open connection is untouched.
    let body = serde_json::json!({"max_connections_per_client": 2, "rate_limit_out_bps": 1 << 20});
    let (status, view) = relay.api.call("PUT", "/v1/mappings/rt/policy", Some(body)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["max_connections_per_client"], 2);
    assert_eq!(view["rate_limit_out_bps"], 1 << 20);
    let mut two = connect_from(a, rt).await;
    assert!(echoes(&mut two).await, "room for a second after the change");
    assert!(echoes(&mut one).await, "the first still open");

    // A batch takes every limit away.
    let batch = serde_json::json!({"changes": [{"op": "set_policy", "name": "rt"}]});
    let (status, body) = relay.api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    let mut three = connect_from(a, rt).await;
    assert!(echoes(&mut three).await, "no cap any more");
    let (_, view) = relay.api.call("GET", "/v1/mappings/rt", None).await;
    assert!(view.get("max_connections_per_client").is_none(), "{view}");

    // A mapping from cloud.toml keeps the file's policy: 409, named.
    let (status, body) =
        relay.api.call("PUT", "/v1/mappings/web/policy", Some(serde_json::json!({}))).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("comes from cloud.toml"), "{body}");
    let (status, _) =
        relay.api.call("PUT", "/v1/mappings/nope/policy", Some(serde_json::json!({}))).await;
    assert_eq!(status, 404);
    let bad = serde_json::json!({"rate_limit_in_bps": 10});
    let (status, body) = relay.api.call("PUT", "/v1/mappings/rt/policy", Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("rate_limit_in_bps"), "{body}");
    let (_, events) = relay.api.call("GET", "/v1/events", None).await;
    assert!(events.to_string().contains("policy_changed"), "{events}");
    relay.edge.shutdown().await;
}
