//! A cluster when etcd fails: one member of three lost changes nothing;
//! without quorum the nodes keep serving what they applied and refuse
//! changes naming the store, and resume by themselves; a node restarted
//! while etcd is down serves its local copy; a watch that falls behind a
//! compaction reads everything again and converges.

use std::time::{Duration, Instant};

use e2e_tests::cluster::{Node, add_batch, free_mapping_port, start_nodes};
use e2e_tests::etcd::EtcdCluster;
use e2e_tests::eventually;

const WITHIN: Duration = Duration::from_secs(20);

fn add(name: &str, port: u16) -> serde_json::Value {
    add_batch(name, port, "127.0.0.1:9".parse().unwrap())
}

async fn active_on(n: &Node, name: &str) -> bool {
    let (status, body) = n.api.call("GET", &format!("/v1/mappings/{name}"), None).await;
    status == 200 && body["state"] == "active"
}

/// Whether node `n` listens on the mapping's port. With no tunnel to an
/// edge there, the node accepts and then resets the client at once, so a
/// reset that beats the connect's completion counts as listening; a refusal
/// does not.
async fn accepts(n: &Node, port: u16) -> bool {
    match tokio::net::TcpStream::connect(n.mapping_addr(port)).await {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e) => {
            println!("connect to node {} port {port}: {e}", n.spec.id);
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_one_member_of_three_changes_nothing_and_losing_quorum_only_refuses_changes() {
    let Some(mut etcd) = EtcdCluster::start("cluster_quorum", 3).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(&etcd.endpoints(), dir.path(), 3).await;
    let p1 = free_mapping_port(3);
    let (status, body) = nodes[0].api.call("POST", "/v1/batch", Some(add("one", p1))).await;
    assert_eq!(status, 200, "{body}");

    // One member lost: changes still commit and reach every node.
    etcd.kill(0).await;
    let p2 = free_mapping_port(3);
    let (status, body) = nodes[1].api.call("POST", "/v1/batch", Some(add("two", p2))).await;
    assert_eq!(status, 200, "one member of three lost changes nothing: {body}");
    for n in &nodes {
        assert!(eventually(WITHIN, || active_on(n, "two")).await, "node {}", n.spec.id);
    }

    // Quorum lost: the nodes serve what they applied, and say they are ready.
    etcd.kill(1).await;
    let p3 = free_mapping_port(3);
    let (status, body) = nodes[2].api.call("POST", "/v1/batch", Some(add("three", p3))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let message = body["error"]["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("etcd") && message.contains("cannot be reached"),
        "names the store: {message}"
    );
    // etcd may still commit a write that timed out once quorum returns: the
    // answer says whether that can be.
    let maybe_later = message.contains("may still be applied");
    println!("refused while quorum was lost: {message}");
    for n in &mut nodes {
        let serving = accepts(n, p1).await && accepts(n, p2).await;
        assert!(serving, "node {} keeps serving:\n{}", n.spec.id, n.agent.logged().join("\n"));
        assert!(n.ready().await, "an unreachable store does not make node {} unready", n.spec.id);
    }
    let views = nodes[0].nodes().await;
    let me = views.iter().find(|v| v.this_node).unwrap();
    assert!(
        eventually(WITHIN, || async {
            nodes[0].nodes().await.iter().any(|v| v.this_node && !v.store_reachable)
        })
        .await,
        "the node says the store is out of reach: {me:?}"
    );

    // Quorum back: changes work again without touching the nodes.
    etcd.restart(0).await;
    etcd.restart(1).await;
    let back = Instant::now();
    let p4 = free_mapping_port(3);
    let mut last = None;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let answer = nodes[2].api.call("POST", "/v1/batch", Some(add("four", p4))).await;
        let done = answer.0 == 200;
        last = Some(answer);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converged = back.elapsed();
    assert!(matches!(last, Some((200, _))), "changes resume once etcd has quorum again: {last:?}");
    for n in &nodes {
        assert!(eventually(WITHIN, || active_on(n, "four")).await, "node {}", n.spec.id);
    }
    // The refused change is applied nowhere, unless the answer said it might
    // be; either way every node agrees.
    let mut three = Vec::new();
    for n in &nodes {
        three.push(active_on(n, "three").await);
    }
    assert!(three.iter().all(|t| *t == three[0]), "the nodes agree on it: {three:?}");
    assert!(maybe_later || !three[0], "an answer that said nothing changed must be true");
    println!("changes accepted again {converged:?} after quorum returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_while_etcd_is_down_serves_its_local_copy_then_converges() {
    let Some(mut etcd) = EtcdCluster::start("cluster_copy", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(&etcd.endpoints(), dir.path(), 2).await;
    let port = free_mapping_port(2);
    let (status, body) = nodes[0].api.call("POST", "/v1/batch", Some(add("web", port))).await;
    assert_eq!(status, 200, "{body}");
    assert!(eventually(WITHIN, || active_on(&nodes[1], "web")).await);

    etcd.kill_all();
    // Node b restarts while etcd is down.
    let spec = nodes[1].spec.clone();
    nodes[1].agent.signal("TERM");
    assert!(nodes[1].agent.wait_exit(WITHIN).await.is_some(), "node b stops");
    let restarted = spec.start().await;
    nodes[1] = restarted;
    assert!(
        eventually(WITHIN, || active_on(&nodes[1], "web")).await,
        "serves the mapping from its local copy"
    );
    assert!(accepts(&nodes[1], port).await);
    assert!(nodes[1].ready().await, "a node with a local copy is ready");
    nodes[1].agent.wait_for_log(&["serving the local copy"], WITHIN).await;

    // etcd back: node b follows it again (a change made now reaches it).
    etcd.restart_all().await;
    let back = Instant::now();
    let p2 = free_mapping_port(2);
    assert!(
        eventually(Duration::from_secs(30), || async {
            nodes[0].api.call("POST", "/v1/batch", Some(add("api", p2))).await.0 == 200
        })
        .await
    );
    assert!(eventually(WITHIN, || active_on(&nodes[1], "api")).await, "node b converges");
    println!("node b converged {:?} after etcd returned", back.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_that_falls_behind_a_compaction_reads_everything_again_and_converges() {
    let Some(mut etcd) = EtcdCluster::start("cluster_compact", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(&etcd.endpoints(), dir.path(), 2).await;
    // Node b is frozen (SIGSTOP) while etcd restarts, takes a change and
    // compacts it away: when b thaws, its watch is lost and the revisions
    // it would resume from are gone.
    nodes[1].agent.signal("STOP");
    etcd.kill_all();
    etcd.restart_all().await;
    let port = free_mapping_port(2);
    let (status, body) = nodes[0].api.call("POST", "/v1/batch", Some(add("late", port))).await;
    assert_eq!(status, 200, "{body}");
    for i in 0..5 {
        etcd.put(&format!("/hybrid-relay/filler/{i}"), "x").await;
    }
    let compacted = etcd.compact_to_latest().await;
    nodes[1].agent.signal("CONT");
    assert!(
        eventually(WITHIN, || active_on(&nodes[1], "late")).await,
        "node b converges on the change it missed"
    );
    nodes[1].agent.wait_for_log(&["fell behind etcd's compaction"], WITHIN).await;
    println!("node b read everything again after compaction at revision {compacted}");
}
