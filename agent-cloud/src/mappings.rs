//! The mapping table and every change to it: add, drain, remove, and
//! batches of them, validated as a whole and applied all or nothing. An
//! operator's edge drains, and the fleet's changes (edges added, removed,
//! given a new token or revoked, planned in `edge_changes`), go through
//! here too: they share the state file, and a batch may hold both.
//!
//! A change goes through three steps, under one lock so changes never
//! interleave:
//! 1. **plan**: each change is checked against the table as the earlier
//!    changes of the batch would leave it (names, listen addresses, edges);
//! 2. **prepare**: every added mapping's listener is bound. If one fails,
//!    the ones already bound are dropped and nothing has changed;
//! 3. **commit**: the new state file is written (atomically), then the
//!    table changes. If the write fails, nothing has changed either. Once
//!    the file is replaced, nothing can fail: every value the table change
//!    needs (a drain deadline, say) was checked in step 1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{Change, ChangeOutcome, MappingSource, MappingSpec, MappingView};
use config::{HostPattern, MappingConfig, Sharing};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::edge_changes::{self, PlannedEdge};
use crate::edges::EdgeRegistry;
use crate::errors::{ChangeError, ErrorKind};
use crate::fleet::Fleet;
use crate::mapping::{self, MappingEntry, Phase};
use crate::shared_port::{self, PeekLimits, PortContext, SharedPort};
use crate::store::{PersistedState, Saved, Store};

/// Drain deadline when a request names none.
pub(crate) const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// A change that passed planning.
#[derive(Debug)]
pub(crate) enum Planned {
    Add(MappingConfig),
    Drain { name: String, deadline: Duration },
    Remove { name: String },
    SetPolicy { name: String, policy: config::TrafficPolicy },
    Edge(PlannedEdge),
}

/// The outcome of a batch.
#[derive(Debug)]
pub(crate) struct BatchOutcome {
    pub(crate) applied: bool,
    pub(crate) outcomes: Vec<ChangeOutcome>,
    /// The first failure, for the HTTP status.
    pub(crate) failure: Option<ChangeError>,
    /// In a cluster: the revision the batch was committed at.
    pub(crate) revision: Option<i64>,
    /// In a cluster: what each live node did with it.
    pub(crate) nodes: Vec<api::NodeApply>,
}

impl BatchOutcome {
    pub(crate) fn refused(outcomes: Vec<ChangeOutcome>, failure: Option<ChangeError>) -> Self {
        Self { applied: false, outcomes, failure, revision: None, nodes: Vec::new() }
    }
}

/// The state as planning sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlanTable {
    /// Every mapping name with its phase.
    pub(crate) names: BTreeMap<String, Phase>,
    /// The listen address of every active mapping, and the host it takes
    /// there if it shares the address.
    pub(crate) listening: BTreeMap<String, (SocketAddr, Option<HostPattern>)>,
    /// The edge or group each mapping that is not draining names.
    pub(crate) targets: BTreeMap<String, String>,
    pub(crate) fleet: Fleet,
}

/// Every mapping the cloud agent knows, and the machinery to change them.
#[derive(Debug)]
pub(crate) struct Mappings {
    table: Mutex<BTreeMap<String, Arc<MappingEntry>>>,
    /// Serialises changes; holds what the state file says.
    persisted: tokio::sync::Mutex<PersistedState>,
    store: Option<Store>,
    pub(crate) edges: Arc<EdgeRegistry>,
    /// Addresses of the agent's own listeners (tunnel, control).
    reserved: Vec<SocketAddr>,
    pub(crate) all_connections: TaskTracker,
    pub(crate) abort_all: CancellationToken,
    /// Set when the agent is a cluster node: changes go to etcd, and the
    /// table follows what etcd says.
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// `[cluster] public_ip`: the address mappings bind on, whatever their
    /// `listen` says.
    pub(crate) bind_ip: Option<std::net::IpAddr>,
    /// `[proxy_protocol]`, for every listener, run-time mappings' too.
    pub(crate) proxy_protocol: Option<Arc<config::ProxyProtocolConfig>>,
    /// The event log, for limits the listeners hit.
    pub(crate) events: std::sync::OnceLock<crate::events::EventLog>,
    /// SHA-256 of the tunnel certificate's public key (with TLS): the pin
    /// every enrolment code carries.
    pub(crate) enrol_pin: std::sync::OnceLock<[u8; 32]>,
    /// The listen addresses mappings share by host, by the address bound.
    ports: Mutex<BTreeMap<SocketAddr, Arc<SharedPort>>>,
    /// What reading their connections' names may take.
    peek_limits: PeekLimits,
}

/// How an added mapping gets its listener.
#[derive(Debug)]
enum Listening {
    /// Its own, bound in the prepare step.
    Own(TcpListener),
    /// A shared address's: a new one bound in the prepare step, or one
    /// already listening (or bound by an earlier add of the batch).
    Shared(Option<TcpListener>),
}

fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Mappings {
    pub(crate) fn new(
        store: Option<Store>,
        persisted: PersistedState,
        edges: Arc<EdgeRegistry>,
        reserved: Vec<SocketAddr>,
        bind_ip: Option<std::net::IpAddr>,
        proxy_protocol: Option<config::ProxyProtocolConfig>,
        host_routing_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(BTreeMap::new()),
            persisted: tokio::sync::Mutex::new(persisted),
            store,
            edges,
            reserved,
            all_connections: TaskTracker::new(),
            abort_all: CancellationToken::new(),
            cluster: std::sync::OnceLock::new(),
            bind_ip,
            proxy_protocol: proxy_protocol.map(Arc::new),
            events: std::sync::OnceLock::new(),
            enrol_pin: std::sync::OnceLock::new(),
            ports: Mutex::new(BTreeMap::new()),
            peek_limits: PeekLimits::new(host_routing_timeout),
        })
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, Arc<SharedPort>>> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared address listening on `addr`, if any.
    fn port_at(&self, addr: SocketAddr) -> Option<Arc<SharedPort>> {
        self.ports().get(&addr).cloned()
    }

    /// Every shared address, for the API and `/metrics`.
    pub(crate) fn shared_ports(&self) -> Vec<Arc<SharedPort>> {
        let mut ports: Vec<Arc<SharedPort>> = Vec::new();
        for port in self.ports().values() {
            // A port-0 address is held under the address asked and bound.
            if !ports.iter().any(|p| Arc::ptr_eq(p, port)) {
                ports.push(Arc::clone(port));
            }
        }
        ports
    }

    /// Binds `listen` for a mapping: its own listener, or for a mapping
    /// with a host the shared address's (bound only if no mapping listens
    /// there yet).
    fn bind_for(&self, spec: &MappingConfig, addr: SocketAddr) -> std::io::Result<Listening> {
        if spec.host.is_none() {
            return crate::net::listen(addr).map(Listening::Own);
        }
        if self.port_at(addr).is_some() {
            return Ok(Listening::Shared(None));
        }
        crate::net::listen(addr).map(|l| Listening::Shared(Some(l)))
    }

    /// Routes `spec`'s host on the shared address at `addr`, starting its
    /// listener from `listener` if it is new. Returns the address bound.
    fn join_port(
        self: &Arc<Self>,
        entry: &Arc<MappingEntry>,
        addr: SocketAddr,
        listener: Option<TcpListener>,
    ) -> Option<SocketAddr> {
        let mut ports = self.ports();
        if let Some(port) = ports.get(&addr) {
            port.add(Arc::clone(entry));
            return Some(port.bound);
        }
        let listener = listener?;
        let bound = listener.local_addr().unwrap_or(addr);
        let port = SharedPort::new(bound);
        port.add(Arc::clone(entry));
        ports.insert(addr, Arc::clone(&port));
        // Port 0: later mappings name the address as written.
        if bound != addr {
            ports.insert(bound, Arc::clone(&port));
        }
        let cx = PortContext {
            edges: Arc::clone(&self.edges),
            all: self.all_connections.clone(),
            proxy: self.proxy_protocol.clone(),
            events: self.events.get().cloned(),
            limits: self.peek_limits.clone(),
            abort: self.abort_all.clone(),
        };
        info!(listen = %bound, "shared listener started");
        tokio::spawn(shared_port::run(port, listener, cx));
        Some(bound)
    }

    /// Takes a mapping's route off its shared address (drain, remove,
    /// shutdown); the address closes with its last route.
    fn leave_port(&self, entry: &Arc<MappingEntry>) {
        if entry.spec.host.is_none() {
            return;
        }
        let mut ports = self.ports();
        let Some(port) = ports.values().find(|p| p.has(entry)).cloned() else { return };
        if port.remove(entry) {
            ports.retain(|_, p| !Arc::ptr_eq(p, &port));
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<MappingEntry>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds and starts a mapping from the config or the state file at
    /// start-up. A bind failure leaves it in the table as failed.
    pub(crate) async fn start_one(self: &Arc<Self>, spec: MappingConfig, source: MappingSource) {
        let bound = if self.edges.knows(&spec.edge) {
            let addr = self.bind_addr(spec.listen);
            match self.bind_for(&spec, addr) {
                Ok(listener) => Ok(listener),
                Err(e) => Err(format!("cannot listen on {addr}: {e}")),
            }
        } else {
            Err(format!("edge or group {:?} is not configured", spec.edge))
        };
        match bound {
            Ok(listener) => self.insert_listening(spec, source, listener),
            Err(reason) => {
                error!(mapping = %spec.name, %reason, "mapping failed; the other mappings keep serving");
                let entry = MappingEntry::new(spec, source, Err(reason), &self.abort_all);
                self.table().insert(entry.spec.name.clone(), Arc::new(entry));
            }
        }
    }

    /// Where a mapping that asks for `listen` binds on this node.
    fn bind_addr(&self, listen: SocketAddr) -> SocketAddr {
        match self.bind_ip {
            Some(ip) => SocketAddr::new(ip, listen.port()),
            None => listen,
        }
    }

    fn insert_listening(
        self: &Arc<Self>,
        spec: MappingConfig,
        source: MappingSource,
        listening: Listening,
    ) {
        let listener = match listening {
            Listening::Own(listener) => listener,
            Listening::Shared(listener) => return self.insert_routed(spec, source, listener),
        };
        let addr = listener.local_addr().unwrap_or(spec.listen);
        info!(mapping = %spec.name, listen = %addr, edge = %spec.edge, target = %spec.target, "mapping listening");
        let entry = Arc::new(MappingEntry::new(spec, source, Ok(addr), &self.abort_all));
        self.table().insert(entry.spec.name.clone(), Arc::clone(&entry));
        tokio::spawn(mapping::run(
            entry,
            listener,
            Arc::clone(&self.edges),
            self.all_connections.clone(),
            self.proxy_protocol.clone(),
            self.events.get().cloned(),
        ));
    }

    /// A mapping with a host, on its shared address.
    fn insert_routed(
        self: &Arc<Self>,
        spec: MappingConfig,
        source: MappingSource,
        listener: Option<TcpListener>,
    ) {
        let addr = self.bind_addr(spec.listen);
        // The bound address is known once the entry is on the port; the
        // entry is built with the one asked for and corrected below.
        let port_bound = self.port_at(addr).map(|p| p.bound);
        let bound = port_bound.or_else(|| listener.as_ref().and_then(|l| l.local_addr().ok()));
        let Some(bound) = bound else {
            let reason = format!("no listener for the shared address {addr}");
            error!(mapping = %spec.name, %reason, "mapping failed; the other mappings keep serving");
            let entry = MappingEntry::new(spec, source, Err(reason), &self.abort_all);
            self.table().insert(entry.spec.name.clone(), Arc::new(entry));
            return;
        };
        let host = spec.host.as_ref().map(ToString::to_string).unwrap_or_default();
        info!(mapping = %spec.name, listen = %bound, host = %host, edge = %spec.edge,
            target = %spec.target, "mapping listening");
        let entry = Arc::new(MappingEntry::new(spec, source, Ok(bound), &self.abort_all));
        self.table().insert(entry.spec.name.clone(), Arc::clone(&entry));
        self.join_port(&entry, addr, listener);
    }

    /// The entry named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<MappingEntry>> {
        self.table().get(name).cloned()
    }

    /// Every entry, by name.
    pub(crate) fn entries(&self) -> Vec<Arc<MappingEntry>> {
        self.table().values().cloned().collect()
    }

    /// Every mapping as the API shows it.
    pub(crate) fn views(&self) -> Vec<MappingView> {
        let fleet = self.edges.fleet();
        let Some(cluster) = self.cluster.get() else {
            return self.entries().iter().map(|e| view(e, &fleet)).collect();
        };
        // The nodes once, not once per mapping.
        let nodes = cluster.nodes();
        self.entries()
            .iter()
            .map(|e| {
                let mut v = view(e, &fleet);
                v.nodes = cluster.mapping_on(&nodes, &e.spec.name);
                v
            })
            .collect()
    }

    /// The API view of `entry`; in a cluster, with where it stands on each
    /// node.
    pub(crate) fn view_of(&self, entry: &MappingEntry) -> MappingView {
        let mut v = view(entry, &self.edges.fleet());
        if let Some(cluster) = self.cluster.get() {
            v.nodes = cluster.mapping_on_nodes(&entry.spec.name);
        }
        v
    }

    /// Stops every listener (shutdown).
    pub(crate) fn stop_listeners(&self) {
        for entry in self.entries() {
            entry.stop_listener.cancel();
        }
        for port in self.shared_ports() {
            port.stop();
        }
    }

    /// Plans, prepares and commits `changes` (see the module docs).
    pub(crate) async fn apply(self: &Arc<Self>, changes: &[Change], dry_run: bool) -> BatchOutcome {
        if let Some(cluster) = self.cluster.get() {
            return cluster.apply(self, changes, dry_run).await;
        }
        let mut persisted = self.persisted.lock().await;
        let (planned, mut outcomes) = match passed(self.plan(changes, self.plan_table()), dry_run) {
            Ok(passed) => passed,
            Err(refused) => return refused,
        };

        // Prepare: bind every new listener before changing anything (an
        // address shared by several adds of the batch once).
        let mut listeners = Vec::new();
        let mut new_ports = Vec::new();
        for (index, p) in planned.iter().enumerate() {
            if let Planned::Add(spec) = p {
                let bound = if spec.host.is_some() && new_ports.contains(&spec.listen) {
                    Ok(Listening::Shared(None))
                } else {
                    self.bind_for(spec, spec.listen)
                };
                match bound {
                    Ok(l) => {
                        if matches!(l, Listening::Shared(Some(_))) {
                            new_ports.push(spec.listen);
                        }
                        listeners.push(l);
                    }
                    Err(e) => {
                        let err = ChangeError::new(
                            ErrorKind::BindFailed,
                            format!(
                                "mapping {:?}: cannot listen on {}: {e}",
                                spec.name, spec.listen
                            ),
                        );
                        outcomes[index] = ChangeOutcome {
                            index,
                            ok: false,
                            message: err.to_string(),
                            token: None,
                            code: None,
                        };
                        for (i, o) in outcomes.iter_mut().enumerate().take(index) {
                            *o = ChangeOutcome {
                                index: i,
                                ok: true,
                                message: "rolled back".into(),
                                token: None,
                                code: None,
                            };
                        }
                        return BatchOutcome::refused(outcomes, Some(err));
                    }
                }
            }
        }

        // Commit: state file first, then the fleet, then the table.
        let mut next = persisted.clone();
        for p in &planned {
            match p {
                Planned::Add(spec) => next.add(spec_of(spec)),
                Planned::Drain { name, .. } | Planned::Remove { name } => {
                    let from_config =
                        self.get(name).is_some_and(|e| e.source == MappingSource::Config);
                    next.forget(name, from_config);
                }
                Planned::SetPolicy { name, policy } => next.set_policy(name, policy),
                Planned::Edge(PlannedEdge::Put { record, .. }) => next.put_edge(record.clone()),
                Planned::Edge(PlannedEdge::Remove { id }) => next.remove_edge(id),
            }
        }
        if let Err(err) = self.persist(&next) {
            return BatchOutcome::refused(outcomes, Some(err));
        }
        let fleet_changed = next.edges != persisted.edges;
        *persisted = next;
        if fleet_changed {
            self.edges.set_records(&persisted.edges);
        }
        with_tokens(&mut outcomes, &planned);
        let mut listeners = listeners.into_iter();
        // Adds first: a batch that moves a host from one mapping to
        // another on a shared address must not close the address between
        // the two.
        let (adds, others): (Vec<_>, Vec<_>) =
            planned.into_iter().partition(|p| matches!(p, Planned::Add(_)));
        for p in adds.into_iter().chain(others) {
            match p {
                Planned::Add(spec) => {
                    if let Some(listener) = listeners.next() {
                        self.insert_listening(spec, MappingSource::Runtime, listener);
                    }
                }
                Planned::Drain { name, deadline } => self.start_drain(&name, deadline),
                Planned::Remove { name } => self.remove_now(&name),
                Planned::SetPolicy { name, policy } => {
                    if let Some(entry) = self.get(&name) {
                        entry.set_policy(policy);
                    }
                }
                Planned::Edge(_) => {}
            }
        }
        BatchOutcome { applied: true, outcomes, failure: None, revision: None, nodes: Vec::new() }
    }

    /// Drains edge `id` (no new streams go to it; open ones continue) or
    /// undoes that, persisted first like a mapping change, so the choice
    /// survives a restart.
    ///
    /// # Errors
    /// `not_found` for an id that is not a configured edge; `internal` when
    /// the state file cannot be written (nothing changed).
    pub(crate) async fn set_edge_draining(
        &self,
        id: &str,
        draining: bool,
    ) -> Result<(), ChangeError> {
        if !self.edges.is_edge(id) {
            return Err(ChangeError::new(ErrorKind::NotFound, format!("no edge with id {id:?}")));
        }
        if let Some(cluster) = self.cluster.get() {
            return cluster.set_edge_draining(id, draining).await;
        }
        let mut persisted = self.persisted.lock().await;
        let mut next = persisted.clone();
        next.set_edge_drained(id, draining);
        if next != *persisted {
            self.persist(&next)?;
            *persisted = next;
        }
        self.edges.set_draining(id, draining);
        Ok(())
    }

    /// Writes `next` to the state file, if there is one. An error means the
    /// old state is still on disk: nothing changed.
    fn persist(&self, next: &PersistedState) -> Result<(), ChangeError> {
        let Some(store) = &self.store else { return Ok(()) };
        match store.save(next) {
            Ok(Saved::Durable) => Ok(()),
            // The new file is what the disk holds now, and what a restart
            // loads: the change is made, so the answer says so.
            Ok(Saved::NotSynced(e)) => {
                error!(error = %e, "state file replaced but not synced: the change is applied, \
                    and a power loss may undo it");
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "cannot persist the change; nothing changed");
                Err(ChangeError::new(
                    ErrorKind::Internal,
                    format!("cannot persist the change: {e}"),
                ))
            }
        }
    }

    /// The local table, as planning sees it.
    fn plan_table(&self) -> PlanTable {
        let table = self.table();
        let names = table.iter().map(|(n, e)| (n.clone(), e.phase())).collect();
        let listening = table
            .iter()
            .filter(|(_, e)| e.phase() == Phase::Active)
            .map(|(n, e)| (n.clone(), (e.spec.listen, e.spec.host.clone())))
            .collect();
        let targets = table
            .iter()
            .filter(|(_, e)| !matches!(e.phase(), Phase::Draining { .. }))
            .map(|(n, e)| (n.clone(), e.spec.edge.clone()))
            .collect();
        PlanTable { names, listening, targets, fleet: (*self.edges.fleet()).clone() }
    }

    /// Plans `changes` against `table`, each as the earlier ones leave it.
    pub(crate) fn plan(
        &self,
        changes: &[Change],
        table: PlanTable,
    ) -> Vec<Result<Planned, ChangeError>> {
        let PlanTable { mut names, mut listening, mut targets, mut fleet } = table;
        let now_ms = crate::clock::unix_ms();
        changes
            .iter()
            .map(|change| match change {
                Change::Add { spec } => {
                    let planned = self.check_add(spec, &names, &listening, &fleet)?;
                    names.insert(spec.name.clone(), Phase::Active);
                    listening.insert(spec.name.clone(), (planned.listen, planned.host.clone()));
                    targets.insert(spec.name.clone(), planned.edge.clone());
                    Ok(Planned::Add(planned))
                }
                Change::AddEdge { id, group } => {
                    edge_changes::add(&mut fleet, id, group.as_deref()).map(Planned::Edge)
                }
                Change::RemoveEdge { id } => {
                    edge_changes::remove(&mut fleet, id, &targets).map(Planned::Edge)
                }
                Change::RotateToken { id, grace_secs } => {
                    edge_changes::rotate(&mut fleet, id, *grace_secs, now_ms).map(Planned::Edge)
                }
                Change::RevokeEdge { id } => {
                    edge_changes::revoke(&mut fleet, id).map(Planned::Edge)
                }
                Change::Enroll { id, group, ttl_secs } => {
                    let pin = self.enrol_pin.get().copied();
                    edge_changes::enroll(&mut fleet, id, group.as_deref(), *ttl_secs, now_ms, pin)
                        .map(Planned::Edge)
                }
                Change::Redeem { secret_sha256, hostname } => {
                    edge_changes::redeem(&mut fleet, secret_sha256, hostname, now_ms)
                        .map(Planned::Edge)
                }
                Change::Drain { name, deadline_secs } => {
                    let deadline = drain_deadline(*deadline_secs)?;
                    match names.get(name) {
                        None => return Err(ChangeError::not_found(name)),
                        Some(Phase::Draining { .. }) => {
                            return Err(ChangeError::new(
                                ErrorKind::Conflict,
                                format!("mapping {name:?} is already draining"),
                            ));
                        }
                        Some(_) => {}
                    }
                    names.insert(name.clone(), Phase::Draining { until: Instant::now() });
                    listening.remove(name);
                    targets.remove(name);
                    Ok(Planned::Drain { name: name.clone(), deadline })
                }
                Change::SetPolicy { name, policy } => {
                    let policy = policy
                        .to_policy()
                        .map_err(|e| ChangeError::new(ErrorKind::Invalid, e.to_string()))?;
                    match names.get(name) {
                        None => return Err(ChangeError::not_found(name)),
                        Some(Phase::Draining { .. }) => {
                            return Err(ChangeError::new(
                                ErrorKind::Conflict,
                                format!("mapping {name:?} is draining"),
                            ));
                        }
                        Some(_) => {}
                    }
                    let from_file = self.cluster.get().is_none()
                        && self.get(name).is_some_and(|e| e.source == MappingSource::Config);
                    if from_file {
                        return Err(ChangeError::new(
                            ErrorKind::Conflict,
                            format!(
                                "mapping {name:?} comes from cloud.toml: change its policy \
                                 there (a restart applies it)"
                            ),
                        ));
                    }
                    Ok(Planned::SetPolicy { name: name.clone(), policy })
                }
                Change::Remove { name } => {
                    if names.remove(name).is_none() {
                        return Err(ChangeError::not_found(name));
                    }
                    listening.remove(name);
                    targets.remove(name);
                    Ok(Planned::Remove { name: name.clone() })
                }
            })
            .collect()
    }

    fn check_add(
        &self,
        spec: &MappingSpec,
        names: &BTreeMap<String, Phase>,
        listening: &BTreeMap<String, (SocketAddr, Option<HostPattern>)>,
        fleet: &Fleet,
    ) -> Result<MappingConfig, ChangeError> {
        let m =
            spec.to_config().map_err(|e| ChangeError::new(ErrorKind::Invalid, e.to_string()))?;
        if !fleet.knows(&m.edge) {
            return Err(ChangeError::new(
                ErrorKind::UnknownEdge,
                format!(
                    "edge: unknown edge or group {:?} (known: {:?})",
                    m.edge,
                    fleet.target_names()
                ),
            ));
        }
        if names.contains_key(&m.name) {
            return Err(ChangeError::new(
                ErrorKind::Conflict,
                format!("name: a mapping named {:?} already exists", m.name),
            ));
        }
        for (other, (addr, host)) in listening {
            let shared = (m.listen, m.host.as_ref());
            let message = match config::listen_sharing(shared, (*addr, host.as_ref())) {
                Sharing::Apart | Sharing::Shared => continue,
                Sharing::SameHost => format!(
                    "host: {} on {} is already taken by mapping {other:?}",
                    m.host.as_ref().map(ToString::to_string).unwrap_or_default(),
                    m.listen
                ),
                Sharing::Clash if m.host.is_some() || host.is_some() => format!(
                    "listen: {} is already used by mapping {other:?} (mappings share a listen \
                     address only when each names a host and the addresses are written the same)",
                    m.listen
                ),
                Sharing::Clash => {
                    format!("listen: {} is already used by mapping {other:?}", m.listen)
                }
            };
            return Err(ChangeError::new(ErrorKind::Conflict, message));
        }
        if self.reserved.iter().any(|r| clash(m.listen, *r)) {
            return Err(ChangeError::new(
                ErrorKind::Conflict,
                format!("listen: {} is the agent's own tunnel or control address", m.listen),
            ));
        }
        Ok(m)
    }

    /// Whether the state file says config-file mapping `name` was drained
    /// or removed at run time (it is then not started from the file).
    pub(crate) async fn removed_at_run_time(&self, name: &str) -> bool {
        self.persisted.lock().await.removed.iter().any(|n| n == name)
    }

    pub(crate) fn start_drain(self: &Arc<Self>, name: &str, deadline: Duration) {
        // Planning bounded `deadline`; the cap here only makes that visible.
        let now = Instant::now();
        let deadline = deadline.min(Duration::from_secs(api::MAX_DRAIN_DEADLINE_SECS));
        self.start_drain_until(name, now.checked_add(deadline).unwrap_or(now));
    }

    /// Drains mapping `name` (if it is not draining already): closes its
    /// listener, lets open connections finish until `until`, then resets
    /// them and removes the entry.
    pub(crate) fn start_drain_until(self: &Arc<Self>, name: &str, until: Instant) {
        let Some(entry) = self.get(name) else { return };
        if matches!(entry.phase(), Phase::Draining { .. }) {
            return;
        }
        let deadline = until.saturating_duration_since(Instant::now());
        entry.set_phase(Phase::Draining { until });
        entry.stop_listener.cancel();
        self.leave_port(&entry);
        info!(mapping = %name, ?deadline, open = entry.connections.len(), "draining");
        let this = Arc::clone(self);
        tokio::spawn(async move {
            entry.connections.close();
            if tokio::time::timeout_at(until, entry.connections.wait()).await.is_err() {
                warn!(mapping = %entry.spec.name, open = entry.connections.len(),
                    "drain deadline passed; resetting open connections");
                entry.reset_connections.cancel();
                entry.connections.wait().await;
            }
            let mut table = this.table();
            if table.get(&entry.spec.name).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                table.remove(&entry.spec.name);
            }
            info!(mapping = %entry.spec.name, "drained and removed");
        });
    }

    pub(crate) fn remove_now(&self, name: &str) {
        let removed = self.table().remove(name);
        if let Some(entry) = removed {
            entry.stop_listener.cancel();
            self.leave_port(&entry);
            entry.reset_connections.cancel();
            info!(mapping = %name, reset = entry.connections.len(), "removed");
        }
    }
}

