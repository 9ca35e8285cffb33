//! The control session on a virtual clock: both real [`Endpoint`]s exchange bytes over a slow
//! link, then a partition, and heartbeats measure the round trip and declare the silent peer
//! dead. No sockets, no threads, no real time.
//!
//! The data path and its recovery (lane cores, the issuer's policy, the supervisor's rule) are
//! driven together with these endpoints by the frontend's harness, `frontend/tests/harness.rs`.

use std::collections::{BTreeMap, VecDeque};

use qdl_shared::control::{ControlError, Endpoint, Event, Heartbeat};
use qdl_shared::time::Nanos;
use qdl_shared::wire::attach::SessionToken;
use qdl_shared::wire::message::{Limits, SessionGrant, SessionRequest};
use qdl_shared::workload::WorkloadSpec;

/// One direction of a connection: in order (like TCP), each chunk delayed.
#[derive(Default)]
struct Link {
    queue: VecDeque<(Nanos, Vec<u8>)>,
    last: Nanos,
    down: bool,
}

impl Link {
    fn send(&mut self, now: Nanos, bytes: Vec<u8>, delay: Nanos) {
        if self.down {
            return;
        }
        // In order: never deliver before the previous chunk.
        let at = (now + delay).max(self.last);
        self.last = at;
        self.queue.push_back((at, bytes));
    }

    fn recv(&mut self, now: Nanos) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.queue.front() {
            if *at > now {
                break;
            }
            out.extend(self.queue.pop_front().unwrap().1);
        }
        out
    }
}

fn limits() -> Limits {
    Limits {
        max_connections_per_session: 8,
        max_slots_per_connection: 64,
        max_sample_bytes: 1 << 20,
        max_output_bytes: 64,
    }
}

fn grant(req: &SessionRequest) -> SessionGrant {
    SessionGrant {
        token: SessionToken([9; 16]),
        connections: req.connections,
        slots_per_connection: req.slots_per_connection,
        input_slot_bytes: req.workload.input_bytes() as u32,
        output_slot_bytes: req.workload.output_bytes,
        max_batch: 8,
        backend: "harness".into(),
        workers: 1,
    }
}

fn exchange(c: &mut Endpoint, s: &mut Endpoint, up: &mut Link, down: &mut Link, now: Nanos, delay: Nanos) {
    if let Some(b) = c.poll_transmit() {
        up.send(now, b, delay);
    }
    if let Some(b) = s.poll_transmit() {
        down.send(now, b, delay);
    }
    let b = up.recv(now);
    if !b.is_empty() {
        s.handle_input(&b, now);
    }
    let b = down.recv(now);
    if !b.is_empty() {
        c.handle_input(&b, now);
    }
    for e in [&mut *c, &mut *s] {
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
        }
    }
}

#[test]
fn control_session_over_a_slow_link_then_a_partition() {
    let hb = Heartbeat { interval: Nanos::from_millis(100), misses: 3 };
    let req = SessionRequest {
        workload: WorkloadSpec::bert(),
        connections: 2,
        slots_per_connection: 32,
        transport: Default::default(),
    };
    let mut c = Endpoint::client("fe", req.clone(), hb, Nanos::ZERO, [1; 32]);
    let mut s = Endpoint::server("acc", limits(), hb, Nanos::ZERO, [2; 32]);
    let (mut up, mut down) = (Link::default(), Link::default());
    let delay = Nanos::from_millis(20);
    let mut client_events = Vec::new();
    let mut rtts = Vec::new();
    let mut t = Nanos::ZERO;
    // 2 s of virtual time, 1 ms steps: handshake, then heartbeats.
    while t < Nanos::from_millis(2000) {
        exchange(&mut c, &mut s, &mut up, &mut down, t, delay);
        while let Some(e) = s.poll_event() {
            if let Event::ConfigureRequested(r) = e {
                s.grant(grant(&r)).unwrap();
            }
        }
        while let Some(e) = c.poll_event() {
            match e {
                Event::HeartbeatRtt(r) => rtts.push(r),
                other => client_events.push(other),
            }
        }
        t = t + Nanos::from_millis(1);
    }
    assert!(matches!(client_events[..], [Event::Welcomed { .. }, Event::Established(_)]), "{client_events:?}");
    assert!(rtts.len() >= 15, "a heartbeat every 100 ms for 2 s: {}", rtts.len());
    // Round trip = two link delays (plus up to one 1 ms step of polling).
    assert!(rtts.iter().all(|r| *r >= Nanos::from_millis(40) && *r <= Nanos::from_millis(42)), "{rtts:?}");
    assert!(c.is_established() && s.is_established());

    // Partition: nothing crosses any more. Both sides declare the other dead after 3 intervals.
    up.down = true;
    down.down = true;
    up.queue.clear();
    down.queue.clear();
    let cut = t;
    let mut dead = BTreeMap::new();
    while t < cut + Nanos::from_millis(1000) {
        exchange(&mut c, &mut s, &mut up, &mut down, t, delay);
        for (side, e) in [("client", &mut c), ("server", &mut s)] {
            while let Some(ev) = e.poll_event() {
                if let Event::Failed(ControlError::PeerDead { .. }) = ev {
                    dead.entry(side).or_insert(t.since(cut));
                }
            }
        }
        t = t + Nanos::from_millis(1);
    }
    assert_eq!(dead.len(), 2, "both sides noticed: {dead:?}");
    for (side, after) in dead {
        // Last bytes were heard up to one interval before the cut; dead at 3 intervals of silence.
        assert!(after >= Nanos::from_millis(200) && after <= Nanos::from_millis(301), "{side} after {after:?}");
    }
}
