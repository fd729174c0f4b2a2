//! Following etcd: read everything, watch from the next revision, and make
//! the mapping table match after every change. A lost watch, an etcd that
//! stops answering or a compacted revision means: read everything again.

use std::sync::Arc;
use std::time::Duration;

use api::MappingSource;
use etcdv3client::pb;
use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Cluster;
use super::etcd::WatchItem;
use crate::mapping::Phase;
use crate::mappings::spec_of;

/// Housekeeping period: expired drains, the node's own drain deadline.
const TICK: Duration = Duration::from_secs(1);
/// How often a mapping that failed to bind here is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(5);
/// Longest pause between attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Follows etcd until the node leaves the cluster.
///
/// A lost watch is first resumed from the revision after the last one
/// seen (cheap with thousands of mappings); if etcd compacted that
/// revision away, or the watch cannot be resumed, the node reads
/// everything again and watches from there.
pub(super) async fn run(cluster: Arc<Cluster>) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    let mut resume_from: Option<i64> = None;
    loop {
        if !first {
            tokio::select! {
                () = cluster.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        first = false;
        let from = match resume_from.take() {
            Some(from) => from,
            None => {
                let read = tokio::select! {
                    () = cluster.stop.cancelled() => return,
                    r = cluster.etcd.range_prefix(cluster.keys.prefix()) => r,
                };
                match read {
                    Ok((revision, kvs)) => {
                        cluster.replace_state(revision, kvs).await;
                        revision + 1
                    }
                    Err(e) => {
                        cluster.store_failed(&e.to_string());
                        housekeeping(&cluster).await;
                        continue;
                    }
                }
            }
        };
        let stream = match cluster.etcd.watch_prefix(cluster.keys.prefix(), from).await {
            Ok(s) => s,
            Err(e) => {
                cluster.store_failed(&e.to_string());
                continue;
            }
        };
        match follow(&cluster, stream).await {
            Followed::Stopped => return,
            Followed::Compacted => {}
            Followed::Lost { seen } => {
                backoff = Duration::from_millis(100);
                resume_from = Some(seen.max(from - 1) + 1);
            }
        }
    }
}

/// How a watch ended.
enum Followed {
    Stopped,
    /// The revision to watch from is gone: read everything.
    Compacted,
    /// The stream broke after revision `seen`.
    Lost {
        seen: i64,
    },
}

/// Applies a watch's events until it ends.
async fn follow(
    cluster: &Cluster,
    stream: impl futures_util::Stream<Item = Result<WatchItem, super::etcd::EtcdError>>,
) -> Followed {
    let mut stream = std::pin::pin!(stream);
    let mut tick = tokio::time::interval(TICK);
    let mut last_retry = Instant::now();
    let mut seen = 0;
    loop {
        let item = tokio::select! {
            () = cluster.stop.cancelled() => return Followed::Stopped,
            _ = tick.tick() => {
                if last_retry.elapsed() >= RETRY_FAILED {
                    last_retry = Instant::now();
                    cluster.apply_to_table(true).await;
                }
                housekeeping(cluster).await;
                continue;
            }
            item = stream.next() => item,
        };
        match item {
            Some(Ok(WatchItem::Events { revision, events })) => {
                cluster.store_ok();
                seen = seen.max(revision);
                let mut problems = Vec::new();
                let (touched, remote) = {
                    let mut state = cluster.lock_state();
                    let node = &cluster.config.node_id;
                    let remote =
                        super::remote_events::describe(&cluster.keys, &state, &events, node);
                    (state.apply(&cluster.keys, revision, events, &mut problems), remote)
                };
                for p in problems {
                    warn!(problem = %p, "invalid value in etcd");
                }
                for (kind, subject, text) in remote {
                    cluster.events.record(kind, &subject, &text);
                }
                if touched.nodes {
                    cluster.publish_nodes();
                }
                if touched.desired {
                    cluster.apply_to_table(false).await;
                    let applied = cluster.lock_state().revision;
                    cluster.applied_now(applied);
                }
            }
            Some(Ok(WatchItem::Compacted { compact_revision })) => {
                warn!(
                    compact_revision,
                    "the watch fell behind etcd's compaction; reading everything again"
                );
                return Followed::Compacted;
            }
            Some(Err(e)) => {
                cluster.store_failed(&e.to_string());
                return Followed::Lost { seen };
            }
            None => {
                cluster.store_failed("the watch ended");
                return Followed::Lost { seen };
            }
        }
    }
}

impl Cluster {
    /// Makes the mapping table (and the edges' drain marks, and this node's
    /// drain) match the state. `retry_failed` binds again the mappings
    /// that failed to bind here.
    pub(super) async fn apply_to_table(&self, retry_failed: bool) {
        let Some(mappings) = self.mappings.upgrade() else { return };
        let state = self.lock_state().clone();
        let now_ms = crate::clock::unix_ms();
        let mut changed = false;
        // The fleet first: a mapping starts only if its edge is known.
        let fleet = self.edges.fleet();
        if !fleet.records().eq(state.edges.values().map(|(r, _)| r)) {
            // Problems are logged by the registry.
            self.edges.set_records(state.edges.values().map(|(r, _)| r));
            changed = true;
        }
        for (name, (stored, _)) in &state.mappings {
            let entry = mappings.get(name);
            // Compared as the node would run it (a bare IP in `allow` reads
            // back as /32): a raw comparison would restart it every pass.
            let wanted_config = stored.spec.to_config().ok();
            let wanted = wanted_config.as_ref().map(spec_of);
            // A new policy alone is applied live, without a restart.
            if let (Some(e), Some(w)) = (&entry, &wanted_config) {
                let mut running = e.spec_now();
                if running.policy != w.policy {
                    running.policy = w.policy;
                    if spec_of(&running) == spec_of(w) {
                        info!(mapping = %name, "policy changed in etcd; applied live");
                        e.set_policy(w.policy);
                    }
                }
            }
            let same = entry.as_ref().is_some_and(|e| Some(spec_of(&e.spec_now())) == wanted);
            let phase = entry.as_ref().map(|e| e.phase());
            match (phase, stored.drain_until_unix_ms) {
                (Some(_), _) if !same => {
                    info!(mapping = %name, "changed in etcd; restarting it with the new spec");
                    mappings.remove_now(name);
                    start(&mappings, &stored.spec).await;
                    changed = true;
                }
                (None, None) => {
                    start(&mappings, &stored.spec).await;
                    changed = true;
                }
                (Some(Phase::Failed), None) if retry_failed => {
                    mappings.remove_now(name);
                    start(&mappings, &stored.spec).await;
                    changed |= mappings.get(name).is_some_and(|e| e.phase() == Phase::Active);
                }
                (Some(Phase::Draining { .. }), None) => {
                    // Removed and added again while its drain was still
                    // finishing here: the new one serves now.
                    mappings.remove_now(name);
                    start(&mappings, &stored.spec).await;
                    changed = true;
                }
                (Some(Phase::Active | Phase::Failed), Some(until)) => {
                    mappings.start_drain_until(name, instant_of(until, now_ms));
                    changed = true;
                }
                _ => {}
            }
        }
        for entry in mappings.entries() {
            if !state.mappings.contains_key(&entry.spec.name) {
                mappings.remove_now(&entry.spec.name);
                changed = true;
            }
        }
        for id in self.edges.target_names() {
            if self.edges.is_edge(&id) {
                self.edges.set_draining(&id, state.drained_edges.contains(&id));
            }
        }
        self.apply_node_drain(&state);
        if changed {
            self.record_dirty.notify_one();
        }
    }

    fn apply_node_drain(&self, state: &super::Desired) {
        let mine = state.node_drains.get(&self.config.node_id).filter(|(d, _)| d.run == self.run);
        let mut deadline = self.drain_deadline.lock().unwrap_or_else(|p| p.into_inner());
        match (mine, *deadline) {
            (Some((drain, _)), current) if current != Some(drain.deadline_unix_ms) => {
                info!(
                    deadline_unix_ms = drain.deadline_unix_ms,
                    "drained by an operator: /ready says 503, so the load balancer sends no new \
                     clients; open connections may finish until the deadline"
                );
                *deadline = Some(drain.deadline_unix_ms);
                self.drain_reset_done.store(false, std::sync::atomic::Ordering::Relaxed);
                self.record_dirty.notify_one();
            }
            (None, Some(_)) => {
                info!("undrained by an operator: ready for new clients again");
                *deadline = None;
                self.record_dirty.notify_one();
            }
            _ => {}
        }
    }
}

/// Starts a mapping from the store; a spec that does not validate (written
/// to etcd by hand) is logged and skipped.
async fn start(mappings: &Arc<crate::mappings::Mappings>, spec: &api::MappingSpec) {
    match spec.to_config() {
        Ok(m) => mappings.start_one(m, MappingSource::Runtime).await,
        Err(e) => warn!(mapping = %spec.name, error = %e, "invalid mapping in etcd; skipped"),
    }
}

/// The monotonic instant of wall-clock time `unix_ms`.
fn instant_of(unix_ms: u64, now_ms: u64) -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_millis(unix_ms.saturating_sub(now_ms))).unwrap_or(now)
}

