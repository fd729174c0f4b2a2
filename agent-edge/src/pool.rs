//! Tunnel pools: one per URL the edge dials (its configured `cloud_url`,
//! and each cluster node it was told). Each pool runs `tunnels` slots; a
//! slot dials, serves until its tunnel ends, backs off, and dials again,
//! until the pool is retired or the edge stops.
//!
//! A retired pool dials no more; each of its tunnels sends `Drain` (the
//! cloud opens nothing new on it) and closes once its open streams have
//! finished, so no connection is cut.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::CloudUrl;
use proto::{GoAwayCode, NodeLink};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use tunnel::untrusted::escaped;
use tunnel::{NodeList, Tunnel};

use crate::backoff::Backoff;
use crate::connector;
use crate::dial::{self, Dialled};
use crate::edge::EdgeShared;

/// A refusal that needs an operator (wrong token, unknown id) is retried
/// no faster than this, so a misconfigured edge does not flood the logs.
const MIN_DELAY_AFTER_REFUSAL: Duration = Duration::from_secs(5);
/// Probes one tunnel's edge checks at once; more wait (see the mux).
const MAX_PROBES_IN_FLIGHT: usize = 64;
/// How often a retiring tunnel looks whether its last stream has ended.
const IDLE_CHECK: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Live tunnels of every pool, with the pool each belongs to, so shutdown
/// can send each a drain and reports reach every node.
#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelHandles(Arc<Mutex<Vec<PoolTunnel>>>);

/// A live tunnel and the pool it belongs to.
type PoolTunnel = (Tunnel, Arc<Pool>);

impl TunnelHandles {
    fn add(&self, tunnel: Tunnel, pool: Arc<Pool>) {
        let mut tunnels = lock(&self.0);
        tunnels.retain(|(t, _)| !t.is_closed());
        tunnels.push((tunnel, pool));
    }

    pub(crate) fn drain_all(&self) {
        for (t, _) in lock(&self.0).iter() {
            t.drain();
        }
    }

    /// The tunnels still up.
    pub(crate) fn live(&self) -> Vec<Tunnel> {
        let mut tunnels = lock(&self.0);
        tunnels.retain(|(t, _)| !t.is_closed());
        tunnels.iter().map(|(t, _)| t.clone()).collect()
    }

    /// The latest node list of each live tunnel that has one.
    pub(crate) fn node_lists(&self) -> Vec<NodeList> {
        let mut tunnels = lock(&self.0);
        tunnels.retain(|(t, _)| !t.is_closed());
        tunnels.iter().filter_map(|(t, _)| t.nodes().borrow().clone()).collect()
    }

    /// Tunnels up by node: a node pool's tunnels under its node id; the
    /// configured URL's under the node they reached (as its `Nodes` frame
    /// says), or under the URL while the cloud named no node.
    pub(crate) fn by_node(&self) -> BTreeMap<String, usize> {
        let mut tunnels = lock(&self.0);
        tunnels.retain(|(t, _)| !t.is_closed());
        let mut counts = BTreeMap::new();
        for (t, pool) in tunnels.iter() {
            let told = t.nodes().borrow().as_ref().map(|list| list.this_node.clone());
            let node = pool.node.clone().or(told).unwrap_or_else(|| pool.url.to_string());
            *counts.entry(node).or_insert(0) += 1;
        }
        counts
    }
}

/// The slots dialling one URL.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The node this pool reaches directly; `None` for the configured URL
    /// (behind it may be any node, or a load balancer).
    pub(crate) node: Option<String>,
    pub(crate) url: CloudUrl,
    /// Cancelled when the pool is no longer wanted.
    retire: CancellationToken,
    /// Tunnels up now.
    up: AtomicUsize,
    /// Why the last dial failed.
    last_error: Mutex<Option<String>>,
}

