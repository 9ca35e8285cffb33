//! Admission of TCP connections before anything else is spent on them.
//!
//! [`Admission`] is the sans-IO core (time passed in): it counts open connections in all
//! (`limits.max_connections`) and per address (`max_connections_per_peer`), and tracks the
//! connections still in their handshake, which are the only ones a peer without the shared secret
//! can hold:
//! - at most `max_pending_handshakes` in all; when they are full (or all connections are), a new
//!   connection **evicts the oldest pending one**, preferring those that have not even sent their
//!   8-byte preamble: a flood of half-open connections cannot keep a real frontend out, because
//!   the frontend's handshake is always the newest;
//! - at most `max_pending_per_peer` from one address (refused beyond, not evicting);
//! - the preamble within `preamble_timeout_ms`, the whole handshake (attach block or
//!   authentication) within `handshake_timeout_ms` of the accept.
//!
//! [`Gate`] wraps it for the node: a [`ConnPermit`] and a [`PendingPermit`] give their places back
//! when dropped, and an evicted or expired connection is told through its pending permit
//! ([`PendingPermit::ended`]); [`Gate::sweep`] (run every [`SWEEP_INTERVAL`]) expires deadlines.
//! Refusals are counted and logged through [`super::refusals`], never one line per connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qdl_shared::config::LimitsConfig;
use qdl_shared::time::Nanos;
use tokio::sync::oneshot;

use super::refusals::{Reason, RefusalLog};

/// How often the node checks handshake deadlines and flushes the refusal summary.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Why a new connection was refused outright (no pending connection could make room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open and none of them is still in its handshake.
    Total {
        /// The limit.
        limit: u32,
    },
    /// `max_connections_per_peer` are open from this address.
    Peer {
        /// The limit.
        limit: u32,
    },
    /// `max_pending_per_peer` connections from this address are still in their handshake.
    PeerPending {
        /// The limit.
        limit: u32,
    },
}

impl Refusal {
    /// The metric and log reason.
    pub fn reason(self) -> Reason {
        match self {
            Refusal::Total { .. } => Reason::MaxConnections,
            Refusal::Peer { .. } => Reason::PeerLimit,
            Refusal::PeerPending { .. } => Reason::PeerPendingLimit,
        }
    }

    /// A sentence for the refused peer and the log.
    pub fn describe(self, peer: IpAddr) -> String {
        match self {
            Refusal::Total { limit } => {
                format!("too many connections: limit {limit} (limits.max_connections), all authenticated")
            }
            Refusal::Peer { limit } => {
                format!("too many connections from {peer}: limit {limit} (limits.max_connections_per_peer)")
            }
            Refusal::PeerPending { limit } => format!(
                "too many connections from {peer} still in their handshake: limit {limit} \
                 (limits.max_pending_per_peer)"
            ),
        }
    }
}

/// Why a pending connection was ended by the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A newer connection needed its place (pending handshakes or connections were full).
    Evicted,
    /// It did not send its preamble within `preamble_timeout_ms`.
    PreambleTimeout,
    /// It did not finish its handshake within `handshake_timeout_ms`.
    HandshakeTimeout,
}

impl Ended {
    /// What happened, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            Ended::Evicted => "evicted by a newer connection (limits.max_pending_handshakes full)",
            Ended::PreambleTimeout => "no preamble within limits.preamble_timeout_ms",
            Ended::HandshakeTimeout => "handshake not finished within limits.handshake_timeout_ms",
        }
    }

    /// The metric and log reason.
    pub fn reason(self) -> Reason {
        match self {
            Ended::Evicted => Reason::Evicted,
            Ended::PreambleTimeout => Reason::PreambleTimeout,
            Ended::HandshakeTimeout => Reason::HandshakeTimeout,
        }
    }
}

/// A connection's identity in the gate (admission order: a smaller id is older).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

/// What [`Admission::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The new connection.
    pub id: ConnId,
    /// The pending connection evicted to make room for it, if any: close it.
    pub evicted: Option<ConnId>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    since: Nanos,
}

