//! relayctl against a real cluster: three real `relay-cloud` nodes on a
//! real etcd; relayctl given a closed endpoint first, then node a.

use std::process::Command;
use std::time::Duration;

use e2e_tests::cluster::{Node, NodeSpec, free_mapping_port};
use e2e_tests::etcd::EtcdCluster;
use e2e_tests::{ADMIN_TOKEN, bin, eventually, free_port};

const WITHIN: Duration = Duration::from_secs(15);

fn relayctl(endpoints: &str, token: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("relayctl"))
        .args(["--endpoint", endpoints, "--token-file"])
        .arg(token)
        .args(args)
        .env("HOME", "/nonexistent")
        .env_remove("RELAYCTL_TOKEN")
        .output()
        .expect("relayctl");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relayctl_shows_and_drains_the_nodes_of_a_real_cluster() {
    let Some(etcd) = EtcdCluster::start("relayctl_cluster", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        nodes.push(NodeSpec::new(i, &etcd.endpoints(), dir.path()).start().await);
    }
    for n in &nodes {
        n.wait_nodes(3, WITHIN).await;
    }
    let token = dir.path().join("admin.token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let endpoints = format!("http://{},http://{}", free_port(), nodes[0].spec.control);

    let (code, out, err) = relayctl(&endpoints, &token, &["-v", "nodes", "list"]);
    println!("$ relayctl -v nodes list\n{out}{err}");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NODE  READY  DRAINING"), "{out}");
    assert!(out.contains("a *") && out.lines().count() >= 5, "{out}");
    assert!(err.contains("did not answer") && err.contains("answered"), "{err}");

    // A port busy on node b only.
    let port = free_mapping_port(3);
    let squatter = std::net::TcpListener::bind(nodes[1].mapping_addr(port)).unwrap();
    let batch = dir.path().join("add.batch");
    std::fs::write(
        &batch,
        format!("mappings add db --listen 127.0.0.1:{port} --edge e1 --target 127.0.0.1:9\n"),
    )
    .unwrap();
    let (code, out, err) = relayctl(&endpoints, &token, &["batch", batch.to_str().unwrap()]);
    println!("$ relayctl batch add.batch\n{out}{err}");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revision ") && out.contains("node b: db: "), "{out}");

    let (code, out, err) = relayctl(&endpoints, &token, &["mappings", "list"]);
    println!("$ relayctl mappings list\n{out}{err}");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("active on 2/3; failed on b ")
            && out.contains("db: failed on b: cannot listen"),
        "{out}"
    );

    let (code, out, err) = relayctl(&endpoints, &token, &["status"]);
    println!("$ relayctl status\n{out}{err}");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cluster of 3 nodes"), "{out}");

    let (code, out, err) =
        relayctl(&endpoints, &token, &["nodes", "drain", "b", "--deadline", "5s"]);
    println!("$ relayctl nodes drain b --deadline 5s\n{out}{err}");
    assert_eq!(code, 0, "{err}");
    assert!(eventually(WITHIN, || async { !nodes[1].ready().await }).await, "b reports not-ready");
    let (_, out, _) = relayctl(&endpoints, &token, &["nodes", "list", "--json"]);
    let listed: Vec<api::NodeView> = serde_json::from_str(&out).expect("exact JSON");
    assert!(listed.iter().any(|n| n.id == "b" && n.draining && !n.ready), "{listed:?}");
    let (code, out, err) = relayctl(&endpoints, &token, &["nodes", "undrain", "b"]);
    println!("$ relayctl nodes undrain b\n{out}{err}");
    assert_eq!(code, 0, "{err}");
    assert!(eventually(WITHIN, || async { nodes[1].ready().await }).await, "b ready again");
    let (code, _, err) = relayctl(&endpoints, &token, &["nodes", "drain", "zz"]);
    println!("$ relayctl nodes drain zz\n{err}");
    assert_eq!(code, 4, "{err}");
    drop(squatter);
}