impl Pool {
    /// Starts `tunnels` slots dialling `url` on the edge's task tracker.
    pub(crate) fn start(
        shared: &Arc<EdgeShared>,
        node: Option<String>,
        url: CloudUrl,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            node,
            url,
            retire: CancellationToken::new(),
            up: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        });
        for index in 0..shared.config.tunnels {
            let slot = Slot { index, shared: Arc::clone(shared), pool: Arc::clone(&pool) };
            shared.tasks.spawn(run_slot(slot));
        }
        pool
    }

    /// Stops redialling; the tunnels drain and close once idle.
    pub(crate) fn retire(&self) {
        self.retire.cancel();
    }

    /// Tunnels of this pool up now.
    pub(crate) fn tunnels_up(&self) -> usize {
        self.up.load(Ordering::Relaxed)
    }

    /// The node id, or the URL for the configured URL's pool (for logs).
    pub(crate) fn label(&self) -> String {
        self.node.clone().unwrap_or_else(|| self.url.to_string())
    }

    /// What the cloud is told of this node: tunnels up, and why the last
    /// dial failed while none is.
    pub(crate) fn link(&self) -> NodeLink {
        let up = self.tunnels_up();
        let error = if up == 0 { lock(&self.last_error).clone() } else { None };
        NodeLink {
            node: self.label(),
            tunnels_up: u16::try_from(up).unwrap_or(u16::MAX),
            error: error.unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    index: u32,
    shared: Arc<EdgeShared>,
    pool: Arc<Pool>,
}

async fn run_slot(slot: Slot) {
    let shared = &slot.shared;
    let pool = &slot.pool;
    let reconnect = &shared.config.reconnect;
    let mut backoff = Backoff::new(reconnect.initial, reconnect.max);
    let span = info_span!("slot", slot = slot.index);
    let node = escaped(pool.label()).to_string();
    loop {
        let dialled = tokio::select! {
            () = shared.stop_tunnels.cancelled() => return,
            () = pool.retire.cancelled() => return,
            d = dial::dial(&shared.config, &pool.url, shared.tls.as_ref(), shared.epoch)
                .instrument(span.clone()) => d,
        };
        let delay = match dialled {
            Ok(dialled) => {
                backoff.reset();
                let (tunnel, reason) = serve(&slot, dialled).instrument(span.clone()).await;
                if shared.stop_tunnels.is_cancelled() || pool.retire.is_cancelled() {
                    span.in_scope(|| info!(tunnel, %node, reason = %reason, "tunnel down"));
                    return;
                }
                // The first delay is logged too, so the whole schedule can
                // be checked from the log.
                let delay = backoff.next_delay(fastrand::f64());
                span.in_scope(|| {
                    info!(tunnel, %node, reason = %reason, retry_in = ?delay, "tunnel down");
                });
                delay
            }
            Err(e) => {
                let mut delay = backoff.next_delay(fastrand::f64());
                if !e.is_transient() {
                    delay = delay.max(MIN_DELAY_AFTER_REFUSAL);
                }
                // The error may carry the cloud's refusal message.
                span.in_scope(|| {
                    warn!(%node, error = %escaped(&e), retry_in = ?delay, "tunnel not established");
                });
                *lock(&pool.last_error) = Some(e.to_string());
                *lock(&shared.last_dial_error) = Some(e.to_string());
                delay
            }
        };
        tokio::select! {
            () = shared.stop_tunnels.cancelled() => return,
            () = pool.retire.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Checks the tunnel's probes (version 6), [`MAX_PROBES_IN_FLIGHT`] at
/// once, until it closes. While all slots are taken, probes wait in the
/// mux's bounded queue, and beyond it are dropped unanswered.
async fn serve_probes(
    shared: Arc<EdgeShared>,
    tunnel: Tunnel,
    mut probes: tokio::sync::mpsc::Receiver<tunnel::IncomingProbe>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PROBES_IN_FLIGHT));
    loop {
        let slot = tokio::select! {
            () = tunnel.closed() => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let probe = tokio::select! {
            () = tunnel.closed() => return,
            probe = probes.recv() => match probe {
                Some(probe) => probe,
                None => return,
            },
        };
        let span = info_span!("probe", tunnel = tunnel.id(), mapping = %escaped(&probe.mapping));
        let check = connector::probe(Arc::clone(&shared), tunnel.clone(), probe);
        shared.streams.spawn(
            async move {
                check.await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Serves a tunnel until it ends; returns its id and why it closed.
async fn serve(slot: &Slot, dialled: Dialled) -> (u64, String) {
    let Dialled { tunnel, mut incoming } = dialled;
    let shared = &slot.shared;
    let pool = &slot.pool;
    info!(tunnel = tunnel.id(), node = %escaped(pool.label()), "tunnel up");
    shared.live_tunnels.fetch_add(1, Ordering::Relaxed);
    pool.up.fetch_add(1, Ordering::Relaxed);
    shared.handles.add(tunnel.clone(), Arc::clone(pool));
    shared.tunnel_up.notify_one();
    shared.fleet_wake.notify_one();
    if shared.draining.load(Ordering::Relaxed) {
        tunnel.drain();
    }
    // The fleet reads each live tunnel's latest list; it is told when one
    // changes (one that arrived before this subscribed counts too).
    let mut nodes = tunnel.nodes();
    if nodes.borrow_and_update().is_some() {
        shared.fleet_wake.notify_one();
    }
    let mut retiring = false;
    let mut idle_check = tokio::time::interval(IDLE_CHECK);
    if let Some(probes) = tunnel.take_probes() {
        // Not one of `streams`: shutdown waits for those before it closes
        // the tunnels, and this one ends with its tunnel.
        tokio::spawn(serve_probes(Arc::clone(shared), tunnel.clone(), probes));
    }
    loop {
        tokio::select! {
            () = tunnel.closed() => break,
            () = shared.stop_tunnels.cancelled() => {
                tunnel.close(GoAwayCode::Normal, "edge agent shutting down");
                tunnel.closed().await;
                break;
            }
            () = pool.retire.cancelled(), if !retiring => {
                retiring = true;
                tunnel.drain();
            }
            _ = idle_check.tick(), if retiring => {
                if tunnel.active_streams() == 0 {
                    tunnel.close(GoAwayCode::Normal, "the edge no longer needs this tunnel");
                }
            }
            Ok(()) = nodes.changed() => {
                nodes.borrow_and_update();
                shared.fleet_wake.notify_one();
            }
            Some(stream) = incoming.recv() => {
                let span = info_span!("stream", tunnel = tunnel.id(), stream = stream.id(),
                    mapping = %escaped(&stream.mapping));
                shared.streams.spawn(connector::serve(Arc::clone(shared), stream).instrument(span));
            }
        }
    }
    pool.up.fetch_sub(1, Ordering::Relaxed);
    shared.live_tunnels.fetch_sub(1, Ordering::Relaxed);
    shared.fleet_wake.notify_one();
    // The reason may be the cloud's go-away message.
    (tunnel.id(), escaped(tunnel.close_reason().unwrap_or_default()).to_string())
}
