//! Admission of TCP connections before anything else is spent on them: at most
//! `limits.max_connections` open connections in all, `limits.max_connections_per_peer` from one
//! address, and `limits.max_pending_handshakes` that have not finished their handshake
//! (preamble and attach block, or, on a control connection, authentication).
//!
//! A refused connection is closed at once, without a task, a buffer or a log line of its own
//! (a flood must not turn into a log flood): it is counted in
//! `qdl_accelerator_connection_errors_total{kind="limit"}`. [`ConnPermit`] and [`PendingPermit`]
//! give their place back when dropped, so the counts cannot leak.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use qdl_shared::config::LimitsConfig;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_peer` are open from this address.
    Peer,
    /// `max_pending_handshakes` are still in their handshake.
    Pending,
}

#[derive(Default)]
struct State {
    total: u32,
    pending: u32,
    per_peer: HashMap<IpAddr, u32>,
}

/// The admission counts; see the module docs.
pub struct Gate {
    max_total: u32,
    max_per_peer: u32,
    max_pending: u32,
    state: Mutex<State>,
}

/// A connection's place, held for its whole life.
pub struct ConnPermit {
    gate: Arc<Gate>,
    peer: IpAddr,
}

/// A place among the connections still in their handshake.
pub struct PendingPermit {
    gate: Arc<Gate>,
}

impl Gate {
    /// A gate with the node's limits.
    pub fn new(limits: &LimitsConfig) -> Arc<Gate> {
        Arc::new(Gate {
            max_total: limits.max_connections,
            max_per_peer: limits.max_connections_per_peer,
            max_pending: limits.max_pending_handshakes,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer`, or says why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<(ConnPermit, PendingPermit), Refusal> {
        let mut s = self.lock();
        if s.total >= self.max_total {
            return Err(Refusal::Total);
        }
        if s.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            return Err(Refusal::Peer);
        }
        if s.pending >= self.max_pending {
            return Err(Refusal::Pending);
        }
        s.total += 1;
        s.pending += 1;
        *s.per_peer.entry(peer).or_default() += 1;
        Ok((ConnPermit { gate: self.clone(), peer }, PendingPermit { gate: self.clone() }))
    }

    /// (open connections, connections in their handshake, distinct peers)
    pub fn counts(&self) -> (u32, u32, usize) {
        let s = self.lock();
        (s.total, s.pending, s.per_peer.len())
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                s.per_peer.remove(&self.peer);
            }
        }
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.pending = s.pending.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: u32, per_peer: u32, pending: u32) -> Arc<Gate> {
        let limits = LimitsConfig {
            max_connections: total,
            max_connections_per_peer: per_peer,
            max_pending_handshakes: pending,
            ..Default::default()
        };
        Gate::new(&limits)
    }

    #[test]
    fn each_limit_refuses_and_places_come_back() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let g = gate(4, 2, 3);
        let first = g.admit(a).unwrap();
        let second = g.admit(a).unwrap();
        assert_eq!(g.admit(a).err(), Some(Refusal::Peer), "a third from the same peer");
        let third = g.admit(b).unwrap();
        assert_eq!(g.admit(b).err(), Some(Refusal::Pending), "three handshakes are under way");
        drop(first.1); // the first finished its handshake
        let fourth = g.admit(b).unwrap();
        drop(fourth.1);
        assert_eq!(g.admit("10.0.0.3".parse().unwrap()).err(), Some(Refusal::Total));
        assert_eq!(g.counts(), (4, 2, 2));
        drop((first.0, second, third, fourth.0));
        assert_eq!(g.counts(), (0, 0, 0), "every place was given back");
        assert!(g.admit(a).is_ok());
    }
}
