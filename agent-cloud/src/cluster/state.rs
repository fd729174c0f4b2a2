//! The cluster's state as etcd holds it: the key layout, the records, and
//! the node's copy of them at the revision it applied. Pure: no I/O.
//!
//! Keys, under the configured prefix `P`:
//! - `P/changes`: touched by every change through the API; its mod
//!   revision guards a change's transaction (optimistic concurrency);
//! - `P/mappings/<name>`: a [`StoredMapping`];
//! - `P/drained-edges/<id>`: an edge an operator drained;
//! - `P/edges/<id>`: an [`EdgeRecord`]: an edge added, given a new token or
//!   revoked at run time (it holds the token: etcd's access control and TLS
//!   guard it);
//! - `P/node-drains/<id>`: a [`NodeDrain`] for one run of a node;
//! - `P/nodes/<id>`: a node's [`api::NodeView`], bound to its lease, so it
//!   goes when the node stops renewing it.

use std::collections::{BTreeMap, BTreeSet};

use api::{MappingSpec, NodeView};
use serde::{Deserialize, Serialize};

use super::etcd::{Event, Kv};
use crate::fleet::EdgeRecord;

/// A mapping as stored: what the operator asked for, and whether it drains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredMapping {
    pub(crate) spec: MappingSpec,
    /// Set when draining: unix ms at which open connections are reset (and
    /// the key is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) drain_until_unix_ms: Option<u64>,
}

/// An operator's drain of one run of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeDrain {
    /// The run it applies to (the node's `started_unix_ms`): a node that
    /// restarts serves again, which is what a rolling upgrade wants.
    pub(crate) run: u64,
    /// Unix ms at which the node resets the connections still open.
    pub(crate) deadline_unix_ms: u64,
}

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// What a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Key<'a> {
    Guard,
    Mapping(&'a str),
    DrainedEdge(&'a str),
    Edge(&'a str),
    NodeDrain(&'a str),
    Node(&'a str),
    Other,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn guard(&self) -> String {
        format!("{}changes", self.prefix)
    }

    pub(crate) fn mapping(&self, name: &str) -> String {
        format!("{}mappings/{name}", self.prefix)
    }

    pub(crate) fn drained_edge(&self, id: &str) -> String {
        format!("{}drained-edges/{id}", self.prefix)
    }

    pub(crate) fn edge(&self, id: &str) -> String {
        format!("{}edges/{id}", self.prefix)
    }

    pub(crate) fn node_drain(&self, id: &str) -> String {
        format!("{}node-drains/{id}", self.prefix)
    }

    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}nodes/{id}", self.prefix)
    }

    pub(super) fn classify<'a>(&self, key: &'a str) -> Key<'a> {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else { return Key::Other };
        if rest == "changes" {
            return Key::Guard;
        }
        let Some((kind, name)) = rest.split_once('/') else { return Key::Other };
        if name.is_empty() || name.contains('/') {
            return Key::Other;
        }
        match kind {
            "mappings" => Key::Mapping(name),
            "drained-edges" => Key::DrainedEdge(name),
            "edges" => Key::Edge(name),
            "node-drains" => Key::NodeDrain(name),
            "nodes" => Key::Node(name),
            _ => Key::Other,
        }
    }
}

/// The desired state (mappings, drained edges, node drains) and the live
/// nodes, as of `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Desired {
    /// The revision of the newest change to the desired state applied
    /// (node records moving do not count: they would make every node
    /// rewrite its record for every other node's write).
    pub(crate) revision: i64,
    /// Mod revision of the guard key (0: never written).
    pub(crate) guard_mod: i64,
    /// Mappings by name, each with its mod revision.
    pub(crate) mappings: BTreeMap<String, (StoredMapping, i64)>,
    pub(crate) drained_edges: BTreeSet<String>,
    /// The fleet's run-time records by id, each with its mod revision.
    #[serde(default)]
    pub(crate) edges: BTreeMap<String, (EdgeRecord, i64)>,
    #[serde(skip)]
    pub(crate) node_drains: BTreeMap<String, (NodeDrain, i64)>,
    /// Live nodes' records; not part of the local copy.
    #[serde(skip)]
    pub(crate) nodes: BTreeMap<String, NodeView>,
}

/// What an update touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Touched {
    /// Mappings, drained edges or node drains.
    pub(crate) desired: bool,
    /// Node records.
    pub(crate) nodes: bool,
}

impl Desired {
    /// The state a full read at `revision` returned. Values that do not
    /// parse are skipped, each with a line in `problems`.
    pub(crate) fn from_read(
        keys: &Keys,
        revision: i64,
        kvs: Vec<Kv>,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut state = Self { revision, ..Self::default() };
        for kv in kvs {
            state.put(keys, kv, problems);
        }
        state
    }

    /// Applies watch events of revisions up to `revision`.
    pub(crate) fn apply(
        &mut self,
        keys: &Keys,
        revision: i64,
        events: Vec<Event>,
        problems: &mut Vec<String>,
    ) -> Touched {
        let mut touched = Touched::default();
        for event in events {
            let is_node = match &event {
                Event::Put(kv) => matches!(keys.classify(&kv.key), Key::Node(_)),
                Event::Delete { key, .. } => matches!(keys.classify(key), Key::Node(_)),
            };
            if is_node {
                touched.nodes = true;
            } else {
                touched.desired = true;
            }
            match event {
                Event::Put(kv) => self.put(keys, kv, problems),
                Event::Delete { key, .. } => self.delete(keys, &key),
            }
        }
        if touched.desired {
            self.revision = self.revision.max(revision);
        }
        touched
    }

