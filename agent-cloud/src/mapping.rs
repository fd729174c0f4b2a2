//! One mapping at run time: its listener's accept loop, client allowlist
//! (of the peer, or of the client a trusted load balancer's PROXY header
//! names), stream open and relay, and its live figures.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{MappingSource, MappingState};
use bytes::Bytes;
use config::{MappingConfig, ProxyProtocolConfig};
use proto::{OpenCode, ResetCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::client_limits::ClientLimits;
use crate::edges::EdgeRegistry;
use crate::events::EventLog;
use crate::log_limit::{self, LogLimit};
use crate::metrics::{ActiveGuard, MappingMetrics};
use crate::proxy_header::{self, Header};

/// How long the edge may take to answer an open (its own connect timeout
/// is shorter; this only guards against a stuck edge).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a mapping is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Active,
    /// Listener closed; connections are reset at `until`.
    Draining {
        until: Instant,
    },
    Failed,
}

/// A mapping known to the cloud agent, whatever its phase.
#[derive(Debug)]
pub(crate) struct MappingEntry {
    pub(crate) spec: MappingConfig,
    pub(crate) source: MappingSource,
    /// The bound address, once listening.
    pub(crate) bound: Option<SocketAddr>,
    /// Why it is not listening, when failed.
    pub(crate) error: Option<String>,
    pub(crate) metrics: MappingMetrics,
    phase: Mutex<Phase>,
    /// Stops the accept loop (drain, remove, shutdown).
    pub(crate) stop_listener: CancellationToken,
    /// Resets this mapping's open connections (drain deadline, remove,
    /// end of the shutdown grace).
    pub(crate) reset_connections: CancellationToken,
    /// This mapping's open connections.
    pub(crate) connections: TaskTracker,
    slots: Option<Arc<Semaphore>>,
    /// Clients refused at accept (allowlist, connection limit): a scan
    /// logs a bounded number of lines.
    refusals: LogLimit,
    /// The latest end-to-end probe (with `probe_interval`).
    probe: Mutex<Option<api::ProbeView>>,
    /// Caps per client, and what they refused.
    pub(crate) client_limits: Arc<ClientLimits>,
    /// The mapping's byte rates, shared by its connections.
    relay_limits: Mutex<tunnel::RelayLimits>,
    /// The traffic policy in force: `spec.policy` until it is replaced.
    policy: Mutex<config::TrafficPolicy>,
    /// Waits counted by limiters since dropped (a rate removed), in and out.
    throttled_before: [std::sync::atomic::AtomicU64; 2],
}

impl MappingEntry {
    pub(crate) fn new(
        spec: MappingConfig,
        source: MappingSource,
        bound: Result<SocketAddr, String>,
        abort_all: &CancellationToken,
    ) -> Self {
        let slots = spec.max_connections.map(|n| Arc::new(Semaphore::new(n as usize)));
        let refusals = LogLimit::new(format!("clients refused by mapping {}", spec.name));
        let (client_limits, relay_limits) =
            (ClientLimits::new(&spec.policy), relay_limits(&spec.policy));
        let policy = spec.policy;
        let (bound, error, phase) = match bound {
            Ok(addr) => (Some(addr), None, Phase::Active),
            Err(e) => (None, Some(e), Phase::Failed),
        };
        Self {
            spec,
            source,
            bound,
            error,
            metrics: MappingMetrics::default(),
            phase: Mutex::new(phase),
            stop_listener: CancellationToken::new(),
            reset_connections: abort_all.child_token(),
            connections: TaskTracker::new(),
            slots,
            refusals,
            probe: Mutex::new(None),
            client_limits,
            relay_limits: Mutex::new(relay_limits),
            policy: Mutex::new(policy),
            throttled_before: Default::default(),
        }
    }

