//! Three real nodes behind a real HAProxy, one real edge tunnelled to
//! every node, a steady stream of new client connections: a node killed
//! with SIGKILL, a rolling restart with `nodes drain`, and an edge that
//! can reach only two of the three nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e_tests::cluster::{Node, NodeSpec, add_batch, free_mapping_port, spawn_edge};
use e2e_tests::etcd::EtcdCluster;
use e2e_tests::haproxy::{Frontend, Haproxy, HaproxyConfig, HealthCheck, Server};
use e2e_tests::{Agent, echo_once, echo_server, eventually};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WITHIN: Duration = Duration::from_secs(20);
/// HAProxy's checks: every 200 ms, DOWN after 2 failures.
const CHECK_INTER: Duration = Duration::from_millis(200);
const CHECK_FALL: u32 = 2;

struct Rig {
    _etcd: EtcdCluster,
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    edge: Agent,
    haproxy: Haproxy,
    port: u16,
}

/// etcd, three nodes (`adjust` may change their specs), mapping `web` to
/// an echo service, one edge dialling node a, HAProxy in front checking
/// `/ready/web` on each node.
async fn rig(test: &str, redispatch: Option<u32>, adjust: impl Fn(&mut NodeSpec)) -> Option<Rig> {
    let etcd = EtcdCluster::start(test, 1).await?;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut spec = NodeSpec::new(i, &etcd.endpoints(), dir.path());
        adjust(&mut spec);
        nodes.push(spec.start().await);
    }
    for n in &nodes {
        n.wait_nodes(3, WITHIN).await;
    }
    let echo = echo_server().await;
    let port = free_mapping_port(3);
    let (status, body) =
        nodes[0].api.call("POST", "/v1/batch", Some(add_batch("web", port, echo))).await;
    assert_eq!(status, 200, "{body}");
    let edge = spawn_edge(&nodes[0], echo);
    let servers = nodes
        .iter()
        .map(|n| Server::new(&n.spec.id, n.mapping_addr(port), n.spec.control))
        .collect();
    let mut config = HaproxyConfig::new(vec![Frontend::new("web", servers)]);
    config.check =
        HealthCheck { path: "/ready/web".into(), inter: CHECK_INTER, fall: CHECK_FALL, rise: 2 };
    config.redispatch = redispatch;
    let haproxy = Haproxy::start(test, config).await?;
    Some(Rig { _etcd: etcd, _dir: dir, nodes, edge, haproxy, port })
}

impl Rig {
    /// Waits until each of `nodes` holds two tunnels from the edge, as each
    /// says; fails with the node's and the edge's logs.
    async fn wait_tunnels_everywhere(&mut self, nodes: &[usize]) {
        for &i in nodes {
            let up = {
                let n = &self.nodes[i];
                eventually(WITHIN, || async { tunnel_ids(n).await.len() >= 2 }).await
            };
            if !up {
                let node_log = self.nodes[i].agent.logged().join("\n");
                let edge_log = self.edge.logged().join("\n");
                panic!(
                    "edge e1 has no tunnels to node {}:\n--- node\n{node_log}\n--- edge\n{edge_log}",
                    self.nodes[i].spec.id
                );
            }
        }
    }
}

/// The ids of the edge's tunnels that node `n` sees.
async fn tunnel_ids(n: &Node) -> Vec<u64> {
    let (status, body) = n.api.call("GET", "/v1/edges", None).await;
    if status != 200 {
        return Vec::new();
    }
    let edges: Vec<api::EdgeView> = serde_json::from_value(body).unwrap_or_default();
    let mut ids: Vec<u64> = edges
        .iter()
        .filter(|e| e.id == "e1")
        .flat_map(|e| e.tunnels.iter().map(|t| t.id))
        .collect();
    ids.sort_unstable();
    ids
}

/// One client connection's fate; it started `at` after the stream did.
#[derive(Debug, Clone)]
struct Attempt {
    at: Duration,
    error: Option<String>,
}

/// New client connections through `frontend`, one every 10 ms (each sends
/// a line and reads it back), until `stop` is set.
fn steady_clients(
    frontend: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Attempt>> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut attempts = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let payload = format!("hello {n}\n");
            let at = start.elapsed();
            let result = tokio::time::timeout(
                Duration::from_secs(3),
                echo_once(frontend, payload.as_bytes()),
            )
            .await;
            let error = match result {
                Ok(Ok(back)) if back == payload.as_bytes() => None,
                Ok(Ok(back)) => Some(format!("echo came back as {} bytes", back.len())),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no answer within 3 s".into()),
            };
            attempts.push(Attempt { at, error });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        attempts
    })
}