    fn put(&mut self, keys: &Keys, kv: Kv, problems: &mut Vec<String>) {
        let mut bad = |what: &str, e: serde_json::Error| {
            problems.push(format!("{}: not a valid {what}, ignored: {e}", kv.key));
        };
        match keys.classify(&kv.key) {
            Key::Guard => self.guard_mod = kv.mod_revision,
            Key::Mapping(name) => match serde_json::from_slice::<StoredMapping>(&kv.value) {
                Ok(m) if m.spec.name == name => {
                    self.mappings.insert(name.to_owned(), (m, kv.mod_revision));
                }
                Ok(m) => problems.push(format!(
                    "{}: holds mapping {:?}, not {name:?}; ignored",
                    kv.key, m.spec.name
                )),
                Err(e) => bad("mapping", e),
            },
            Key::DrainedEdge(id) => {
                self.drained_edges.insert(id.to_owned());
            }
            Key::Edge(id) => match serde_json::from_slice::<EdgeRecord>(&kv.value) {
                Ok(r) if r.id == id => {
                    self.edges.insert(id.to_owned(), (r, kv.mod_revision));
                }
                Ok(r) => {
                    problems
                        .push(format!("{}: holds edge {:?}, not {id:?}; ignored", kv.key, r.id));
                }
                Err(e) => bad("edge", e),
            },
            Key::NodeDrain(id) => match serde_json::from_slice::<NodeDrain>(&kv.value) {
                Ok(d) => {
                    self.node_drains.insert(id.to_owned(), (d, kv.mod_revision));
                }
                Err(e) => bad("node drain", e),
            },
            Key::Node(id) => match serde_json::from_slice::<NodeView>(&kv.value) {
                Ok(n) if n.id == id => {
                    self.nodes.insert(id.to_owned(), n);
                }
                Ok(n) => problems.push(format!("{}: holds node {:?}; ignored", kv.key, n.id)),
                Err(e) => bad("node record", e),
            },
            Key::Other => {}
        }
    }

    fn delete(&mut self, keys: &Keys, key: &str) {
        match keys.classify(key) {
            Key::Guard => self.guard_mod = 0,
            Key::Mapping(name) => {
                self.mappings.remove(name);
            }
            Key::DrainedEdge(id) => {
                self.drained_edges.remove(id);
            }
            Key::Edge(id) => {
                self.edges.remove(id);
            }
            Key::NodeDrain(id) => {
                self.node_drains.remove(id);
            }
            Key::Node(id) => {
                self.nodes.remove(id);
            }
            Key::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv { key: key.into(), value: value.as_bytes().to_vec(), mod_revision: rev }
    }

    fn mapping_json(name: &str) -> String {
        format!(
            r#"{{"spec":{{"name":"{name}","listen":"127.0.0.1:0","edge":"e1","target":"127.0.0.1:9"}}}}"#
        )
    }

    #[test]
    fn a_read_then_events_track_mappings_edges_and_nodes_and_bad_values_are_reported() {
        let keys = Keys::new("/p/");
        let mut problems = Vec::new();
        let kvs = vec![
            kv("/p/changes", "", 3),
            kv("/p/mappings/web", &mapping_json("web"), 2),
            kv("/p/mappings/bad", "{", 2),
            kv("/p/mappings/other", &mapping_json("web"), 2),
            kv("/p/drained-edges/e2", "", 3),
            kv("/p/edges/e3", r#"{"id":"e3","token":"t3"}"#, 3),
            kv("/p/edges/e4", r#"{"id":"e5","token":"t"}"#, 3),
            kv("/p/unrelated/x", "", 3),
            kv("/q/mappings/x", &mapping_json("x"), 3),
        ];
        let mut state = Desired::from_read(&keys, 7, kvs, &mut problems);
        assert_eq!(state.revision, 7);
        assert_eq!(state.guard_mod, 3);
        assert_eq!(state.mappings.keys().collect::<Vec<_>>(), ["web"]);
        assert!(state.drained_edges.contains("e2"));
        assert_eq!(state.edges.get("e3").map(|(r, _)| r.token.as_str()), Some("t3"));
        assert_eq!(problems.len(), 3, "{problems:?}");

        let node =
            serde_json::to_string(&NodeView { id: "a".into(), ..NodeView::default() }).unwrap();
        let touched =
            state.apply(&keys, 9, vec![Event::Put(kv("/p/nodes/a", &node, 9))], &mut problems);
        assert_eq!(touched, Touched { desired: false, nodes: true });
        assert_eq!(state.revision, 7, "a node record does not move the applied revision");
        assert!(state.nodes.contains_key("a"));

        let events = vec![
            Event::Delete { key: "/p/mappings/web".into(), revision: 10 },
            Event::Delete { key: "/p/edges/e3".into(), revision: 10 },
            Event::Put(kv("/p/changes", "", 10)),
        ];
        let touched = state.apply(&keys, 10, events, &mut problems);
        assert!(touched.desired);
        assert_eq!((state.revision, state.guard_mod), (10, 10));
        assert!(state.mappings.is_empty());
        assert!(state.edges.is_empty());
    }
}