#[derive(Debug, Default, Clone, Copy)]
struct PeerCount {
    open: u32,
    pending: u32,
}

/// The admission limits of [`Admission`], from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// `max_connections`.
    pub total: u32,
    /// `max_connections_per_peer`.
    pub per_peer: u32,
    /// `max_pending_handshakes`.
    pub pending: u32,
    /// `max_pending_per_peer`.
    pub pending_per_peer: u32,
    /// `preamble_timeout_ms`.
    pub preamble_timeout: Nanos,
    /// `handshake_timeout_ms`.
    pub handshake_timeout: Nanos,
}

impl From<&LimitsConfig> for AdmissionLimits {
    fn from(l: &LimitsConfig) -> Self {
        AdmissionLimits {
            total: l.max_connections,
            per_peer: l.max_connections_per_peer,
            pending: l.max_pending_handshakes,
            pending_per_peer: l.max_pending_per_peer,
            preamble_timeout: Nanos::from_millis(l.preamble_timeout_ms),
            handshake_timeout: Nanos::from_millis(l.handshake_timeout_ms),
        }
    }
}

/// The sans-IO admission core; see the module docs.
pub struct Admission {
    limits: AdmissionLimits,
    next_id: u64,
    /// Every open connection and its address.
    open: HashMap<ConnId, IpAddr>,
    per_peer: HashMap<IpAddr, PeerCount>,
    /// Connections in their handshake, oldest first.
    pending: BTreeMap<ConnId, Pending>,
    /// The pending ones that have not sent their preamble yet, oldest first.
    no_preamble: BTreeSet<ConnId>,
}

impl Admission {
    /// An empty gate with these limits.
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            next_id: 0,
            open: HashMap::new(),
            per_peer: HashMap::new(),
            pending: BTreeMap::new(),
            no_preamble: BTreeSet::new(),
        }
    }

    /// Admits a connection from `peer` at `now` (evicting the oldest pending connection when the
    /// gate is full), or says why not.
    pub fn admit(&mut self, peer: IpAddr, now: Nanos) -> Result<Admitted, Refusal> {
        let l = self.limits;
        let count = self.per_peer.get(&peer).copied().unwrap_or_default();
        if count.open >= l.per_peer {
            return Err(Refusal::Peer { limit: l.per_peer });
        }
        if count.pending >= l.pending_per_peer {
            return Err(Refusal::PeerPending { limit: l.pending_per_peer });
        }
        let full = self.open.len() as u64 >= l.total as u64 || self.pending.len() as u64 >= l.pending as u64;
        let evicted = if full {
            let Some(victim) = self.oldest_pending() else {
                return Err(Refusal::Total { limit: l.total });
            };
            self.remove(victim);
            Some(victim)
        } else {
            None
        };
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.open.insert(id, peer);
        self.pending.insert(id, Pending { since: now });
        self.no_preamble.insert(id);
        let c = self.per_peer.entry(peer).or_default();
        c.open += 1;
        c.pending += 1;
        Ok(Admitted { id, evicted })
    }

    /// The oldest pending connection, preferring one that has not sent its preamble.
    fn oldest_pending(&self) -> Option<ConnId> {
        self.no_preamble.first().or_else(|| self.pending.keys().next()).copied()
    }

    /// `id` sent a valid preamble: from now on only the handshake deadline applies to it, and it
    /// is evicted only after every connection that has not sent one.
    pub fn preamble_read(&mut self, id: ConnId) {
        self.no_preamble.remove(&id);
    }

    /// `id` finished its handshake (authenticated, or attached): it leaves the pending set.
    pub fn handshake_done(&mut self, id: ConnId) {
        if self.pending.remove(&id).is_some() {
            self.no_preamble.remove(&id);
            if let Some(c) = self.open.get(&id).and_then(|p| self.per_peer.get_mut(p)) {
                c.pending -= 1;
            }
        }
    }

    /// `id` closed: its place is free. Idempotent (an evicted or expired one is already gone).
    pub fn closed(&mut self, id: ConnId) {
        self.remove(id);
    }

    fn remove(&mut self, id: ConnId) {
        self.handshake_done(id);
        if let Some(peer) = self.open.remove(&id)
            && let Some(c) = self.per_peer.get_mut(&peer)
        {
            c.open -= 1;
            if c.open == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// Removes and returns the pending connections whose deadline has passed at `now`: close them.
    pub fn expire(&mut self, now: Nanos) -> Vec<(ConnId, Ended)> {
        let l = self.limits;
        let mut out = Vec::new();
        // Admission order is deadline order for both deadlines (each is a fixed time after it).
        while let Some((&id, p)) = self.pending.first_key_value() {
            if now < p.since + l.handshake_timeout {
                break;
            }
            let why = if self.no_preamble.contains(&id) { Ended::PreambleTimeout } else { Ended::HandshakeTimeout };
            self.remove(id);
            out.push((id, why));
        }
        while let Some(&id) = self.no_preamble.first() {
            if now < self.pending[&id].since + l.preamble_timeout {
                break;
            }
            self.remove(id);
            out.push((id, Ended::PreambleTimeout));
        }
        out
    }

    /// (open connections, connections in their handshake, of which without a preamble, peers)
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (self.open.len(), self.pending.len(), self.no_preamble.len(), self.per_peer.len())
    }
}

