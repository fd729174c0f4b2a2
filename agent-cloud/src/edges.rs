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
//!
//! A handshake holds its place from [`EdgeRegistry::admit`] (before the
//! cloud's `Welcome`) to [`EdgeRegistry::add`] as an [`Admission`]: it
//! counts towards `max_tunnels_per_edge` and keeps its epoch current just
//! as a live tunnel does, so handshakes in flight together can neither
//! exceed the limit nor let an older run in beside a newer one. A newer run
//! admitted meanwhile voids the older run's admissions: their tunnels are
//! closed as superseded when they arrive.
//!
//! In a cluster every node keeps its own registry: an edge with tunnels to
//! three nodes is three independent entries, each fenced on its own (the
//! edge's epoch is the same on all of them). What the edge says of its
//! links to every node arrives on each tunnel (`NodeLinks`) and is shown
//! as [`EdgeView::node_links`].
//!
//! Which edges exist, and with which tokens, is the [`Fleet`]: the config
//! file's edges with the run-time records on top. When it changes, the
//! tunnels whose credential no longer holds (the edge was removed or
//! revoked, or a rotation's grace for the old token ended) are closed at
//! once; the same check runs every second for graces that run out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use api::{EdgeHealth, EdgeNodeLink, EdgeView, TunnelView};
use config::Secret;
use proto::{GoAwayCode, RefuseCode};
use tracing::{info, warn};
use tunnel::Tunnel;

use crate::fleet::{Credential, EdgeRecord, Fleet};
use crate::metrics::{HistogramCounts, LatencyHistogram, Window};

/// SHA-256 of the token a tunnel proved: enough to tell later which of the
/// edge's tokens it was, without keeping a copy of the token per tunnel.
type TokenDigest = [u8; 32];

fn digest(token: &[u8]) -> TokenDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

/// An edge that was connected this recently counts as reconnecting, not
/// down, while it has no tunnel.
const RECONNECTING_GRACE_MS: u64 = 60_000;

#[derive(Debug)]
struct EdgeState {
    epoch: u64,
    /// Bumped whenever `epoch` changes: admissions of an older generation
    /// are void.
    generation: u64,
    /// Admissions of this generation not yet added or dropped.
    pending: usize,
    tunnels: Vec<Tunnel>,
    /// The token each live tunnel proved, by tunnel id.
    proven: BTreeMap<u64, TokenDigest>,
    /// Set by an operator: no new streams go to this edge.
    draining: bool,
    last_seen_ms: Option<u64>,
    last_report: Option<proto::EdgeReport>,
    /// The edge's latest links to the cluster's nodes.
    node_links: Vec<proto::NodeLink>,
    rtt_us: Window,
    /// The same round trips since the agent started, for `/metrics`.
    rtt: LatencyHistogram,
}

impl Default for EdgeState {
    fn default() -> Self {
        Self {
            epoch: 0,
            generation: 0,
            pending: 0,
            tunnels: Vec::new(),
            proven: BTreeMap::new(),
            draining: false,
            last_seen_ms: None,
            last_report: None,
            node_links: Vec::new(),
            rtt_us: Window::new(60_000_000),
            rtt: LatencyHistogram::default(),
        }
    }
}

impl EdgeState {
    fn prune(&mut self) {
        for t in self.tunnels.iter().filter(|t| t.is_closed()) {
            self.last_seen_ms = self.last_seen_ms.max(Some(t.last_heard_unix_ms()));
        }
        self.tunnels.retain(|t| !t.is_closed());
        let live: Vec<u64> = self.tunnels.iter().map(Tunnel::id).collect();
        self.proven.retain(|id, _| live.contains(id));
    }

    /// Takes the newest node links any live tunnel carried.
    fn refresh_links(&mut self) {
        if let Some(links) = self.tunnels.iter().rev().find_map(Tunnel::last_node_links) {
            self.node_links = links;
        }
    }
}

/// Every edge of the fleet, by id, with its tunnels.
#[derive(Debug)]
pub(crate) struct EdgeRegistry {
    max_tunnels: u32,
    /// One entry per edge of `fleet`. Locked after `fleet` when both are.
    edges: Mutex<BTreeMap<String, EdgeState>>,
    fleet: Mutex<Arc<Fleet>>,
}