/// Once a second: deletes the keys of drains whose deadline passed (any
/// node may; the transaction makes the first one win), deletes drains of
/// this node's earlier runs, and resets this node's connections when its
/// own drain deadline passes.
async fn housekeeping(cluster: &Cluster) {
    let now_ms = crate::clock::unix_ms();
    if cluster.drain_deadline().is_some_and(|d| d <= now_ms)
        && !cluster.drain_reset_done.swap(true, std::sync::atomic::Ordering::Relaxed)
        && let Some(mappings) = cluster.mappings.upgrade()
    {
        // Each mapping starts afresh: its open connections are reset, its
        // listener comes back (the load balancer sends nothing while the
        // node is drained, and an undrain finds it serving).
        warn!(
            open = mappings.all_connections.len(),
            "node drain deadline passed; resetting the connections still open"
        );
        for entry in mappings.entries() {
            mappings.remove_now(&entry.spec.name);
        }
        cluster.apply_to_table(false).await;
    }
    if !cluster.health().reachable {
        return;
    }
    let (expired, stale): (Vec<_>, Vec<_>) = {
        let state = cluster.lock_state();
        let expired = state
            .mappings
            .iter()
            .filter(|(_, (m, _))| m.drain_until_unix_ms.is_some_and(|u| u <= now_ms))
            .map(|(name, (_, rev))| (cluster.keys.mapping(name), *rev))
            .collect();
        let stale = state
            .node_drains
            .iter()
            .filter(|(id, (d, _))| **id == cluster.config.node_id && d.run < cluster.run)
            .map(|(id, (_, rev))| (cluster.keys.node_drain(id), *rev))
            .collect();
        (expired, stale)
    };
    for (key, revision) in expired.into_iter().chain(stale) {
        if let Err(e) = cluster.etcd.txn(delete_if_unchanged(&key, revision)).await {
            cluster.store_failed(&e.to_string());
            return;
        }
    }
}

/// A transaction deleting `key` if nothing changed it since `revision`.
pub(super) fn delete_if_unchanged(key: &str, revision: i64) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![super::commit::mod_equals(key, revision)],
        success: vec![super::commit::delete_op(key)],
        failure: vec![],
    }
}
