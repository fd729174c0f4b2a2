//! The control API against real agents on loopback: runtime mappings that
//! persist, drains, atomic batches, authentication and live figures.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::{
    ADMIN_TOKEN, Api, TOKEN, cloud_config, cloud_toml_with_control, echo_once, echo_server,
    edge_config, edge_toml, eventually, free_port, serves,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Setup {
    cloud: Cloud,
    edge: Edge,
    api: Api,
    echo: SocketAddr,
    toml: String,
}

async fn setup(state_file: &Path) -> Setup {
    setup_with(state_file, "").await
}

/// [`setup`] with `control_keys` added to `[control]`.
async fn setup_with(state_file: &Path, control_keys: &str) -> Setup {
    let echo = echo_server().await;
    let toml = cloud_toml_with_control("127.0.0.1:0", &[("base", &echo.to_string())], state_file)
        .replacen("\n\n[tunnel]", &format!("\n{control_keys}\n[tunnel]"), 1);
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud starts");
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge starts");
    let api = Api::new(cloud.control_addr().expect("control API on"), Some(ADMIN_TOKEN));
    let base = cloud.mapping_addr("base").expect("base mapping");
    assert!(
        eventually(Duration::from_secs(10), || serves(base)).await,
        "base mapping never served"
    );
    Setup { cloud, edge, api, echo, toml }
}

impl Setup {
    async fn stop(self) {
        self.edge.shutdown().await;
        self.cloud.shutdown().await;
    }
}

fn add_body(name: &str, listen: SocketAddr, target: SocketAddr) -> Value {
    json!({ "name": name, "listen": listen.to_string(), "edge": "e1", "target": target.to_string() })
}

async fn mapping_names(api: &Api) -> Vec<String> {
    let (status, body) = api.call("GET", "/v1/mappings", None).await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("array")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_mapping_serves_and_survives_a_restart_and_drained_ones_do_not_come_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.json");
    let s = setup(&state).await;
    let web = free_port();
    let gone = free_port();
    let (status, body) =
        s.api.call("POST", "/v1/mappings", Some(add_body("web", web, s.echo))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "active");
    // Listening before the call returned: no waiting needed.
    assert!(serves(web).await, "added mapping does not serve");
    let (status, _) =
        s.api.call("POST", "/v1/mappings", Some(add_body("gone", gone, s.echo))).await;
    assert_eq!(status, 201);
    let (status, _) =
        s.api.call("POST", "/v1/mappings/gone/drain", Some(json!({"deadline_secs": 0}))).await;
    assert_eq!(status, 202);

    let toml = s.toml.clone();
    let echo = s.echo;
    s.stop().await;
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud restarts");
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let api = Api::new(cloud.control_addr().expect("control"), Some(ADMIN_TOKEN));
    let names = mapping_names(&api).await;
    assert!(names.contains(&"web".to_owned()), "runtime mapping lost on restart: {names:?}");
    assert!(!names.contains(&"gone".to_owned()), "drained mapping came back: {names:?}");
    assert_eq!(cloud.mapping_addr("web"), Some(web), "same address after restart");
    assert!(
        eventually(Duration::from_secs(10), || serves(web)).await,
        "runtime mapping does not serve after restart"
    );
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_on_a_port_in_use_fails_clearly_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    let squatter = TcpListener::bind("127.0.0.1:0").await.expect("squatter");
    let taken = squatter.local_addr().expect("addr");
    let (status, body) =
        s.api.call("POST", "/v1/mappings", Some(add_body("web", taken, s.echo))).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "bind_failed");
    assert!(body["error"].as_str().expect("error").contains(&taken.to_string()), "{body}");
    assert_eq!(mapping_names(&s.api).await, vec!["base".to_owned()]);
    assert!(serves(s.cloud.mapping_addr("base").expect("base")).await);
    // Other bad requests: each a clear 4xx naming the problem.
    let cases = [
        (add_body("base", free_port(), s.echo), 409, "already exists"),
        (json!({"name": "x", "listen": "nonsense", "edge": "e1", "target": "h:1"}), 400, "listen"),
        (
            json!({"name": "x", "listen": "127.0.0.1:0", "edge": "nobody", "target": "h:1"}),
            422,
            "unknown edge",
        ),
        (
            json!({"name": "x", "listen": "127.0.0.1:0", "edge": "e1", "target": "no-port"}),
            400,
            "target",
        ),
        (
            json!({"name": "x", "listen": "127.0.0.1:0", "edge": "e1", "target": "h:1", "lisen": 1}),
            400,
            "lisen",
        ),
    ];
    for (body, expected, fragment) in cases {
        let (status, answer) = s.api.call("POST", "/v1/mappings", Some(body.clone())).await;
        assert_eq!(status, expected, "{body} -> {answer}");
        assert!(answer.to_string().contains(fragment), "{body} -> {answer}");
    }
    assert_eq!(mapping_names(&s.api).await, vec!["base".to_owned()]);
    drop(squatter);
    s.stop().await;
}