/// A handshake's place among an edge's tunnels, from
/// [`EdgeRegistry::admit`] to [`EdgeRegistry::add`]; dropping it (the
/// handshake failed) frees the place.
#[derive(Debug)]
pub(crate) struct Admission {
    registry: Arc<EdgeRegistry>,
    edge_id: String,
    epoch: u64,
    generation: u64,
    /// The token the handshake proved.
    token: TokenDigest,
    /// Set by `add`, which settles the place itself.
    settled: bool,
}

impl Admission {
    pub(crate) fn edge_id(&self) -> &str {
        &self.edge_id
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut edges = self.registry.lock();
        if let Some(state) = edges.get_mut(&self.edge_id) {
            if state.generation == self.generation {
                state.pending = state.pending.saturating_sub(1);
            }
        }
    }
}

impl EdgeRegistry {
    pub(crate) fn new(max_tunnels: u32, fleet: Fleet) -> Self {
        let edges = fleet.edges().map(|(id, _)| (id.clone(), EdgeState::default())).collect();
        Self { max_tunnels, edges: Mutex::new(edges), fleet: Mutex::new(Arc::new(fleet)) }
    }

    /// The fleet as of now.
    pub(crate) fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.fleet.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the fleet: new edges get an entry, removed ones lose theirs,
    /// and every tunnel whose credential no longer holds is closed.
    #[cfg(test)]
    pub(crate) fn set_fleet(&self, fleet: Fleet) {
        let mut current = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        self.install(&mut current, fleet);
    }

