//! The virtual-clock harness: the frontend's real sans-IO cores, driven the way quinn's `Pair`
//! drives its real `Connection`. No sockets, no threads, no real time: every run is
//! deterministic for its seed.
//!
//! What is real (production code): each data connection's [`LaneCore`] (its
//! `TransactionTracker`, response ring, give-up and late answers); the arbitration policy
//! ([`Dispatcher`]); both sides of every control session ([`Endpoint`]: handshake with nonces
//! passed in, heartbeats, `PeerDead`); the supervisor's survive-or-fail rule ([`decide`]) over
//! the same [`RunFailure`] the `AcceleratorClient` reports. What is modelled: the links (in
//! order per direction, delayed, frames cut in pieces, control chunks "lost" and retransmitted
//! after an RTO, partitions that hold bytes until they heal) and the accelerator's data side
//! (it leases the slot, answers the workload's reference output after a processing delay).
//!
//! The recovery path is production's: silence → the client endpoint's `PeerDead` →
//! `RunFailure::AcceleratorLost` → `decide` → `Survive` → `LaneCore::give_up` on each of the
//! accelerator's connections → the drained samples placed again by the `Dispatcher` on the
//! connections left; answers that arrive at a given-up core afterwards are late and dropped.

use std::collections::{BTreeMap, VecDeque};

use qdl_frontend::client::ClientError;
use qdl_frontend::issuer::Dispatcher;
use qdl_frontend::lane_core::{LaneCore, Pending};
use qdl_frontend::supervisor::{Decision, RunFailure, decide};
use qdl_shared::control::{ControlError, Endpoint, Event, Heartbeat};
use qdl_shared::slots::{SlotArena, SlotLease};
use qdl_shared::time::Nanos;
use qdl_shared::wire::attach::SessionToken;
use qdl_shared::wire::data::{DATA_HEADER_LEN, DataHeader, FrameKind};
use qdl_shared::wire::message::{Limits, SessionGrant, SessionRequest};
use qdl_shared::workload::{WorkloadSpec, reference_output};

/// Deterministic PRNG (xorshift).
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

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One direction of a connection: in order (like TCP), each chunk delayed. A held link keeps
/// what is sent and delivers it when it heals (a partition, not a loss).
#[derive(Default)]
struct Link {
    queue: VecDeque<(Nanos, Vec<u8>)>,
    last: Nanos,
    held: bool,
}

impl Link {
    fn send(&mut self, now: Nanos, bytes: Vec<u8>, delay: Nanos) {
        // In order: never before the previous chunk (a retransmitted chunk delays those behind it).
        let at = (now + delay).max(self.last);
        self.last = at;
        self.queue.push_back((at, bytes));
    }

    fn recv(&mut self, now: Nanos) -> Vec<u8> {
        let mut out = Vec::new();
        while !self.held
            && let Some((at, _)) = self.queue.front()
            && *at <= now
        {
            out.extend(self.queue.pop_front().expect("front exists").1);
        }
        out
    }
}

/// Link behaviour of one run.
#[derive(Clone, Copy)]
struct Net {
    /// One-way delay of a data chunk: base + up to `jitter_us`.
    base_us: u64,
    jitter_us: u64,
    /// One-way delay of a control chunk.
    control: Nanos,
    /// Percent of control chunks lost once and retransmitted after `rto`.
    control_loss: u64,
    rto: Nanos,
}

const NET: Net =
    Net { base_us: 50, jitter_us: 3000, control: Nanos::from_millis(5), control_loss: 5, rto: Nanos::from_millis(60) };

/// Heartbeats every 50 ms; 6 missed (300 ms of silence) declare the peer dead.
const HB: Heartbeat = Heartbeat { interval: Nanos::from_millis(50), misses: 6 };

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

/// A sample's input bytes, from its index.
fn sample(index: u64, bytes: usize) -> Vec<u8> {
    let mut r = Rng(index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..bytes).map(|_| r.next() as u8).collect()
}

/// The accelerator side of one data connection.
struct AccData {
    arena: std::sync::Arc<SlotArena>,
    inbuf: Vec<u8>,
    pending: Vec<(Nanos, DataHeader, SlotLease)>,
}