/// Puts each new token in its change's outcome, once the batch is applied.
pub(crate) fn with_tokens(outcomes: &mut [ChangeOutcome], planned: &[Planned]) {
    for (outcome, p) in outcomes.iter_mut().zip(planned) {
        if let Planned::Edge(edge) = p {
            outcome.token = edge.new_token().map(str::to_owned);
            outcome.code = edge.new_code().map(str::to_owned);
        }
    }
}

/// What planning said of each change; the changes themselves when every
/// one passed and this is not a dry run, else the refusal to answer.
pub(crate) fn passed(
    planned: Vec<Result<Planned, ChangeError>>,
    dry_run: bool,
) -> Result<(Vec<Planned>, Vec<ChangeOutcome>), BatchOutcome> {
    let outcomes: Vec<ChangeOutcome> = planned
        .iter()
        .enumerate()
        .map(|(index, p)| match p {
            Ok(p) => {
                ChangeOutcome { index, ok: true, message: describe(p), token: None, code: None }
            }
            Err(e) => {
                ChangeOutcome { index, ok: false, message: e.to_string(), token: None, code: None }
            }
        })
        .collect();
    let failure = planned.iter().find_map(|p| p.as_ref().err().cloned());
    if failure.is_some() || dry_run {
        return Err(BatchOutcome::refused(outcomes, failure));
    }
    Ok((planned.into_iter().filter_map(Result::ok).collect(), outcomes))
}

