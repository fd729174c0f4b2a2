//! Shared listen addresses and traffic policy in a cluster: two real
//! `relay-cloud` nodes on a real etcd, one real edge tunnelled to both.
//! Hosts added through one node route on every node, and a policy changed
//! through the other reaches both live: a keep-alive connection open
//! through either node carries on across the change.

use std::net::SocketAddr;
use std::time::Duration;

use e2e_tests::cluster::{Node, free_mapping_port, start_nodes};
use e2e_tests::etcd::EtcdCluster;
use e2e_tests::{Agent, TOKEN, edge_toml, eventually, named_http_service};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(15);

/// One request for `host` on `tcp` (kept alive): the body, or `None` if the
/// connection failed.
async fn ask(tcp: &mut TcpStream, host: &str) -> Option<String> {
    let io = async {
        tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.ok()?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())?;
                if body.len() >= len {
                    return Some(body[..len].trim().to_owned());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), io).await.ok().flatten()
}

async fn first_answer(to: SocketAddr, host: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(to).await.ok()?;
    ask(&mut tcp, host).await
}

async fn policy_on(node: &Node, name: &str) -> serde_json::Value {
    let (_, view) = node.api.call("GET", &format!("/v1/mappings/{name}"), None).await;
    view["rate_limit_out_bps"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_route_on_every_node_and_a_policy_change_reaches_them_live() {
    let Some(etcd) = EtcdCluster::start("cluster_sharing", 1).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(&etcd.endpoints(), dir.path(), 2).await;
    let (web1, web2) = (named_http_service("web1").await, named_http_service("web2").await);
    let allow = [web1.to_string(), web2.to_string()];
    let _edge = Agent::spawn("relay-edge", &edge_toml(nodes[0].spec.tunnel, &allow, TOKEN));
    let port = free_mapping_port(2);
    let listen = format!("127.0.0.1:{port}");
    let batch = json!({"changes": [
        {"op": "add", "name": "web1", "listen": listen, "edge": "e1", "target": web1.to_string(),
         "host": "web1.example.com"},
        {"op": "add", "name": "web2", "listen": listen, "edge": "e1", "target": web2.to_string(),
         "host": "web2.example.com"},
    ]});
    let (status, body) = nodes[0].api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    // The same host again, through the other node: taken cluster-wide.
    let twin = json!({"name": "twin", "listen": listen, "edge": "e1",
        "target": web2.to_string(), "host": "WEB1.example.com"});
    let (status, body) = nodes[1].api.call("POST", "/v1/mappings", Some(twin)).await;
    assert_eq!(status, 409, "{body}");

    let mut held = Vec::new();
    for n in &nodes {
        let addr = n.mapping_addr(port);
        for host in ["web1.example.com", "web2.example.com"] {
            let want = format!("{} {host}", &host[..4]);
            let routed = eventually(WITHIN, || async {
                first_answer(addr, host).await.as_deref() == Some(want.as_str())
            })
            .await;
            assert!(routed, "node {} routes {host}", n.spec.id);
        }
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            ask(&mut tcp, "web1.example.com").await.as_deref(),
            Some("web1 web1.example.com")
        );
        held.push(tcp);
    }

    // A policy through node b: every node applies it without restarting the
    // mapping, so the connections held through either node carry on.
    let policy = json!({"rate_limit_out_bps": 1 << 20, "max_connections_per_client": 50});
    let (status, view) = nodes[1].api.call("PUT", "/v1/mappings/web1/policy", Some(policy)).await;
    assert_eq!(status, 200, "{view}");
    for n in &nodes {
        let seen =
            eventually(WITHIN, || async { policy_on(n, "web1").await == json!(1 << 20) }).await;
        assert!(seen, "node {} has the new policy", n.spec.id);
    }
    for (tcp, n) in held.iter_mut().zip(&nodes) {
        let again = ask(tcp, "web1.example.com").await;
        assert_eq!(
            again.as_deref(),
            Some("web1 web1.example.com"),
            "node {}: not restarted",
            n.spec.id
        );
    }
}
