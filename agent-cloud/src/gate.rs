//! Admission for unauthenticated tunnel connections.
//!
//! Before an edge has proved its token, a connection costs us a socket, a
//! task and a few buffers, and may be an attacker's. The gate bounds that:
//! - at most [`MAX_PENDING`] handshakes at once overall, and
//!   [`MAX_PENDING_PER_SOURCE`] from one *source*: an IPv4 address, or an
//!   IPv6 prefix (`[tunnel] ipv6_source_prefix`, a /64 by default), since one
//!   host or site commonly holds a whole /64 and could otherwise take every
//!   place with 32 of its addresses;
//! - [`RESERVED_FOR_KNOWN`] of the places are kept for sources an edge has
//!   authenticated from before (the last [`MAX_KNOWN`] of them), so a
//!   flood from many sources cannot keep a known edge from reconnecting.
//!
//! Each admitted handshake must finish within the configured handshake
//! timeout (enforced by the listener). Admitting and refusing are O(1):
//! hash-map look-ups, no scan. The caller logs refusals through a
//! [`LogLimit`](crate::log_limit::LogLimit).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Handshakes in progress at once, from everywhere.
pub(crate) const MAX_PENDING: usize = 1024;
/// Handshakes in progress at once from one source.
pub(crate) const MAX_PENDING_PER_SOURCE: usize = 32;
/// Places of [`MAX_PENDING`] that only known sources may take.
pub(crate) const RESERVED_FOR_KNOWN: usize = 256;
/// Sources remembered as known: a new one past this evicts the one that
/// authenticated least recently.
pub(crate) const MAX_KNOWN: usize = 4096;

/// Where handshakes come from, as the per-source limit counts them: an
/// IPv4 address (IPv4-mapped IPv6 included) or an IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source {
    net: IpAddr,
    prefix: u8,
}

impl Source {
    fn of(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => Source { net: v4, prefix: 32 },
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
                let net = Ipv6Addr::from(u128::from(v6) & mask);
                Source { net: IpAddr::V6(net), prefix }
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{}", self.prefix),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its source already has [`MAX_PENDING_PER_SOURCE`] handshakes.
    SourceFull { source: Source },
    /// Every place open to it is taken (`limit` of them).
    Full { source: Source, limit: usize },
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_source: HashMap<Source, usize>,
    /// Sources an edge authenticated from, with the sequence number of the
    /// latest such handshake.
    known: HashMap<Source, u64>,
    sequence: u64,
}

/// Counts pending handshakes; see the module docs.
#[derive(Debug)]
pub(crate) struct Gate {
    ipv6_prefix: u8,
    state: Mutex<State>,
}

/// A pending handshake's place at the gate; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    source: Source,
}