/// The drain deadline a change asks for, checked: at most
/// [`api::MAX_DRAIN_DEADLINE_SECS`], so that adding it to the clock at
/// commit time cannot overflow.
pub(crate) fn drain_deadline(secs: Option<u64>) -> Result<Duration, ChangeError> {
    const MAX: u64 = api::MAX_DRAIN_DEADLINE_SECS;
    match secs {
        None => Ok(DEFAULT_DRAIN_DEADLINE),
        Some(secs @ 0..=MAX) => Ok(Duration::from_secs(secs)),
        Some(secs) => Err(ChangeError::new(
            ErrorKind::Invalid,
            format!(
                "deadline_secs: {secs} is out of range, expected 0..={MAX} (at most {} days)",
                MAX / 86_400
            ),
        )),
    }
}

/// Plans `changes` against a fixed table (edge `e1`, group `pool` of
/// `e1`; mapping `web` active on 127.0.0.1:8080, `db` failed), changing
/// nothing, and checks what the commit relies on. For the `api_bodies`
/// fuzz target; panics when planning lets through what a commit cannot
/// apply.
pub(crate) fn fuzz_plan(changes: &[Change]) -> usize {
    static TABLE: std::sync::OnceLock<Arc<Mappings>> = std::sync::OnceLock::new();
    let mappings = TABLE.get_or_init(|| {
        let group = config::EdgeGroup { id: "pool".into(), edges: vec!["e1".into()] };
        let e1 = config::EdgeEntry { id: "e1".into(), token: config::Secret::new(b"t".to_vec()) };
        let fleet = Fleet::new(&[e1], &[group], [], &mut Vec::new());
        let edges = Arc::new(EdgeRegistry::new(8, fleet));
        let mappings = Mappings::new(
            None,
            PersistedState::new(),
            edges,
            vec![],
            None,
            None,
            crate::sniff::DEFAULT_PEEK_TIMEOUT,
        );
        let web = SocketAddr::from(([127, 0, 0, 1], 8080));
        for (name, bound) in [("web", Ok(web)), ("db", Err("not bound".to_owned()))] {
            let spec = MappingSpec {
                name: name.into(),
                listen: "127.0.0.1:8080".into(),
                edge: "e1".into(),
                target: "127.0.0.1:9".into(),
                ..MappingSpec::default()
            };
            let Ok(config) = spec.to_config() else { continue };
            let entry =
                MappingEntry::new(config, MappingSource::Config, bound, &mappings.abort_all);
            mappings.table().insert(name.to_owned(), Arc::new(entry));
        }
        mappings
    });
    let now = Instant::now();
    let mut ok = 0;
    for planned in mappings.plan(changes, mappings.plan_table()).into_iter().flatten() {
        if let Planned::Drain { deadline, .. } = &planned {
            assert!(
                deadline.as_secs() <= api::MAX_DRAIN_DEADLINE_SECS
                    && now.checked_add(*deadline).is_some(),
                "planning let through a drain deadline the commit cannot apply: {deadline:?}"
            );
        }
        let _ = describe(&planned);
        ok += 1;
    }
    ok
}