    /// The latest probe as the API shows it: `pending` before the first.
    pub(crate) fn probe_view(&self) -> Option<api::ProbeView> {
        self.spec.probe_interval?;
        let latest = self.probe.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(latest.unwrap_or(api::ProbeView {
            status: api::ProbeStatus::Pending,
            detail: "not probed yet".into(),
            connect_us: None,
            rtt_us: None,
            at_unix_ms: 0,
            since_unix_ms: 0,
            consecutive_failures: 0,
        }))
    }

    /// Replaces the latest probe with what `next` makes of it; returns the
    /// one before and the new one.
    pub(crate) fn record_probe(
        &self,
        next: impl FnOnce(Option<&api::ProbeView>) -> api::ProbeView,
    ) -> (Option<api::ProbeView>, api::ProbeView) {
        let mut slot = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        let view = next(slot.as_ref());
        let prev = slot.replace(view.clone());
        (prev, view)
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    pub(crate) fn state(&self) -> MappingState {
        match self.phase() {
            Phase::Active => MappingState::Active,
            Phase::Draining { .. } => MappingState::Draining,
            Phase::Failed => MappingState::Failed,
        }
    }

    /// The traffic policy in force.
    pub(crate) fn policy(&self) -> config::TrafficPolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spec as it runs now (with the policy in force).
    pub(crate) fn spec_now(&self) -> MappingConfig {
        let mut spec = self.spec.clone();
        spec.policy = self.policy();
        spec
    }

    /// The limiters a new connection uses.
    fn relay_limits(&self) -> tunnel::RelayLimits {
        self.relay_limits.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the byte rates so far, in and out.
    pub(crate) fn throttled(&self) -> (u64, u64) {
        let limits = self.relay_limits();
        let now =
            |l: &Option<Arc<tunnel::rate::RateLimiter>>| l.as_ref().map_or(0, |l| l.throttled());
        let before = |i: usize| self.throttled_before[i].load(Ordering::Relaxed);
        (before(0) + now(&limits.to_peer), before(1) + now(&limits.from_peer))
    }

    /// Replaces the traffic policy, live: the caps apply to the next
    /// client; a changed rate applies at once to every open connection; a
    /// rate set where there was none applies to connections opened from
    /// now on; a rate removed stops limiting every connection at once.
    pub(crate) fn set_policy(&self, policy: config::TrafficPolicy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
        self.client_limits.set(&policy);
        let mut guard = self.relay_limits.lock().unwrap_or_else(|p| p.into_inner());
        let limits = &mut *guard;
        let slots = [
            (&mut limits.to_peer, policy.rate_limit_in, 0),
            (&mut limits.from_peer, policy.rate_limit_out, 1),
        ];
        for (slot, rate, i) in slots {
            match (slot.as_ref(), rate) {
                (Some(l), Some(r)) => l.set_rate(r),
                (Some(l), None) => {
                    // Connections holding it go unlimited.
                    l.set_rate(config::MAX_RATE);
                    self.throttled_before[i].fetch_add(l.throttled(), Ordering::Relaxed);
                    *slot = None;
                }
                (None, Some(r)) => *slot = Some(Arc::new(tunnel::rate::RateLimiter::new(r))),
                (None, None) => {}
            }
        }
    }

    fn client_allowed(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.spec.allow.is_empty() || self.spec.allow.iter().any(|net| net.contains(&ip))
    }
}

/// The limiters for `policy`'s rates: `rate_limit_in` on what the cloud
/// reads from clients, `rate_limit_out` on what it writes to them.
fn relay_limits(policy: &config::TrafficPolicy) -> tunnel::RelayLimits {
    let limiter = |rate: Option<u64>| rate.map(|r| Arc::new(tunnel::rate::RateLimiter::new(r)));
    tunnel::RelayLimits {
        to_peer: limiter(policy.rate_limit_in),
        from_peer: limiter(policy.rate_limit_out),
    }
}

/// Tunnels that failed for one client before giving up: with an edge
/// group, a tunnel that died before the cloud noticed costs one retry, not
/// the client's connection. An edge that answers `Draining` does not count:
/// all its tunnels are skipped at once, so that costs one retry per edge.
const OPEN_ATTEMPTS: usize = 3;

/// Opens a stream for a client on the least loaded tunnel of the mapping's
/// edge or group, trying another tunnel when one turns out to be gone, full
/// or draining, and another edge when one answers that it is draining (it
/// says so before its `Drain` frame reaches us). `None` when no tunnel
/// could carry it (logged).
async fn open_stream(
    entry: &MappingEntry,
    edges: &EdgeRegistry,
    origin: &proto::StreamOrigin,
) -> Option<(tunnel::Tunnel, tunnel::MuxStream)> {
    let m = &entry.spec;
    let mut tried = Vec::new();
    let mut failures = 0;
    while failures < OPEN_ATTEMPTS {
        let Some(tunnel) = edges.pick(&m.edge, &tried) else {
            if tried.is_empty() {
                info!(edge = %m.edge, "no live tunnel to the edge; client closed");
            } else {
                info!(edge = %m.edge, "no other tunnel can take the stream; client closed");
            }
            return None;
        };
        let open = tunnel.open_stream(&m.name, &m.target.host, m.target.port, Some(origin.clone()));
        let result = tokio::select! {
            () = entry.reset_connections.cancelled() => return None,
            result = tokio::time::timeout(OPEN_TIMEOUT, open) => result,
        };
        match result {
            Ok(Ok(stream)) => return Some((tunnel, stream)),
            Ok(Err(tunnel::OpenError::Refused { code: OpenCode::Draining, .. })) => {
                info!(
                    tunnel = tunnel.id(),
                    "edge answered that it is draining; trying another edge"
                );
                tried.extend(edges.tunnels_of_same_edge(tunnel.id()));
                tried.push(tunnel.id());
            }
            Ok(Err(
                e @ (tunnel::OpenError::Closed(_)
                | tunnel::OpenError::Draining
                | tunnel::OpenError::TooManyStreams(_)
                | tunnel::OpenError::IdsExhausted
                | tunnel::OpenError::Unsupported { .. }),
            )) => {
                info!(tunnel = tunnel.id(), error = %e, "tunnel cannot take the stream; trying another");
                tried.push(tunnel.id());
                failures += 1;
            }
            Ok(Err(e)) => {
                // The error may carry the edge's own message.
                info!(tunnel = tunnel.id(), error = %tunnel::untrusted::escaped(&e),
                    "stream not opened; client closed");
                return None;
            }
            Err(_) => {
                warn!(tunnel = tunnel.id(), "edge did not answer the open in time; client closed");
                return None;
            }
        }
    }
    None
}

/// Closes a client connection with an RST, as a refused or failed direct
/// connection would look.
pub(crate) fn reset(tcp: TcpStream) {
    reset_on_close(&tcp);
}

/// Makes closing `tcp` send an RST (see [`reset`]).
fn reset_on_close(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// Accepts clients until the mapping's listener is stopped. Connections
/// are tracked both by the mapping (drain) and by `all` (shutdown). With
/// `proxy`, only its load balancers may connect, and each connection's
/// client is the one its PROXY header names (read in the connection's own
/// task, holding one of the mapping's connection slots).
pub(crate) async fn run(
    entry: Arc<MappingEntry>,
    listener: TcpListener,
    edges: Arc<EdgeRegistry>,
    all: TaskTracker,
    proxy: Option<Arc<ProxyProtocolConfig>>,
    events: Option<EventLog>,
) {
    let name = entry.spec.name.clone();
    let mut flush = tokio::time::interval(log_limit::FLUSH_EVERY);
    loop {
        let (tcp, peer) = tokio::select! {
            () = entry.stop_listener.cancelled() => break,
            _ = flush.tick() => {
                entry.refusals.flush();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(mapping = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match &proxy {
            // Whatever it would send is not believed: refused unread.
            Some(proxy) if !proxy.trusts(peer.ip()) => {
                if entry.refusals.allow() {
                    info!(mapping = %name, %peer,
                        "not a configured load balancer ([proxy_protocol] from); closed");
                }
                reset(tcp);
                continue;
            }
            Some(_) => {}
            None if !entry.client_allowed(peer) => {
                if entry.refusals.allow() {
                    info!(mapping = %name, %peer, "client not in the mapping's allowlist; closed");
                }
                reset(tcp);
                continue;
            }
            None => {}
        }
        let Ok(permit) = take_slot(&entry, peer, events.as_ref()) else {
            reset(tcp);
            continue;
        };
        let conn_entry = Arc::clone(&entry);
        let edges = Arc::clone(&edges);
        let proxy = proxy.clone();
        let events = events.clone();
        let conn = entry.connections.track_future(async move {
            let mut tcp = tcp;
            let (client, span) = match &proxy {
                None => (peer, info_span!("conn", mapping = %conn_entry.spec.name, %peer)),
                Some(proxy) => {
                    let Some(client) = proxied_client(&conn_entry, proxy, &mut tcp, peer).await
                    else {
                        return;
                    };
                    let span = info_span!("conn", mapping = %conn_entry.spec.name,
                        peer = %client, lb = %peer);
                    (client, span)
                }
            };
            let Some(counted) = admit_client(&conn_entry, client, events.as_ref()) else {
                reset(tcp);
                return;
            };
            let origin = Origin { client, first: Bytes::new(), server_name: String::new() };
            serve_client(&conn_entry, &edges, tcp, origin).instrument(span).await;
            drop((permit, counted));
        });
        all.spawn(conn);
    }
    drop(listener);
    info!(mapping = %name, "listener closed");
}

/// One of the mapping's connection slots (with `max_connections`), or
/// `Err` when it is at its limit (logged, within bounds; an event).
fn take_slot(
    entry: &MappingEntry,
    peer: SocketAddr,
    events: Option<&EventLog>,
) -> Result<Option<OwnedSemaphorePermit>, ()> {
    let Some(slots) = &entry.slots else { return Ok(None) };
    if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
        return Ok(Some(permit));
    }
    let name = &entry.spec.name;
    if entry.refusals.allow() {
        info!(mapping = %name, %peer, "mapping at its connection limit; closed");
    }
    if let Some(events) = events {
        let cap = entry.spec.max_connections.unwrap_or_default();
        events.limit_hit(
            "max_connections",
            name,
            &format!("mapping {name} refused a client: at max_connections {cap}"),
        );
    }
    Err(())
}

/// Counts a connection from `client` against the mapping's caps per
/// client; `None` when refused (logged within bounds, an event).
fn admit_client(
    entry: &MappingEntry,
    client: SocketAddr,
    events: Option<&EventLog>,
) -> Option<crate::client_limits::ClientGuard> {
    match entry.client_limits.admit(client.ip()) {
        Ok(guard) => Some(guard),
        Err(refusal) => {
            let name = &entry.spec.name;
            let why = refusal.describe();
            if entry.refusals.allow() {
                info!(mapping = %name, peer = %client, "client {why}; closed");
            }
            if let Some(events) = events {
                let text = format!("mapping {name} refused a client: {why}");
                events.limit_hit(refusal.key(), name, &text);
            }
            None
        }
    }
}

/// A connection a shared listen address routed to `entry` by name, from
/// `client` (the peer, or the client its load balancer named): admitted
/// as a connection of the mapping's own listener would be (allowlist,
/// connection limit), then carried, tracked by the mapping for its drain.
/// The caller's task is tracked for shutdown.
pub(crate) async fn serve_routed(
    entry: Arc<MappingEntry>,
    edges: Arc<EdgeRegistry>,
    tcp: TcpStream,
    origin: Origin,
    events: Option<EventLog>,
) {
    let name = &entry.spec.name;
    let client = origin.client;
    if entry.phase() != Phase::Active {
        // Drained between the routing and now.
        reset(tcp);
        return;
    }
    if !entry.client_allowed(client) {
        if entry.refusals.allow() {
            info!(mapping = %name, peer = %client, "client not in the mapping's allowlist; closed");
        }
        reset(tcp);
        return;
    }
    let Ok(permit) = take_slot(&entry, client, events.as_ref()) else {
        reset(tcp);
        return;
    };
    let Some(counted) = admit_client(&entry, client, events.as_ref()) else {
        reset(tcp);
        return;
    };
    let span = info_span!("conn", mapping = %name, peer = %client, host = %origin.server_name);
    let conn = Arc::clone(&entry);
    entry
        .connections
        .track_future(async move {
            serve_client(&conn, &edges, tcp, origin).await;
            drop((permit, counted));
        })
        .instrument(span)
        .await;
}

/// Who a connection is for, beyond its socket.
#[derive(Debug)]
pub(crate) struct Origin {
    /// The peer, or the client its load balancer named.
    pub(crate) client: SocketAddr,
    /// Bytes already read from the socket (to route it), sent first.
    pub(crate) first: Bytes,
    /// The name it was routed by; empty if it was not.
    pub(crate) server_name: String,
}

/// The client a load balancer's connection carries, from its PROXY
/// header, if the mapping admits it. `None` when the connection is to be
/// closed: with an RST after a bad or late header (logged, counted as
/// failed) or for a client outside the allowlist (logged, as a direct
/// client would be); quietly for a health check; or because the mapping
/// resets its connections.
async fn proxied_client(
    entry: &MappingEntry,
    proxy: &ProxyProtocolConfig,
    tcp: &mut TcpStream,
    lb: SocketAddr,
) -> Option<SocketAddr> {
    let name = &entry.spec.name;
    let header = tokio::select! {
        () = entry.reset_connections.cancelled() => {
            reset_on_close(tcp);
            return None;
        }
        header = proxy_header::read(tcp, lb, proxy.timeout) => header,
    };
    match header {
        Ok(Header::Client(client)) if entry.client_allowed(client) => Some(client),
        Ok(Header::Client(client)) => {
            reset_on_close(tcp);
            if entry.refusals.allow() {
                info!(mapping = %name, peer = %client, %lb,
                    "client not in the mapping's allowlist; closed");
            }
            None
        }
        Ok(Header::Check(kind)) => {
            debug!(mapping = %name, %lb, kind, "load balancer health check; closed");
            None
        }
        Err(e) => {
            reset_on_close(tcp);
            let counters = &entry.metrics.counters;
            counters.total.fetch_add(1, Ordering::Relaxed);
            counters.failed.fetch_add(1, Ordering::Relaxed);
            if entry.refusals.allow() {
                info!(mapping = %name, %lb, error = %e, "bad PROXY protocol header; closed");
            }
            None
        }
    }
}

/// Carries one client's connection.
async fn serve_client(entry: &MappingEntry, edges: &EdgeRegistry, tcp: TcpStream, origin: Origin) {
    let Origin { client, first, server_name } = origin;
    let counters = &entry.metrics.counters;
    counters.total.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard::new(&counters.active);
    let started = Instant::now();
    let origin = proto::StreamOrigin {
        client,
        public: tcp.local_addr().unwrap_or(client),
        server_name,
        send_proxy: entry.spec.proxy_protocol.map(|v| match v {
            config::ProxyVersion::V1 => proto::SendProxy::V1,
            config::ProxyVersion::V2 => proto::SendProxy::V2,
        }),
    };
    let Some((tunnel, stream)) = open_stream(entry, edges, &origin).await else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        reset(tcp);
        return;
    };
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    entry.metrics.record_connect(micros, crate::clock::now_secs());
    let stream_id = stream.id();
    debug!(tunnel = tunnel.id(), stream = stream_id, "stream open");
    let outcome = tunnel::relay_after(
        first,
        tcp,
        stream,
        entry.reset_connections.clone(),
        ResetCode::Drained,
        &counters.bytes,
        &entry.relay_limits(),
    )
    .await;
    debug!(tunnel = tunnel.id(), stream = stream_id, sent = outcome.bytes_to_peer,
        received = outcome.bytes_from_peer, end = ?outcome.end, "stream closed");
}
