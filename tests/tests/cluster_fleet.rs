//! The fleet in a cluster of real nodes and a real etcd: an edge added
//! through one node is admitted by every node, and a revocation through
//! another cuts its tunnels to every node.

use std::time::{Duration, Instant};

use e2e_tests::cluster::start_nodes;
use e2e_tests::etcd::EtcdCluster;
use e2e_tests::{Agent, echo_server, edge_toml, eventually};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(15);

async fn tunnels_up(node: &e2e_tests::cluster::Node, id: &str) -> Option<u32> {
    let (status, body) = node.api.call("GET", &format!("/v1/edges/{id}"), None).await;
    (status == 200).then(|| body["tunnels_up"].as_u64().unwrap_or(0) as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_added_through_one_node_reaches_every_node_and_a_revocation_cuts_it_off_everywhere()
{
    let Some(etcd) = EtcdCluster::start("cluster_fleet", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 2).await;
    let echo = echo_server().await;

    let (status, body) =
        nodes[0].api.call("POST", "/v1/edges", Some(json!({"id": "site-f"}))).await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("a token").to_owned();
    // The edge dials node b, which learned the edge from etcd; b lists node
    // a, and the edge keeps tunnels to both.
    let toml = edge_toml(nodes[1].spec.tunnel, &[echo.to_string()], &token).replacen(
        "edge_id = \"e1\"",
        "edge_id = \"site-f\"",
        1,
    );
    let _edge = Agent::spawn("relay-edge", &toml);
    for n in &nodes {
        assert!(
            eventually(WITHIN, || async { tunnels_up(n, "site-f").await.unwrap_or(0) > 0 }).await,
            "node {} never admitted the edge added through node a",
            n.spec.id
        );
    }

    let started = Instant::now();
    let (status, body) = nodes[1].api.call("POST", "/v1/edges/site-f/revoke", None).await;
    assert_eq!(status, 200, "{body}");
    let mut closed_after = Vec::new();
    for n in &nodes {
        assert!(
            eventually(WITHIN, || async { tunnels_up(n, "site-f").await == Some(0) }).await,
            "node {} kept a revoked edge's tunnels",
            n.spec.id
        );
        closed_after.push((n.spec.id.clone(), started.elapsed()));
    }
    println!("revoked through node b; tunnels gone (as each node's API shows): {closed_after:?}");
    for n in &nodes {
        let (_, view) = n.api.call("GET", "/v1/edges/site-f", None).await;
        assert_eq!(view["revoked"], json!(true), "node {}: {view}", n.spec.id);
    }
}

/// `relay-edge enroll` into `dir` at the node listening on `tunnel`.
async fn enroll_at(
    tunnel: std::net::SocketAddr,
    code: &str,
    dir: &std::path::Path,
) -> (bool, String) {
    let mut command = std::process::Command::new(e2e_tests::bin("relay-edge"));
    command
        .args(["enroll", "--cloud", &format!("ws://{tunnel}/tunnel"), "--code", code, "--dir"])
        .arg(dir);
    let out = tokio::task::spawn_blocking(move || command.output().expect("relay-edge runs"))
        .await
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_made_on_one_node_is_redeemed_once_when_two_machines_race_through_two_nodes() {
    let Some(etcd) = EtcdCluster::start("cluster_enrol", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 2).await;
    let (status, ticket) =
        nodes[0].api.call("POST", "/v1/edges/site-g/enroll", Some(json!({"ttl_secs": 600}))).await;
    assert_eq!(status, 201, "{ticket}");
    let code = ticket["code"].as_str().expect("a code").to_owned();
    // Node b learns the code from etcd before the race starts.
    assert!(
        eventually(WITHIN, || async {
            let (_, view) = nodes[1].api.call("GET", "/v1/edges/site-g", None).await;
            view["enrolment"]["expires_unix_ms"].is_u64()
        })
        .await
    );
    let (via_a, via_b) = (dir.path().join("via-a"), dir.path().join("via-b"));
    let (a, b) = tokio::join!(
        enroll_at(nodes[0].spec.tunnel, &code, &via_a),
        enroll_at(nodes[1].spec.tunnel, &code, &via_b),
    );
    let winners: Vec<&(bool, String)> = [&a, &b].into_iter().filter(|r| r.0).collect();
    assert_eq!(winners.len(), 1, "exactly one redemption wins: {a:?} {b:?}");
    let loser = if a.0 { &b } else { &a };
    assert!(loser.1.contains("CodeUsed"), "the other is told the code was used: {}", loser.1);
    let won_dir = if a.0 { &via_a } else { &via_b };
    println!("race: via a {:?}, via b {:?}", a.0, b.0);

    // The winner's written config reaches every node.
    let config = won_dir.join("edge.toml");
    let child = std::process::Command::new(e2e_tests::bin("relay-edge"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("relay-edge runs");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _edge = Kill(child);
    for n in &nodes {
        assert!(
            eventually(WITHIN, || async { tunnels_up(n, "site-g").await.unwrap_or(0) > 0 }).await,
            "node {} never admitted the enrolled edge",
            n.spec.id
        );
    }
}
