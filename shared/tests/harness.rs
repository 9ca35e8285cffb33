//! A two-endpoint harness on a virtual clock: the sans-IO cores (control endpoints, data codec,
//! TransactionTrackers, slot arenas) of a frontend and an accelerator exchange bytes over
//! simulated links with delay, reordering across connections, loss and partitions. No sockets,
//! no threads, no real time: every run is deterministic for its seed.

use std::collections::{BTreeMap, VecDeque};

use qdl_shared::control::{ControlError, Endpoint, Event, Heartbeat};
use qdl_shared::slots::{SlotArena, SlotLease};
use qdl_shared::time::Nanos;
use qdl_shared::tracker::TransactionTracker;
use qdl_shared::wire::attach::SessionToken;
use qdl_shared::wire::data::{DATA_HEADER_LEN, DataHeader, FrameKind};
use qdl_shared::wire::message::{Limits, SessionGrant, SessionRequest};
use qdl_shared::workload::{WorkloadSpec, reference_output};

/// Deterministic PRNG for the harness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

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

/// The accelerator side of one data connection: parses request frames from its link, leases the
/// slot, and answers after a processing delay.
struct AccConn {
    arena: std::sync::Arc<SlotArena>,
    inbuf: Vec<u8>,
    pending: Vec<(Nanos, DataHeader, SlotLease)>,
}

/// The frontend side of one data connection.
struct FeConn {
    tracker: TransactionTracker<u64>,
    inbuf: Vec<u8>,
    up: Link,
    down: Link,
    acc: AccConn,
}

fn sample(index: u64, bytes: usize) -> Vec<u8> {
    let mut r = Rng(index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..bytes).map(|_| r.next() as u8).collect()
}

struct Outcome {
    completed: BTreeMap<u64, u32>,
    resubmitted: usize,
    reordered: bool,
}

