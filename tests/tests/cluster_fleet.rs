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
