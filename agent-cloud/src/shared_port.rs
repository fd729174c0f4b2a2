//! A listen address several mappings share, each naming a `host`: one
//! listener whose connections are routed by the TLS server name or the
//! HTTP `Host` their first bytes carry (see [`crate::sniff`]). TLS is not
//! terminated: the bytes read to route a connection are replayed to the
//! destination unchanged.
//!
//! Routing: an exact name beats a wildcard (`*.example.com`, one label),
//! which beats the address's default (`*`). A name no mapping takes, with
//! no default, gets a TLS `unrecognized_name` alert or an HTTP `421`; a
//! connection that is neither TLS nor HTTP goes to the default or is
//! closed. A client that names nothing within the peek timeout, or within
//! [`sniff::MAX_PEEK`] bytes, is closed. Every such outcome is counted per
//! address, and logged within bounds.
//!
//! Bounds, for a flood of connections that never finish their hello: at
//! most [`MAX_PEEKING`] connections being read at once (the rest are
//! closed at accept, counted), and their bytes together within
//! [`PEEK_BUDGET_KIB`]; a silent connection holds no buffer at all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::{HostPattern, ProxyProtocolConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::edges::EdgeRegistry;
use crate::events::EventLog;
use crate::log_limit::{self, LogLimit};
use crate::mapping::{self, MappingEntry, Origin};
use crate::proxy_header::{self, Header};
use crate::sniff::{self, PeekError, Peeked};

/// Connections being read for their name at once, over all shared
/// addresses of the agent.
pub(crate) const MAX_PEEKING: usize = 16 * 1024;
/// Bytes those connections may hold together, KiB.
pub(crate) const PEEK_BUDGET_KIB: usize = 32 * 1024;

/// What happened to connections that were not routed, per address.
#[derive(Debug, Default)]
pub(crate) struct PortCounters {
    /// Routed to a mapping.
    pub(crate) routed: AtomicU64,
    /// A TLS server name, or none, that no mapping takes: alerted.
    pub(crate) unknown_tls: AtomicU64,
    /// An HTTP host, or none, that no mapping takes: answered 421.
    pub(crate) unknown_http: AtomicU64,
    /// Neither TLS nor HTTP, with no default: closed.
    pub(crate) unrecognized: AtomicU64,
    /// Named nothing in time: closed.
    pub(crate) timed_out: AtomicU64,
    /// Sent more than the peek bound without a name: closed.
    pub(crate) too_large: AtomicU64,
    /// Refused at accept or while reading: too many connections being
    /// read, or their bytes at the budget.
    pub(crate) overloaded: AtomicU64,
}

impl PortCounters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Limits every shared address of the agent draws from together.
#[derive(Debug, Clone)]
pub(crate) struct PeekLimits {
    peeking: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    pub(crate) timeout: Duration,
}

impl PeekLimits {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            peeking: Arc::new(Semaphore::new(MAX_PEEKING)),
            bytes: Arc::new(Semaphore::new(PEEK_BUDGET_KIB)),
            timeout,
        }
    }
}

/// One shared listen address.
#[derive(Debug)]
pub(crate) struct SharedPort {
    /// The address bound.
    pub(crate) bound: SocketAddr,
    routes: Mutex<Vec<Arc<MappingEntry>>>,
    stop: CancellationToken,
    pub(crate) counters: PortCounters,
    refusals: LogLimit,
}

impl SharedPort {
    pub(crate) fn new(bound: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            bound,
            routes: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
            counters: PortCounters::default(),
            refusals: LogLimit::new(format!("connections not routed on {bound}")),
        })
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Vec<Arc<MappingEntry>>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a mapping's route (planning checked that its host is free).
    pub(crate) fn add(&self, entry: Arc<MappingEntry>) {
        self.routes().push(entry);
    }

    /// Removes `entry`'s route; returns whether the address has none left
    /// (its listener is then stopped).
    pub(crate) fn remove(&self, entry: &Arc<MappingEntry>) -> bool {
        let mut routes = self.routes();
        routes.retain(|e| !Arc::ptr_eq(e, entry));
        let empty = routes.is_empty();
        if empty {
            self.stop.cancel();
        }
        empty
    }

    /// Whether `entry` is routed here.
    pub(crate) fn has(&self, entry: &Arc<MappingEntry>) -> bool {
        self.routes().iter().any(|e| Arc::ptr_eq(e, entry))
    }

    /// Stops the listener (shutdown).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// The mapping for `name` (normalized), or the default for `None` and
    /// for names nobody takes.
    fn route(&self, name: Option<&str>) -> Option<Arc<MappingEntry>> {
        let routes = self.routes();
        let best = |name: &str| {
            routes
                .iter()
                .filter_map(|e| Some((e.spec.host.as_ref()?.matches(name)?, e)))
                .max_by_key(|(specificity, _)| *specificity)
                .map(|(_, e)| Arc::clone(e))
        };
        match name {
            Some(name) => best(name),
            None => routes
                .iter()
                .find(|e| e.spec.host.as_ref().is_some_and(HostPattern::is_default))
                .cloned(),
        }
    }
}

