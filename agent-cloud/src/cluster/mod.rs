//! The agent as one node of a cluster: shared state in etcd, every node
//! serving every mapping.
//!
//! - `etcd`: the etcd calls, bounded in time, failing over between members.
//! - `state`: the key layout and the node's copy of the state (pure).
//! - `reconcile`: the watch loop (read everything, then watch from there;
//!   read again on a lost watch or a compacted revision) and the step that
//!   makes the mapping table match the state.
//! - `record`: this node's record in etcd, bound to a lease.
//! - `commit`: changes through the API, each one etcd transaction guarded
//!   by the revision it was planned at; node and edge drains.
//! - `local_copy`: the last applied state on disk, so that a node that
//!   starts while etcd is down serves it ("fail static").

mod commit;
mod etcd;
mod local_copy;
mod reconcile;
mod record;
mod remote_events;
mod state;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use api::{MappingOnNode, NodeMappingState, NodeView};
use config::ClusterConfig;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::edges::EdgeRegistry;
use crate::mappings::Mappings;
use etcd::Etcd;
use state::{Desired, Keys};

/// The live nodes as edges should see them: `(id, advertise URL)`, by id.
pub(crate) type NodeList = Arc<Vec<(String, String)>>;

/// Whether the store answered last time, and why not.
#[derive(Debug, Clone, Default)]
struct StoreHealth {
    reachable: bool,
    error: Option<String>,
}