    /// Replaces the run-time records, on the current config baseline
    /// (read under the same lock, so a reload of the config file in
    /// between is not undone).
    pub(crate) fn set_records<'a>(&self, records: impl IntoIterator<Item = &'a EdgeRecord>) {
        let mut current = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        let mut problems = Vec::new();
        let fleet = current.with_records(records, &mut problems);
        for problem in problems {
            warn!("{problem}");
        }
        self.install(&mut current, fleet);
    }

    /// Replaces the config baseline (a reloaded config file), keeping the
    /// run-time records.
    pub(crate) fn set_base(&self, edges: &[config::EdgeEntry], groups: &[config::EdgeGroup]) {
        let mut current = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        let records: Vec<EdgeRecord> = current.records().cloned().collect();
        let fleet = Fleet::new(edges, groups, &records, &mut Vec::new());
        self.install(&mut current, fleet);
    }

    fn install(&self, current: &mut Arc<Fleet>, fleet: Fleet) {
        let fleet = Arc::new(fleet);
        *current = Arc::clone(&fleet);
        let mut edges = self.lock();
        for (id, _) in fleet.edges() {
            edges.entry(id.clone()).or_default();
        }
        edges.retain(|id, state| {
            if fleet.is_edge(id) {
                return true;
            }
            for t in state.tunnels.drain(..) {
                t.close(GoAwayCode::Normal, "this edge was removed by an operator");
            }
            info!(edge = %id, "edge removed");
            false
        });
        enforce(&fleet, &mut edges, crate::clock::unix_ms());
    }

    /// Whether `target` names an edge or a group of the fleet.
    pub(crate) fn knows(&self, target: &str) -> bool {
        self.fleet().knows(target)
    }

    /// Every edge and group id, for error messages.
    pub(crate) fn target_names(&self) -> Vec<String> {
        self.fleet().target_names()
    }

    /// Checks an edge's proof against each token it may use now (`verify`
    /// says whether a token matches); returns the token that matched, for
    /// the cloud's own proof, and which one it was.
    ///
    /// # Errors
    /// The refusal to send: an unknown edge, a revoked one, or no token
    /// that matches.
    pub(crate) fn authenticate(
        &self,
        edge_id: &str,
        now_ms: u64,
        verify: impl Fn(&[u8]) -> bool,
    ) -> Result<(Secret, Credential), RefuseCode> {
        let fleet = self.fleet();
        let Some(edge) = fleet.get(edge_id) else { return Err(RefuseCode::UnknownEdge) };
        if edge.revoked {
            return Err(RefuseCode::Revoked);
        }
        edge.tokens(now_ms)
            .into_iter()
            .find(|(token, _)| verify(token))
            .map(|(token, credential)| (Secret::new(token), credential))
            .ok_or(RefuseCode::BadToken)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, EdgeState>> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides whether a new tunnel of `edge_id` from `epoch` may join, and
    /// if so holds its place until [`add`](Self::add) or until the
    /// [`Admission`] is dropped. Superseded tunnels are closed here.
    pub(crate) fn admit(
        self: &Arc<Self>,
        edge_id: &str,
        epoch: u64,
        token: &[u8],
    ) -> Result<Admission, RefuseCode> {
        let mut edges = self.lock();
        // Removed since its proof was checked.
        let Some(state) = edges.get_mut(edge_id) else { return Err(RefuseCode::UnknownEdge) };
        state.prune();
        let idle = state.tunnels.is_empty() && state.pending == 0;
        if idle || epoch > state.epoch {
            if !state.tunnels.is_empty() || state.pending > 0 {
                warn!(
                    edge = edge_id,
                    old_epoch = state.epoch,
                    new_epoch = epoch,
                    handshakes_voided = state.pending,
                    "a newer run of this edge connected; closing the old run's tunnels"
                );
                for t in state.tunnels.drain(..) {
                    t.close(GoAwayCode::Superseded, "a newer run of this edge connected");
                }
            }
            state.epoch = epoch;
            state.generation += 1;
            state.pending = 0;
        }
        if epoch < state.epoch {
            return Err(RefuseCode::Superseded);
        }
        if state.tunnels.len() + state.pending >= self.max_tunnels as usize {
            return Err(RefuseCode::TooManyTunnels);
        }
        state.pending += 1;
        Ok(Admission {
            registry: Arc::clone(self),
            edge_id: edge_id.to_owned(),
            epoch,
            generation: state.generation,
            token: digest(token),
            settled: false,
        })
    }

    /// Adds the established tunnel of `admission`. If a newer run was
    /// admitted meanwhile, the tunnel is closed instead; returns whether it
    /// joined.
    pub(crate) fn add(&self, mut admission: Admission, tunnel: Tunnel) -> bool {
        admission.settled = true;
        let fleet = self.fleet();
        let mut edges = self.lock();
        let Some(state) = edges.get_mut(&admission.edge_id) else {
            tunnel.close(GoAwayCode::Normal, "this edge was removed by an operator");
            return false;
        };
        state.prune();
        if admission.generation != state.generation {
            tunnel.close(GoAwayCode::Superseded, "a newer run of this edge connected");
            return false;
        }
        state.pending = state.pending.saturating_sub(1);
        // Revoked or rotated past its grace while the handshake finished.
        let accepted = fleet.get(&admission.edge_id).is_some_and(|e| {
            e.tokens(crate::clock::unix_ms()).iter().any(|(t, _)| digest(t) == admission.token)
        });
        if !accepted {
            tunnel.close(GoAwayCode::Normal, "this edge's token was revoked or replaced");
            return false;
        }
        state.proven.insert(tunnel.id(), admission.token);
        state.tunnels.push(tunnel);
        info!(edge = %admission.edge_id, tunnels = state.tunnels.len(), "edge tunnel up");
        true
    }

    /// The live tunnel with the fewest streams among the edges `target`
    /// names (one edge, or a group's members), skipping edges an operator
    /// drained, tunnels whose edge is shutting down, and `exclude`.
    pub(crate) fn pick(&self, target: &str, exclude: &[u64]) -> Option<Tunnel> {
        let ids = self.fleet().members(target);
        let mut edges = self.lock();
        let mut best: Option<Tunnel> = None;
        for id in &ids {
            let Some(state) = edges.get_mut(id) else { continue };
            if state.draining {
                continue;
            }
            state.prune();
            for t in
                state.tunnels.iter().filter(|t| t.accepts_streams() && !exclude.contains(&t.id()))
            {
                if best.as_ref().is_none_or(|b| t.active_streams() < b.active_streams()) {
                    best = Some(t.clone());
                }
            }
        }
        best
    }

    /// Every tunnel of the edge that holds tunnel `tunnel_id`, by id: what
    /// to skip when that edge answered that it is draining.
    pub(crate) fn tunnels_of_same_edge(&self, tunnel_id: u64) -> Vec<u64> {
        let edges = self.lock();
        let edge = edges.values().find(|s| s.tunnels.iter().any(|t| t.id() == tunnel_id));
        edge.map_or_else(Vec::new, |s| s.tunnels.iter().map(Tunnel::id).collect())
    }

    pub(crate) fn live_tunnels(&self, edge_id: &str) -> usize {
        let mut edges = self.lock();
        edges.get_mut(edge_id).map_or(0, |s| {
            s.prune();
            s.tunnels.len()
        })
    }

    /// Edges with at least one live tunnel.
    pub(crate) fn connected_edges(&self) -> usize {
        let mut edges = self.lock();
        edges
            .values_mut()
            .map(|s| {
                s.prune();
                !s.tunnels.is_empty()
            })
            .filter(|up| *up)
            .count()
    }

    /// Whether `id` names an edge of the fleet (not a group).
    pub(crate) fn is_edge(&self, id: &str) -> bool {
        self.fleet().is_edge(id)
    }

    /// Marks an edge drained by an operator: open streams continue, new
    /// ones go nowhere. Returns false for an unknown edge.
    pub(crate) fn set_draining(&self, edge_id: &str, draining: bool) -> bool {
        match self.lock().get_mut(edge_id) {
            Some(state) => {
                state.draining = draining;
                info!(edge = edge_id, draining, "edge drain changed");
                true
            }
            None => false,
        }
    }

    /// Once a second: closes the tunnels whose token's grace ended, and
    /// records tunnel round trips and the latest reports.
    pub(crate) fn sample(&self, now_secs: u64) {
        let fleet = self.fleet();
        let mut edges = self.lock();
        enforce(&fleet, &mut edges, crate::clock::unix_ms());
        for state in edges.values_mut() {
            state.prune();
            for t in &state.tunnels {
                if let Some(rtt) = t.rtt() {
                    let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                    state.rtt_us.record(micros, now_secs);
                    state.rtt.record(micros);
                }
                state.last_seen_ms = state.last_seen_ms.max(Some(t.last_heard_unix_ms()));
                if let Some(report) = t.last_report() {
                    state.last_report = Some(report);
                }
            }
            state.refresh_links();
        }
    }

    /// Each edge's tunnel round trips since the agent started (one value
    /// per tunnel per second), for `/metrics`.
    pub(crate) fn rtt_histograms(&self) -> Vec<(String, HistogramCounts)> {
        self.lock().iter().map(|(id, state)| (id.clone(), state.rtt.read())).collect()
    }

    /// Every edge as the API shows it.
    pub(crate) fn views(&self, now_secs: u64, now_ms: u64) -> Vec<EdgeView> {
        let fleet = self.fleet();
        let mut edges = self.lock();
        edges
            .iter_mut()
            .map(|(id, state)| {
                let member = fleet.get(id);
                state.prune();
                state.refresh_links();
                let up = u32::try_from(state.tunnels.len()).unwrap_or(u32::MAX);
                let report = state.last_report.as_ref();
                let configured = report.map_or(0, |r| u32::from(r.tunnels_configured));
                let recently = state
                    .last_seen_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) < RECONNECTING_GRACE_MS);
                let health = if up > 0 && up >= configured {
                    EdgeHealth::Connected
                } else if up > 0 || recently {
                    EdgeHealth::Reconnecting
                } else {
                    EdgeHealth::Down
                };
                let rtt = state.rtt_us.distribution(now_secs);
                EdgeView {
                    id: id.clone(),
                    health,
                    tunnels_up: up,
                    tunnels_configured: configured,
                    tunnels: state
                        .tunnels
                        .iter()
                        .map(|t| {
                            let budget = t.window_budget();
                            let credential = state.proven.get(&t.id()).and_then(|d| {
                                member?.tokens(now_ms).into_iter().find_map(|(token, c)| {
                                    (digest(token) == *d).then(|| c.as_str().to_owned())
                                })
                            });
                            TunnelView {
                                id: t.id(),
                                streams: t.active_streams() as u64,
                                rtt_us: t
                                    .rtt()
                                    .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                                draining: t.peer_draining(),
                                window_budget_used_bytes: budget.used,
                                window_growth_refused: budget.refused,
                                credential,
                            }
                        })
                        .collect(),
                    draining: state.draining,
                    last_seen_unix_ms: if up > 0 { Some(now_ms) } else { state.last_seen_ms },
                    rtt_p50_us: (rtt.count > 0).then_some(rtt.p50),
                    rtt_p99_us: (rtt.count > 0).then_some(rtt.p99),
                    version: report.map(|r| r.agent_version.clone()),
                    cpu_percent: report.map(|r| f32::from(r.cpu_permille) / 10.0),
                    memory_used_bytes: report.map(|r| r.memory_used),
                    memory_total_bytes: report.map(|r| r.memory_total),
                    connect_failures: report.map_or(0, |r| r.connects_failed),
                    source: if member.is_some_and(|e| e.from_config) {
                        api::EdgeSource::Config
                    } else {
                        api::EdgeSource::Runtime
                    },
                    groups: fleet.groups_of(id),
                    revoked: member.is_some_and(|e| e.revoked),
                    previous_token_until_unix_ms: member.and_then(|e| e.previous_until(now_ms)),
                    enrolment: fleet.record(id).and_then(|r| r.enrolment.as_ref()).map(|e| {
                        api::EnrolmentView {
                            expires_unix_ms: e.expires_unix_ms,
                            redeemed_unix_ms: e.redeemed_unix_ms,
                            redeemed_by: e.redeemed_by.clone(),
                        }
                    }),
                    node_links: state
                        .node_links
                        .iter()
                        .map(|l| EdgeNodeLink {
                            node: l.node.clone(),
                            tunnels_up: u32::from(l.tunnels_up),
                            error: (!l.error.is_empty()).then(|| l.error.clone()),
                        })
                        .collect(),
                }
            })
            .collect()
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