/// One data connection: the frontend's real core, its links, the accelerator's side.
struct DataConn {
    core: LaneCore<u64, Vec<u8>>,
    inbuf: Vec<u8>,
    up: Link,
    down: Link,
    acc: AccData,
}

/// One accelerator: its control session (both real endpoints) and its data connections.
struct Accelerator {
    given: String,
    client: Endpoint,
    server: Endpoint,
    up: Link,
    down: Link,
    /// The client endpoint failed: the session is over for the frontend.
    lost: bool,
    conns: Vec<DataConn>,
}

/// What happens to whom during a run.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Accelerator `.0` freezes at `.1`: it stops answering on every connection.
    freeze: Option<(usize, Nanos)>,
    /// Accelerator `.0` is cut off at `.1` (every link held) until `.2`.
    partition: Option<(usize, Nanos, Nanos)>,
}

#[derive(Debug, Default, PartialEq)]
struct Outcome {
    /// Completions per sample index.
    completed: BTreeMap<u64, u32>,
    /// The order of completions.
    order: Vec<u64>,
    /// Samples placed again after their connection was given up.
    redispatched: usize,
    /// Answers that reached a given-up connection.
    late: u64,
    /// (accelerator, when its loss was decided) for each survived loss.
    survived: Vec<(usize, Nanos)>,
    /// The run was ended by the supervisor's rule, with this failure.
    ended: Option<String>,
    /// Heartbeat-declared deaths (accelerator, when).
    dead: Vec<(usize, Nanos)>,
}

struct World {
    rng: Rng,
    spec: WorkloadSpec,
    accs: Vec<Accelerator>,
    backlog: VecDeque<(u64, Nanos)>,
    dispatcher: Dispatcher,
    next: usize,
    slots: u32,
    out: Outcome,
}

impl World {
    fn new(seed: u64, accelerators: usize, conns: u32, slots: u32) -> World {
        let spec = WorkloadSpec::bert();
        let req = SessionRequest {
            workload: spec.clone(),
            connections: conns,
            slots_per_connection: slots,
            transport: Default::default(),
        };
        let mut rng = Rng(seed | 1);
        let accs = (0..accelerators)
            .map(|a| {
                // Nonces are passed in: a run replays byte for byte from its seed.
                let (cn, sn) = ([rng.next() as u8; 32], [rng.next() as u8; 32]);
                Accelerator {
                    given: format!("10.0.0.{a}:7000"),
                    client: Endpoint::client("fe", req.clone(), HB, Nanos::ZERO, cn),
                    server: Endpoint::server(&format!("acc-{a}"), limits(), HB, Nanos::ZERO, sn),
                    up: Link::default(),
                    down: Link::default(),
                    lost: false,
                    conns: Vec::new(),
                }
            })
            .collect();
        World {
            rng,
            spec,
            accs,
            backlog: VecDeque::new(),
            dispatcher: Dispatcher::LeastInFlight,
            next: 0,
            slots,
            out: Outcome::default(),
        }
    }

    fn data_delay(&mut self) -> Nanos {
        Nanos::from_micros(NET.base_us + self.rng.below(NET.jitter_us))
    }

    fn control_delay(&mut self) -> Nanos {
        if self.rng.chance(NET.control_loss) { NET.control + NET.rto } else { NET.control }
    }

