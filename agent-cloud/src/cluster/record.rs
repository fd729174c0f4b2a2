//! This node's record in etcd (`P/nodes/<id>`): what it applied, what it
//! failed to serve, whether it is ready. Bound to a lease that the node
//! renews, so a node that dies disappears within the lease's TTL.

use std::sync::atomic::Ordering;
use std::time::Duration;

use api::{MappingFailure, NodeView};
use etcdv3client::pb;
use tracing::{info, warn};

use super::Cluster;

/// A record whose only change is its figures (connections, edges) is
/// rewritten at most this often; an unchanged one is not rewritten at all
/// (the lease says the node is alive). Every write is a revision etcd
/// keeps until it compacts.
const REFRESH: Duration = Duration::from_secs(10);

/// The record this node would publish now.
pub(super) fn own_record(cluster: &Cluster) -> NodeView {
    let (connections, edges_connected) = match cluster.mappings.upgrade() {
        Some(m) => (m.all_connections.len() as u64, cluster.edges.connected_edges()),
        None => (0, 0),
    };
    let health = cluster.health();
    NodeView {
        id: cluster.config.node_id.clone(),
        advertise: cluster.config.advertise.to_string(),
        control_url: cluster.control_url.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_unix_ms: cluster.run,
        ready: cluster.ready(),
        draining: cluster.drain_deadline().is_some(),
        drain_deadline_unix_ms: cluster.drain_deadline(),
        store_reachable: health.reachable,
        applied_revision: *cluster.applied.borrow(),
        connections,
        edges_connected: u32::try_from(edges_connected).unwrap_or(u32::MAX),
        mapping_failures: cluster
            .local_failures()
            .into_iter()
            .map(|(mapping, error)| MappingFailure { mapping, error })
            .collect(),
        updated_unix_ms: crate::clock::unix_ms(),
        this_node: false,
    }
}

/// Keeps the record and its lease alive until the node leaves.
pub(super) async fn run(cluster: std::sync::Arc<Cluster>) {
    let ttl = cluster.config.lease_ttl;
    let renew_every = ttl / 3;
    let mut lease: Option<i64> = None;
    let mut last_renew = tokio::time::Instant::now();
    let mut last_written: Option<NodeView> = None;
    let mut last_write = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = cluster.stop.cancelled() => return,
            () = cluster.record_dirty.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if !cluster.loaded.load(Ordering::Relaxed) {
            continue;
        }
        let id = match lease {
            Some(id) => id,
            None => match cluster.etcd.lease_grant(ttl).await {
                Ok(id) => {
                    lease = Some(id);
                    last_renew = tokio::time::Instant::now();
                    last_written = None;
                    id
                }
                Err(e) => {
                    cluster.store_failed(&e.to_string());
                    continue;
                }
            },
        };
        if last_renew.elapsed() >= renew_every {
            // A member that hangs must not hold the renewal until the lease
            // runs out: a third of the TTL, then the next member.
            let renewed = tokio::time::timeout(renew_every, cluster.etcd.lease_keep_alive(id));
            let Ok(renewed) = renewed.await else {
                cluster.etcd.next_member();
                cluster
                    .store_failed("a lease keep-alive got no answer within a third of lease_ttl");
                continue;
            };
            match renewed {
                Ok(true) => last_renew = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(
                        "this node's lease expired (etcd was out of reach too long); joining again"
                    );
                    lease = None;
                    continue;
                }
                Err(e) => {
                    cluster.store_failed(&e.to_string());
                    continue;
                }
            }
        }
        let record = own_record(&cluster);
        match last_written.as_ref() {
            Some(w) if same_but_figures(w, &record) => {
                let figures_moved = (w.connections, w.edges_connected)
                    != (record.connections, record.edges_connected);
                if !figures_moved || last_write.elapsed() < REFRESH {
                    continue;
                }
            }
            _ => {}
        }
        let Ok(value) = serde_json::to_vec(&record) else { continue };
        let put = pb::TxnRequest {
            compare: vec![],
            success: vec![super::commit::put_op(&cluster.keys.node(&record.id), value, id)],
            failure: vec![],
        };
        match cluster.etcd.txn(put).await {
            Ok(_) => {
                if last_written.is_none() {
                    info!(node = %record.id, lease = id, "node record written");
                }
                last_written = Some(record);
                last_write = tokio::time::Instant::now();
                cluster.store_ok();
            }
            Err(e) => cluster.store_failed(&e.to_string()),
        }
    }
}

/// Whether `a` and `b` differ at most in their figures and time.
fn same_but_figures(a: &NodeView, b: &NodeView) -> bool {
    let mut a = a.clone();
    a.updated_unix_ms = b.updated_unix_ms;
    a.connections = b.connections;
    a.edges_connected = b.edges_connected;
    a == *b
}

/// Deletes this node's record (on shutdown), within a second.
pub(super) async fn remove(cluster: &Cluster) {
    let key = cluster.keys.node(&cluster.config.node_id);
    let delete = pb::TxnRequest {
        compare: vec![],
        success: vec![super::commit::delete_op(&key)],
        failure: vec![],
    };
    if tokio::time::timeout(Duration::from_secs(1), cluster.etcd.txn(delete)).await.is_err() {
        warn!("could not delete this node's record; it goes when its lease expires");
    }
}