pub(crate) fn spec_of(m: &MappingConfig) -> MappingSpec {
    MappingSpec {
        name: m.name.clone(),
        listen: m.listen.to_string(),
        edge: m.edge.clone(),
        target: m.target.to_string(),
        allow: m.allow.iter().map(ToString::to_string).collect(),
        max_connections: m.max_connections,
        probe_interval_secs: m.probe_interval.map(|d| d.as_secs()),
        probe_send: m.probe_send.clone(),
        probe_expect: m.probe_expect.clone(),
        proxy_protocol: m.proxy_protocol,
        host: m.host.as_ref().map(ToString::to_string),
        max_connections_per_client: m.policy.max_connections_per_client,
        new_connections_per_client: m.policy.new_connections_per_client,
        rate_limit_in_bps: m.policy.rate_limit_in,
        rate_limit_out_bps: m.policy.rate_limit_out,
    }
}

pub(crate) fn describe(p: &Planned) -> String {
    match p {
        Planned::Add(m) => {
            format!("add {} on {} via edge {} to {}", m.name, m.listen, m.edge, m.target)
        }
        Planned::Drain { name, deadline } => format!("drain {name} within {deadline:?}"),
        Planned::Remove { name } => format!("remove {name}, resetting its connections"),
        Planned::SetPolicy { name, policy } => {
            format!("set the policy of {name}: {policy}")
        }
        Planned::Edge(edge) => edge.describe(),
    }
}