/// What the accept loop needs besides the port.
#[derive(Debug, Clone)]
pub(crate) struct PortContext {
    pub(crate) edges: Arc<EdgeRegistry>,
    pub(crate) all: TaskTracker,
    pub(crate) proxy: Option<Arc<ProxyProtocolConfig>>,
    pub(crate) events: Option<EventLog>,
    pub(crate) limits: PeekLimits,
    /// Stops connections still being read (shutdown's end).
    pub(crate) abort: CancellationToken,
}

/// Accepts on `listener` until the port is stopped.
pub(crate) async fn run(port: Arc<SharedPort>, listener: TcpListener, cx: PortContext) {
    let mut flush = tokio::time::interval(log_limit::FLUSH_EVERY);
    loop {
        let (tcp, peer) = tokio::select! {
            () = port.stop.cancelled() => break,
            _ = flush.tick() => {
                port.refusals.flush();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(listen = %port.bound, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Some(proxy) = &cx.proxy {
            if !proxy.trusts(peer.ip()) {
                if port.refusals.allow() {
                    info!(listen = %port.bound, %peer,
                        "not a configured load balancer ([proxy_protocol] from); closed");
                }
                mapping::reset(tcp);
                continue;
            }
        }
        let Ok(slot) = Arc::clone(&cx.limits.peeking).try_acquire_owned() else {
            PortCounters::add(&port.counters.overloaded);
            if port.refusals.allow() {
                info!(listen = %port.bound, %peer, "too many connections naming their host; closed");
            }
            mapping::reset(tcp);
            continue;
        };
        let (port, cx2) = (Arc::clone(&port), cx.clone());
        cx.all.spawn(async move {
            let routed = tokio::select! {
                () = cx2.abort.cancelled() => None,
                routed = route(&port, tcp, peer, &cx2) => routed,
            };
            drop(slot);
            if let Some((entry, tcp, origin)) = routed {
                // Boxed: a connection still naming its host should not
                // carry the relay's state (several KiB) while it waits.
                Box::pin(mapping::serve_routed(entry, cx2.edges, tcp, origin, cx2.events)).await;
            }
        });
    }
    drop(listener);
    info!(listen = %port.bound, "shared listener closed");
}

/// Reads the connection's name (after its load balancer's PROXY header,
/// with `[proxy_protocol]`) and finds its mapping; answers and closes it
/// when there is none. Within the peek timeout in all.
async fn route(
    port: &SharedPort,
    mut tcp: TcpStream,
    peer: SocketAddr,
    cx: &PortContext,
) -> Option<(Arc<MappingEntry>, TcpStream, Origin)> {
    let deadline = Instant::now() + cx.limits.timeout;
    let client = match &cx.proxy {
        None => peer,
        // Boxed: its 1 KiB buffer would otherwise be in every waiting
        // connection's state, with a load balancer or without.
        Some(proxy) => match Box::pin(proxy_header::read(&mut tcp, peer, proxy.timeout)).await {
            Ok(Header::Client(client)) => client,
            Ok(Header::Check(_)) => return None,
            Err(e) => {
                if port.refusals.allow() {
                    info!(listen = %port.bound, lb = %peer, error = %e, "bad PROXY protocol header; closed");
                }
                mapping::reset(tcp);
                return None;
            }
        },
    };
    let counters = &port.counters;
    let (peeked, first) = match sniff::read_name(&tcp, deadline, &cx.limits.bytes).await {
        Ok(found) => found,
        Err(e) => {
            let (counter, what) = match e {
                PeekError::Timeout(0) => (&counters.timed_out, "sent nothing".to_owned()),
                PeekError::Timeout(n) => {
                    (&counters.timed_out, format!("named no host in {n} bytes"))
                }
                PeekError::TooLarge => (
                    &counters.too_large,
                    format!("named no host in the first {} bytes", sniff::MAX_PEEK),
                ),
                PeekError::Overloaded => {
                    (&counters.overloaded, "over the bytes held for routing".to_owned())
                }
                PeekError::Closed => return None,
            };
            PortCounters::add(counter);
            if port.refusals.allow() {
                info!(listen = %port.bound, peer = %client, "client {what}; closed");
            }
            mapping::reset(tcp);
            return None;
        }
    };
    let (name, answer, counter): (Option<String>, &[u8], _) = match peeked {
        Peeked::Tls(name) => (name, &sniff::UNRECOGNIZED_NAME_ALERT, &counters.unknown_tls),
        Peeked::Http(name) => (name, sniff::MISDIRECTED, &counters.unknown_http),
        Peeked::BadTls | Peeked::Other => (None, &[], &counters.unrecognized),
    };
    if let Some(entry) = port.route(name.as_deref()) {
        PortCounters::add(&counters.routed);
        let origin = Origin { client, first, server_name: name.unwrap_or_default() };
        return Some((entry, tcp, origin));
    }
    PortCounters::add(counter);
    if port.refusals.allow() {
        let name = tunnel::untrusted::escaped(name.as_deref().unwrap_or("(none)"));
        info!(listen = %port.bound, peer = %client, host = %name, "no mapping takes this host; closed");
    }
    if !answer.is_empty() {
        // Best effort, briefly: the answer is a courtesy.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            tcp.write_all(answer).await?;
            tcp.shutdown().await
        })
        .await;
    }
    None
}