    /// The control sessions: bytes across, timers, events (grants open the data connections;
    /// a failed client endpoint is a lost accelerator, reported to the supervisor's rule).
    fn control(&mut self, t: Nanos, frozen: impl Fn(usize) -> bool) {
        for a in 0..self.accs.len() {
            let (d1, d2) = (self.control_delay(), self.control_delay());
            let acc = &mut self.accs[a];
            if !acc.lost
                && let Some(b) = acc.client.poll_transmit()
            {
                acc.up.send(t, b, d1);
            }
            if !frozen(a)
                && let Some(b) = acc.server.poll_transmit()
            {
                acc.down.send(t, b, d2);
            }
            let b = acc.up.recv(t);
            if !b.is_empty() && !frozen(a) {
                acc.server.handle_input(&b, t);
            }
            let b = acc.down.recv(t);
            if !b.is_empty() && !acc.lost {
                acc.client.handle_input(&b, t);
            }
            if !acc.lost && acc.client.poll_timeout().is_some_and(|x| x <= t) {
                acc.client.handle_timeout(t);
            }
            if !frozen(a) && acc.server.poll_timeout().is_some_and(|x| x <= t) {
                acc.server.handle_timeout(t);
            }
            while let Some(e) = acc.server.poll_event() {
                if let Event::ConfigureRequested(r) = e {
                    acc.server.grant(grant(&r)).expect("the harness grants what is asked");
                }
            }
            let mut failed = None;
            while !acc.lost
                && let Some(e) = acc.client.poll_event()
            {
                match e {
                    Event::Established(g) => {
                        let (ib, slots) = (g.input_slot_bytes as usize, g.slots_per_connection);
                        acc.conns = (0..g.connections)
                            .map(|_| DataConn {
                                core: LaneCore::new(slots, g.output_slot_bytes),
                                inbuf: Vec::new(),
                                up: Link::default(),
                                down: Link::default(),
                                acc: AccData {
                                    arena: SlotArena::new(slots, ib).expect("arena"),
                                    inbuf: Vec::new(),
                                    pending: Vec::new(),
                                },
                            })
                            .collect();
                    }
                    Event::Failed(error) => failed = Some(error),
                    _ => {}
                }
            }
            if let Some(error) = failed {
                acc.lost = true;
                if matches!(error, ControlError::PeerDead { .. }) {
                    self.out.dead.push((a, t));
                }
                let given = acc.given.clone();
                self.supervise(
                    RunFailure::AcceleratorLost {
                        given: given.clone(),
                        name: format!("acc-{a}"),
                        error: ClientError::Control { addr: given, error },
                    },
                    t,
                );
            }
        }
    }

    /// The supervisor: production's rule decides, the harness carries the decision out as the
    /// supervisor and the connection actors do.
    fn supervise(&mut self, failure: RunFailure, t: Nanos) {
        let has = |g: &str| self.accs.iter().any(|a| a.given == g && !a.conns.is_empty());
        match decide(&failure, has, false) {
            Decision::Survive { given, .. } => {
                let a = self.accs.iter().position(|a| a.given == given).expect("a known accelerator");
                self.out.survived.push((a, t));
                for c in &mut self.accs[a].conns {
                    // Answers already accepted are the run's (the actor completes them first).
                    complete(&self.spec, &mut c.core, &mut self.out);
                    for p in c.core.give_up() {
                        self.backlog.push_front((p.token, p.issued));
                        self.out.redispatched += 1;
                    }
                }
            }
            Decision::EndRun => self.out.ended = Some(failure.to_string()),
        }
    }

    /// The issuer's placement: the production policy over the lanes' credits.
    fn issue(&mut self, t: Nanos) {
        let ib = self.spec.input_bytes();
        let lanes: Vec<(usize, usize)> =
            (0..self.accs.len()).flat_map(|a| (0..self.accs[a].conns.len()).map(move |c| (a, c))).collect();
        while let Some(&(index, issued)) = self.backlog.front() {
            let accs = &self.accs;
            let view = |i: usize| {
                let (a, c) = lanes[i];
                let core = &accs[a].conns[c].core;
                (core.in_flight(), self.slots, !accs[a].lost && !core.is_given_up())
            };
            let Some(i) = self.dispatcher.pick(lanes.len(), self.next, view) else {
                if !lanes.is_empty() && (0..lanes.len()).all(|i| !view(i).2) {
                    // The issuer finds no lane open: it reports, the rule ends the run.
                    self.supervise(RunFailure::NoAcceleratorLeft, t);
                }
                return;
            };
            self.next = i + 1;
            self.backlog.pop_front();
            let delay = self.data_delay();
            let cut_at = self.rng.next();
            let (a, c) = lanes[i];
            let conn = &mut self.accs[a].conns[c];
            let pending = Pending { token: index, index: index as usize, issued, first_reported: false };
            conn.core.handle_submission(pending, sample(index, ib), ib as u32, t).expect("credits equal slots");
            while let Some((h, payload)) = conn.core.poll_transmit() {
                let mut frame = h.encode().to_vec();
                frame.extend_from_slice(&payload);
                // Each frame in two pieces at a random cut: the receiver reassembles.
                let cut = (cut_at % frame.len() as u64) as usize;
                conn.up.send(t, frame[..cut].to_vec(), delay);
                conn.up.send(t, frame[cut..].to_vec(), delay);
            }
        }
    }

