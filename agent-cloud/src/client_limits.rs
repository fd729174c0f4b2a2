//! A mapping's caps per client: concurrent connections, and new
//! connections per second (a token bucket each). A client is an IPv4
//! address or an IPv6 /64. Refused clients are closed at once and counted.
//!
//! Memory is bounded: at most [`MAX_CLIENTS`] clients are tracked per
//! mapping. A client leaves the table once it has no connection and its
//! bucket is full again; when the table is full, such idle clients are
//! swept, and if none is idle the new client is refused.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use config::TrafficPolicy;
use tokio::time::Instant;
use tunnel::rate::TokenBucket;

/// Clients tracked at once per mapping.
pub(crate) const MAX_CLIENTS: usize = 65_536;

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// At `max_connections_per_client`.
    Concurrent(u32),
    /// Over `new_connections_per_client`.
    Rate(u32),
    /// [`MAX_CLIENTS`] clients are busy.
    TableFull,
}

impl Refusal {
    /// The limit, as the config names it.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Refusal::Concurrent(_) => "max_connections_per_client",
            Refusal::Rate(_) | Refusal::TableFull => "new_connections_per_client",
        }
    }

    pub(crate) fn describe(self) -> String {
        match self {
            Refusal::Concurrent(n) => format!("at max_connections_per_client {n}"),
            Refusal::Rate(n) => format!("over new_connections_per_client {n}"),
            Refusal::TableFull => format!("{MAX_CLIENTS} clients are already tracked"),
        }
    }
}

#[derive(Debug)]
struct Client {
    active: u32,
    bucket: Option<TokenBucket>,
}

impl Client {
    fn idle(&mut self, now: Instant) -> bool {
        self.active == 0 && self.bucket.as_mut().is_none_or(|b| b.is_full(now))
    }
}

/// The caps of one mapping and what they refused.
#[derive(Debug)]
pub(crate) struct ClientLimits {
    state: Mutex<State>,
    pub(crate) refused_concurrent: AtomicU64,
    pub(crate) refused_rate: AtomicU64,
}

#[derive(Debug)]
struct State {
    max_concurrent: Option<u32>,
    per_second: Option<u32>,
    clients: HashMap<IpAddr, Client>,
}

/// A client's connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct ClientGuard {
    limits: Option<Arc<ClientLimits>>,
    key: IpAddr,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let Some(limits) = &self.limits else { return };
        let clients = &mut limits.state().clients;
        if let Some(c) = clients.get_mut(&self.key) {
            c.active = c.active.saturating_sub(1);
            if c.idle(Instant::now()) {
                clients.remove(&self.key);
            }
        }
    }
}