fn failures(attempts: &[Attempt]) -> Vec<&Attempt> {
    attempts.iter().filter(|a| a.error.is_some()).collect()
}

/// Kills node b with SIGKILL under a steady stream of new connections
/// through HAProxy; checks that failures stop once HAProxy marks b DOWN and
/// that the edge's tunnels to a and c never move. Returns when each failed
/// connection started, relative to the kill (negative: before it).
async fn kill_one_node(test: &str, redispatch: Option<u32>) -> Option<Vec<f64>> {
    let mut rig = rig(test, redispatch, |_| {}).await?;
    rig.wait_tunnels_everywhere(&[0, 1, 2]).await;
    for n in &rig.nodes {
        rig.haproxy.wait_server_state("web", &n.spec.id, "UP", WITHIN).await;
    }
    let survivors_before = [tunnel_ids(&rig.nodes[0]).await, tunnel_ids(&rig.nodes[2]).await];

    let stop = Arc::new(AtomicBool::new(false));
    let clients = steady_clients(rig.haproxy.frontend_addr("web"), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    rig.nodes[1].agent.signal("KILL");
    let killed_at = started.elapsed();
    rig.haproxy.wait_server_state("web", "b", "DOWN", WITHIN).await;
    let seen_down = started.elapsed() - killed_at;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let attempts = clients.await.unwrap();

    // Attempt times are from the client stream's start, one second before
    // the kill.
    let kill = Duration::from_secs(1) + killed_at;
    let failed = failures(&attempts);
    // Seconds from the kill; negative for a connection already open on b
    // when it died.
    let since_kill = |a: &Attempt| a.at.as_secs_f64() - kill.as_secs_f64();
    let window = failed.first().zip(failed.last()).map(|(f, l)| (since_kill(f), since_kill(l)));
    println!(
        "SIGKILL of node b, redispatch {redispatch:?}: {} of {} new connections failed, started \
         between {window:?} s after the kill; HAProxy saw b DOWN {seen_down:?} after it; errors: {:?}",
        failed.len(),
        attempts.len(),
        failed.iter().filter_map(|a| a.error.clone()).take(3).collect::<Vec<_>>()
    );
    let after_check = kill + seen_down + Duration::from_millis(100);
    let late: Vec<_> = failed.iter().filter(|a| a.at > after_check).collect();
    assert!(late.is_empty(), "no failure starts once HAProxy marked b DOWN: {late:?}");
    assert!(attempts.iter().filter(|a| a.at > after_check).count() > 20, "the stream went on");

    // The edge's tunnels to the survivors stayed up throughout.
    let survivors_after = [tunnel_ids(&rig.nodes[0]).await, tunnel_ids(&rig.nodes[2]).await];
    assert_eq!(survivors_before, survivors_after, "tunnels to a and c untouched");
    // b leaves the node list once its lease expires; the edge drops it.
    assert!(
        eventually(WITHIN, || async { rig.nodes[0].nodes().await.len() == 2 }).await,
        "node b's record expires with its lease"
    );
    rig.edge.wait_for_log(&["node left the cloud's list", "node=b"], WITHIN).await;
    Some(failed.iter().map(|a| since_kill(a)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_steady_new_connections_fails_them_only_until_haproxy_sees_it() {
    kill_one_node("cluster_sigkill", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redispatch_a_killed_node_costs_no_new_connection() {
    // HAProxy retries a connection the dead node refuses on another node.
    let Some(failed) = kill_one_node("cluster_sigkill_redispatch", Some(2)).await else { return };
    // Only a connection open on b when it died can fail (HAProxy cannot
    // replay it); none that starts after the kill does. The margin covers
    // the signal's delivery.
    let after_kill: Vec<_> = failed.iter().filter(|t| **t > 0.005).collect();
    assert!(after_kill.is_empty(), "with `option redispatch` no new connection fails: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_with_nodes_drain_fails_no_new_connection_and_resets_none() {
    let Some(mut rig) = rig("cluster_rolling", None, |_| {}).await else { return };
    rig.wait_tunnels_everywhere(&[0, 1, 2]).await;
    for n in &rig.nodes {
        rig.haproxy.wait_server_state("web", &n.spec.id, "UP", WITHIN).await;
    }
    let frontend = rig.haproxy.frontend_addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = steady_clients(frontend, Arc::clone(&stop));

    // A long-lived connection, open across its node's drain.
    let mut long = tokio::net::TcpStream::connect(frontend).await.unwrap();
    long.write_all(b"first\n").await.unwrap();
    let mut buf = [0u8; 6];
    long.read_exact(&mut buf).await.unwrap();
    let mut long_node = None;
    for (i, n) in rig.nodes.iter().enumerate() {
        let (_, body) = n.api.call("GET", "/v1/mappings/web", None).await;
        if body["active_connections"].as_u64().unwrap_or(0) > 0 {
            long_node = Some(i);
        }
    }
    let long_node = long_node.expect("one node carries the long connection");

    let started = Instant::now();
    for i in 0..3 {
        let id = rig.nodes[i].spec.id.clone();
        let (status, body) = rig.nodes[(i + 1) % 3]
            .api
            .call("POST", &format!("/v1/nodes/{id}/drain"), Some(json!({"deadline_secs": 30})))
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["draining"], true, "{body}");
        rig.haproxy.wait_server_state("web", &id, "DOWN", WITHIN).await;
        if i == long_node {
            // Drained, not cut: the open connection still carries bytes.
            long.write_all(b"again\n").await.unwrap();
            long.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"again\n");
            long.shutdown().await.unwrap();
            let mut rest = Vec::new();
            long.read_to_end(&mut rest).await.expect("closed cleanly, not reset");
        }
        let spec = rig.nodes[i].spec.clone();
        rig.nodes[i].agent.signal("TERM");
        assert!(rig.nodes[i].agent.wait_exit(WITHIN).await.is_some(), "node {id} stops");
        rig.nodes[i] = spec.start().await;
        rig.wait_tunnels_everywhere(&[i]).await;
        rig.haproxy.wait_server_state("web", &id, "UP", WITHIN).await;
    }
    let rolled = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let attempts = clients.await.unwrap();
    let failed = failures(&attempts);
    println!(
        "rolling restart of 3 nodes in {rolled:?}: {} of {} new connections failed",
        failed.len(),
        attempts.len()
    );
    assert!(failed.is_empty(), "no failed new connection: {failed:?}");
    for n in &rig.nodes {
        assert!(n.ready().await, "node {} ready again", n.spec.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_that_reaches_two_of_three_nodes_is_shown_and_served_by_those_two() {
    let unreachable = e2e_tests::free_port();
    let Some(mut rig) = rig("cluster_partial_edge", None, |spec| {
        if spec.id == "c" {
            // Edges are told a URL nothing answers at: as if a firewall
            // stood between the edge and node c.
            spec.advertise = Some(format!("ws://{unreachable}/tunnel"));
        }
    })
    .await
    else {
        return;
    };
    rig.wait_tunnels_everywhere(&[0, 1]).await;
    // Node a shows that edge e1 cannot reach node c, and why.
    let mut links = Vec::new();
    let until = Instant::now() + WITHIN;
    let mut shown = false;
    while !shown && Instant::now() < until {
        let (_, body) = rig.nodes[0].api.call("GET", "/v1/edges", None).await;
        let edges: Vec<api::EdgeView> = serde_json::from_value(body).unwrap_or_default();
        links = edges.into_iter().flat_map(|e| e.node_links).collect::<Vec<_>>();
        shown = links.iter().any(|l| l.node == "c" && l.tunnels_up == 0 && l.error.is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shown, "e1's link to c is shown down with its error: {links:?}");
    // HAProxy's per-mapping check takes c out: it has no tunnel for `web`.
    rig.haproxy.wait_server_state("web", "c", "DOWN", WITHIN).await;
    rig.haproxy.wait_server_state("web", "a", "UP", WITHIN).await;
    rig.haproxy.wait_server_state("web", "b", "UP", WITHIN).await;
    let frontend = rig.haproxy.frontend_addr("web");
    let mut ok = 0;
    for i in 0..60 {
        let payload = format!("via two nodes {i}");
        let back = echo_once(frontend, payload.as_bytes()).await.expect("served");
        assert_eq!(back, payload.as_bytes());
        ok += 1;
    }
    println!("60 connections through HAProxy: {ok} served by nodes a and b");
    let _ = rig.port;
}
