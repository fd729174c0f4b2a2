//! Changes made through any node: one etcd transaction each, guarded by
//! the guard key's revision at planning time, so two changes planned on
//! the same state cannot both commit. The answer waits (a bounded time)
//! for the live nodes to apply it and says what each did.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use api::{Change, NodeApply, NodeView};
use etcdv3client::pb;
use tracing::info;

use super::Cluster;
use super::state::{NodeDrain, StoredMapping};
use crate::edge_changes::PlannedEdge;
use crate::errors::{ChangeError, ErrorKind};
use crate::mapping::Phase;
use crate::mappings::{BatchOutcome, Mappings, PlanTable, Planned, passed, spec_of, with_tokens};

/// Times a change is planned again after another change won the race
/// (each time against the newer state).
const REPLANS: usize = 3;
/// How long a refused transaction waits for this node to catch up with
/// the change that won, before planning again.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Most changes in one batch: one etcd transaction holds them, the guard
/// write too, within etcd's default limit of 128 operations.
const MAX_BATCH: usize = 120;

pub(super) fn mod_equals(key: &str, revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        range_end: vec![],
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
    }
}

pub(super) fn put_op(key: &str, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub(super) fn delete_op(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn unavailable(cluster: &Cluster, e: &super::etcd::EtcdError) -> ChangeError {
    let what = if e.outcome_unknown {
        "etcd did not confirm the change in time: it may still be applied once etcd has a \
         quorum again, so look (relayctl mappings) before retrying"
    } else {
        "nothing changed"
    };
    ChangeError::new(
        ErrorKind::StoreUnavailable,
        format!(
            "the cluster store cannot be reached ({e}); {what}; node {} keeps serving the state \
             it applied at revision {}",
            cluster.config.node_id,
            *cluster.applied.borrow()
        ),
    )
}

impl Cluster {
    /// The state as planning sees it.
    fn plan_table(&self) -> (PlanTable, i64, i64) {
        let state = self.lock_state();
        let now = tokio::time::Instant::now();
        let mut table = PlanTable::default();
        for (name, (stored, _)) in &state.mappings {
            if stored.drain_until_unix_ms.is_some() {
                table.names.insert(name.clone(), Phase::Draining { until: now });
            } else {
                table.names.insert(name.clone(), Phase::Active);
                table.targets.insert(name.clone(), stored.spec.edge.clone());
                if let Ok(m) = stored.spec.to_config() {
                    table.listening.insert(name.clone(), (m.listen, m.host));
                }
            }
        }
        // The records as etcd holds them (the registry may lag a moment).
        table.fleet =
            self.edges.fleet().with_records(state.edges.values().map(|(r, _)| r), &mut Vec::new());
        (table, state.guard_mod, state.revision)
    }

    /// Plans `changes` on the state this node applied and commits them as
    /// one transaction (see the module docs).
    pub(crate) async fn apply(
        &self,
        mappings: &Arc<Mappings>,
        changes: &[Change],
        dry_run: bool,
    ) -> BatchOutcome {
        if changes.len() > MAX_BATCH {
            let err = ChangeError::new(
                ErrorKind::Invalid,
                format!(
                    "changes: {} changes in one batch; a cluster commits at most {MAX_BATCH} in \
                     one etcd transaction (etcd's default --max-txn-ops is 128): split it",
                    changes.len()
                ),
            );
            return BatchOutcome::refused(Vec::new(), Some(err));
        }
        let _one_at_a_time = self.commit_lock.lock().await;
        let mut seen_revision = None;
        for _ in 0..REPLANS {
            let (table, guard_mod, planned_at) = self.plan_table();
            let (planned, mut outcomes) = match passed(mappings.plan(changes, table), dry_run) {
                Ok(passed) => passed,
                Err(refused) => return refused,
            };
            let txn = self.transaction(&planned, guard_mod);
            match self.etcd.txn(txn).await {
                Err(e) => return BatchOutcome::refused(outcomes, Some(self.write_failed(&e))),
                Ok((true, revision)) => {
                    info!(revision, changes = planned.len(), "change committed");
                    // One wait, for this node and then the others.
                    let until = tokio::time::Instant::now() + self.config.apply_wait;
                    self.wait_applied(revision, self.config.apply_wait).await;
                    let names = planned.iter().map(name_of).collect();
                    let nodes = self.wait_nodes(revision, &names, until).await;
                    with_tokens(&mut outcomes, &planned);
                    return BatchOutcome {
                        applied: true,
                        outcomes,
                        failure: None,
                        revision: Some(revision),
                        nodes,
                    };
                }
                Ok((false, now)) => {
                    // Another change committed since the state we planned
                    // on: catch up with it (its guard write), then plan
                    // again.
                    seen_revision = Some((planned_at, now));
                    if !self.wait_guard_moved(guard_mod, CATCH_UP).await {
                        break;
                    }
                }
            }
        }
        let (planned_at, now) = seen_revision.unwrap_or_default();
        let err = ChangeError::new(
            ErrorKind::Conflict,
            format!(
                "another change was committed while this one was planned (planned at revision \
                 {planned_at}, the store is at {now}); nothing changed: look again and retry"
            ),
        );
        BatchOutcome::refused(Vec::new(), Some(err))
    }

    /// Waits until this node has applied a guard write other than the one
    /// at `guard_mod`, or `limit` passes.
    async fn wait_guard_moved(&self, guard_mod: i64, limit: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(limit, async {
            loop {
                if self.lock_state().guard_mod != guard_mod {
                    return true;
                }
                if applied.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// The answer to a write etcd did not take.
    fn write_failed(&self, e: &super::etcd::EtcdError) -> ChangeError {
        if e.refused {
            // etcd answered: it is the request, not the store.
            return ChangeError::new(
                ErrorKind::Internal,
                format!("etcd refused the change ({e}); nothing changed"),
            );
        }
        self.store_failed(&e.to_string());
        unavailable(self, e)
    }

    /// One operation per key (etcd refuses a transaction that touches a
    /// key twice): a later change of the batch to the same mapping
    /// replaces an earlier one, which is what applying them in order does.
    fn transaction(&self, planned: &[Planned], guard_mod: i64) -> pb::TxnRequest {
        let guard = self.keys.guard();
        let mut ops: BTreeMap<String, pb::RequestOp> = BTreeMap::new();
        ops.insert(guard.clone(), put_op(&guard, self.config.node_id.as_bytes().to_vec(), 0));
        let state = self.lock_state();
        let now_ms = crate::clock::unix_ms();
        for p in planned {
            match p {
                Planned::Add(m) => {
                    let stored = StoredMapping { spec: spec_of(m), drain_until_unix_ms: None };
                    let value = serde_json::to_vec(&stored).unwrap_or_default();
                    let key = self.keys.mapping(&m.name);
                    ops.insert(key.clone(), put_op(&key, value, 0));
                }
                Planned::Drain { name, deadline } => {
                    // Planning checked the name against this state (or an
                    // add earlier in the batch).
                    let spec =
                        state.mappings.get(name).map(|(s, _)| s.spec.clone()).or_else(|| {
                            planned.iter().find_map(|q| match q {
                                Planned::Add(m) if m.name == *name => Some(spec_of(m)),
                                _ => None,
                            })
                        });
                    let Some(spec) = spec else { continue };
                    let millis = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
                    let stored = StoredMapping {
                        spec,
                        drain_until_unix_ms: Some(now_ms.saturating_add(millis)),
                    };
                    let value = serde_json::to_vec(&stored).unwrap_or_default();
                    let key = self.keys.mapping(name);
                    ops.insert(key.clone(), put_op(&key, value, 0));
                }
                Planned::Remove { name } => {
                    let key = self.keys.mapping(name);
                    ops.insert(key.clone(), delete_op(&key));
                }
                Planned::SetPolicy { name, policy } => {
                    // The stored mapping (or one added earlier in the
                    // batch), with the new policy; a drain stays.
                    let stored = state.mappings.get(name).map(|(s, _)| s.clone()).or_else(|| {
                        planned.iter().find_map(|q| match q {
                            Planned::Add(m) if m.name == *name => {
                                Some(StoredMapping { spec: spec_of(m), drain_until_unix_ms: None })
                            }
                            _ => None,
                        })
                    });
                    let Some(mut stored) = stored else { continue };
                    let p = api::PolicySpec::of(policy);
                    stored.spec.max_connections_per_client = p.max_connections_per_client;
                    stored.spec.new_connections_per_client = p.new_connections_per_client;
                    stored.spec.rate_limit_in_bps = p.rate_limit_in_bps;
                    stored.spec.rate_limit_out_bps = p.rate_limit_out_bps;
                    let value = serde_json::to_vec(&stored).unwrap_or_default();
                    let key = self.keys.mapping(name);
                    ops.insert(key.clone(), put_op(&key, value, 0));
                }
                Planned::Edge(PlannedEdge::Put { record, .. }) => {
                    let value = serde_json::to_vec(record).unwrap_or_default();
                    let key = self.keys.edge(&record.id);
                    ops.insert(key.clone(), put_op(&key, value, 0));
                }
                Planned::Edge(PlannedEdge::Remove { id }) => {
                    let key = self.keys.edge(id);
                    ops.insert(key.clone(), delete_op(&key));
                    let drained = self.keys.drained_edge(id);
                    ops.insert(drained.clone(), delete_op(&drained));
                }
            }
        }
        pb::TxnRequest {
            compare: vec![mod_equals(&guard, guard_mod)],
            success: ops.into_values().collect(),
            failure: vec![],
        }
    }

    /// Waits until every live node applied `revision`, or `apply_wait`
    /// passes; reports each node.
    async fn wait_nodes(
        &self,
        revision: i64,
        names: &BTreeSet<String>,
        until: tokio::time::Instant,
    ) -> Vec<NodeApply> {
        let mut seen = self.nodes_seen.subscribe();
        let all_applied = |nodes: &[NodeView]| nodes.iter().all(|n| n.applied_revision >= revision);
        let _ = tokio::time::timeout_at(until, async {
            loop {
                if all_applied(&self.nodes()) {
                    return;
                }
                if seen.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.nodes()
            .into_iter()
            .map(|n| NodeApply {
                applied: n.applied_revision >= revision,
                failures: n
                    .mapping_failures
                    .into_iter()
                    .filter(|f| names.contains(&f.mapping))
                    .collect(),
                node: n.id,
            })
            .collect()
    }

    /// Drains edge `id` everywhere, or undoes that.
    pub(crate) async fn set_edge_draining(
        &self,
        id: &str,
        draining: bool,
    ) -> Result<(), ChangeError> {
        let key = self.keys.drained_edge(id);
        let op = if draining { put_op(&key, Vec::new(), 0) } else { delete_op(&key) };
        let txn = pb::TxnRequest { compare: vec![], success: vec![op], failure: vec![] };
        let (_, revision) = self.etcd.txn(txn).await.map_err(|e| self.write_failed(&e))?;
        self.wait_applied(revision, self.config.apply_wait).await;
        Ok(())
    }

    /// Drains node `id` (this run of it): it says not-ready, so the load
    /// balancer sends no new clients, and resets the connections still open
    /// at the deadline. `None` undrains it.
    pub(crate) async fn set_node_drain(
        &self,
        id: &str,
        deadline: Option<Duration>,
    ) -> Result<NodeView, ChangeError> {
        let Some(node) = self.nodes().into_iter().find(|n| n.id == id) else {
            let known: Vec<String> = self.nodes().into_iter().map(|n| n.id).collect();
            return Err(ChangeError::new(
                ErrorKind::NotFound,
                format!("no live node with id {id:?} (live: {known:?})"),
            ));
        };
        let key = self.keys.node_drain(id);
        let op = match deadline {
            Some(d) => {
                let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                let drain = NodeDrain {
                    run: node.started_unix_ms,
                    deadline_unix_ms: crate::clock::unix_ms().saturating_add(millis),
                };
                put_op(&key, serde_json::to_vec(&drain).unwrap_or_default(), 0)
            }
            None => delete_op(&key),
        };
        let txn = pb::TxnRequest { compare: vec![], success: vec![op], failure: vec![] };
        self.etcd.txn(txn).await.map_err(|e| self.write_failed(&e))?;
        // The answer shows the node once it says so itself, if it does
        // within the wait.
        let want = deadline.is_some();
        let mut seen = self.nodes_seen.subscribe();
        let _ = tokio::time::timeout(self.config.apply_wait, async {
            loop {
                if self.nodes().iter().any(|n| n.id == id && n.draining == want) {
                    return;
                }
                if seen.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        Ok(self.nodes().into_iter().find(|n| n.id == id).unwrap_or(node))
    }
}

fn name_of(p: &Planned) -> String {
    match p {
        Planned::Add(m) => m.name.clone(),
        Planned::Drain { name, .. }
        | Planned::Remove { name }
        | Planned::SetPolicy { name, .. } => name.clone(),
        Planned::Edge(edge) => edge.id().to_owned(),
    }
}