async fn round_trip(tcp: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    tcp.write_all(payload).await?;
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    assert_eq!(back, payload);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_connections_and_lets_open_ones_finish() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    let public = s.cloud.mapping_addr("base").expect("base");
    let mut open = TcpStream::connect(public).await.expect("connect");
    round_trip(&mut open, b"before").await.expect("round trip before drain");

    let (status, body) =
        s.api.call("POST", "/v1/mappings/base/drain", Some(json!({"deadline_secs": 60}))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "draining");
    // The listener is closed at once: a new client is refused.
    assert!(TcpStream::connect(public).await.is_err(), "new connection accepted while draining");
    // The open connection keeps working, and is counted.
    round_trip(&mut open, b"during").await.expect("round trip during drain");
    let (_, m) = s.api.call("GET", "/v1/mappings/base", None).await;
    assert_eq!(m["state"], "draining");
    assert_eq!(m["active_connections"], 1);
    assert!(m["drain_remaining_ms"].as_u64().expect("remaining") > 50_000, "{m}");
    // Once it closes, the mapping goes away.
    open.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.expect("read to end");
    assert!(mapping_goes(&s.api, "base").await, "drained mapping still listed");
    s.stop().await;
}

/// Whether mapping `name` is gone from the API (404) within 5 s.
async fn mapping_goes(api: &Api, name: &str) -> bool {
    let path = format!("/v1/mappings/{name}");
    eventually(Duration::from_secs(5), || async { api.call("GET", &path, None).await.0 == 404 })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_resets_connections_still_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    let public = s.cloud.mapping_addr("base").expect("base");
    let mut open = TcpStream::connect(public).await.expect("connect");
    round_trip(&mut open, b"hello").await.expect("round trip");
    let (status, _) =
        s.api.call("POST", "/v1/mappings/base/drain", Some(json!({"deadline_secs": 1}))).await;
    assert_eq!(status, 202);
    // Keep the connection idle: at the deadline the agent resets it.
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
    assert!(matches!(ended, Ok(Ok(0) | Err(_))), "connection not ended at the deadline: {ended:?}");
    // The mapping goes once its connection tasks have ended, which is just
    // after the client sees the reset: wait for it (asking at once flaked).
    assert!(
        mapping_goes(&s.api, "base").await,
        "mapping still listed after its drain deadline reset its connections"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_last_change_fails_leaves_nothing_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    let (a, b) = (free_port(), free_port());
    let squatter = TcpListener::bind("127.0.0.1:0").await.expect("squatter");
    let taken = squatter.local_addr().expect("addr");
    let batch = json!({ "changes": [
        {"op": "add", "name": "a", "listen": a.to_string(), "edge": "e1", "target": s.echo.to_string()},
        {"op": "add", "name": "b", "listen": b.to_string(), "edge": "e1", "target": s.echo.to_string()},
        {"op": "drain", "name": "base"},
        {"op": "add", "name": "c", "listen": taken.to_string(), "edge": "e1", "target": s.echo.to_string()},
    ]});
    let (status, body) = s.api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["applied"], false);
    assert_eq!(body["outcomes"][3]["ok"], false);
    assert_eq!(mapping_names(&s.api).await, vec!["base".to_owned()]);
    // The first two listeners were rolled back: their ports are free again.
    TcpListener::bind(a).await.expect("port of rolled-back mapping a is free");
    TcpListener::bind(b).await.expect("port of rolled-back mapping b is free");
    assert!(serves(s.cloud.mapping_addr("base").expect("base still active")).await);

    // A plan error (unknown edge) on the last line: nothing changes either.
    let batch = json!({ "changes": [
        {"op": "add", "name": "a", "listen": a.to_string(), "edge": "e1", "target": s.echo.to_string()},
        {"op": "add", "name": "z", "listen": "127.0.0.1:0", "edge": "nobody", "target": "h:1"},
    ]});
    let (status, body) = s.api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(mapping_names(&s.api).await, vec!["base".to_owned()]);

    // A dry run reports the plan and changes nothing.
    let batch = json!({ "dry_run": true, "changes": [
        {"op": "add", "name": "a", "listen": a.to_string(), "edge": "e1", "target": s.echo.to_string()},
        {"op": "remove", "name": "base"},
    ]});
    let (status, body) = s.api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["applied"], false);
    assert!(
        body["outcomes"].as_array().expect("outcomes").iter().all(|o| o["ok"] == true),
        "{body}"
    );
    assert_eq!(mapping_names(&s.api).await, vec!["base".to_owned()]);
    TcpListener::bind(a).await.expect("dry run bound nothing");

    // And the same batch for real applies both changes.
    let batch = json!({ "changes": [
        {"op": "add", "name": "a", "listen": a.to_string(), "edge": "e1", "target": s.echo.to_string()},
        {"op": "remove", "name": "base"},
    ]});
    let (status, body) = s.api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], true);
    assert_eq!(mapping_names(&s.api).await, vec!["a".to_owned()]);
    assert!(serves(a).await);
    drop(squatter);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_out_of_range_is_a_clear_400_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    let max = api::MAX_DRAIN_DEADLINE_SECS;
    let answer = s
        .api
        .try_call("POST", "/v1/mappings/base/drain", Some(json!({"deadline_secs": u64::MAX})))
        .await;
    let (status, body) = answer.expect("an answer, not a dropped connection");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid", "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("deadline_secs") && error.contains(&max.to_string()), "{body}");
    // In a batch: the whole batch is refused, the earlier add included.
    let web = free_port();
    let batch = json!({ "changes": [
        {"op": "add", "name": "web", "listen": web.to_string(), "edge": "e1", "target": s.echo.to_string()},
        {"op": "drain", "name": "base", "deadline_secs": max + 1},
    ]});
    let (status, body) = s.api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["applied"], false);
    assert_eq!(body["outcomes"][1]["ok"], false, "{body}");
    assert!(body["outcomes"][1]["message"].as_str().expect("message").contains("deadline_secs"));
    assert_eq!(mapping_names(&s.api).await, vec!["base".to_owned()]);
    assert!(serves(s.cloud.mapping_addr("base").expect("base still active")).await);
    // And the disk agrees with memory: after a restart base is still there.
    let toml = s.toml.clone();
    s.stop().await;
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud restarts");
    assert!(cloud.mapping_addr("base").is_some(), "base gone after a restart");
    cloud.shutdown().await;
}

