//! Which URLs the edge dials: its configured `cloud_url`, and in a cluster
//! every node the cloud lists.
//!
//! The edge starts with one pool on `cloud_url`. When its tunnels bring node
//! lists (`Nodes`, protocol version 4), the edge runs one pool per listed
//! node, dialling the node's own URL. The nodes wanted are the union of the
//! latest lists of the live tunnels (a node's own entry wins for its URL):
//! nodes learn of a change at slightly different moments, and following
//! whichever list came last would drop and redial a node each time a node
//! that has not heard yet speaks. A node that appears gets a pool; a node
//! no live tunnel lists any more has its pool retired (its tunnels drain and
//! close when idle). The pool on `cloud_url` is retired as soon as a node's
//! own pool has a tunnel up: it landed on an arbitrary node behind the load
//! balancer. With no tunnel left at all the union is empty and the edge
//! starts over from `cloud_url` at once; with tunnels left but none to a
//! listed node for [`FALLBACK_AFTER`] (only draining ones, every advertised
//! URL wrong or unreachable), it dials `cloud_url` again too, so a wrong
//! `advertise` cannot cut it off.
//!
//! A node URL is parsed and checked like `cloud_url`
//! ([`config::EdgeConfig::node_url`]): one that does not parse, or would
//! drop TLS, or is plain beyond loopback without `allow_plaintext`, is
//! ignored, with a warning at most once a minute per entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use config::CloudUrl;
use tokio::time::Instant;
use tracing::{info, warn};
use tunnel::untrusted::escaped;

use crate::edge::EdgeShared;
use crate::pool::Pool;

/// With a node list and no node reachable at its own URL for this long,
/// the edge dials its configured URL again.
pub(crate) const FALLBACK_AFTER: Duration = Duration::from_secs(15);
/// A node entry the edge ignores is warned about at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How often the fleet looks again without an event (the fallback clock).
const TICK: Duration = Duration::from_secs(1);

struct Fleet {
    shared: Arc<EdgeShared>,
    /// The pool on the configured URL, while it runs.
    seed: Option<Arc<Pool>>,
    /// Since when no node pool has had a tunnel up (with node pools).
    unreachable_since: Option<Instant>,
    /// Ignored entries and when each was last warned about.
    warned: HashMap<(String, String), Instant>,
}

pub(crate) async fn run(shared: Arc<EdgeShared>) {
    let seed = Pool::start(&shared, None, shared.config.cloud_url.clone());
    let mut fleet = Fleet {
        shared: Arc::clone(&shared),
        seed: Some(seed),
        unreachable_since: None,
        warned: HashMap::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.stop_tunnels.cancelled() => return,
            () = shared.fleet_wake.notified() => {}
            _ = tick.tick() => {}
        }
        fleet.apply(&union(&shared.handles.node_lists()));
        fleet.check();
    }
}

impl Fleet {
    /// Makes the node pools match `nodes` (id to URL as the cloud sent it).
    fn apply(&mut self, nodes: &BTreeMap<String, String>) {
        let wanted = self.usable(nodes);
        let mut pools = self.shared.lock_node_pools();
        let had_nodes = !pools.is_empty();
        pools.retain(|id, pool| {
            let keep = wanted.get(id) == Some(&pool.url);
            if !keep {
                info!(node = %escaped(id), "node left the cloud's list; its tunnels drain and close");
                pool.retire();
            }
            keep
        });
        for (id, url) in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = pools.entry(id) {
                let id = slot.key().clone();
                info!(node = %escaped(&id), url = %url, "node listed by the cloud; dialling it");
                slot.insert(Pool::start(&self.shared, Some(id), url));
            }
        }
        if !had_nodes && !pools.is_empty() {
            self.unreachable_since = Some(Instant::now());
        }
    }

    /// The entries of `nodes` this edge may dial.
    fn usable(&mut self, nodes: &BTreeMap<String, String>) -> BTreeMap<String, CloudUrl> {
        let now = Instant::now();
        self.warned.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
        let mut usable = BTreeMap::new();
        for (id, text) in nodes {
            match self.shared.config.node_url(text) {
                Ok(url) => {
                    usable.insert(id.clone(), url);
                }
                Err(why) => {
                    let key = (id.clone(), text.clone());
                    if let std::collections::hash_map::Entry::Vacant(slot) = self.warned.entry(key)
                    {
                        warn!(node = %escaped(id), url = %escaped(text), reason = %why,
                            "node URL from the cloud ignored");
                        slot.insert(now);
                    }
                }
            }
        }
        usable
    }

    /// Retires or restarts the configured URL's pool.
    fn check(&mut self) {
        let (has_nodes, any_up) = {
            let pools = self.shared.lock_node_pools();
            (!pools.is_empty(), pools.values().any(|p| p.tunnels_up() > 0))
        };
        if any_up {
            self.unreachable_since = None;
            if let Some(seed) = self.seed.take() {
                info!(url = %seed.url,
                    "a node's own tunnel is up; the tunnels to the configured URL drain and close");
                seed.retire();
            }
            return;
        }
        if self.seed.is_some() {
            return;
        }
        if !has_nodes {
            info!(url = %self.shared.config.cloud_url, "no node list; dialling the configured URL");
        } else {
            let since = *self.unreachable_since.get_or_insert_with(Instant::now);
            if since.elapsed() < FALLBACK_AFTER {
                return;
            }
            warn!(url = %self.shared.config.cloud_url, after = ?FALLBACK_AFTER,
                "no node reachable at its own URL; dialling the configured URL again");
        }
        self.seed = Some(Pool::start(&self.shared, None, self.shared.config.cloud_url.clone()));
    }
}

/// The nodes of every list, by id: a node's own entry gives its URL, else
/// the first list naming it. At most [`proto::MAX_NODES`], the first ids.
fn union(lists: &[tunnel::NodeList]) -> BTreeMap<String, String> {
    let mut nodes: BTreeMap<String, (bool, String)> = BTreeMap::new();
    for list in lists {
        for node in &list.nodes {
            let own = node.id == list.this_node;
            match nodes.get_mut(&node.id) {
                Some(entry) if own && !entry.0 => *entry = (true, node.url.clone()),
                Some(_) => {}
                None => {
                    nodes.insert(node.id.clone(), (own, node.url.clone()));
                }
            }
        }
    }
    nodes.into_iter().take(proto::MAX_NODES).map(|(id, (_, url))| (id, url)).collect()
}

#[cfg(test)]
mod tests {
    use proto::NodeAddr;
    use tunnel::NodeList;

    use super::*;

    fn list(this_node: &str, nodes: &[(&str, &str)]) -> NodeList {
        NodeList {
            this_node: this_node.into(),
            nodes: nodes
                .iter()
                .map(|(id, url)| NodeAddr { id: (*id).into(), url: (*url).into() })
                .collect(),
        }
    }

    #[test]
    fn the_union_keeps_a_node_any_list_names_with_its_own_url() {
        // B has not heard that C joined; A has, and so has C.
        let lists = [
            list("a", &[("a", "ws://a"), ("c", "ws://c-as-a-saw-it")]),
            list("b", &[("a", "ws://a"), ("b", "ws://b")]),
            list("c", &[("c", "ws://c")]),
        ];
        let nodes = union(&lists);
        let ids: Vec<&str> = nodes.keys().map(String::as_str).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(nodes["c"], "ws://c", "the node's own entry wins");
        assert!(union(&[]).is_empty());
        let many: Vec<(String, String)> =
            (0..70).map(|i| (format!("n{i:02}"), "ws://x".to_owned())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(union(&[list("a", &many)]).len(), proto::MAX_NODES);
    }
}