/// Closes each tunnel whose proven token `fleet` no longer accepts at
/// `now_ms`, saying why.
fn enforce(fleet: &Fleet, edges: &mut BTreeMap<String, EdgeState>, now_ms: u64) {
    for (id, state) in edges.iter_mut() {
        if state.tunnels.is_empty() {
            continue;
        }
        let Some(edge) = fleet.get(id) else { continue };
        let accepted: Vec<TokenDigest> =
            edge.tokens(now_ms).iter().map(|(t, _)| digest(t)).collect();
        let reason = if edge.revoked {
            "this edge was revoked by an operator"
        } else {
            "the token this tunnel proved was replaced, and its grace ended"
        };
        let proven = &state.proven;
        state.tunnels.retain(|t| {
            let keep = proven.get(&t.id()).is_some_and(|d| accepted.contains(d));
            if !keep {
                warn!(edge = %id, tunnel = t.id(), reason, "closing the tunnel");
                t.close(GoAwayCode::Normal, reason);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::DuplexStream;
    use tunnel::ws::WsConn;
    use tunnel::{MuxSettings, Role};

    use super::*;
    use crate::fleet::{EdgeRecord, PreviousToken};

    fn fleet_of(records: &[EdgeRecord]) -> Fleet {
        let base = [config::EdgeEntry { id: "e".into(), token: Secret::new(b"t".to_vec()) }];
        Fleet::new(&base, &[], records, &mut Vec::new())
    }

    fn registry(max_tunnels: u32) -> Arc<EdgeRegistry> {
        Arc::new(EdgeRegistry::new(max_tunnels, fleet_of(&[])))
    }

    async fn closed_because(t: &Tunnel, why: &str) -> bool {
        tokio::time::timeout(Duration::from_secs(5), t.closed()).await.is_ok()
            && t.close_reason().is_some_and(|r| r.contains(why))
    }

    fn rotated(until_unix_ms: u64) -> EdgeRecord {
        EdgeRecord {
            id: "e".into(),
            group: None,
            token: "t2".into(),
            previous: Some(PreviousToken { token: "t".into(), until_unix_ms }),
            revoked: false,
            enrolment: None,
        }
    }

    #[tokio::test]
    async fn a_revocation_closes_the_live_tunnels_and_refuses_the_edge() {
        let edges = registry(8);
        let (live, _a) = tunnel(1);
        assert!(edges.add(edges.admit("e", 1, b"t").unwrap(), live.clone()));
        let revoked = EdgeRecord {
            id: "e".into(),
            group: None,
            token: String::new(),
            previous: None,
            revoked: true,
            enrolment: None,
        };
        edges.set_fleet(fleet_of(&[revoked]));
        assert!(closed_because(&live, "revoked").await);
        assert_eq!(edges.live_tunnels("e"), 0);
        let err = edges.authenticate("e", 0, |t| t == b"t").unwrap_err();
        assert_eq!(err, RefuseCode::Revoked);
        assert_eq!(edges.authenticate("x", 0, |_| true).unwrap_err(), RefuseCode::UnknownEdge);
    }

    #[tokio::test]
    async fn after_a_rotation_both_tokens_work_until_the_grace_ends() {
        let edges = registry(8);
        let (old, _a) = tunnel(1);
        assert!(edges.add(edges.admit("e", 1, b"t").unwrap(), old.clone()));
        let far = crate::clock::unix_ms() + 3_600_000;
        edges.set_fleet(fleet_of(&[rotated(far)]));
        assert!(!old.is_closed(), "the old token's tunnel was closed during its grace");
        let (credential_old, credential_new) = (
            edges.authenticate("e", 0, |t| t == b"t").unwrap().1,
            edges.authenticate("e", 0, |t| t == b"t2").unwrap().1,
        );
        assert_eq!((credential_old, credential_new), (Credential::Previous, Credential::Current));
        let (new, _b) = tunnel(2);
        assert!(edges.add(edges.admit("e", 1, b"t2").unwrap(), new.clone()));
        let view = edges.views(0, crate::clock::unix_ms()).remove(0);
        let used: Vec<_> = view.tunnels.iter().map(|t| t.credential.clone()).collect();
        assert_eq!(used, [Some("previous".to_owned()), Some("current".to_owned())]);
        assert_eq!(view.previous_token_until_unix_ms, Some(far));

        // The grace ends: the old token's tunnel goes, the new one stays.
        edges.set_fleet(fleet_of(&[rotated(1)]));
        assert!(closed_because(&old, "grace ended").await);
        assert!(!new.is_closed());
        let now = crate::clock::unix_ms();
        assert_eq!(edges.authenticate("e", now, |t| t == b"t").unwrap_err(), RefuseCode::BadToken);
    }

    #[tokio::test]
    async fn a_removed_edge_loses_its_tunnels_and_its_place() {
        let mut record = rotated(0);
        record.id = "r".into();
        record.previous = None;
        let edges = Arc::new(EdgeRegistry::new(8, fleet_of(&[record])));
        let (live, _a) = tunnel(1);
        assert!(edges.add(edges.admit("r", 1, b"t2").unwrap(), live.clone()));
        edges.set_fleet(fleet_of(&[]));
        assert!(closed_because(&live, "removed").await);
        assert!(!edges.is_edge("r"));
        assert_eq!(edges.admit("r", 1, b"t2").unwrap_err(), RefuseCode::UnknownEdge);
    }

    /// A live cloud-side tunnel over an in-memory pipe; the far end must be
    /// kept for it to stay open.
    fn tunnel(id: u64) -> (Tunnel, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (t, _) = Tunnel::spawn(WsConn::accepted(ours), Role::Cloud, id, MuxSettings::default());
        (t, theirs)
    }

    async fn superseded(t: &Tunnel) -> bool {
        tokio::time::timeout(Duration::from_secs(5), t.closed()).await.is_ok()
            && t.close_reason().is_some_and(|r| r.contains("newer run"))
    }

    #[tokio::test]
    async fn a_newer_run_supersedes_the_live_tunnels_and_an_older_one_is_refused() {
        let edges = registry(8);
        let (old, _a) = tunnel(1);
        assert!(edges.add(edges.admit("e", 1, b"t").unwrap(), old.clone()));
        assert_eq!(edges.live_tunnels("e"), 1);
        let (new, _b) = tunnel(2);
        assert!(edges.add(edges.admit("e", 2, b"t").unwrap(), new.clone()));
        assert!(superseded(&old).await, "the old run's tunnel was not closed");
        assert_eq!(edges.admit("e", 1, b"t").unwrap_err(), RefuseCode::Superseded);
        assert_eq!(edges.live_tunnels("e"), 1);
        assert!(!new.is_closed());
    }

    #[tokio::test]
    async fn an_older_run_cannot_win_a_concurrent_handshake() {
        let edges = registry(8);
        // The newer run is admitted first; the older one's handshake, still
        // in flight, must not be let in beside it.
        let newer = edges.admit("e", 2, b"t").unwrap();
        assert_eq!(edges.admit("e", 1, b"t").unwrap_err(), RefuseCode::Superseded);
        let (new, _a) = tunnel(1);
        assert!(edges.add(newer, new.clone()));
        assert!(!new.is_closed());

        // The other order: the older run is admitted first; the newer one
        // voids its admission, and its tunnel is closed when it arrives.
        let edges = registry(8);
        let older = edges.admit("e", 1, b"t").unwrap();
        let newer = edges.admit("e", 2, b"t").unwrap();
        let (new, _b) = tunnel(2);
        let (old, _c) = tunnel(3);
        assert!(edges.add(newer, new.clone()));
        assert!(!edges.add(older, old.clone()), "a voided admission joined");
        assert!(superseded(&old).await);
        assert!(!new.is_closed());
        assert_eq!(edges.live_tunnels("e"), 1);
    }

    #[tokio::test]
    async fn handshakes_in_flight_count_towards_max_tunnels() {
        let edges = registry(2);
        let first = edges.admit("e", 1, b"t").unwrap();
        let second = edges.admit("e", 1, b"t").unwrap();
        assert_eq!(edges.admit("e", 1, b"t").unwrap_err(), RefuseCode::TooManyTunnels);
        // A handshake that fails frees its place.
        drop(second);
        let second = edges.admit("e", 1, b"t").unwrap();
        let (a, _a) = tunnel(1);
        let (b, _b) = tunnel(2);
        assert!(edges.add(first, a));
        assert!(edges.add(second, b.clone()));
        assert_eq!(edges.admit("e", 1, b"t").unwrap_err(), RefuseCode::TooManyTunnels);
        assert_eq!(edges.live_tunnels("e"), 2);
        // A closed tunnel frees its place too.
        b.close(GoAwayCode::Normal, "test");
        b.closed().await;
        assert!(edges.admit("e", 1, b"t").is_ok());
    }

    #[tokio::test]
    async fn a_voided_admission_frees_nothing_of_the_newer_run() {
        let edges = registry(1);
        let older = edges.admit("e", 1, b"t").unwrap();
        let newer = edges.admit("e", 2, b"t").unwrap();
        drop(older); // the older run's handshake fails after being voided
        assert_eq!(
            edges.admit("e", 2, b"t").unwrap_err(),
            RefuseCode::TooManyTunnels,
            "the newer run's place was freed by the older run's failure"
        );
        drop(newer);
        assert!(edges.admit("e", 2, b"t").is_ok());
    }

    #[tokio::test]
    async fn with_nothing_live_or_in_flight_any_run_is_accepted() {
        let edges = registry(8);
        let (new, _a) = tunnel(1);
        assert!(edges.add(edges.admit("e", 5, b"t").unwrap(), new.clone()));
        new.close(GoAwayCode::Normal, "test");
        new.closed().await;
        let (old, _b) = tunnel(2);
        assert!(
            edges.add(edges.admit("e", 3, b"t").unwrap(), old.clone()),
            "an older run after a gap"
        );
        assert!(!old.is_closed());
    }
}
