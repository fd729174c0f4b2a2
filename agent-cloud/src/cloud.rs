//! Starting and stopping the cloud agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::{EventKind, MappingSource, Snapshot};
use config::CloudConfig;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::cluster::Cluster;
use crate::control::{self, ControlState};
use crate::directory::NodeDirectory;
use crate::edges::EdgeRegistry;
use crate::enrolment::Enrolment;
use crate::events::EventLog;
use crate::fleet::Fleet;
use crate::mappings::Mappings;
use crate::sampler;
use crate::store::Store;
use crate::tunnel_listener::{self, TunnelListener};

/// The cloud agent could not start at all (a single mapping failing to
/// bind is not this: that mapping is reported and the rest serve).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// The tunnel listener's address could not be bound.
    #[error("cannot listen for edge tunnels on {addr}: {source}")]
    TunnelBind { addr: SocketAddr, source: std::io::Error },
    /// The control API's address could not be bound.
    #[error("cannot listen for the control API on {addr}: {source}")]
    ControlBind { addr: SocketAddr, source: std::io::Error },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tunnel::tls::TlsError),
    /// The state file exists but cannot be read (starting without it would
    /// silently drop the mappings added at run time), or its directory is
    /// not writable (every change through the API would fail).
    #[error("{0}")]
    State(String),
    /// `[cluster]` cannot be used (an etcd endpoint or TLS file).
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Where a mapping stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingStatus {
    /// Listening on this address.
    Listening(SocketAddr),
    /// Draining: listener closed, open connections finishing.
    Draining,
    /// Could not bind; the reason.
    Failed(String),
}

/// A running cloud agent.
#[derive(Debug)]
pub struct Cloud {
    tunnel_addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    mappings: Arc<Mappings>,
    edges: Arc<EdgeRegistry>,
    /// Stops accepting tunnels and the sampler.
    stop_accepting: CancellationToken,
    stop_control: CancellationToken,
    background: TaskTracker,
    ready: Arc<AtomicBool>,
    grace: Duration,
    cluster: Option<Arc<Cluster>>,
    /// The cluster's nodes, as every version 4 tunnel tells its edge.
    directory: watch::Sender<Arc<NodeDirectory>>,
    events: EventLog,
    /// The config as it runs: the file's at start, with what reloads
    /// applied.
    running: std::sync::Mutex<Arc<CloudConfig>>,
}

/// What a reload of the config file did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// What changed live, one sentence each.
    pub applied: Vec<String>,
    /// What differs but was left as it runs (needs a restart, or a change
    /// through the control API).
    pub not_applied: Vec<String>,
}

