//! A cluster of real `relay-cloud` nodes sharing their state in a real
//! etcd on loopback: changes through any node reach every node, batches
//! are atomic across the cluster, conflicting changes through two nodes
//! end with one applied, and a port busy on one node fails there only.

use std::time::{Duration, Instant};

use e2e_tests::cluster::{Node, add_batch, free_mapping_port, mapping, spawn_edge, start_nodes};
use e2e_tests::etcd::EtcdCluster;
use e2e_tests::{echo_server, eventually, serves};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(15);

/// The mapping as node `n` reports it.
async fn mapping_on(n: &Node, name: &str) -> Option<api::MappingView> {
    let (status, body) = n.api.call("GET", &format!("/v1/mappings/{name}"), None).await;
    (status == 200).then(|| serde_json::from_value(body).expect("mapping view"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mapping_added_through_one_node_serves_on_every_node() {
    let Some(etcd) = EtcdCluster::start("cluster_add", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 3).await;
    let echo = echo_server().await;
    // One edge, tunnelled to node a.
    let _edge = spawn_edge(&nodes[0], echo);
    let port = free_mapping_port(3);

    let started = Instant::now();
    let (status, body) = nodes[1]
        .api
        .call(
            "POST",
            "/v1/batch",
            Some(json!({"changes": [
                {"op": "add", "name": "web", "listen": format!("127.0.0.1:{port}"), "edge": "e1",
                 "target": echo.to_string()}
            ]})),
        )
        .await;
    let answered = started.elapsed();
    assert_eq!(status, 200, "{body}");
    let response: api::BatchResponse = serde_json::from_value(body).unwrap();
    assert!(response.applied && response.revision.is_some(), "{response:?}");
    let applied: Vec<(&str, bool)> =
        response.nodes.iter().map(|n| (n.node.as_str(), n.applied)).collect();
    assert_eq!(
        applied,
        [("a", true), ("b", true), ("c", true)],
        "every node applied it in the answer"
    );
    println!("a change reached every node within {answered:?} (the answer waits for them)");

    for n in &nodes {
        let view = mapping_on(n, "web").await.expect("every node knows the mapping");
        assert_eq!(view.state, api::MappingState::Active, "node {}: {view:?}", n.spec.id);
        assert_eq!(
            view.bound,
            Some(n.mapping_addr(port).to_string()),
            "bound on the node's address"
        );
        // Each node learns the others' records through its own watch, a
        // moment after the answer: its view of them catches up.
        let all_active = |v: &api::MappingView| {
            v.nodes.len() == 3 && v.nodes.iter().all(|m| m.state == api::NodeMappingState::Active)
        };
        let mut last = view;
        let until = Instant::now() + WITHIN;
        while !all_active(&last) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            last = mapping_on(n, "web").await.expect("still known");
        }
        assert!(all_active(&last), "node {}: {:?}", n.spec.id, last.nodes);
    }
    // Bytes move through the node that has the edge's tunnel.
    assert!(eventually(WITHIN, || serves(nodes[0].mapping_addr(port))).await);

    // Removed through node c: gone everywhere.
    let (status, _) = nodes[2].api.call("DELETE", "/v1/mappings/web", None).await;
    assert_eq!(status, 204);
    for n in &nodes {
        assert!(eventually(WITHIN, || async { mapping_on(n, "web").await.is_none() }).await);
        assert!(
            tokio::net::TcpStream::connect(n.mapping_addr(port)).await.is_err(),
            "listener closed"
        );
    }
    // Every node's event log tells both changes: the node that took each
    // through its interface, the others through that node.
    let texts = |body: serde_json::Value, kind: &str| -> Vec<String> {
        body["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == kind && e["subject"] == "web")
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect()
    };
    for (n, added, removed) in [
        (&nodes[0], "added through node b", "removed through node c"),
        (&nodes[1], "added through the batch", "removed through node c"),
        (&nodes[2], "added through node b", "removed through the api"),
    ] {
        let (_, body) = n.api.call("GET", "/v1/events", None).await;
        let (adds, removes) =
            (texts(body.clone(), "mapping_added"), texts(body, "mapping_removed"));
        assert!(adds.len() == 1 && adds[0].starts_with(added), "node {}: {adds:?}", n.spec.id);
        assert!(
            removes.len() == 1 && removes[0].starts_with(removed),
            "node {}: {removes:?}",
            n.spec.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_all_or_nothing_across_the_cluster() {
    let Some(etcd) = EtcdCluster::start("cluster_batch", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 3).await;
    let target: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (p1, p2) = (free_mapping_port(3), free_mapping_port(3));
    let bad = json!({"changes": [
        {"op": "add", "name": "one", "listen": format!("127.0.0.1:{p1}"), "edge": "e1", "target": "127.0.0.1:9"},
        {"op": "add", "name": "two", "listen": format!("127.0.0.1:{p2}"), "edge": "nope", "target": "127.0.0.1:9"},
    ]});
    let (status, body) = nodes[1].api.call("POST", "/v1/batch", Some(bad)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["applied"], false);
    for n in &nodes {
        assert!(mapping_on(n, "one").await.is_none(), "nothing applied on {}", n.spec.id);
    }
    let mut good = vec![mapping("one", p1, target), mapping("two", p2, target)];
    for m in &mut good {
        m["op"] = json!("add");
    }
    let (status, body) =
        nodes[1].api.call("POST", "/v1/batch", Some(json!({"changes": good}))).await;
    assert_eq!(status, 200, "{body}");
    for n in &nodes {
        for name in ["one", "two"] {
            let view = mapping_on(n, name).await.expect("applied everywhere");
            assert_eq!(view.state, api::MappingState::Active);
        }
    }
    // A dry run through node c changes nothing anywhere.
    let dry = json!({"dry_run": true, "changes": [{"op": "remove", "name": "one"}]});
    let (status, body) = nodes[2].api.call("POST", "/v1/batch", Some(dry)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], false);
    for n in &nodes {
        assert!(mapping_on(n, "one").await.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_conflicting_batches_through_two_nodes_at_once_end_with_exactly_one_applied() {
    let Some(etcd) = EtcdCluster::start("cluster_conflict", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 3).await;
    let target: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for round in 0..5 {
        let name = format!("m{round}");
        let (pa, pb) = (free_mapping_port(3), free_mapping_port(3));
        let batch = |port| add_batch(&name, port, target);
        let (a, b) = tokio::join!(
            nodes[0].api.call("POST", "/v1/batch", Some(batch(pa))),
            nodes[1].api.call("POST", "/v1/batch", Some(batch(pb))),
        );
        let statuses = [a.0, b.0];
        assert!(
            statuses.contains(&200) && statuses.contains(&409),
            "round {round}: exactly one applies, the other is a conflict: {a:?} {b:?}"
        );
        let loser = if a.0 == 409 { &a.1 } else { &b.1 };
        let message = loser.to_string();
        assert!(
            message.contains("already exists") || message.contains("another change"),
            "{message}"
        );
        let winner_port = if a.0 == 200 { pa } else { pb };
        for n in &nodes {
            let view = mapping_on(n, &name).await.expect("the winner everywhere");
            assert_eq!(view.spec.listen, format!("127.0.0.1:{winner_port}"), "node {}", n.spec.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_changes_that_do_not_conflict_through_two_nodes_at_once_both_apply() {
    let Some(etcd) = EtcdCluster::start("cluster_no_conflict", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 2).await;
    let target: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for round in 0..5 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        let (a, b) = tokio::join!(
            nodes[0].api.call(
                "POST",
                "/v1/batch",
                Some(add_batch(&x, free_mapping_port(2), target))
            ),
            nodes[1].api.call(
                "POST",
                "/v1/batch",
                Some(add_batch(&y, free_mapping_port(2), target))
            ),
        );
        assert_eq!(
            (a.0, b.0),
            (200, 200),
            "round {round}: both apply (the loser plans again): {a:?} {b:?}"
        );
        for n in &nodes {
            assert!(mapping_on(n, &x).await.is_some() && mapping_on(n, &y).await.is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_busy_on_one_node_fails_there_only_and_the_api_names_that_node() {
    let Some(etcd) = EtcdCluster::start("cluster_busy", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 3).await;
    let port = free_mapping_port(3);
    let squatter = std::net::TcpListener::bind(nodes[1].mapping_addr(port)).unwrap();
    let target: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (status, body) =
        nodes[0].api.call("POST", "/v1/batch", Some(add_batch("db", port, target))).await;
    assert_eq!(status, 200, "committed: the cluster has it, node b cannot serve it: {body}");
    let response: api::BatchResponse = serde_json::from_value(body).unwrap();
    let b = response.nodes.iter().find(|n| n.node == "b").expect("b reported");
    assert!(b.applied && b.failures.iter().any(|f| f.mapping == "db"), "{response:?}");

    // Node c's view of a's and b's records catches up through its watch.
    let mut view = mapping_on(&nodes[2], "db").await.unwrap();
    let until = Instant::now() + WITHIN;
    while view.nodes.iter().any(|m| m.state == api::NodeMappingState::Pending)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        view = mapping_on(&nodes[2], "db").await.unwrap();
    }
    let on: Vec<_> =
        view.nodes.iter().map(|m| (m.node.as_str(), m.state, m.error.clone())).collect();
    assert_eq!(on[0].1, api::NodeMappingState::Active, "{on:?}");
    assert_eq!(on[1].1, api::NodeMappingState::Failed, "{on:?}");
    assert!(on[1].2.as_deref().unwrap_or("").contains("in use"), "names why: {on:?}");
    assert_eq!(on[2].1, api::NodeMappingState::Active, "{on:?}");
    let (_, listed) = nodes[2].api.call("GET", "/v1/nodes", None).await;
    assert!(
        listed.to_string().contains("\"mapping\":\"db\""),
        "the node list names the failure: {listed}"
    );

    // Once the port is free, node b binds it by itself.
    drop(squatter);
    assert!(
        eventually(WITHIN, || async {
            mapping_on(&nodes[1], "db").await.is_some_and(|v| v.state == api::MappingState::Active)
        })
        .await,
        "node b retries the bind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scope_cluster_sums_every_nodes_figures_and_marks_a_peer_that_does_not_answer() {
    let Some(etcd) = EtcdCluster::start("cluster_sums", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 3).await;
    let echo = echo_server().await;
    let _edge = spawn_edge(&nodes[0], echo);
    let port = free_mapping_port(3);
    let (status, body) =
        nodes[0].api.call("POST", "/v1/batch", Some(add_batch("web", port, echo))).await;
    assert_eq!(status, 200, "{body}");
    // 1, 2 and 3 connections through nodes a, b and c (the edge reaches
    // every node: it learns them from node a).
    for (i, n) in nodes.iter().enumerate() {
        assert!(eventually(WITHIN, || serves(n.mapping_addr(port))).await, "node {}", n.spec.id);
        for _ in 1..=i {
            assert!(serves(n.mapping_addr(port)).await);
        }
    }
    let total = |snapshot: &api::Snapshot| {
        snapshot.mappings.iter().find(|m| m.spec.name == "web").map_or(0, |m| m.total_connections)
    };
    // Each node's own count (a connection tried before the edge's tunnel
    // there was up counts too): the cluster's is their sum.
    let mut own = Vec::new();
    for n in &nodes {
        let (_, body) = n.api.call("GET", "/v1/snapshot", None).await;
        own.push(total(&serde_json::from_value(body).unwrap()));
    }
    assert!(own.iter().zip(1..).all(|(count, at_least)| *count >= at_least), "{own:?}");
    let (status, body) = nodes[2].api.call("GET", "/v1/snapshot?scope=cluster", None).await;
    assert_eq!(status, 200, "{body}");
    let summed: api::Snapshot = serde_json::from_value(body).unwrap();
    assert_eq!(total(&summed), own.iter().sum::<u64>(), "the sum of {own:?}");
    let answered: Vec<_> = summed.peers.iter().map(|p| (p.node.as_str(), p.answered)).collect();
    assert_eq!(answered, [("a", true), ("b", true)], "{:?}", summed.peers);
    assert_eq!(summed.nodes.len(), 3);
    // The series asked for, summed over the nodes too; the others are left
    // out, on every node.
    let (_, body) = nodes[2].api.call("GET", "/v1/snapshot?scope=cluster&series=web", None).await;
    let one: api::Snapshot = serde_json::from_value(body).unwrap();
    let names: Vec<&str> = one.series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web"]);
    assert_eq!(one.series[0].throughput_in.len(), summed.series[0].throughput_in.len());
    let (_, body) = nodes[2].api.call("GET", "/v1/snapshot?scope=cluster&series=none", None).await;
    let none: api::Snapshot = serde_json::from_value(body).unwrap();
    assert!(none.series.is_empty() && total(&none) == total(&summed), "{:?}", none.series);

    // A peer that stops answering is marked, and its figures are left out.
    nodes[1].agent.signal("STOP");
    let (_, body) = nodes[2].api.call("GET", "/v1/snapshot?scope=cluster", None).await;
    let summed: api::Snapshot = serde_json::from_value(body).unwrap();
    let b = summed.peers.iter().find(|p| p.node == "b").expect("b still listed");
    assert!(!b.answered && b.error.is_some(), "{:?}", summed.peers);
    assert_eq!(total(&summed), own[0] + own[2], "a's and c's, without b's");
    nodes[1].agent.signal("CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_replaces_a_mapping_is_one_change_and_a_node_drained_past_its_deadline_serves_when_undrained()
 {
    let Some(etcd) = EtcdCluster::start("cluster_replace", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(&etcd.endpoints(), dir.path(), 2).await;
    let echo = echo_server().await;
    let _edge = spawn_edge(&nodes[0], echo);
    let (p1, p2) = (free_mapping_port(2), free_mapping_port(2));
    let (status, body) =
        nodes[0].api.call("POST", "/v1/batch", Some(add_batch("web", p1, echo))).await;
    assert_eq!(status, 200, "{body}");
    // Remove and add the same name in one batch: etcd takes one operation
    // per key, and the batch means "replace".
    let mut add = mapping("web", p2, echo);
    add["op"] = json!("add");
    let replace = json!({"changes": [{"op": "remove", "name": "web"}, add]});
    let (status, body) = nodes[1].api.call("POST", "/v1/batch", Some(replace)).await;
    assert_eq!(status, 200, "{body}");
    for n in &nodes {
        assert!(
            eventually(WITHIN, || serves(n.mapping_addr(p2))).await,
            "node {} serves the new port",
            n.spec.id
        );
        assert!(
            tokio::net::TcpStream::connect(n.mapping_addr(p1)).await.is_err(),
            "old port closed"
        );
    }

    // Node b drained with a 1 s deadline; past it, undrained: it serves.
    let (status, body) =
        nodes[0].api.call("POST", "/v1/nodes/b/drain", Some(json!({"deadline_secs": 1}))).await;
    assert_eq!(status, 202, "{body}");
    assert!(eventually(WITHIN, || async { !nodes[1].ready().await }).await);
    // The deadline passes: b resets what was open and restarts its mappings.
    nodes[1].agent.wait_for_log(&["node drain deadline passed"], WITHIN).await;
    let (status, body) = nodes[0].api.call("POST", "/v1/nodes/b/undrain", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(eventually(WITHIN, || nodes[1].ready()).await, "ready again");
    if !eventually(WITHIN, || serves(nodes[1].mapping_addr(p2))).await {
        panic!("node b serves again, not resetting:\n{}", nodes[1].agent.logged().join("\n"));
    }
    let mut served = 0;
    for _ in 0..10 {
        served += usize::from(serves(nodes[1].mapping_addr(p2)).await);
    }
    assert_eq!(served, 10, "every connection served after the undrain");
}