    /// The data connections: the accelerator answers, the frontend's cores take the answers.
    fn data(&mut self, t: Nanos, frozen: impl Fn(usize) -> bool) {
        let (ib, ob) = (self.spec.input_bytes(), self.spec.output_bytes as usize);
        for a in 0..self.accs.len() {
            for c in 0..self.accs[a].conns.len() {
                let (d_proc, d_down) = (Nanos::from_micros(100 + self.rng.below(2000)), self.data_delay());
                let conn = &mut self.accs[a].conns[c];
                let bytes = conn.up.recv(t);
                if !frozen(a) {
                    conn.acc.inbuf.extend(bytes);
                    while let Ok((h, payload)) = DataHeader::parse_frame(&conn.acc.inbuf, ib as u32) {
                        assert_eq!(h.kind, FrameKind::Request);
                        let mut lease =
                            conn.acc.arena.try_lease(h.slot).expect("the frontend never reuses a busy slot");
                        lease.bytes_mut().copy_from_slice(payload);
                        let used = DATA_HEADER_LEN + h.len as usize;
                        conn.acc.inbuf.drain(..used);
                        conn.acc.pending.push((t + d_proc, h, lease));
                    }
                    let (due, later): (Vec<_>, Vec<_>) = conn.acc.pending.drain(..).partition(|(at, _, _)| *at <= t);
                    conn.acc.pending = later;
                    for (_, h, lease) in due {
                        let mut out = vec![0u8; ob];
                        reference_output(self.spec.output_kind, lease.bytes(), &mut out);
                        let mut frame = DataHeader::response(h.slot, h.sample_id, ob as u32, 0).encode().to_vec();
                        frame.extend_from_slice(&out);
                        conn.down.send(t, frame, d_down);
                    }
                }
                // A given-up connection is still read (production's LATE_GRACE): late answers.
                conn.inbuf.extend(conn.down.recv(t));
                let late_before = conn.core.late();
                while let Ok((h, payload)) = DataHeader::parse_frame(&conn.inbuf, ob as u32) {
                    conn.core.handle_response(&h, payload, t, &mut |_, _| {}).expect("every response matches its slot");
                    let used = DATA_HEADER_LEN + h.len as usize;
                    conn.inbuf.drain(..used);
                }
                self.out.late += conn.core.late() - late_before;
                complete(&self.spec, &mut conn.core, &mut self.out);
            }
        }
    }

    fn hold(&mut self, a: usize, held: bool) {
        let acc = &mut self.accs[a];
        acc.up.held = held;
        acc.down.held = held;
        for c in &mut acc.conns {
            c.up.held = held;
            c.down.held = held;
        }
    }
}

/// Hands a core's completions over, checking each output against the reference.
fn complete(spec: &WorkloadSpec, core: &mut LaneCore<u64, Vec<u8>>, out: &mut Outcome) {
    let (ib, ob) = (spec.input_bytes(), spec.output_bytes as usize);
    for (index, output, error) in core.completions() {
        assert!(!error, "sample {index} failed");
        let mut want = vec![0u8; ob];
        reference_output(spec.output_kind, &sample(index, ib), &mut want);
        assert_eq!(output, &want[..], "sample {index} answered correctly");
        *out.completed.entry(index).or_default() += 1;
        out.order.push(index);
    }
}

/// Runs `samples` samples over `accelerators` × 2 connections of 16 slots, with `faults`.
fn simulate(seed: u64, accelerators: usize, samples: u64, faults: Faults) -> Outcome {
    let mut w = World::new(seed, accelerators, 2, 16);
    w.backlog = (0..samples).map(|i| (i, Nanos::ZERO)).collect();
    let step = Nanos::from_micros(100);
    let mut t = Nanos::ZERO;
    let frozen = |a: usize, t: Nanos| faults.freeze.is_some_and(|(f, at)| f == a && t >= at);
    while w.out.completed.len() < samples as usize && w.out.ended.is_none() {
        assert!(t < Nanos::from_millis(30_000), "stuck: {} of {samples} completed", w.out.completed.len());
        if let Some((p, from, to)) = faults.partition {
            if t == from {
                w.hold(p, true);
            }
            if t == to {
                w.hold(p, false);
            }
        }
        w.control(t, |a| frozen(a, t));
        if w.accs.iter().all(|a| a.lost || !a.conns.is_empty()) {
            w.issue(t);
        }
        w.data(t, |a| frozen(a, t));
        t = t + step;
    }
    // Let held answers arrive (the partition heals) and count them.
    let until = t + Nanos::from_millis(1000);
    while t < until {
        if let Some((p, _, to)) = faults.partition
            && t >= to
        {
            w.hold(p, false);
        }
        w.control(t, |a| frozen(a, t));
        w.data(t, |a| frozen(a, t));
        t = t + step;
    }
    w.out
}

