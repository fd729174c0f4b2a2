//! Cluster nodes for the tests: real `relay-cloud` processes with a
//! `[cluster]` section, on one machine. Node `i` listens for tunnels and
//! its control API on free 127.0.0.1 ports and binds mappings on its own
//! address 127.0.0.(11+i) (`public_ip`), so every node can serve the same
//! mapping port, as separate machines would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{ADMIN_TOKEN, Agent, Api, TOKEN};

/// How long a node may take to start and join.
pub const JOIN_WITHIN: Duration = Duration::from_secs(20);

/// The address node `i` binds mappings on.
pub fn public_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + u8::try_from(i).expect("few nodes")))
}

/// One node's fixed addresses, kept across restarts.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id: "a", "b", "c", ...
    pub id: String,
    /// Index (0 for "a").
    pub index: usize,
    /// Tunnel listener.
    pub tunnel: SocketAddr,
    /// Control API.
    pub control: SocketAddr,
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// Directory of its local copy.
    pub dir: PathBuf,
    /// Extra lines for `[cluster]`.
    pub extra_cluster: String,
    /// Extra top-level tables (before `[tunnel]`).
    pub extra_top: String,
    /// The URL told to edges, when not the node's own tunnel listener (a
    /// node that edges cannot reach).
    pub advertise: Option<String>,
}

impl NodeSpec {
    /// Node `index` (id `a` + index) against `etcd`, keeping its files in
    /// `dir`.
    pub fn new(index: usize, etcd: &[String], dir: &Path) -> NodeSpec {
        let id = char::from(b'a' + u8::try_from(index).expect("few nodes")).to_string();
        let dir = dir.join(&id);
        std::fs::create_dir_all(&dir).expect("node dir");
        NodeSpec {
            id,
            index,
            tunnel: crate::free_port(),
            control: crate::free_port(),
            etcd: etcd.to_vec(),
            dir,
            extra_cluster: String::new(),
            extra_top: String::new(),
            advertise: None,
        }
    }

    /// The node's config.
    pub fn toml(&self) -> String {
        let etcd: Vec<String> = self.etcd.iter().map(|e| format!("\"{e}\"")).collect();
        format!(
            "shutdown_grace = \"3s\"\n{extra_top}\n\
             [control]\nlisten = \"{control}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             state_file = \"{dir}/state.json\"\n\n\
             [cluster]\nnode_id = \"{id}\"\nadvertise = \"{advertise}\"\n\
             etcd_endpoints = [{etcd}]\npublic_ip = \"{ip}\"\nlease_ttl = \"3s\"\n\
             apply_wait = \"5s\"\n{extra}\n\
             [tunnel]\nlisten = \"{tunnel}\"\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"2s\"\n\n\
             [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n",
            extra_top = self.extra_top,
            control = self.control,
            dir = self.dir.display(),
            id = self.id,
            advertise =
                self.advertise.clone().unwrap_or_else(|| format!("ws://{}/tunnel", self.tunnel)),
            tunnel = self.tunnel,
            etcd = etcd.join(", "),
            ip = public_ip(self.index),
            extra = self.extra_cluster,
        )
    }

    /// Starts the node and waits until its control API listens.
    pub async fn start(&self) -> Node {
        let mut agent = Agent::spawn("relay-cloud", &self.toml());
        agent.wait_for_log(&["control API listening"], JOIN_WITHIN).await;
        Node { spec: self.clone(), agent, api: Api::new(self.control, Some(ADMIN_TOKEN)) }
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// Its addresses.
    pub spec: NodeSpec,
    /// The process.
    pub agent: Agent,
    /// Its control API.
    pub api: Api,
}

impl Node {
    /// Where this node serves a mapping that listens on `port`.
    pub fn mapping_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(public_ip(self.spec.index), port)
    }

    /// The node's `GET /v1/nodes`.
    pub async fn nodes(&self) -> Vec<api::NodeView> {
        let (status, body) = self.api.call("GET", "/v1/nodes", None).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).expect("nodes")
    }

    /// Waits until this node sees `count` live nodes, all ready.
    pub async fn wait_nodes(&self, count: usize, within: Duration) -> Vec<api::NodeView> {
        let until = tokio::time::Instant::now() + within;
        let mut last = Vec::new();
        let mut ok = false;
        while tokio::time::Instant::now() < until {
            let (status, body) = self.api.call("GET", "/v1/nodes", None).await;
            if status == 200 {
                last = serde_json::from_value::<Vec<api::NodeView>>(body).unwrap_or_default();
                if last.len() == count && last.iter().all(|n| n.ready && n.store_reachable) {
                    ok = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            ok,
            "node {} did not see {count} ready nodes within {within:?}: {last:#?}",
            self.spec.id
        );
        last
    }

    /// Whether this node's `/ready` says 200.
    pub async fn ready(&self) -> bool {
        matches!(self.api.try_call("GET", "/ready", None).await, Ok((200, _)))
    }
}

/// A mapping spec for `POST /v1/mappings` on `port` towards `target`.
pub fn mapping(name: &str, port: u16, target: SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "listen": format!("127.0.0.1:{port}"),
        "edge": "e1",
        "target": target.to_string(),
    })
}

/// A port free on every node's public address a moment ago.
pub fn free_mapping_port(nodes: usize) -> u16 {
    loop {
        let port = crate::free_port().port();
        let free_everywhere = (0..nodes)
            .all(|i| std::net::TcpListener::bind(SocketAddr::new(public_ip(i), port)).is_ok());
        if free_everywhere {
            return port;
        }
    }
}

/// Starts `count` nodes against `etcd`, and waits until each sees them all
/// ready.
pub async fn start_nodes(etcd: &[String], dir: &Path, count: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..count {
        nodes.push(NodeSpec::new(i, etcd, dir).start().await);
    }
    for n in &nodes {
        n.wait_nodes(count, Duration::from_secs(20)).await;
    }
    nodes
}

/// A `POST /v1/batch` body adding one [`mapping`].
pub fn add_batch(name: &str, port: u16, target: SocketAddr) -> serde_json::Value {
    let mut add = mapping(name, port, target);
    add["op"] = serde_json::json!("add");
    serde_json::json!({"changes": [add]})
}

/// An edge `e1` that dials `node` (and so learns every node) and may reach
/// `service` only.
pub fn spawn_edge(node: &Node, service: SocketAddr) -> Agent {
    Agent::spawn("relay-edge", &crate::edge_toml(node.spec.tunnel, &[service.to_string()], TOKEN))
}