/// Runs `samples` samples over `conns` connections for the given seed. Connection `dead` (if
/// any) stops answering at `dead_at`; its transactions expire and are re-dispatched.
fn simulate(seed: u64, samples: u64, conns: usize, dead: Option<(usize, Nanos)>) -> Outcome {
    let spec = WorkloadSpec::bert();
    let (ib, ob) = (spec.input_bytes(), spec.output_bytes as usize);
    let slots = 16u32;
    let mut rng = Rng(seed | 1);
    let mut fe: Vec<FeConn> = (0..conns)
        .map(|_| FeConn {
            tracker: TransactionTracker::new(slots),
            inbuf: Vec::new(),
            up: Link::default(),
            down: Link::default(),
            acc: AccConn { arena: SlotArena::new(slots, ib).unwrap(), inbuf: Vec::new(), pending: Vec::new() },
        })
        .collect();
    let mut backlog: VecDeque<u64> = (0..samples).collect();
    let mut completed: BTreeMap<u64, u32> = BTreeMap::new();
    let mut order = Vec::new();
    let mut resubmitted = 0;
    let timeout = Nanos::from_millis(50);
    let mut t = Nanos::ZERO;
    let mut next = 0usize;
    while completed.len() < samples as usize {
        assert!(t < Nanos::from_millis(60_000), "stuck: {} of {samples} completed", completed.len());
        // Issue: round-robin over connections with a free slot (a dead one still takes work
        // until its transactions expire, as a real one would).
        while let Some(&idx) = backlog.front() {
            let Some(k) = (0..conns).map(|i| (next + i) % conns).find(|&i| fe[i].tracker.free_slots() > 0) else {
                break;
            };
            next = k + 1;
            backlog.pop_front();
            let c = &mut fe[k];
            let slot = c.tracker.handle_submit(idx + 1_000_000, idx, t).unwrap();
            let mut frame = DataHeader::request(slot, idx + 1_000_000, ib as u32, idx as u32).encode().to_vec();
            frame.extend_from_slice(&sample(idx, ib));
            // Split each frame in random pieces: the receiver must reassemble.
            let cut = rng.below(frame.len() as u64) as usize;
            let delay = Nanos::from_micros(50 + rng.below(3000));
            c.up.send(t, frame[..cut].to_vec(), delay);
            c.up.send(t, frame[cut..].to_vec(), delay);
        }
        for (k, c) in fe.iter_mut().enumerate() {
            let is_dead = dead.is_some_and(|(d, at)| d == k && t >= at);
            // Accelerator: parse requests, lease slots, answer after a processing delay.
            let bytes = c.up.recv(t);
            if !is_dead {
                c.acc.inbuf.extend(bytes);
                while let Ok((h, payload)) = DataHeader::parse_frame(&c.acc.inbuf, ib as u32) {
                    assert_eq!(h.kind, FrameKind::Request);
                    let mut lease = c.acc.arena.try_lease(h.slot).expect("the frontend never reuses a busy slot");
                    lease.bytes_mut().copy_from_slice(payload);
                    let used = DATA_HEADER_LEN + h.len as usize;
                    c.acc.inbuf.drain(..used);
                    c.acc.pending.push((t + Nanos::from_micros(100 + rng.below(2000)), h, lease));
                }
                let (due, later): (Vec<_>, Vec<_>) = c.acc.pending.drain(..).partition(|(at, _, _)| *at <= t);
                c.acc.pending = later;
                for (_, h, lease) in due {
                    let mut out = vec![0u8; ob];
                    reference_output(spec.output_kind, lease.bytes(), &mut out);
                    let mut frame = DataHeader::response(h.slot, h.sample_id, ob as u32, 0).encode().to_vec();
                    frame.extend_from_slice(&out);
                    c.down.send(t, frame, Nanos::from_micros(50 + rng.below(3000)));
                    drop(lease); // the response is queued: the slot is free again
                }
            }
            // Frontend: parse responses, validate with the tracker, check the output.
            c.inbuf.extend(c.down.recv(t));
            while let Ok((h, payload)) = DataHeader::parse_frame(&c.inbuf, ob as u32) {
                let done = c.tracker.handle_response(h.slot, h.sample_id, t).expect("every response matches its slot");
                let mut want = vec![0u8; ob];
                reference_output(spec.output_kind, &sample(done.payload, ib), &mut want);
                assert_eq!(payload, &want[..], "sample {} answered correctly", done.payload);
                *completed.entry(done.payload).or_default() += 1;
                order.push(done.payload);
                let used = DATA_HEADER_LEN + h.len as usize;
                c.inbuf.drain(..used);
            }
            // Expired transactions are cancelled and go back to the backlog (re-dispatch).
            for slot in c.tracker.expired(t, timeout) {
                let (_, idx) = c.tracker.cancel(slot).unwrap();
                backlog.push_front(idx);
                resubmitted += 1;
            }
            if is_dead {
                // A dead connection takes no more work: its slots stay "in flight" until expiry,
                // then the issuer skips it because it never frees them again.
                while c.tracker.free_slots() > 0 {
                    c.tracker.handle_submit(u64::MAX, u64::MAX, Nanos(u64::MAX / 2)).unwrap();
                }
            }
        }
        t = t + Nanos::from_micros(100);
    }
    let reordered = order.windows(2).any(|w| w[0] > w[1]);
    Outcome { completed, resubmitted, reordered }
}

#[test]
fn every_sample_completes_once_and_correctly_despite_reordering() {
    for seed in 1..=5 {
        let o = simulate(seed, 500, 3, None);
        assert_eq!(o.completed.len(), 500);
        assert!(o.completed.values().all(|&n| n == 1), "seed {seed}: a sample completed twice");
        assert!(o.reordered, "seed {seed}: delays reorder completions across connections");
        assert_eq!(o.resubmitted, 0, "nothing expires on healthy links");
    }
}

#[test]
fn a_silent_connection_expires_and_its_samples_are_redispatched() {
    let o = simulate(42, 400, 3, Some((1, Nanos::from_millis(5))));
    assert_eq!(o.completed.len(), 400);
    assert!(o.completed.values().all(|&n| n == 1));
    assert!(o.resubmitted > 0, "the dead connection's transactions expired and were re-dispatched");
}
