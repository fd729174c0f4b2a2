//! End-to-end probes with real agents on loopback: a mapping's probe is
//! green while its destination listens, turns red (refused) when it stops
//! and green again when it returns, each change an event; a target off the
//! edge's allowlist is "denied"; a stopped edge is "no tunnel"; probes move
//! no connection counter; `/metrics` has them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::{
    ADMIN_TOKEN, Api, TOKEN, cloud_config, edge_config, edge_toml, eventually, free_port,
};
use serde_json::Value;
use tokio::net::TcpListener;

const WITHIN: Duration = Duration::from_secs(15);

/// A destination that accepts and counts connections until stopped.
struct Destination {
    task: tokio::task::JoinHandle<()>,
}

impl Destination {
    async fn start(addr: SocketAddr, accepted: Arc<AtomicU64>) -> Destination {
        let listener = TcpListener::bind(addr).await.expect("bind the destination");
        let counter = accepted;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                drop(tcp);
            }
        });
        Destination { task }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn mapping(api: &Api, name: &str) -> Value {
    let (status, body) = api.call("GET", &format!("/v1/mappings/{name}"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn probe_status(api: &Api, name: &str) -> String {
    mapping(api, name).await["probe"]["status"].as_str().unwrap_or("").to_owned()
}

async fn probe_events(api: &Api, name: &str) -> Vec<String> {
    let (_, body) = api.call("GET", "/v1/events", None).await;
    body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "probe_changed" && e["subject"] == name)
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_turns_red_when_the_service_stops_green_when_it_returns_and_tells_the_site_apart() {
    let dir = tempfile::tempdir().unwrap();
    let service = free_port();
    let off_list = free_port();
    let toml = format!(
        "[control]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\nstate_file = \"{}\"\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n\
         [[mappings]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{service}\"\nprobe_interval = \"1s\"\n\
         [[mappings]]\nname = \"other\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{off_list}\"\nprobe_interval = \"1s\"\n\
         [[mappings]]\nname = \"quiet\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{service}\"\n",
        dir.path().join("state.json").display()
    );
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud starts");
    let api = Api::new(cloud.control_addr().unwrap(), Some(ADMIN_TOKEN));
    // No edge yet: the site is down, which the probe says as such.
    assert!(eventually(WITHIN, || async { probe_status(&api, "db").await == "no_tunnel" }).await);
    assert!(mapping(&api, "quiet").await["probe"].is_null(), "no probe without probe_interval");

    let accepted = Arc::new(AtomicU64::new(0));
    let destination = Destination::start(service, Arc::clone(&accepted)).await;
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[service.to_string()], TOKEN)))
            .unwrap();
    assert!(eventually(WITHIN, || async { probe_status(&api, "db").await == "ok" }).await);
    let db = mapping(&api, "db").await;
    let connect_us = db["probe"]["connect_us"].as_u64().expect("the edge's connect time");
    println!("probe ok: connect {connect_us} us, round trip {} us", db["probe"]["rtt_us"]);
    assert!(accepted.load(Ordering::Relaxed) >= 1, "the probe reached the destination");
    assert_eq!(db["total_connections"], 0, "a probe is no client connection: {db}");
    // The target off the edge's allowlist: the edge says no, as for a client.
    assert!(eventually(WITHIN, || async { probe_status(&api, "other").await == "failed" }).await);
    let other = mapping(&api, "other").await;
    assert!(other["probe"]["detail"].as_str().unwrap_or("").starts_with("denied"), "{other}");
    let (_, metrics) = api.call("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("relay_probe_up{mapping=\"db\"} 1"), "{metrics}");
    assert!(metrics.contains("relay_probe_up{mapping=\"other\"} 0"), "{metrics}");
    assert!(metrics.contains("relay_probe_connect_seconds{mapping=\"db\"}"), "{metrics}");

    // The service stops: red, with the edge's reason, and an event.
    destination.stop().await;
    let stopped = Instant::now();
    assert!(eventually(WITHIN, || async { probe_status(&api, "db").await == "failed" }).await);
    println!("red {:?} after the service stopped (probe every 1s)", stopped.elapsed());
    let db = mapping(&api, "db").await;
    assert!(db["probe"]["detail"].as_str().unwrap_or("").starts_with("refused"), "{db}");
    assert!(probe_events(&api, "db").await.iter().any(|t| t.starts_with("probe failed")));

    // It returns on the same port: green again, another event.
    let destination = Destination::start(service, Arc::clone(&accepted)).await;
    assert!(eventually(WITHIN, || async { probe_status(&api, "db").await == "ok" }).await);
    let events = probe_events(&api, "db").await;
    assert!(events.last().is_some_and(|t| t.starts_with("probe ok")), "{events:?}");
    assert_eq!(mapping(&api, "db").await["probe"]["consecutive_failures"], 0);

    // The site goes down (the edge stops): "no tunnel", not "failed".
    edge.shutdown().await;
    assert!(eventually(WITHIN, || async { probe_status(&api, "db").await == "no_tunnel" }).await);
    destination.stop().await;
    cloud.shutdown().await;
}

/// A service that answers `+PONG` to `PING`, like Redis, and `-ERR` to
/// anything else.
async fn pong_service() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let answer: &[u8] =
                    if buf[..n].starts_with(b"PING") { b"+PONG\r\n" } else { b"-ERR unknown\r\n" };
                let _ = tcp.write_all(answer).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_with_send_and_expect_checks_what_the_service_answers() {
    let dir = tempfile::tempdir().unwrap();
    let service = pong_service().await;
    let toml = format!(
        "[control]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\nstate_file = \"{}\"\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n\
         [[mappings]]\nname = \"redis\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{service}\"\n\
         probe_interval = \"1s\"\nprobe_send = \"PING\\r\\n\"\nprobe_expect = \"+PONG\"\n",
        dir.path().join("state.json").display()
    );
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud starts");
    let api = Api::new(cloud.control_addr().unwrap(), Some(ADMIN_TOKEN));
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[service.to_string()], TOKEN)))
            .unwrap();
    assert!(eventually(WITHIN, || async { probe_status(&api, "redis").await == "ok" }).await);
    let redis = mapping(&api, "redis").await;
    assert_eq!(
        (&redis["probe_send"], &redis["probe_expect"]),
        (&"PING\r\n".into(), &"+PONG".into())
    );

    // Through the API: the same service, but the answer it gives is not
    // the one expected: failed, saying what came instead.
    let body = serde_json::json!({"name": "wrong", "listen": "127.0.0.1:0", "edge": "e1",
        "target": service.to_string(), "probe_interval_secs": 1,
        "probe_send": "HELLO\r\n", "probe_expect": "+PONG"});
    let (status, answer) = api.call("POST", "/v1/mappings", Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    assert!(eventually(WITHIN, || async { probe_status(&api, "wrong").await == "failed" }).await);
    let wrong = mapping(&api, "wrong").await;
    let detail = wrong["probe"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("\"+PONG\" expected") && detail.contains("-ERR unknown"), "{detail}");

    // An expectation without an interval is refused, naming the field.
    let body = serde_json::json!({"name": "bad", "listen": "127.0.0.1:0", "edge": "e1",
        "target": service.to_string(), "probe_expect": "+PONG"});
    let (status, answer) = api.call("POST", "/v1/mappings", Some(body)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("probe_expect"), "{answer}");
    edge.shutdown().await;
    cloud.shutdown().await;
}