/// The API view of one entry.
pub(crate) fn view(e: &MappingEntry, fleet: &Fleet) -> MappingView {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &e.metrics.counters;
    let (throughput_in_bps, throughput_out_bps) = e.metrics.samples().latest();
    let drain_remaining_ms = match e.phase() {
        Phase::Draining { until } => Some(
            u64::try_from(until.saturating_duration_since(Instant::now()).as_millis())
                .unwrap_or(u64::MAX),
        ),
        _ => None,
    };
    MappingView {
        probe: e.probe_view(),
        spec: spec_of(&e.spec_now()),
        source: e.source,
        state: e.state(),
        bound: e.bound.map(|a| a.to_string()),
        error: e.error.clone(),
        drain_remaining_ms,
        active_connections: c.active.load(Relaxed),
        total_connections: c.total.load(Relaxed),
        failed_connections: c.failed.load(Relaxed),
        bytes_in: c.bytes.sent(),
        bytes_out: c.bytes.received(),
        throughput_in_bps,
        throughput_out_bps,
        nodes: Vec::new(),
        edge_revoked: fleet.all_revoked(&e.spec.edge),
        policy_hits: (!e.policy().is_empty()).then(|| {
            let (throttled_in, throttled_out) = e.throttled();
            api::PolicyHits {
                refused_concurrent: e.client_limits.refused_concurrent.load(Relaxed),
                refused_rate: e.client_limits.refused_rate.load(Relaxed),
                throttled_in,
                throttled_out,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<EdgeRegistry> {
        let e1 = config::EdgeEntry { id: "e1".into(), token: config::Secret::new(b"t".to_vec()) };
        Arc::new(EdgeRegistry::new(8, Fleet::new(&[e1], &[], [], &mut Vec::new())))
    }

    fn add(name: &str) -> Change {
        Change::Add {
            spec: Box::new(MappingSpec {
                name: name.into(),
                listen: "127.0.0.1:0".into(),
                edge: "e1".into(),
                target: "127.0.0.1:9".into(),
                ..MappingSpec::default()
            }),
        }
    }

    #[tokio::test]
    async fn a_directory_sync_failure_after_the_rename_reports_the_change_the_disk_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = Store::with_failing_dir_sync(path.clone());
        let mappings = Mappings::new(
            Some(store),
            PersistedState::new(),
            registry(),
            vec![],
            None,
            None,
            crate::sniff::DEFAULT_PEEK_TIMEOUT,
        );
        let outcome = mappings.apply(&[add("a")], false).await;
        let on_disk = Store::new(path).load().unwrap();
        assert_eq!(on_disk.added.len(), 1, "the rename happened: the disk holds the change");
        assert!(outcome.applied, "the answer must match the disk: {:?}", outcome.failure);
        assert!(mappings.get("a").is_some(), "the table must match the disk");
    }

    #[tokio::test]
    async fn a_drain_deadline_out_of_range_is_refused_at_planning_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state.json"));
        let mappings = Mappings::new(
            Some(store),
            PersistedState::new(),
            registry(),
            vec![],
            None,
            None,
            crate::sniff::DEFAULT_PEEK_TIMEOUT,
        );
        for secs in [api::MAX_DRAIN_DEADLINE_SECS + 1, u64::MAX] {
            let batch = [add("a"), Change::Drain { name: "a".into(), deadline_secs: Some(secs) }];
            let outcome = mappings.apply(&batch, false).await;
            assert!(!outcome.applied);
            let failure = outcome.failure.expect("refused");
            assert_eq!(failure.kind, ErrorKind::Invalid, "{failure}");
            assert!(
                failure.message.contains("deadline_secs")
                    && failure.message.contains(&api::MAX_DRAIN_DEADLINE_SECS.to_string()),
                "names the field and the range: {failure}"
            );
            assert!(mappings.entries().is_empty(), "nothing added");
            assert!(!dir.path().join("state.json").exists(), "nothing written");
        }
        // The largest allowed deadline is applied.
        let batch = [
            add("a"),
            Change::Drain { name: "a".into(), deadline_secs: Some(api::MAX_DRAIN_DEADLINE_SECS) },
        ];
        let outcome = mappings.apply(&batch, false).await;
        assert!(outcome.applied, "{:?}", outcome.failure);
        assert_eq!(mappings.get("a").map(|e| e.state()), Some(api::MappingState::Draining));
    }
}
