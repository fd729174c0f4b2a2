//! Starting and stopping the edge agent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use config::EdgeConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::pool::{Pool, TunnelHandles};
use crate::reload::{ReloadReport, StreamPolicy};
use crate::{fleet, report};

/// State shared by the tunnel slots and stream tasks.
#[derive(Debug)]
pub(crate) struct EdgeShared {
    /// The config the edge started with (what a reload may change is in
    /// `policy`).
    pub(crate) config: EdgeConfig,
    /// What each new stream and probe is checked against; a reload
    /// replaces it.
    policy: std::sync::RwLock<Arc<StreamPolicy>>,
    /// For `wss://` URLs: the configured one's, or a node's (a plain
    /// `cloud_url` may still be told `wss://` nodes; then this holds the
    /// same trust settings if they load).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) epoch: u64,
    /// Set on shutdown: new streams are refused.
    pub(crate) draining: AtomicBool,
    pub(crate) live_tunnels: AtomicUsize,
    /// Stops the tunnel slots (no more redials; tunnels close).
    pub(crate) stop_tunnels: CancellationToken,
    /// Aborts relayed connections still open after the grace period.
    pub(crate) abort_streams: CancellationToken,
    pub(crate) streams: TaskTracker,
    /// Bytes relayed by all streams.
    pub(crate) bytes: tunnel::ByteCounters,
    pub(crate) connects_ok: AtomicU64,
    pub(crate) connects_failed: AtomicU64,
    /// Streams refused by the allowlist (including `check_resolved`).
    pub(crate) denied: AtomicU64,
    /// Why the last failed dial failed, for [`Edge::last_dial_error`].
    pub(crate) last_dial_error: std::sync::Mutex<Option<String>>,
    /// Woken when a tunnel comes up, so the cloud gets a report at once.
    pub(crate) tunnel_up: tokio::sync::Notify,
    /// Woken when a tunnel comes up, goes down or brings a node list (see
    /// `fleet`).
    pub(crate) fleet_wake: tokio::sync::Notify,
    /// A pool per node of the list, by node id (see `fleet`).
    pub(crate) node_pools: Mutex<BTreeMap<String, Arc<Pool>>>,
    /// Every live tunnel of every pool.
    pub(crate) handles: TunnelHandles,
    /// Every slot, the fleet and the report task.
    pub(crate) tasks: TaskTracker,
}

