//! Admission for unauthenticated tunnel connections.
//!
//! Before an edge has proved its token, a connection costs us a socket, a
//! task and a few buffers, and may be an attacker's. The gate bounds that:
//! at most [`MAX_PENDING`] handshakes at once overall and
//! [`MAX_PENDING_PER_IP`] from one address, so a flood of stalled or
//! slow-drip handshakes from one place cannot keep a real edge elsewhere
//! from connecting. Each admitted handshake must finish within the
//! configured handshake timeout (enforced by the listener). Refusals are
//! logged at most once per address per [`LOG_EVERY`], with a count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

/// Handshakes in progress at once, from everywhere.
pub(crate) const MAX_PENDING: usize = 1024;
/// Handshakes in progress at once from one IP address.
pub(crate) const MAX_PENDING_PER_IP: usize = 32;
/// How often refusals from one address are logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Refusals not yet logged, and when the address was last logged.
    refused: HashMap<IpAddr, (u64, Option<Instant>)>,
}

/// Counts pending handshakes; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
}

/// A pending handshake's place at the gate; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new handshake from `ip`, or refuses it (and maybe logs).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let mut state = self.lock();
        let from_ip = state.per_ip.get(&ip).copied().unwrap_or(0);
        if state.total < MAX_PENDING && from_ip < MAX_PENDING_PER_IP {
            state.total += 1;
            *state.per_ip.entry(ip).or_insert(0) += 1;
            return Some(Ticket { gate: Arc::clone(self), ip });
        }
        let now = Instant::now();
        // Bound the bookkeeping itself: forget old offenders when it grows.
        if state.refused.len() > 4 * MAX_PENDING {
            state.refused.retain(|_, (_, last)| last.is_some_and(|t| now - t < LOG_EVERY));
        }
        let (count, last) = state.refused.entry(ip).or_insert((0, None));
        *count += 1;
        if last.is_none_or(|t| now - t >= LOG_EVERY) {
            warn!(peer = %ip, refused = *count, pending_from_peer = from_ip,
                "too many unauthenticated tunnel connections; refusing more from this address");
            *count = 0;
            *last = Some(now);
        }
        None
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_place() {
        let gate = Arc::new(Gate::default());
        let attacker: IpAddr = "127.0.0.2".parse().unwrap();
        let edge: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<Ticket> =
            (0..MAX_PENDING_PER_IP).map(|_| gate.admit(attacker).unwrap()).collect();
        assert!(gate.admit(attacker).is_none());
        assert!(gate.admit(edge).is_some(), "another address still gets in");
        drop(held);
        assert!(gate.admit(attacker).is_some(), "places are freed when handshakes end");
        assert_eq!(gate.lock().per_ip.len(), 0, "dropped tickets leave no bookkeeping behind");
    }

    #[test]
    fn the_total_is_bounded_too() {
        let gate = Arc::new(Gate::default());
        let mut held = Vec::new();
        for i in 0..MAX_PENDING {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            held.push(gate.admit(ip).unwrap());
        }
        assert!(gate.admit("192.0.2.1".parse().unwrap()).is_none());
    }
}