/// Whether the API says edge `id` is drained by an operator.
async fn edge_drained(api: &Api, id: &str) -> bool {
    let (status, edges) = api.call("GET", "/v1/edges", None).await;
    assert_eq!(status, 200, "{edges}");
    let edge = edges.as_array().expect("edges").iter().find(|e| e["id"] == id).cloned();
    edge.unwrap_or_else(|| panic!("no edge {id}: {edges}"))["draining"].as_bool().expect("draining")
}

/// Restarts the cloud and the edge of `s` with the same config and state.
async fn restart(s: Setup) -> Setup {
    let (toml, echo) = (s.toml.clone(), s.echo);
    s.stop().await;
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud restarts");
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge starts");
    let api = Api::new(cloud.control_addr().expect("control API on"), Some(ADMIN_TOKEN));
    assert!(
        eventually(Duration::from_secs(10), || async { cloud.live_tunnels("e1") == 2 }).await,
        "edge never reconnected"
    );
    Setup { cloud, edge, api, echo, toml }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_drain_and_undrain_both_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    let (status, body) = s.api.call("POST", "/v1/edges/e1/drain", None).await;
    assert_eq!(status, 202, "{body}");
    assert!(edge_drained(&s.api, "e1").await);
    // `base` has only e1: new clients find no edge.
    assert!(!serves(s.cloud.mapping_addr("base").expect("base")).await, "a drained edge served");

    let s = restart(s).await;
    assert!(edge_drained(&s.api, "e1").await, "edge drain lost on restart");
    assert!(!serves(s.cloud.mapping_addr("base").expect("base")).await, "a drained edge served");

    let (status, body) = s.api.call("POST", "/v1/edges/e1/undrain", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(!edge_drained(&s.api, "e1").await);
    assert!(serves(s.cloud.mapping_addr("base").expect("base")).await, "undrained edge idle");
    let (status, body) = s.api.call("POST", "/v1/edges/nobody/undrain", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");

    let s = restart(s).await;
    assert!(!edge_drained(&s.api, "e1").await, "edge undrain lost on restart");
    assert!(serves(s.cloud.mapping_addr("base").expect("base")).await);
    s.stop().await;
}

/// A connection that sends `head` and then one more byte every 200 ms
/// (never ending its headers, or its body) until the server closes it.
/// Resolves when the server has closed it, with what the server sent.
async fn drip(tcp: TcpStream, head: String) -> Vec<u8> {
    let (mut r, mut w) = tcp.into_split();
    w.write_all(head.as_bytes()).await.expect("head");
    let writer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if w.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let _ = r.read_to_end(&mut got).await;
    writer.abort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_at_the_request_timeout_and_the_connection_cap_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s =
        setup_with(&dir.path().join("state.json"), "request_timeout = \"1s\"\nmax_connections = 4")
            .await;
    let addr = s.cloud.control_addr().expect("control");
    let bound = Duration::from_secs(10);
    let started = tokio::time::Instant::now();
    // Four slow-loris connections fill the cap: headers that never end.
    let mut lorises = Vec::new();
    for _ in 0..4 {
        let head = "GET /v1/mappings HTTP/1.1\r\nHost: relay\r\nX-Slow: ".to_owned();
        // Connected here, one after another: the server accepts in that
        // order, so all four come before the client below.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        lorises.push(tokio::spawn(drip(tcp, head)));
    }
    // A real client meanwhile waits for a place.
    let client = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("answer");
        (tokio::time::Instant::now(), String::from_utf8_lossy(&answer).into_owned())
    });
    for loris in lorises {
        let got = tokio::time::timeout(bound, loris).await;
        let got = got.expect("a slow-loris connection was never cut").expect("drip task");
        assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"), "{got:?}");
    }
    let (answered, answer) =
        tokio::time::timeout(bound, client).await.expect("client never answered").expect("task");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // No place frees before a loris is cut, and none is cut before its
    // request_timeout (1 s) from its accept, which came after `started`.
    // (Comparing with the instant a drip task saw its cut was racy: that
    // task may run after the client's has seen its answer.)
    assert!(
        answered.duration_since(started) >= Duration::from_secs(1),
        "the fifth connection was served after {:?}, while four held the cap of 4",
        answered.duration_since(started)
    );
    // A body that never ends is cut too, with a 408.
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    );
    let got = tokio::time::timeout(bound, async {
        drip(TcpStream::connect(addr).await.expect("connect"), head).await
    })
    .await
    .expect("slow body never cut");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("request_timeout"), "{got}");
    // And the API serves as before.
    assert_eq!(mapping_names(&s.api).await, vec!["base".to_owned()]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_but_ready_needs_the_admin_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    let addr = s.cloud.control_addr().expect("control");
    let endpoints: [(&str, &str, Option<Value>); 10] = [
        ("GET", "/metrics", None),
        ("GET", "/v1/snapshot", None),
        ("GET", "/v1/stream", None),
        ("GET", "/v1/mappings", None),
        ("POST", "/v1/mappings", Some(add_body("x", free_port(), s.echo))),
        ("GET", "/v1/mappings/base", None),
        ("POST", "/v1/mappings/base/drain", Some(json!({}))),
        ("DELETE", "/v1/mappings/base", None),
        ("GET", "/v1/edges", None),
        ("POST", "/v1/batch", Some(json!({"changes": [{"op": "remove", "name": "base"}]}))),
    ];
    let wrong = ["", "wrong-token-wrong-token-wrong-00", TOKEN /* an edge's token */];
    for (method, path, body) in &endpoints {
        let (status, _) = Api::new(addr, None).call(method, path, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        for token in wrong {
            let (status, answer) =
                Api::new(addr, Some(token)).call(method, path, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with token {token:?}: {answer}");
        }
    }
    // Nothing changed, and /edges/drain too is guarded.
    assert_eq!(Api::new(addr, None).call("POST", "/v1/edges/e1/drain", None).await.0, 401);
    assert_eq!(mapping_names(&s.api).await, vec!["base".to_owned()]);
    assert!(serves(s.cloud.mapping_addr("base").expect("base")).await);
    assert_eq!(Api::new(addr, None).call("GET", "/ready", None).await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_match_a_known_transfer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    let web = free_port();
    let (status, _) = s.api.call("POST", "/v1/mappings", Some(add_body("web", web, s.echo))).await;
    assert_eq!(status, 201);
    let payload = vec![42u8; 300_000];
    for _ in 0..3 {
        let back = echo_once(web, &payload).await.expect("transfer");
        assert_eq!(back.len(), payload.len());
    }
    let api = s.api.clone();
    // Counters move at once; the per-second series within about a second.
    let matched = eventually(Duration::from_secs(5), || {
        let api = api.clone();
        async move {
            let (_, snap) = api.call("GET", "/v1/snapshot", None).await;
            let Some(m) =
                snap["mappings"].as_array().and_then(|ms| ms.iter().find(|m| m["name"] == "web"))
            else {
                return false;
            };
            let sampled: u64 = snap["series"]
                .as_array()
                .and_then(|ss| ss.iter().find(|x| x["name"] == "web"))
                .and_then(|x| x["throughput_in"].as_array())
                .map_or(0, |v| v.iter().filter_map(Value::as_u64).sum());
            m["bytes_in"] == 900_000
                && m["bytes_out"] == 900_000
                && m["total_connections"] == 3
                && m["active_connections"] == 0
                && sampled == 900_000
        }
    })
    .await;
    assert!(
        matched,
        "snapshot never matched the transfer: {}",
        s.api.call("GET", "/v1/snapshot", None).await.1
    );
    let (_, snap) = s.api.call("GET", "/v1/snapshot", None).await;
    let series = snap["series"]
        .as_array()
        .expect("series")
        .iter()
        .find(|x| x["name"] == "web")
        .expect("web series");
    assert_eq!(series["connect_latency_us"]["count"], 3, "{series}");
    let sparkline_total: u64 = series["throughput_in"]
        .as_array()
        .expect("in")
        .iter()
        .map(|v| v.as_u64().expect("u64"))
        .sum();
    assert_eq!(sparkline_total, 900_000, "per-second samples must add up to the bytes moved");
    // A console asks for the series it draws only; the rest is the same.
    let names = |snap: &Value| -> Vec<String> {
        let series = snap["series"].as_array().expect("series").iter();
        series.map(|x| x["name"].as_str().unwrap_or_default().to_owned()).collect()
    };
    let every = names(&snap);
    assert!(every.len() >= 2 && every.contains(&"web".to_owned()), "{every:?}");
    let mappings = snap["mappings"].as_array().map(Vec::len);
    for (query, want) in [
        ("?series=none", vec![]),
        ("?series=web", vec!["web".to_owned()]),
        ("?series=nope,web", vec!["web".to_owned()]),
        ("?series=all", every.clone()),
    ] {
        let (status, snap) = s.api.call("GET", &format!("/v1/snapshot{query}"), None).await;
        assert_eq!(status, 200, "{query}: {snap}");
        assert_eq!(names(&snap), want, "{query}");
        assert_eq!(snap["mappings"].as_array().map(Vec::len), mappings, "{query}: mappings stay");
    }
    let edge =
        snap["edges"].as_array().expect("edges").iter().find(|e| e["id"] == "e1").expect("e1");
    assert_eq!(edge["tunnels_up"], 2, "{edge}");
    let (status, text) = s.api.call("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let text = text.as_str().expect("text");
    assert!(text.contains("relay_mapping_bytes_in_total{mapping=\"web\"} 900000"), "{text}");
    assert!(text.contains("relay_mapping_connections_total{mapping=\"web\"} 3"), "{text}");
    assert!(text.contains("relay_edge_tunnels{edge=\"e1\"} 2"), "{text}");
    s.stop().await;
}

/// Sum of the cloud's window growth over the edge's tunnels, from the API.
async fn window_budget_used(api: &Api) -> u64 {
    let (status, edges) = api.call("GET", "/v1/edges", None).await;
    assert_eq!(status, 200, "{edges}");
    edges
        .as_array()
        .expect("edges")
        .iter()
        .flat_map(|e| e["tunnels"].as_array().cloned().unwrap_or_default())
        .map(|t| t["window_budget_used_bytes"].as_u64().expect("window_budget_used_bytes"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_growth_shows_while_a_connection_lives_and_is_repaid_when_it_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(&dir.path().join("state.json")).await;
    assert_eq!(window_budget_used(&s.api).await, 0);
    let tcp = TcpStream::connect(s.cloud.mapping_addr("base").expect("base")).await.expect("conn");
    let (mut from_echo, mut to_echo) = tcp.into_split();
    // Bulk data echoed back: the cloud's receive window for the echo's
    // answers grows while the client reads as fast as it can. A few rounds
    // at most, in case a stalled machine made every report look slow.
    let chunk = vec![7u8; 1 << 20];
    let mut grew = false;
    for _ in 0..8 {
        let write = async {
            for _ in 0..4 {
                to_echo.write_all(&chunk).await.expect("write");
            }
        };
        let read = async {
            let mut back = vec![0u8; 4 << 20];
            from_echo.read_exact(&mut back).await.expect("read back");
            assert!(back.iter().all(|b| *b == 7));
        };
        tokio::join!(write, read);
        if window_budget_used(&s.api).await > 0 {
            grew = true;
            break;
        }
    }
    assert!(grew, "no receive window grew during 4 MiB echoes");
    let (_, text) = s.api.call("GET", "/metrics", None).await;
    let text = text.as_str().expect("text");
    let gauge = text
        .lines()
        .find_map(|l| l.strip_prefix("relay_edge_window_budget_used_bytes{edge=\"e1\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(gauge.is_some_and(|v| v > 0), "{text}");
    // The connection ends: its window's growth goes back to the budget.
    drop((from_echo, to_echo));
    let api = s.api.clone();
    let repaid = eventually(Duration::from_secs(5), || {
        let api = api.clone();
        async move { window_budget_used(&api).await == 0 }
    })
    .await;
    assert!(repaid, "window budget still used after the connection closed");
    s.stop().await;
}
