//! End-to-end probes (protocol version 6): the cloud asks the edge to
//! check a destination; the edge answers with the outcome and its connect
//! time. Not streams: they carry no data and count as no connection.
//! Bounded on both sides: [`MAX_PENDING`] unanswered probes per tunnel at
//! the cloud, [`MAX_IN_FLIGHT`] waiting per tunnel at the edge (the edge
//! agent bounds how many it checks at once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proto::{Frame, OpenCode};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::Tunnel;

/// Probes the cloud awaits at once on one tunnel.
pub(crate) const MAX_PENDING: usize = 256;
/// Probes waiting at the edge on one tunnel; more are dropped unanswered.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// The edge's answer to a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// As for an open: ok, refused, denied (not on the allowlist), timeout,
    /// unreachable, draining, error.
    pub code: OpenCode,
    /// How long the edge's connect took.
    pub connect: Duration,
    /// The edge's words (untrusted text).
    pub message: String,
}

/// Why a probe got no answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProbeError {
    /// The tunnel's version predates probes.
    #[error("the edge speaks protocol {version}; {what} needs {need}: upgrade relay-edge")]
    Unsupported { version: u16, need: u16, what: &'static str },
    /// Too many probes are awaited on this tunnel already.
    #[error("too many probes awaited on this tunnel")]
    Busy,
    /// No answer in time (the edge's own timeout plus a margin).
    #[error("the edge did not answer the probe in time")]
    NoAnswer,
    /// The tunnel closed.
    #[error("the tunnel closed")]
    Closed,
}

/// A probe the cloud sent, for the edge to check and answer.
#[derive(Debug, Clone)]
pub struct IncomingProbe {
    pub id: u32,
    /// Mapping name the cloud gave (for logs; untrusted).
    pub mapping: String,
    pub host: String,
    pub port: u16,
    /// The cloud's limit on the check.
    pub timeout: Duration,
    /// What to send and expect after the connect (version 7).
    pub exchange: Option<proto::ProbeExchange>,
}

/// Per-tunnel probe bookkeeping, in [`Shared`].
#[derive(Debug)]
pub(crate) struct Probes {
    next_id: AtomicU32,
    pending: Mutex<HashMap<u32, oneshot::Sender<ProbeAnswer>>>,
    incoming_tx: mpsc::Sender<IncomingProbe>,
    incoming_rx: Mutex<Option<mpsc::Receiver<IncomingProbe>>>,
}

impl Probes {
    pub(crate) fn new() -> Self {
        let (incoming_tx, incoming_rx) = mpsc::channel(MAX_IN_FLIGHT);
        Self {
            next_id: AtomicU32::new(1),
            pending: Mutex::new(HashMap::new()),
            incoming_tx,
            incoming_rx: Mutex::new(Some(incoming_rx)),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<ProbeAnswer>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reader, edge side: a probe arrived. While the edge holds as many as
    /// it allows, more are dropped unanswered (the cloud reports no
    /// answer): answering each would queue without bound behind a cloud
    /// that floods probes and reads nothing.
    pub(crate) fn arrived(&self, probe: IncomingProbe) {
        let _ = self.incoming_tx.try_send(probe);
    }

    /// Reader, cloud side: an answer arrived (one for a probe no longer
    /// awaited is ignored).
    pub(crate) fn answered(&self, id: u32, answer: ProbeAnswer) {
        if let Some(waiting) = self.pending().remove(&id) {
            let _ = waiting.send(answer);
        }
    }
}

impl Tunnel {
    /// Cloud side: asks the edge to check `host:port` within `timeout`.
    ///
    /// # Errors
    /// [`ProbeError`] when there is no answer to give.
    pub async fn probe(
        &self,
        mapping: &str,
        host: &str,
        port: u16,
        timeout: Duration,
        exchange: Option<proto::ProbeExchange>,
    ) -> Result<ProbeAnswer, ProbeError> {
        let shared = &self.shared;
        let version = shared.settings.version;
        if version < proto::PROBE_VERSION {
            return Err(ProbeError::Unsupported {
                version,
                need: proto::PROBE_VERSION,
                what: "a probe",
            });
        }
        if exchange.is_some() && version < proto::PROBE_EXCHANGE_VERSION {
            let need = proto::PROBE_EXCHANGE_VERSION;
            return Err(ProbeError::Unsupported { version, need, what: "a probe's send/expect" });
        }
        if self.is_closed() {
            return Err(ProbeError::Closed);
        }
        let probes = &shared.probes;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = probes.pending();
            if pending.len() >= MAX_PENDING {
                return Err(ProbeError::Busy);
            }
            let id = probes.next_id.fetch_add(1, Ordering::Relaxed);
            pending.insert(id, tx);
            id
        };
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        shared.send_control(Frame::Probe {
            id,
            timeout_ms,
            mapping: mapping.to_owned(),
            host: host.to_owned(),
            port,
            exchange,
        });
        // The edge's own limit, plus a margin for the round trip.
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout + Duration::from_secs(1), rx) => match answer {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(ProbeError::Closed),
                Err(_) => Err(ProbeError::NoAnswer),
            },
            () = shared.closed.cancelled() => Err(ProbeError::Closed),
        };
        probes.pending().remove(&id);
        answer
    }

    /// Edge side: the probes the cloud sends on this tunnel (once; `None`
    /// after the first call).
    pub fn take_probes(&self) -> Option<mpsc::Receiver<IncomingProbe>> {
        self.shared.probes.incoming_rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Edge side: answers probe `id`.
    pub fn answer_probe(&self, id: u32, code: OpenCode, connect: Duration, message: &str) {
        let connect_us = u32::try_from(connect.as_micros()).unwrap_or(u32::MAX);
        self.shared.send_control(Frame::ProbeResult {
            id,
            code,
            connect_us,
            message: message.to_owned(),
        });
    }
}
