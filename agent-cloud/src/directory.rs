//! The cluster's nodes as this cloud tells its edges.
//!
//! One [`NodeDirectory`] per cloud agent, shared through a
//! `tokio::sync::watch` channel made in `Cloud::start`: the cluster module
//! (or a test, through `Cloud::announce_nodes`) sends a new one whenever
//! the live nodes change, and every version 4 tunnel follows it
//! ([`follow`]): the list goes right after the `Welcome`, and again on each
//! change. Alone, the directory stays empty and no `Nodes` frame is sent.

use std::sync::Arc;

use proto::NodeAddr;
use proto::nodes::{MAX_NODE_ID_LEN, MAX_NODE_URL_LEN, MAX_NODES};
use tokio::sync::watch;
use tracing::warn;
use tunnel::Tunnel;

/// The cluster's live nodes and which one this is; empty when alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDirectory {
    /// This node's id.
    pub this_node: String,
    /// Every live node (this one included), with the URL edges dial.
    pub nodes: Vec<NodeAddr>,
}

impl NodeDirectory {
    /// A directory of `nodes` (`(id, advertise URL)`), keeping only entries
    /// a `Nodes` frame can carry: an id of 1..=64 bytes, a URL of 1..=256,
    /// an id not listed before, the first 64. Each entry left out is
    /// logged: it is a configuration error on that node.
    pub fn new(this_node: &str, nodes: Vec<(String, String)>) -> Self {
        let mut kept: Vec<NodeAddr> = Vec::with_capacity(nodes.len().min(MAX_NODES));
        for (id, url) in nodes {
            let why = if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
                Some("its id must be 1 to 64 bytes")
            } else if url.is_empty() || url.len() > MAX_NODE_URL_LEN {
                Some("its URL must be 1 to 256 bytes")
            } else if kept.iter().any(|n| n.id == id) {
                Some("it is listed twice")
            } else if kept.len() == MAX_NODES {
                Some("edges are told at most 64 nodes")
            } else {
                None
            };
            match why {
                Some(why) => warn!(node = %id, %url, "node not told to edges: {why}"),
                None => kept.push(NodeAddr { id, url }),
            }
        }
        Self { this_node: this_node.to_owned(), nodes: kept }
    }

    /// Whether there is nothing to tell edges (the agent runs alone).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Sends the directory on `tunnel` now and on every change, until the
/// tunnel ends. A version 3 tunnel gets nothing. A list that empties after
/// a non-empty one was sent is sent empty, so the edge goes back to its
/// configured URL.
pub(crate) async fn follow(tunnel: Tunnel, mut directory: watch::Receiver<Arc<NodeDirectory>>) {
    if !tunnel.carries_nodes() {
        return;
    }
    let mut sent_any = false;
    loop {
        let current = Arc::clone(&directory.borrow_and_update());
        if !current.is_empty() || sent_any {
            tunnel.send_nodes(&current.this_node, &current.nodes);
            sent_any = true;
        }
        tokio::select! {
            () = tunnel.closed() => return,
            changed = directory.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_a_frame_cannot_carry_are_left_out() {
        let long_id = "x".repeat(65);
        let long_url = format!("ws://{}", "h".repeat(260));
        let mut nodes = vec![
            ("a".to_owned(), "ws://a/tunnel".to_owned()),
            (String::new(), "ws://empty/tunnel".to_owned()),
            (long_id, "ws://long/tunnel".to_owned()),
            ("b".to_owned(), long_url),
            ("a".to_owned(), "ws://again/tunnel".to_owned()),
        ];
        nodes.extend((0..70).map(|i| (format!("n{i}"), format!("ws://n{i}/tunnel"))));
        let directory = NodeDirectory::new("a", nodes);
        assert_eq!(directory.nodes.len(), MAX_NODES);
        assert_eq!(directory.nodes[0], NodeAddr { id: "a".into(), url: "ws://a/tunnel".into() });
        assert_eq!(directory.nodes[1].id, "n0");
        assert!(NodeDirectory::default().is_empty());
    }
}
