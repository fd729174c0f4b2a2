//! The tunnel pool: each slot dials, serves until its tunnel ends, backs
//! off, and dials again, forever.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::GoAwayCode;
use tracing::{Instrument, info, info_span, warn};
use tunnel::Tunnel;
use tunnel::untrusted::escaped;

use crate::backoff::Backoff;
use crate::connector;
use crate::dial::{self, Dialled};
use crate::edge::EdgeShared;

/// A refusal that needs an operator (wrong token, unknown id) is retried
/// no faster than this, so a misconfigured edge does not flood the logs.
const MIN_DELAY_AFTER_REFUSAL: Duration = Duration::from_secs(5);

/// Live tunnels of the pool, so shutdown can send each a drain.
#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelHandles(Arc<Mutex<Vec<Tunnel>>>);

impl TunnelHandles {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Tunnel>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, tunnel: Tunnel) {
        let mut tunnels = self.lock();
        tunnels.retain(|t| !t.is_closed());
        tunnels.push(tunnel);
    }

    pub(crate) fn drain_all(&self) {
        for t in self.lock().iter() {
            t.drain();
        }
    }

    /// The tunnels still up.
    pub(crate) fn live(&self) -> Vec<Tunnel> {
        let mut tunnels = self.lock();
        tunnels.retain(|t| !t.is_closed());
        tunnels.clone()
    }
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) index: u32,
    pub(crate) shared: Arc<EdgeShared>,
    pub(crate) handles: TunnelHandles,
}

pub(crate) async fn run_slot(slot: Slot) {
    let shared = &slot.shared;
    let reconnect = &shared.config.reconnect;
    let mut backoff = Backoff::new(reconnect.initial, reconnect.max);
    let span = info_span!("slot", slot = slot.index);
    loop {
        let dialled = tokio::select! {
            () = shared.stop_tunnels.cancelled() => return,
            d = dial::dial(&shared.config, shared.tls.as_ref(), shared.epoch).instrument(span.clone()) => d,
        };
        let delay = match dialled {
            Ok(dialled) => {
                backoff.reset();
                let (tunnel, reason) = serve(&slot, dialled).instrument(span.clone()).await;
                if shared.stop_tunnels.is_cancelled() {
                    span.in_scope(|| info!(tunnel, reason = %reason, "tunnel down"));
                    return;
                }
                // The first delay is logged too, so the whole schedule can
                // be checked from the log.
                let delay = backoff.next_delay(fastrand::f64());
                span.in_scope(|| info!(tunnel, reason = %reason, retry_in = ?delay, "tunnel down"));
                delay
            }
            Err(e) => {
                let mut delay = backoff.next_delay(fastrand::f64());
                if !e.is_transient() {
                    delay = delay.max(MIN_DELAY_AFTER_REFUSAL);
                }
                // The error may carry the cloud's refusal message.
                span.in_scope(|| {
                    warn!(error = %escaped(&e), retry_in = ?delay, "tunnel not established");
                });
                *shared.last_dial_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(e.to_string());
                delay
            }
        };
        tokio::select! {
            () = shared.stop_tunnels.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Serves a tunnel until it ends; returns its id and why it closed.
async fn serve(slot: &Slot, dialled: Dialled) -> (u64, String) {
    let Dialled { tunnel, mut incoming } = dialled;
    let shared = &slot.shared;
    info!(tunnel = tunnel.id(), "tunnel up");
    shared.live_tunnels.fetch_add(1, Ordering::Relaxed);
    slot.handles.add(tunnel.clone());
    shared.tunnel_up.notify_one();
    if shared.draining.load(Ordering::Relaxed) {
        tunnel.drain();
    }
    loop {
        tokio::select! {
            () = tunnel.closed() => break,
            () = shared.stop_tunnels.cancelled() => {
                tunnel.close(GoAwayCode::Normal, "edge agent shutting down");
                tunnel.closed().await;
                break;
            }
            Some(stream) = incoming.recv() => {
                let span = info_span!("stream", tunnel = tunnel.id(), stream = stream.id(),
                    mapping = %escaped(&stream.mapping));
                shared.streams.spawn(connector::serve(Arc::clone(shared), stream).instrument(span));
            }
        }
    }
    shared.live_tunnels.fetch_sub(1, Ordering::Relaxed);
    // The reason may be the cloud's go-away message.
    (tunnel.id(), escaped(tunnel.close_reason().unwrap_or_default()).to_string())
}