impl EdgeShared {
    /// The stream policy now.
    pub(crate) fn policy(&self) -> Arc<StreamPolicy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn lock_node_pools(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Pool>>> {
        self.node_pools.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running edge agent.
#[derive(Debug)]
pub struct Edge {
    shared: Arc<EdgeShared>,
}

impl Edge {
    /// Starts the tunnel pool. Each slot dials at once and keeps redialling
    /// until [`shutdown`](Self::shutdown), whether or not the cloud is up.
    /// In a cluster the edge follows the node list the cloud sends, with a
    /// pool per node (`docs/reliability.md`, "Edges reach every node").
    ///
    /// # Errors
    /// If `ca_file` cannot be loaded for a `wss://` cloud.
    pub fn start(config: EdgeConfig) -> Result<Self, tunnel::tls::TlsError> {
        for warning in &config.warnings {
            warn!("{warning}");
        }
        let tls = if config.cloud_url.tls {
            Some(tunnel::tls::client_config(tunnel::tls::ClientTrust::of(&config))?)
        } else {
            warn!(url = %config.cloud_url, "dialling the cloud without TLS; use wss:// in production");
            // Only for nodes the cloud lists with wss://; if the trust
            // settings do not load, such a node's dials fail and say so.
            tunnel::tls::client_config(tunnel::tls::ClientTrust::of(&config)).ok()
        };
        if config.allow.is_empty() {
            warn!("the allowlist is empty: every stream will be refused");
        }
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let shared = Arc::new(EdgeShared {
            tls,
            epoch,
            draining: AtomicBool::new(false),
            live_tunnels: AtomicUsize::new(0),
            stop_tunnels: CancellationToken::new(),
            abort_streams: CancellationToken::new(),
            streams: TaskTracker::new(),
            bytes: tunnel::ByteCounters::default(),
            connects_ok: AtomicU64::new(0),
            connects_failed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            last_dial_error: std::sync::Mutex::new(None),
            tunnel_up: tokio::sync::Notify::new(),
            fleet_wake: tokio::sync::Notify::new(),
            node_pools: Mutex::new(BTreeMap::new()),
            handles: TunnelHandles::default(),
            tasks: TaskTracker::new(),
            policy: std::sync::RwLock::new(Arc::new(StreamPolicy::of(&config))),
            config,
        });
        info!(edge = %shared.config.edge_id, url = %shared.config.cloud_url,
            tunnels = shared.config.tunnels, "starting");
        shared.tasks.spawn(fleet::run(Arc::clone(&shared)));
        shared.tasks.spawn(report::run(Arc::clone(&shared)));
        Ok(Self { shared })
    }

    /// Applies a re-read config file: the stream policy (`allow`,
    /// `check_resolved`, `connect_timeout`) for every stream and probe
    /// from now on; the rest is reported as needing a restart, compared
    /// with the config the edge started with.
    pub fn reload(&self, new: &EdgeConfig) -> ReloadReport {
        // What needs a restart differs from the start; what applied, from
        // the policy running (earlier reloads included).
        let restart_needed = crate::reload::diff(&self.shared.config, new).restart_needed;
        let mut current = self.shared.policy.write().unwrap_or_else(|p| p.into_inner());
        let applied = crate::reload::diff(&config_with(&self.shared.config, &current), new).applied;
        *current = Arc::new(StreamPolicy::of(new));
        drop(current);
        if new.allow.is_empty() {
            warn!("the allowlist is empty: every stream will be refused");
        }
        ReloadReport { applied, restart_needed }
    }

    /// Tunnels connected right now, to every node together.
    pub fn live_tunnels(&self) -> usize {
        self.shared.live_tunnels.load(Ordering::Relaxed)
    }

    /// Tunnels connected right now by node id. A tunnel to the configured
    /// URL counts under the node the cloud said it reached, or under the
    /// URL while the cloud named none (it runs alone).
    pub fn tunnels_by_node(&self) -> BTreeMap<String, usize> {
        self.shared.handles.by_node()
    }

    /// Streams refused so far because the allowlist does not admit their
    /// destination (or, with `check_resolved`, any address it resolved to).
    pub fn streams_denied(&self) -> u64 {
        self.shared.denied.load(Ordering::Relaxed)
    }

    /// Destination connects that failed so far (refused, unreachable,
    /// timed out, or a name that did not resolve).
    pub fn connects_failed(&self) -> u64 {
        self.shared.connects_failed.load(Ordering::Relaxed)
    }

    /// Why the most recent failed dial of any tunnel slot failed (as
    /// logged with "tunnel not established"); `None` before any failure.
    pub fn last_dial_error(&self) -> Option<String> {
        self.shared.last_dial_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Streams being relayed right now.
    pub fn open_streams(&self) -> usize {
        self.shared.streams.len()
    }

    /// Graceful stop: tell the cloud to open no new streams here, let open
    /// streams finish within the grace period, reset the rest, then close
    /// the tunnels.
    pub async fn shutdown(self) {
        let grace: Duration = self.shared.config.shutdown_grace;
        self.shared.draining.store(true, Ordering::Relaxed);
        info!(?grace, open = self.shared.streams.len(), "shutting down: draining");
        self.shared.handles.drain_all();
        self.shared.streams.close();
        if tokio::time::timeout(grace, self.shared.streams.wait()).await.is_err() {
            warn!(open = self.shared.streams.len(), "grace period over; resetting open streams");
            self.shared.abort_streams.cancel();
            self.shared.streams.wait().await;
        }
        self.shared.stop_tunnels.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        info!("stopped");
    }
}

/// `config` with `policy`'s settings: what the edge runs after reloads.
fn config_with(config: &EdgeConfig, policy: &StreamPolicy) -> EdgeConfig {
    EdgeConfig {
        allow: policy.allow.clone(),
        check_resolved: policy.check_resolved,
        connect_timeout: policy.connect_timeout,
        ..config.clone()
    }
}