/// This node's part in the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    config: ClusterConfig,
    etcd: Etcd,
    keys: Keys,
    /// This run of the node: its start time, unix ms.
    run: u64,
    state: Mutex<Desired>,
    /// The desired-state revision the mapping table matches.
    applied: watch::Sender<i64>,
    /// Bumped whenever node records change, for change answers waiting on
    /// the other nodes.
    nodes_seen: watch::Sender<u64>,
    /// The live nodes, for the edges' tunnels.
    node_list: watch::Sender<NodeList>,
    health: Mutex<StoreHealth>,
    /// Set while an operator drains this node: the deadline, unix ms.
    drain_deadline: Mutex<Option<u64>>,
    /// The connections open at the drain deadline were reset.
    drain_reset_done: AtomicBool,
    /// A state (from etcd or the local copy) has been applied.
    loaded: AtomicBool,
    /// Wakes the record task: something it publishes changed.
    record_dirty: Notify,
    /// Serialises this node's commits.
    commit_lock: tokio::sync::Mutex<()>,
    control_url: Option<String>,
    mappings: Weak<Mappings>,
    edges: Arc<EdgeRegistry>,
    /// Where changes other nodes made are recorded.
    events: crate::events::EventLog,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Cluster {
    /// Joins the cluster: reads the state from etcd (or, when etcd does not
    /// answer, from the local copy), applies it to `mappings`, then keeps
    /// following etcd and publishing this node's record in the background.
    ///
    /// # Errors
    /// When the etcd endpoints or TLS files cannot be used.
    pub(crate) async fn start(
        config: ClusterConfig,
        mappings: &Arc<Mappings>,
        edges: Arc<EdgeRegistry>,
        events: crate::events::EventLog,
    ) -> Result<Arc<Self>, String> {
        let etcd = Etcd::new(&config)?;
        let keys = Keys::new(&config.etcd_prefix);
        let cluster = Arc::new(Self {
            control_url: config.control_url.clone(),
            etcd,
            keys,
            run: crate::clock::unix_ms(),
            state: Mutex::new(Desired::default()),
            applied: watch::Sender::new(0),
            nodes_seen: watch::Sender::new(0),
            node_list: watch::Sender::new(Arc::new(Vec::new())),
            health: Mutex::new(StoreHealth::default()),
            drain_deadline: Mutex::new(None),
            drain_reset_done: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            record_dirty: Notify::new(),
            events,
            commit_lock: tokio::sync::Mutex::new(()),
            mappings: Arc::downgrade(mappings),
            edges,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        info!(node = %cluster.config.node_id, etcd = ?cluster.etcd.endpoints(),
            prefix = %cluster.config.etcd_prefix, advertise = %cluster.config.advertise,
            "joining the cluster");
        let first = cluster.etcd.range_prefix(cluster.keys.prefix()).await;
        match first {
            Ok((revision, kvs)) => cluster.replace_state(revision, kvs).await,
            Err(e) => {
                cluster.store_failed(&e.to_string());
                match local_copy::load(&cluster.config.local_copy) {
                    Ok(Some(copy)) => {
                        warn!(error = %e, revision = copy.revision, copy = %cluster.config.local_copy.display(),
                            "etcd does not answer: serving the local copy of the last applied state");
                        cluster.install(copy).await;
                    }
                    Ok(None) => warn!(error = %e,
                        "etcd does not answer and there is no local copy: serving nothing, \
                         not ready, until etcd answers"),
                    Err(e2) => warn!(error = %e, copy_error = %e2,
                        "etcd does not answer and the local copy cannot be read: serving nothing, \
                         not ready, until etcd answers"),
                }
            }
        }
        cluster.tasks.spawn(reconcile::run(Arc::clone(&cluster)));
        cluster.tasks.spawn(record::run(Arc::clone(&cluster)));
        Ok(cluster)
    }

    /// Leaves the cluster: stops following etcd and deletes this node's
    /// record, so edges and peers stop using it at once.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        record::remove(self).await;
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The live nodes, for the edges (id, advertise URL).
    pub(crate) fn node_list(&self) -> watch::Receiver<NodeList> {
        self.node_list.subscribe()
    }

    /// Whether the load balancer should send new clients here: a state is
    /// loaded and no operator drains the node. An unreachable store does not
    /// make a node unready: it serves what it applied.
    pub(crate) fn ready(&self) -> bool {
        self.loaded.load(Ordering::Relaxed) && self.drain_deadline().is_none()
    }

    fn drain_deadline(&self) -> Option<u64> {
        *self.drain_deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, Desired> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn health(&self) -> StoreHealth {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store_ok(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if !health.reachable {
            info!(etcd = ?self.etcd.endpoints(), "etcd answers");
            self.record_dirty.notify_one();
        }
        *health = StoreHealth { reachable: true, error: None };
    }

    fn store_failed(&self, error: &str) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if health.reachable || health.error.is_none() {
            warn!(%error, "etcd does not answer: serving the state applied last; changes are refused");
        }
        *health = StoreHealth { reachable: false, error: Some(error.to_owned()) };
    }

    /// Every live node, this one marked.
    pub(crate) fn nodes(&self) -> Vec<NodeView> {
        let mut nodes: Vec<NodeView> = self
            .lock_state()
            .nodes
            .values()
            .filter(|n| n.id != self.config.node_id)
            .cloned()
            .collect();
        // This node as it is now, not as etcd last heard (etcd may be out of
        // reach).
        nodes.push(record::own_record(self));
        for n in &mut nodes {
            n.this_node = n.id == self.config.node_id;
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// Where mapping `name` stands on each live node.
    pub(crate) fn mapping_on_nodes(&self, name: &str) -> Vec<MappingOnNode> {
        self.mapping_on(&self.nodes(), name)
    }

    /// Where mapping `name` stands on each of `nodes` (from [`nodes`](Self::nodes)).
    pub(crate) fn mapping_on(&self, nodes: &[NodeView], name: &str) -> Vec<MappingOnNode> {
        let state = self.lock_state();
        let Some((stored, mod_revision)) = state.mappings.get(name) else { return Vec::new() };
        nodes
            .iter()
            .map(|node| {
                let failure = node.mapping_failures.iter().find(|f| f.mapping == name);
                let (state, error) = match failure {
                    Some(f) => (NodeMappingState::Failed, Some(f.error.clone())),
                    None if node.applied_revision < *mod_revision => {
                        (NodeMappingState::Pending, None)
                    }
                    None if stored.drain_until_unix_ms.is_some() => {
                        (NodeMappingState::Draining, None)
                    }
                    None => (NodeMappingState::Active, None),
                };
                MappingOnNode { node: node.id.clone(), state, error }
            })
            .collect()
    }

    /// Replaces the state with a full read at `revision`, and applies it.
    async fn replace_state(&self, revision: i64, kvs: Vec<etcd::Kv>) {
        self.store_ok();
        let mut problems = Vec::new();
        let desired = Desired::from_read(&self.keys, revision, kvs, &mut problems);
        for p in problems {
            warn!(problem = %p, "invalid value in etcd");
        }
        self.install(desired).await;
    }

    /// Makes `desired` the state, applies it to the table and saves the
    /// local copy.
    async fn install(&self, desired: Desired) {
        let revision = desired.revision;
        *self.lock_state() = desired;
        self.publish_nodes();
        self.apply_to_table(false).await;
        self.applied_now(revision);
    }

    /// Records that the table matches `revision`; saves the local copy.
    fn applied_now(&self, revision: i64) {
        self.loaded.store(true, Ordering::Relaxed);
        self.applied.send_if_modified(|r| {
            let moved = *r != revision;
            *r = revision;
            moved
        });
        let copy = self.lock_state().clone();
        if let Err(e) = local_copy::save(&self.config.local_copy, &copy) {
            warn!(error = %e, "cannot save the local copy of the cluster state");
        }
        self.record_dirty.notify_one();
    }

    /// Sends the node list to the edges' side when it changed.
    fn publish_nodes(&self) {
        // This node is live whatever etcd has said yet (its own record may
        // not have come back through the watch): always listed, so an edge
        // never drops the node it is talking to.
        let own = (self.config.node_id.clone(), self.config.advertise.to_string());
        let mut list: Vec<(String, String)> = self
            .lock_state()
            .nodes
            .values()
            .filter(|n| n.id != own.0)
            .map(|n| (n.id.clone(), n.advertise.clone()))
            .collect();
        list.push(own);
        list.sort();
        self.node_list.send_if_modified(|old| {
            let moved = **old != list;
            if moved {
                *old = Arc::new(list);
            }
            moved
        });
        self.nodes_seen.send_modify(|n| *n += 1);
    }

    /// Waits until the table matches `revision` or `limit` passes.
    async fn wait_applied(&self, revision: i64, limit: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(limit, applied.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Figures of this node's mapping failures, by name.
    fn local_failures(&self) -> BTreeMap<String, String> {
        let Some(mappings) = self.mappings.upgrade() else { return BTreeMap::new() };
        mappings
            .entries()
            .iter()
            .filter_map(|e| Some((e.spec.name.clone(), e.error.clone()?)))
            .collect()
    }
}