#[test]
fn every_sample_completes_once_and_correctly_despite_delay_reordering_and_control_loss() {
    for seed in 1..=3 {
        let o = simulate(seed, 3, 600, Faults::default());
        assert_eq!(o.ended, None);
        assert_eq!(o.completed.len(), 600, "seed {seed}");
        assert!(o.completed.values().all(|&n| n == 1), "seed {seed}: a sample completed twice");
        assert!(o.order.windows(2).any(|w| w[0] > w[1]), "seed {seed}: delays reorder completions");
        assert_eq!((o.redispatched, o.late), (0, 0), "seed {seed}: nothing is given up on healthy links");
        assert!(o.dead.is_empty(), "seed {seed}: 5 % control loss with retransmission is not a death");
    }
}

#[test]
fn a_frozen_accelerator_is_declared_dead_by_heartbeats_and_its_samples_move() {
    let freeze = Nanos::from_millis(100);
    let o = simulate(7, 3, 6000, Faults { freeze: Some((1, freeze)), ..Default::default() });
    assert_eq!(o.ended, None, "one accelerator of three lost is survived");
    assert_eq!(o.completed.len(), 6000, "every sample completed");
    assert!(o.completed.values().all(|&n| n == 1), "and each exactly once");
    assert!(o.redispatched > 0, "the frozen accelerator's samples were re-dispatched");
    let [(1, dead_at)] = o.dead[..] else { panic!("accelerator 1 alone declared dead: {:?}", o.dead) };
    assert_eq!(o.survived, vec![(1, dead_at)], "its loss was survived at once");
    // Silence of 6 heartbeat intervals after the last bytes heard (up to one interval plus the
    // link delay and one retransmission before the freeze).
    let after = dead_at.since(freeze);
    assert!(after >= Nanos::from_millis(200) && after <= Nanos::from_millis(320), "declared dead after {after:?}");
}

#[test]
fn a_partition_moves_the_samples_and_the_held_answers_arrive_late_and_are_dropped() {
    let (from, to) = (Nanos::from_millis(100), Nanos::from_millis(800));
    let o = simulate(11, 3, 6000, Faults { partition: Some((2, from, to)), ..Default::default() });
    assert_eq!(o.ended, None);
    assert_eq!(o.completed.len(), 6000);
    assert!(o.completed.values().all(|&n| n == 1), "a late answer never completes a sample twice");
    assert_eq!(o.survived.len(), 1, "{:?}", o.survived);
    assert!(o.redispatched > 0);
    assert!(o.late > 0, "the answers held by the partition reached the given-up connections: {}", o.late);
}

#[test]
fn losing_every_accelerator_ends_the_run_instead_of_hanging() {
    let o = simulate(3, 1, 6000, Faults { freeze: Some((0, Nanos::from_millis(100))), ..Default::default() });
    assert_eq!(o.survived.len(), 1, "the loss itself is survived (its connections existed)");
    assert_eq!(o.ended.as_deref(), Some("no accelerator connection is left"), "then nothing is left to issue to");
    assert!(o.completed.len() < 6000);
}

#[test]
fn a_run_replays_exactly_from_its_seed() {
    let faults = Faults { freeze: Some((0, Nanos::from_millis(100))), ..Default::default() };
    let (a, b) = (simulate(5, 2, 3000, faults), simulate(5, 2, 3000, faults));
    assert!(a.redispatched > 0 && a.ended.is_none(), "the run has a recovery in it");
    assert_eq!(a, b, "the same seed, the same nonces, the same run");
    assert_ne!(a.order, simulate(6, 2, 3000, faults).order, "another seed, another run");
}
