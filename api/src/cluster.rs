//! Cluster views: the nodes of a cluster, and what each node did with a
//! mapping or a change. Empty or absent when the cloud agent runs alone.

use serde::{Deserialize, Serialize};

/// One node of a cluster, as it last wrote its record to the store, plus
/// what the answering node knows of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's id (`[cluster] node_id`).
    pub id: String,
    /// The tunnel URL at which edges reach this node directly.
    pub advertise: String,
    /// The node's control API, as its peers reach it (when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_url: Option<String>,
    /// The node's agent version.
    pub version: String,
    /// Unix time in milliseconds when this run of the node started.
    pub started_unix_ms: u64,
    /// Whether the node says it is ready for new client connections (what
    /// its `/ready` answers, and so what the load balancer sees).
    pub ready: bool,
    /// Whether an operator drained the node (`relayctl nodes drain`).
    pub draining: bool,
    /// When draining: unix time in milliseconds at which the node resets
    /// the client connections still open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline_unix_ms: Option<u64>,
    /// Whether the node reached the store at its last attempt.
    pub store_reachable: bool,
    /// The store revision whose state the node serves.
    pub applied_revision: i64,
    /// Client connections open on the node.
    pub connections: u64,
    /// Edges with at least one tunnel up to the node.
    pub edges_connected: u32,
    /// Mappings the node could not serve (a port in use there, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mapping_failures: Vec<MappingFailure>,
    /// Unix time in milliseconds when the node last wrote its record.
    pub updated_unix_ms: u64,
    /// True for the node that answered this request.
    #[serde(default)]
    pub this_node: bool,
}

/// A mapping one node could not serve, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingFailure {
    /// Mapping name.
    pub mapping: String,
    /// Why, e.g. "cannot listen on 0.0.0.0:2222: Address in use".
    pub error: String,
}

/// Where one mapping stands on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeMappingState {
    /// The node serves it.
    Active,
    /// The node drains it.
    Draining,
    /// The node could not bind it.
    Failed,
    /// The node has not yet applied the revision that made it what it is.
    Pending,
}

/// One mapping on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingOnNode {
    /// Node id.
    pub node: String,
    /// Where the mapping stands there.
    pub state: NodeMappingState,
    /// Why, when `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one node did with a committed change, as the answer to it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeApply {
    /// Node id.
    pub node: String,
    /// Whether the node applied the change's revision within the wait.
    pub applied: bool,
    /// Mappings of the change the node could not serve, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<MappingFailure>,
}

/// Whether a peer answered the answering node's request for its figures
/// (`GET /v1/snapshot?scope=cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnswer {
    /// Node id.
    pub node: String,
    /// Whether its figures are in the sums.
    pub answered: bool,
    /// Why not, when it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One edge's view of one node: how many tunnels it keeps there, and why
/// the last dial failed. From the edge's reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeNodeLink {
    /// Node id.
    pub node: String,
    /// Tunnels up from the edge to that node.
    pub tunnels_up: u32,
    /// Why the edge's last dial of the node failed, while it has no tunnel
    /// there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