/// The address a client is counted by: IPv4 as it is, IPv6 by its /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl ClientLimits {
    pub(crate) fn new(policy: &TrafficPolicy) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                max_concurrent: policy.max_connections_per_client,
                per_second: policy.new_connections_per_client,
                clients: HashMap::new(),
            }),
            refused_concurrent: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New caps from now on. Clients' open connections still count; their
    /// buckets start full at the new rate.
    pub(crate) fn set(&self, policy: &TrafficPolicy) {
        let mut state = self.state();
        state.max_concurrent = policy.max_connections_per_client;
        state.per_second = policy.new_connections_per_client;
        let now = Instant::now();
        let bucket = |n: u32| TokenBucket::new(u64::from(n), u64::from(n), now);
        let per_second = state.per_second;
        state.clients.retain(|_, c| c.active > 0);
        for c in state.clients.values_mut() {
            c.bucket = per_second.map(bucket);
        }
    }

    /// Admits a connection from `ip`, or says why not (and counts it).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ClientGuard, Refusal> {
        let key = client_key(ip);
        let mut state = self.state();
        let State { max_concurrent, per_second, clients } = &mut *state;
        let (max_concurrent, per_second) = (*max_concurrent, *per_second);
        // Counted even without caps once there were some: a cap set later
        // must see the connections already open.
        if max_concurrent.is_none() && per_second.is_none() && clients.is_empty() {
            return Ok(ClientGuard { limits: None, key });
        }
        let now = Instant::now();
        if !clients.contains_key(&key) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, c| !c.idle(now));
            if clients.len() >= MAX_CLIENTS {
                self.refused_rate.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::TableFull);
            }
        }
        let client = clients.entry(key).or_insert_with(|| Client {
            active: 0,
            bucket: per_second.map(|n| TokenBucket::new(u64::from(n), u64::from(n), now)),
        });
        if let Some(max) = max_concurrent {
            if client.active >= max {
                self.refused_concurrent.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Concurrent(max));
            }
        }
        if let (Some(bucket), Some(n)) = (client.bucket.as_mut(), per_second) {
            if !bucket.try_take_one(now) {
                self.refused_rate.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Rate(n));
            }
        }
        client.active += 1;
        Ok(ClientGuard { limits: Some(Arc::clone(self)), key })
    }

    /// Clients tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state().clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_client_is_capped_and_others_are_not() {
        let policy = TrafficPolicy { max_connections_per_client: Some(2), ..Default::default() };
        let limits = ClientLimits::new(&policy);
        let a1 = limits.admit(ip("192.0.2.1")).unwrap();
        let _a2 = limits.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(limits.admit(ip("192.0.2.1")).unwrap_err(), Refusal::Concurrent(2));
        let _b = limits.admit(ip("192.0.2.2")).expect("another client");
        drop(a1);
        let _a3 = limits.admit(ip("192.0.2.1")).expect("room again");
        assert_eq!(limits.refused_concurrent.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_ipv6_client_is_its_slash_64() {
        let policy = TrafficPolicy { max_connections_per_client: Some(1), ..Default::default() };
        let limits = ClientLimits::new(&policy);
        let _one = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(limits.admit(ip("2001:db8:1:2::ffff")).is_err(), "the same /64");
        assert!(limits.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[tokio::test(start_paused = true)]
    async fn new_connections_are_rated_and_idle_clients_leave_the_table() {
        let policy = TrafficPolicy { new_connections_per_client: Some(2), ..Default::default() };
        let limits = ClientLimits::new(&policy);
        drop(limits.admit(ip("192.0.2.1")).unwrap());
        drop(limits.admit(ip("192.0.2.1")).unwrap());
        assert_eq!(limits.admit(ip("192.0.2.1")).unwrap_err(), Refusal::Rate(2));
        assert_eq!(limits.tracked(), 1, "kept while its bucket refills");
        tokio::time::advance(std::time::Duration::from_millis(600)).await;
        let g = limits.admit(ip("192.0.2.1")).expect("a token back after half a second");
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        drop(g);
        assert_eq!(limits.tracked(), 0, "idle with a full bucket: gone");
    }

    #[tokio::test]
    async fn new_caps_apply_to_the_next_client_and_count_the_open_connections() {
        let policy = TrafficPolicy { max_connections_per_client: Some(1), ..Default::default() };
        let limits = ClientLimits::new(&policy);
        let _one = limits.admit(ip("192.0.2.1")).unwrap();
        assert!(limits.admit(ip("192.0.2.1")).is_err());
        limits.set(&TrafficPolicy { max_connections_per_client: Some(2), ..Default::default() });
        let _two = limits.admit(ip("192.0.2.1")).expect("raised to two");
        assert!(limits.admit(ip("192.0.2.1")).is_err(), "the open one still counts");
        limits.set(&TrafficPolicy::default());
        let _three = limits.admit(ip("192.0.2.1")).expect("no cap");
    }

    #[tokio::test]
    async fn without_caps_nothing_is_tracked() {
        let limits = ClientLimits::new(&TrafficPolicy::default());
        let _g = limits.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(limits.tracked(), 0);
    }
}