impl Gate {
    /// A gate grouping IPv6 sources by `ipv6_prefix` bits (at most 128).
    pub(crate) fn new(ipv6_prefix: u8) -> Self {
        Self { ipv6_prefix, state: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new handshake from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let source = Source::of(ip, self.ipv6_prefix);
        let mut state = self.lock();
        if state.per_source.get(&source).copied().unwrap_or(0) >= MAX_PENDING_PER_SOURCE {
            return Err(Refusal::SourceFull { source });
        }
        let limit = if state.known.contains_key(&source) {
            MAX_PENDING
        } else {
            MAX_PENDING - RESERVED_FOR_KNOWN
        };
        if state.total >= limit {
            return Err(Refusal::Full { source, limit });
        }
        state.total += 1;
        *state.per_source.entry(source).or_insert(0) += 1;
        Ok(Ticket { gate: Arc::clone(self), source })
    }
}

impl Ticket {
    /// Remembers the ticket's source as known: an edge proved its token
    /// from there.
    pub(crate) fn authenticated(&self) {
        let mut state = self.gate.lock();
        state.sequence += 1;
        let sequence = state.sequence;
        if state.known.insert(self.source, sequence).is_none() && state.known.len() > MAX_KNOWN {
            // O(MAX_KNOWN), but only when a new source authenticates with
            // the table full: never on the refusal path.
            let oldest = state.known.iter().min_by_key(|(_, seq)| **seq).map(|(s, _)| *s);
            if let Some(oldest) = oldest {
                state.known.remove(&oldest);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Arc<Gate> {
        Arc::new(Gate::new(64))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_place() {
        let gate = gate();
        let attacker = ip("127.0.0.2");
        let held: Vec<Ticket> =
            (0..MAX_PENDING_PER_SOURCE).map(|_| gate.admit(attacker).unwrap()).collect();
        assert!(matches!(gate.admit(attacker), Err(Refusal::SourceFull { .. })));
        assert!(gate.admit(ip("127.0.0.1")).is_ok(), "another address still gets in");
        drop(held);
        assert!(gate.admit(attacker).is_ok(), "places are freed when handshakes end");
        assert_eq!(gate.lock().per_source.len(), 0, "dropped tickets leave no bookkeeping behind");
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_one_limit() {
        let gate = gate();
        // 32 different addresses of 2001:db8:1:2::/64, one handshake each.
        let held: Vec<Ticket> = (0..MAX_PENDING_PER_SOURCE)
            .map(|i| gate.admit(ip(&format!("2001:db8:1:2:{i:x}::1"))).unwrap())
            .collect();
        let refused = gate.admit(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        let Err(Refusal::SourceFull { source }) = refused else { panic!("{refused:?}") };
        assert_eq!(source.to_string(), "2001:db8:1:2::/64");
        assert!(gate.admit(ip("2001:db8:1:3::1")).is_ok(), "the next /64 is another source");
        drop(held);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let gate = gate();
        let held: Vec<Ticket> = (0..MAX_PENDING_PER_SOURCE)
            .map(|i| gate.admit(ip(&format!("::ffff:192.0.2.{i}"))).unwrap())
            .collect();
        assert!(
            gate.admit(ip("::ffff:192.0.2.200")).is_ok(),
            "each IPv4 address is its own source"
        );
        assert!(gate.admit(ip("192.0.2.1")).is_ok());
        assert_eq!(Source::of(ip("::ffff:192.0.2.1"), 64), Source::of(ip("192.0.2.1"), 64));
        drop(held);
    }

    #[test]
    fn the_prefix_length_is_the_gates_choice() {
        assert_eq!(Source::of(ip("2001:db8::1"), 128).to_string(), "2001:db8::1/128");
        assert_eq!(Source::of(ip("2001:db8:aa:bb::1"), 48).to_string(), "2001:db8:aa::/48");
        assert_eq!(Source::of(ip("2001:db8::1"), 0).to_string(), "::/0");
    }

    #[test]
    fn a_flood_from_many_sources_leaves_room_for_a_known_edge() {
        let gate = gate();
        let edge = ip("2001:db8:e::7");
        gate.admit(edge).unwrap().authenticated();
        // Unknown sources, 32 handshakes from each of many /64s.
        let mut flood = Vec::new();
        for net in 0u16.. {
            let mut admitted = 0;
            for host in 0..MAX_PENDING_PER_SOURCE {
                if let Ok(t) = gate.admit(ip(&format!("2001:db8:f:{net:x}::{host:x}"))) {
                    flood.push(t);
                    admitted += 1;
                }
            }
            if admitted == 0 {
                break;
            }
        }
        assert_eq!(flood.len(), MAX_PENDING - RESERVED_FOR_KNOWN, "the flood gets its share only");
        assert!(matches!(gate.admit(ip("192.0.2.9")), Err(Refusal::Full { .. })));
        // The known edge, from another address of its /64, still gets in,
        // as many times as its own limit allows.
        let edge_again: Vec<Ticket> = (0..MAX_PENDING_PER_SOURCE)
            .map(|i| gate.admit(ip(&format!("2001:db8:e::{:x}", 100 + i))))
            .collect::<Result<_, _>>()
            .expect("a known edge is admitted past the flood");
        assert_eq!(gate.lock().total, MAX_PENDING - RESERVED_FOR_KNOWN + MAX_PENDING_PER_SOURCE);
        drop((flood, edge_again));
        assert_eq!(gate.lock().total, 0);
    }

    #[test]
    fn known_sources_are_bounded_and_the_least_recent_is_forgotten() {
        let gate = gate();
        let first = ip("10.0.0.1");
        gate.admit(first).unwrap().authenticated();
        for i in 0..MAX_KNOWN as u32 {
            let ip = IpAddr::from((0x0b00_0000 + i).to_be_bytes());
            gate.admit(ip).unwrap().authenticated();
        }
        let state = gate.lock();
        assert_eq!(state.known.len(), MAX_KNOWN);
        assert!(!state.known.contains_key(&Source::of(first, 64)), "the oldest was forgotten");
    }

    #[test]
    fn refusals_leave_no_state_behind() {
        let gate = gate();
        let held: Vec<Ticket> = (0..MAX_PENDING - RESERVED_FOR_KNOWN)
            .map(|i| gate.admit(IpAddr::from((0x0a00_0000 + i as u32).to_be_bytes())).unwrap())
            .collect();
        // A flood from 100,000 more addresses: each refusal is two look-ups
        // and remembers nothing (it once grew a map and scanned it).
        for i in 0..100_000u32 {
            assert!(gate.admit(IpAddr::from((0x0b00_0000 + i).to_be_bytes())).is_err());
        }
        let state = gate.lock();
        assert_eq!(state.per_source.len(), held.len());
        assert!(state.known.is_empty());
    }

    #[test]
    fn the_total_is_bounded_too() {
        let gate = gate();
        let mut held = Vec::new();
        for i in 0..MAX_PENDING {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            if let Ok(t) = gate.admit(ip) {
                held.push(t);
            }
        }
        assert_eq!(held.len(), MAX_PENDING - RESERVED_FOR_KNOWN);
        assert!(gate.admit(ip("192.0.2.1")).is_err());
    }
}