impl Cloud {
    /// Binds the tunnel listener, every mapping's listener and the control
    /// API, then serves. A mapping whose address cannot be bound is logged
    /// and reported in [`mappings`](Self::mappings); the others serve.
    ///
    /// # Errors
    /// [`StartError`] if the tunnel or control listener, TLS, or the state
    /// file fails.
    pub async fn start(config: CloudConfig) -> Result<Self, StartError> {
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let config = Arc::new(config);
        let tls = match &config.tunnel.tls {
            Some(files) => Some(tunnel::tls::server_config(&files.cert, &files.key)?),
            None => {
                warn!(listen = %config.tunnel.listen,
                    "tunnel listener is plain ws:// without TLS; use [tunnel.tls] in production");
                None
            }
        };
        let bind_error = |source| StartError::TunnelBind { addr: config.tunnel.listen, source };
        let listener = crate::net::listen(config.tunnel.listen).map_err(bind_error)?;
        let tunnel_addr = listener.local_addr().map_err(bind_error)?;

        let control_listener = match &config.control {
            Some(c) => Some(
                crate::net::listen(c.listen)
                    .map_err(|source| StartError::ControlBind { addr: c.listen, source })?,
            ),
            None => {
                warn!(
                    "no [control] section: the control API is off and mappings cannot change at run time"
                );
                None
            }
        };
        let control_addr = control_listener.as_ref().and_then(|l| l.local_addr().ok());

        if let Some(c) = &config.control {
            crate::state_check::check_writable(&c.state_file).map_err(StartError::State)?;
        }
        // A cluster node keeps its state in etcd; the state file is for a
        // node alone.
        let store = match (&config.control, &config.cluster) {
            (Some(c), None) => Some(Store::new(c.state_file.clone())),
            _ => None,
        };
        let persisted = match &store {
            Some(store) => store.load().map_err(|e| StartError::State(e.to_string()))?,
            None => crate::store::PersistedState::new(),
        };
        // The config's edges with the run-time records on top (in a
        // cluster the records come from etcd, or the local copy).
        let mut problems = Vec::new();
        let fleet = Fleet::new(&config.edges, &config.groups, &persisted.edges, &mut problems);
        for problem in problems {
            warn!("state file: {problem}");
        }
        let edges = Arc::new(EdgeRegistry::new(config.tunnel.max_tunnels_per_edge, fleet));
        let node_id = config.cluster.as_ref().map(|c| c.node_id.clone());
        let events = EventLog::start(&config.events, node_id);
        let mut reserved = vec![tunnel_addr];
        reserved.extend(control_addr);
        for id in &persisted.drained_edges {
            if edges.set_draining(id, true) {
                info!(edge = %id, "drained at run time (see the state file): no new connections go to it");
            } else {
                warn!(edge = %id, "the state file drains an edge that is not configured; ignored");
            }
        }
        let runtime_specs = persisted.added.clone();
        let removed = persisted.removed.clone();
        let bind_ip = config.cluster.as_ref().and_then(|c| c.public_ip);
        let proxy_protocol = config.proxy_protocol.clone();
        let mappings = Mappings::new(
            store,
            persisted,
            Arc::clone(&edges),
            reserved,
            bind_ip,
            proxy_protocol,
            config.host_routing_timeout,
        );
        let _ = mappings.events.set(events.clone());
        for m in &config.mappings {
            if removed.contains(&m.name) {
                info!(mapping = %m.name, "not started: drained or removed at run time (see the state file)");
                continue;
            }
            mappings.start_one(m.clone(), MappingSource::Config).await;
            record_started(&events, &mappings, &m.name, "the config file");
        }
        for spec in runtime_specs {
            if mappings.get(&spec.name).is_some() {
                error!(mapping = %spec.name, "a mapping added at run time has the name of a config-file mapping; \
                    the config file wins");
                continue;
            }
            match spec.to_config() {
                Ok(m) => {
                    let name = m.name.clone();
                    mappings.start_one(m, MappingSource::Runtime).await;
                    record_started(&events, &mappings, &name, "the state file");
                }
                Err(e) => {
                    error!(mapping = %spec.name, error = %e, "invalid mapping in the state file; skipped")
                }
            }
        }

        let cluster = match &config.cluster {
            Some(c) => {
                let cluster =
                    Cluster::start(c.clone(), &mappings, Arc::clone(&edges), events.clone())
                        .await
                        .map_err(StartError::Cluster)?;
                let _ = mappings.cluster.set(Arc::clone(&cluster));
                Some(cluster)
            }
            None => None,
        };

        let stop_accepting = CancellationToken::new();
        let stop_control = CancellationToken::new();
        let background = TaskTracker::new();
        let ready = Arc::new(AtomicBool::new(true));
        let (directory, directory_rx) = watch::channel(Arc::new(NodeDirectory::default()));
        // Codes are made through the control API, so without one there
        // is nothing to redeem. With TLS each names the tunnel key.
        if let Some(files) = &config.tunnel.tls {
            let _ = mappings.enrol_pin.set(tunnel::tls::key_digest_of_cert_file(&files.cert)?);
        }
        let enrolment = config.control.as_ref().map(|_| {
            let url = crate::enrolment::cloud_url(&config, tunnel_addr);
            Arc::new(Enrolment::new(Arc::clone(&mappings), events.clone(), url))
        });
        let tunnels = TunnelListener {
            config: Arc::clone(&config),
            tls,
            edges: Arc::clone(&edges),
            directory: directory_rx,
            stop: stop_accepting.clone(),
            events: events.clone(),
            enrolment: enrolment.clone(),
        };
        background.spawn(tunnel_listener::run(tunnels, listener));
        background.spawn(crate::probes::run(
            Arc::clone(&mappings),
            Arc::clone(&edges),
            events.clone(),
            stop_accepting.clone(),
        ));
        if let Some(cluster) = &cluster {
            background.spawn(follow_nodes(
                Arc::clone(cluster),
                directory.clone(),
                events.clone(),
                stop_accepting.clone(),
            ));
        }
        info!(listen = %tunnel_addr, tls = config.tunnel.tls.is_some(), "listening for edge tunnels");

        let (snapshots_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        background.spawn(sampler::run(
            Arc::clone(&mappings),
            Arc::clone(&edges),
            snapshots_tx,
            stop_accepting.clone(),
        ));
        if let (Some(listener), Some(control)) = (control_listener, &config.control) {
            let state = ControlState {
                mappings: Arc::clone(&mappings),
                edges: Arc::clone(&edges),
                admin_token: control.admin_token.clone(),
                snapshots,
                ready: Arc::clone(&ready),
                cluster: cluster.clone(),
                request_timeout: control.request_timeout,
                max_connections: control.max_connections as usize,
                events: events.clone(),
                enrolment: enrolment.clone(),
            };
            background.spawn(control::serve(state, listener, stop_control.clone()));
        }

        Ok(Self {
            tunnel_addr,
            control_addr,
            mappings,
            edges,
            stop_accepting,
            stop_control,
            background,
            ready,
            grace: config.shutdown_grace,
            cluster,
            directory,
            events,
            running: std::sync::Mutex::new(Arc::clone(&config)),
        })
    }

    /// Applies what changed in the config file (see `reload`'s module
    /// docs): config-file edges, groups and mappings added or removed;
    /// the rest is reported and left as it runs.
    ///
    /// # Errors
    /// When the change would leave a mapping added at run time without its
    /// edge: then nothing changes.
    pub async fn reload(&self, new: CloudConfig) -> Result<ReloadReport, String> {
        let old = Arc::clone(&self.running.lock().unwrap_or_else(|p| p.into_inner()));
        let d = crate::reload::diff(&old, &new);
        let mut report = ReloadReport::default();
        if d.is_empty() {
            return Ok(report);
        }
        if d.fleet_changed {
            let records: Vec<_> = self.edges.fleet().records().cloned().collect();
            let after = Fleet::new(&new.edges, &new.groups, &records, &mut Vec::new());
            let stranded: Vec<String> = self
                .mappings
                .entries()
                .into_iter()
                .filter(|e| e.source == MappingSource::Runtime && !after.knows(&e.spec.edge))
                .map(|e| format!("{} (edge {})", e.spec.name, e.spec.edge))
                .collect();
            if !stranded.is_empty() {
                return Err(format!(
                    "the new file removes the edge of mappings added at run time: {}; remove \
                     or drain them first",
                    stranded.join(", ")
                ));
            }
            self.edges.set_base(&new.edges, &new.groups);
            report.applied.extend(d.fleet_lines.iter().cloned());
        }
        for name in &d.mappings_removed {
            match self.mappings.get(name) {
                Some(e) if e.source == MappingSource::Config => {
                    self.mappings.start_drain(name, crate::mappings::DEFAULT_DRAIN_DEADLINE);
                    let secs = crate::mappings::DEFAULT_DRAIN_DEADLINE.as_secs();
                    report.applied.push(format!(
                        "mapping {name} removed from the file: draining (open connections have \
                         {secs}s)"
                    ));
                    self.events.record(
                        EventKind::MappingDrained,
                        name,
                        &format!("removed from the config file (reload): draining, {secs}s"),
                    );
                }
                _ => {}
            }
        }
        for m in &d.mappings_added {
            if self.mappings.get(&m.name).is_some() {
                report.not_applied.push(format!(
                    "mapping {} is new in the file, but a mapping of that name was added at run \
                     time; that one stays",
                    m.name
                ));
            } else if self.mappings.removed_at_run_time(&m.name).await {
                report.not_applied.push(format!(
                    "mapping {} is in the file, but it was drained or removed at run time (the \
                     state file says so); not started",
                    m.name
                ));
            } else {
                self.mappings.start_one(m.clone(), MappingSource::Config).await;
                record_started(
                    &self.events,
                    &self.mappings,
                    &m.name,
                    "a reload of the config file",
                );
                let entry = self.mappings.get(&m.name);
                report.applied.push(match entry.as_ref().and_then(|e| e.error.clone()) {
                    None => format!("mapping {} added", m.name),
                    Some(e) => format!("mapping {} added, but it does not listen: {e}", m.name),
                });
            }
        }
        for name in &d.mappings_changed {
            report.not_applied.push(format!(
                "mapping {name} changed in the file: not applied live (restart the agent, or \
                 remove the mapping from the file, reload, then add it back)"
            ));
        }
        for section in &d.restart_needed {
            report.not_applied.push(format!("{section} changed: takes effect at the next restart"));
        }
        let running = crate::reload::applied(&old, &new, &d);
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(running);
        let summary = format!(
            "config file reloaded: {} applied, {} not applied{}",
            report.applied.len(),
            report.not_applied.len(),
            report.applied.first().map(|a| format!(" ({a}, ...)")).unwrap_or_default()
        );
        self.events.record(EventKind::ConfigReloaded, "config", &summary);
        Ok(report)
    }

    /// The address edges dial (useful when configured with port 0).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// The control API's address, when configured.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// Every mapping and where it stands.
    pub fn mappings(&self) -> BTreeMap<String, MappingStatus> {
        self.mappings
            .entries()
            .iter()
            .map(|e| {
                let status = match (e.state(), e.bound) {
                    (api::MappingState::Active, Some(addr)) => MappingStatus::Listening(addr),
                    (api::MappingState::Draining, _) => MappingStatus::Draining,
                    _ => MappingStatus::Failed(e.error.clone().unwrap_or_default()),
                };
                (e.spec.name.clone(), status)
            })
            .collect()
    }

    /// The bound address of a listening mapping.
    pub fn mapping_addr(&self, name: &str) -> Option<SocketAddr> {
        match self.mappings().get(name) {
            Some(MappingStatus::Listening(addr)) => Some(*addr),
            _ => None,
        }
    }

    /// Tells every edge (on version 4 tunnels) the cluster's nodes: `nodes`
    /// as `(id, advertise URL)`, this node being `this_node`. For tests,
    /// until the cluster module feeds the same channel.
    #[doc(hidden)]
    pub fn announce_nodes(&self, this_node: &str, nodes: Vec<(String, String)>) {
        self.directory.send_replace(Arc::new(NodeDirectory::new(this_node, nodes)));
    }

    /// Every edge as the control API shows it (for tests without
    /// `[control]`).
    #[doc(hidden)]
    pub fn edge_views(&self) -> Vec<api::EdgeView> {
        let now = crate::clock::unix_ms();
        self.edges.views(now / 1000, now)
    }

    /// Live tunnels of `edge_id` right now.
    pub fn live_tunnels(&self, edge_id: &str) -> usize {
        self.edges.live_tunnels(edge_id)
    }

    /// Graceful stop: stop accepting tunnels and clients, let open
    /// connections finish within the grace period, reset the rest, then
    /// close every tunnel and the control API.
    pub async fn shutdown(self) {
        let connections = &self.mappings.all_connections;
        info!(grace = ?self.grace, open = connections.len(), "shutting down: no new connections");
        self.ready.store(false, Ordering::Relaxed);
        if let Some(cluster) = &self.cluster {
            // Peers and edges stop counting on this node at once.
            cluster.stop().await;
        }
        self.stop_accepting.cancel();
        self.mappings.stop_listeners();
        connections.close();
        if tokio::time::timeout(self.grace, connections.wait()).await.is_err() {
            warn!(open = connections.len(), "grace period over; resetting open connections");
            self.mappings.abort_all.cancel();
            connections.wait().await;
        }
        self.edges.close_all("cloud agent shutting down").await;
        self.stop_control.cancel();
        self.background.close();
        self.background.wait().await;
        // Last: the tunnels' closes above are events too.
        self.events.close().await;
        info!("stopped");
    }
}

/// Records a mapping started at start-up from `origin`: added, or why it
/// does not listen.
fn record_started(events: &EventLog, mappings: &Mappings, name: &str, origin: &str) {
    let Some(entry) = mappings.get(name) else { return };
    let text = match (&entry.bound, &entry.error) {
        (Some(addr), _) => format!(
            "started from {origin} (config): listening on {addr}, edge {}, target {}",
            entry.spec.edge, entry.spec.target
        ),
        (None, error) => format!(
            "started from {origin} (config) but not listening: {}",
            error.as_deref().unwrap_or("unknown error")
        ),
    };
    events.record(EventKind::MappingAdded, name, &text);
}

/// Tells the edges (through the directory every tunnel follows) the live
/// nodes of the cluster, as they change, and records nodes joining and
/// leaving the list.
async fn follow_nodes(
    cluster: Arc<Cluster>,
    directory: watch::Sender<Arc<NodeDirectory>>,
    events: EventLog,
    stop: CancellationToken,
) {
    let mut nodes = cluster.node_list();
    let mut known: Vec<(String, String)> = Vec::new();
    loop {
        let list = nodes.borrow_and_update().to_vec();
        for (id, url) in &list {
            if !known.iter().any(|(k, _)| k == id) {
                events.record(EventKind::NodeJoined, id, &format!("node {id} joined ({url})"));
            }
        }
        for (id, _) in &known {
            if !list.iter().any(|(k, _)| k == id) {
                events.record(EventKind::NodeLeft, id, &format!("node {id} left the node list"));
            }
        }
        known.clone_from(&list);
        directory.send_replace(Arc::new(NodeDirectory::new(cluster.node_id(), list)));
        tokio::select! {
            () = stop.cancelled() => return,
            changed = nodes.changed() => if changed.is_err() { return },
        }
    }
}