struct State {
    core: Admission,
    /// How to tell each pending connection that the gate ended it.
    enders: HashMap<ConnId, oneshot::Sender<Ended>>,
    log: RefusalLog,
}

/// The node's gate: [`Admission`] behind a lock, permits, and the refusal log.
pub struct Gate {
    state: Mutex<State>,
}

/// A connection's place, held for its whole life.
pub struct ConnPermit {
    gate: Arc<Gate>,
    id: ConnId,
}

/// A place among the connections still in their handshake. Dropping it means "handshake done".
pub struct PendingPermit {
    gate: Arc<Gate>,
    id: ConnId,
    ended: Option<oneshot::Receiver<Ended>>,
}

impl Gate {
    /// A gate with the node's limits.
    pub fn new(limits: &LimitsConfig) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(State {
                core: Admission::new(limits.into()),
                enders: HashMap::new(),
                log: RefusalLog::new(super::refusals::SUMMARY_INTERVAL),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer`, or says why not. An evicted connection is told at once.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<(ConnPermit, PendingPermit), Refusal> {
        let mut s = self.lock();
        let admitted = s.core.admit(peer, Nanos::now())?;
        if let Some(victim) = admitted.evicted
            && let Some(tx) = s.enders.remove(&victim)
        {
            let _ = tx.send(Ended::Evicted);
        }
        let (tx, rx) = oneshot::channel();
        s.enders.insert(admitted.id, tx);
        let id = admitted.id;
        Ok((ConnPermit { gate: self.clone(), id }, PendingPermit { gate: self.clone(), id, ended: Some(rx) }))
    }

    /// Ends the connections whose deadlines passed and logs a refusal summary when one is due.
    pub fn sweep(&self, now: Nanos) {
        let mut s = self.lock();
        for (id, why) in s.core.expire(now) {
            if let Some(tx) = s.enders.remove(&id) {
                let _ = tx.send(why);
            }
        }
        if let Some(line) = s.log.poll(now) {
            drop(s);
            tracing::warn!("{line}");
        }
    }

    /// Counts a refused connection and logs it when due (see [`RefusalLog`]).
    pub fn refused(&self, reason: Reason, peer: std::net::SocketAddr, detail: impl FnOnce() -> String) {
        metrics::counter!(qdl_shared::metrics::accelerator::CONNECTIONS_REFUSED, "reason" => reason.label())
            .increment(1);
        let line = self.lock().log.record(reason, Nanos::now(), || format!("{peer}: {}", detail()));
        if let Some(line) = line {
            tracing::warn!("{line}");
        }
    }

    /// (open connections, connections in their handshake, of which without a preamble, peers)
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        self.lock().core.counts()
    }
}

impl PendingPermit {
    /// The connection sent a valid preamble.
    pub fn preamble_read(&self) {
        self.gate.lock().core.preamble_read(self.id);
    }

    /// Resolves when the gate ends this connection (evicted, or past a deadline); never while
    /// it is left alone. Call it once.
    pub async fn ended(&mut self) -> Ended {
        match self.ended.take() {
            Some(rx) => match rx.await {
                Ok(why) => why,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Takes the notice out, for an owner that waits for it elsewhere (the control actor).
    pub fn take_ended(&mut self) -> Option<oneshot::Receiver<Ended>> {
        self.ended.take()
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.core.handshake_done(self.id);
        s.enders.remove(&self.id);
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.core.closed(self.id);
        s.enders.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u32, per_peer: u32, pending: u32, pending_per_peer: u32) -> AdmissionLimits {
        AdmissionLimits {
            total,
            per_peer,
            pending,
            pending_per_peer,
            preamble_timeout: Nanos::from_millis(2_000),
            handshake_timeout: Nanos::from_millis(10_000),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    const T0: Nanos = Nanos::ZERO;

    #[test]
    fn per_peer_limits_refuse_and_places_come_back() {
        let mut g = Admission::new(limits(100, 3, 100, 2));
        let a = g.admit(ip(2), T0).unwrap();
        let b = g.admit(ip(2), T0).unwrap();
        assert_eq!(g.admit(ip(2), T0), Err(Refusal::PeerPending { limit: 2 }), "two handshakes under way");
        assert!(g.admit(ip(3), T0).is_ok(), "another address is not affected");
        g.preamble_read(a.id);
        g.handshake_done(a.id);
        let c = g.admit(ip(2), T0).unwrap();
        g.handshake_done(b.id);
        g.handshake_done(c.id);
        assert_eq!(g.admit(ip(2), T0), Err(Refusal::Peer { limit: 3 }), "three open from 127.0.0.2");
        assert_eq!(g.counts(), (4, 1, 1, 2));
        for id in [a.id, b.id, c.id] {
            g.closed(id);
        }
        g.closed(a.id); // idempotent
        assert_eq!(g.counts(), (1, 1, 1, 1), "127.0.0.2's places are back");
        assert!(g.admit(ip(2), T0).is_ok());
    }

    #[test]
    fn full_pending_evicts_the_oldest_without_a_preamble_first() {
        let mut g = Admission::new(limits(100, 100, 3, 100));
        let first = g.admit(ip(2), T0).unwrap().id;
        let second = g.admit(ip(3), Nanos(1)).unwrap().id;
        let third = g.admit(ip(4), Nanos(2)).unwrap().id;
        g.preamble_read(first); // the oldest is further along: it goes last
        let fourth = g.admit(ip(5), Nanos(3)).unwrap();
        assert_eq!(fourth.evicted, Some(second), "the oldest that has not sent its preamble");
        let fifth = g.admit(ip(6), Nanos(4)).unwrap();
        assert_eq!(fifth.evicted, Some(third));
        g.preamble_read(fourth.id);
        g.preamble_read(fifth.id);
        let sixth = g.admit(ip(7), Nanos(5)).unwrap();
        assert_eq!(sixth.evicted, Some(first), "all sent preambles: the oldest of all");
        assert_eq!(g.counts(), (3, 3, 1, 3), "evicted ones are gone from every count");
        // Established connections are never evicted: a gate full of them refuses.
        let mut g = Admission::new(limits(2, 100, 2, 100));
        for i in 0..2 {
            let id = g.admit(ip(10 + i), T0).unwrap().id;
            g.handshake_done(id);
        }
        assert_eq!(g.admit(ip(20), T0), Err(Refusal::Total { limit: 2 }));
    }

    #[test]
    fn all_connections_full_evicts_a_pending_one_to_make_room() {
        let mut g = Admission::new(limits(3, 100, 3, 100));
        let established = g.admit(ip(1), T0).unwrap().id;
        g.handshake_done(established);
        let half_open = g.admit(ip(2), T0).unwrap().id;
        let _other = g.admit(ip(3), T0).unwrap().id;
        let new = g.admit(ip(1), T0).unwrap();
        assert_eq!(new.evicted, Some(half_open));
        assert_eq!(g.counts().0, 3, "never more than max_connections");
    }

    #[test]
    fn a_flood_within_the_limits_cannot_keep_a_frontend_out() {
        // The probe's flood: 5 addresses × 60 half-open connections, under the per-peer limit.
        let mut g = Admission::new((&LimitsConfig::default()).into());
        let mut held = 0;
        for peer in 2..=6 {
            for _ in 0..60 {
                if g.admit(ip(peer), T0).is_ok() {
                    held += 1;
                }
            }
        }
        assert!(held <= 5 * LimitsConfig::default().max_pending_per_peer, "{held}");
        // The frontend's control connection and its 16 data connections (one after another) all
        // get in, and the flood still holds no more than it did.
        for _ in 0..17 {
            let a = g.admit(ip(1), Nanos(1)).expect("the frontend is admitted");
            g.preamble_read(a.id);
            g.handshake_done(a.id);
        }
        assert_eq!(g.counts().1, held as usize);
        // Even with many more addresses: every new one evicts a flood connection, never the
        // frontend's (newer, and past its preamble).
        let mut g = Admission::new((&LimitsConfig::default()).into());
        for i in 0..1000u32 {
            let _ = g.admit(IpAddr::from([127, 1, (i / 200) as u8, (i % 200) as u8]), T0);
        }
        let fe = g.admit(ip(1), Nanos(1)).unwrap().id;
        g.preamble_read(fe);
        for i in 0..200u32 {
            let a = g.admit(IpAddr::from([127, 2, 0, i as u8]), Nanos(2)).unwrap();
            assert_ne!(a.evicted, Some(fe));
        }
        g.handshake_done(fe);
        let pending = LimitsConfig::default().max_pending_handshakes as usize;
        assert_eq!(g.counts().1, pending - 1, "still full but for the frontend's finished handshake");
    }

    #[test]
    fn deadlines_with_injected_time() {
        let mut g = Admission::new(limits(100, 100, 100, 100));
        let silent = g.admit(ip(2), T0).unwrap().id;
        let slow = g.admit(ip(3), Nanos::from_millis(500)).unwrap().id;
        g.preamble_read(slow);
        let done = g.admit(ip(4), Nanos::from_millis(600)).unwrap().id;
        g.preamble_read(done);
        g.handshake_done(done);
        assert_eq!(g.expire(Nanos::from_millis(1_999)), vec![]);
        assert_eq!(g.expire(Nanos::from_millis(2_000)), vec![(silent, Ended::PreambleTimeout)]);
        assert_eq!(g.expire(Nanos::from_millis(10_499)), vec![]);
        assert_eq!(g.expire(Nanos::from_millis(10_500)), vec![(slow, Ended::HandshakeTimeout)]);
        assert_eq!(g.expire(Nanos::from_millis(100_000)), vec![], "an established connection has no deadline");
        assert_eq!(g.counts(), (1, 0, 0, 1));
        g.closed(silent); // the task closing it later changes nothing
        assert_eq!(g.counts(), (1, 0, 0, 1));
    }

    #[tokio::test]
    async fn the_wrapper_tells_an_evicted_connection_and_gives_places_back() {
        let limits = LimitsConfig {
            max_connections: 8,
            max_connections_per_peer: 8,
            max_pending_handshakes: 1,
            max_pending_per_peer: 1,
            ..Default::default()
        };
        let g = Gate::new(&limits);
        let (old, mut old_pending) = g.admit(ip(2)).unwrap();
        let (new, new_pending) = g.admit(ip(3)).unwrap();
        assert_eq!(old_pending.ended().await, Ended::Evicted);
        drop((old, old_pending));
        assert_eq!(g.counts(), (1, 1, 1, 1));
        drop(new_pending);
        assert_eq!(g.counts(), (1, 0, 0, 1));
        drop(new);
        assert_eq!(g.counts(), (0, 0, 0, 0));
    }
}
