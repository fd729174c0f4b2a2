//! Connected edges, their tunnels, and session fencing.
//!
//! Each edge process picks an *epoch* when it starts (its start time in
//! nanoseconds). All tunnels of one edge id belong to one epoch at a time:
//! - a tunnel from a newer epoch supersedes the old ones (they are closed),
//!   so a restarted edge takes over at once, without waiting for the dead
//!   process's tunnels to time out;
//! - a tunnel from an older epoch is refused while the newer one has live
//!   tunnels, so two processes with the same id cannot steal the edge from
//!   each other in a loop;
//! - once an edge has no live tunnel, any epoch is accepted.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::{GoAwayCode, RefuseCode};
use tracing::{info, warn};
use tunnel::Tunnel;

#[derive(Debug, Default)]
struct EdgeState {
    epoch: u64,
    tunnels: Vec<Tunnel>,
}

impl EdgeState {
    fn prune(&mut self) {
        self.tunnels.retain(|t| !t.is_closed());
    }
}

/// Every edge the cloud has seen, by id.
#[derive(Debug)]
pub(crate) struct EdgeRegistry {
    max_tunnels: u32,
    edges: Mutex<HashMap<String, EdgeState>>,
}

impl EdgeRegistry {
    pub(crate) fn new(max_tunnels: u32) -> Self {
        Self { max_tunnels, edges: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, EdgeState>> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides whether a new tunnel of `edge_id` from `epoch` may join.
    /// Superseded tunnels are closed here.
    pub(crate) fn admit(&self, edge_id: &str, epoch: u64) -> Result<(), RefuseCode> {
        let mut edges = self.lock();
        let state = edges.entry(edge_id.to_owned()).or_default();
        state.prune();
        if state.tunnels.is_empty() || epoch > state.epoch {
            if !state.tunnels.is_empty() {
                warn!(
                    edge = edge_id,
                    old_epoch = state.epoch,
                    new_epoch = epoch,
                    "a newer run of this edge connected; closing the old run's tunnels"
                );
                for t in state.tunnels.drain(..) {
                    t.close(GoAwayCode::Superseded, "a newer run of this edge connected");
                }
            }
            state.epoch = epoch;
            return Ok(());
        }
        if epoch < state.epoch {
            return Err(RefuseCode::Superseded);
        }
        if state.tunnels.len() >= self.max_tunnels as usize {
            return Err(RefuseCode::TooManyTunnels);
        }
        Ok(())
    }

    /// Adds an established tunnel. If a newer epoch was admitted meanwhile,
    /// the tunnel is closed instead.
    pub(crate) fn add(&self, edge_id: &str, epoch: u64, tunnel: Tunnel) {
        let mut edges = self.lock();
        let state = edges.entry(edge_id.to_owned()).or_default();
        state.prune();
        if epoch != state.epoch && !state.tunnels.is_empty() {
            tunnel.close(GoAwayCode::Superseded, "a newer run of this edge connected");
            return;
        }
        state.epoch = epoch;
        state.tunnels.push(tunnel);
        info!(edge = edge_id, tunnels = state.tunnels.len(), "edge tunnel up");
    }

    /// The live, non-draining tunnel of `edge_id` with the fewest streams.
    pub(crate) fn pick(&self, edge_id: &str) -> Option<Tunnel> {
        let mut edges = self.lock();
        let state = edges.get_mut(edge_id)?;
        state.prune();
        state
            .tunnels
            .iter()
            .filter(|t| !t.peer_draining())
            .min_by_key(|t| t.active_streams())
            .cloned()
    }

    pub(crate) fn live_tunnels(&self, edge_id: &str) -> usize {
        let mut edges = self.lock();
        edges.get_mut(edge_id).map_or(0, |s| {
            s.prune();
            s.tunnels.len()
        })
    }

    /// Closes every tunnel and waits until they have ended.
    pub(crate) async fn close_all(&self, reason: &str) {
        let tunnels: Vec<Tunnel> =
            self.lock().values_mut().flat_map(|s| s.tunnels.drain(..)).collect();
        for t in &tunnels {
            t.close(GoAwayCode::Normal, reason);
        }
        for t in &tunnels {
            t.closed().await;
        }
    }
}
