//! The `QueryIssuer`: turns LoadGen's queries into per-sample submissions and arbitrates among
//! connections.
//!
//! It runs synchronously on LoadGen's issue thread (no actor hop): for each sample it picks a
//! [`Lane`] (a connection's submission side) with the [`Dispatcher`] policy, reserves one of the
//! lane's credits (= free slots of its tracker), pushes the sample into the lane's bounded
//! lock-free queue and wakes the lane's `ConnectionActor`. Nothing is batched or cached: each
//! sample becomes its own transaction (Network division rules). When every lane is out of
//! credits the issue thread waits on the [`CreditGate`] — back-pressure that LoadGen measures,
//! never an unbounded queue.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use futures::task::AtomicWaker;
use metrics::Counter;
use qdl_loadgen::IssuedSamples;
use qdl_shared::config::Dispatch;
use qdl_shared::metrics::frontend as m;
use qdl_shared::time::Nanos;

use crate::supervisor::{FailureSink, RunFailure};

/// One sample handed to a connection.
#[derive(Debug)]
pub struct Submission {
    /// LoadGen's token and the sample's QSL index.
    pub sample: qdl_loadgen::QuerySample,
    /// When LoadGen issued it.
    pub issued: Nanos,
    /// Its first token was reported to LoadGen already (a generative sample re-dispatched from
    /// a lost connection): another connection must not report a second one.
    pub first_reported: bool,
}

/// The issuer's side of one connection: a bounded queue, credits and a waker.
pub struct Lane {
    label: String,
    queue: ArrayQueue<Submission>,
    reserved: AtomicU32,
    capacity: u32,
    waker: AtomicWaker,
    open: AtomicBool,
    completed: AtomicU64,
}

impl Lane {
    /// A lane with `capacity` credits (the connection's slot count).
    pub fn new(label: impl Into<String>, capacity: u32) -> Arc<Lane> {
        let capacity = capacity.max(1);
        Arc::new(Lane {
            label: label.into(),
            queue: ArrayQueue::new(capacity as usize),
            reserved: AtomicU32::new(0),
            capacity,
            waker: AtomicWaker::new(),
            open: AtomicBool::new(true),
            completed: AtomicU64::new(0),
        })
    }

    /// The connection's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Credits in use: samples queued or in flight.
    pub fn in_flight(&self) -> u32 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Credits in total.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Whether the lane accepts samples.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Samples completed through this lane.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    fn try_reserve(&self) -> bool {
        let prev = self.reserved.fetch_add(1, Ordering::AcqRel);
        if prev >= self.capacity || !self.is_open() {
            self.reserved.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The connection takes the next submission.
    pub fn pop(&self) -> Option<Submission> {
        self.queue.pop()
    }

    /// Whether submissions are waiting.
    pub fn has_work(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The connection will be woken when a submission arrives.
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// `n` samples left this lane without completing (handed to other lanes): their credits
    /// are free again, and they do not count as completed here.
    pub fn abandon(&self, n: u32) {
        self.reserved.fetch_sub(n, Ordering::AcqRel);
    }

    /// `n` samples completed: their credits are free again.
    pub fn release(&self, n: u32) {
        self.reserved.fetch_sub(n, Ordering::AcqRel);
        self.completed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The connection is gone: no more samples go to it.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
        self.waker.wake();
    }

    fn wake(&self) {
        self.waker.wake();
    }
}

/// The arbitration policy, sans-IO: picks a lane from a view of the lanes' credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatcher {
    /// Each lane in turn, skipping full ones.
    RoundRobin,
    /// The lane with the fewest samples in flight (NVIDIA's "smart balance").
    LeastInFlight,
}

impl Dispatcher {
    /// The policy for `dispatch` in `scenario` ("auto": round-robin in Offline).
    pub fn for_config(dispatch: Dispatch, offline: bool) -> Dispatcher {
        match dispatch {
            Dispatch::RoundRobin => Dispatcher::RoundRobin,
            Dispatch::LeastInFlight => Dispatcher::LeastInFlight,
            Dispatch::Auto if offline => Dispatcher::RoundRobin,
            Dispatch::Auto => Dispatcher::LeastInFlight,
        }
    }

    /// Picks among `n` lanes, starting the scan at `start`; `view(i)` gives lane `i`'s
    /// (in flight, capacity, open). `None` when every lane is full or closed.
    pub fn pick(self, n: usize, start: usize, view: impl Fn(usize) -> (u32, u32, bool)) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let (in_flight, capacity, open) = view(i);
            if !open || in_flight >= capacity {
                continue;
            }
            match self {
                Dispatcher::RoundRobin => return Some(i),
                Dispatcher::LeastInFlight => {
                    if best.is_none_or(|(_, b)| in_flight < b) {
                        best = Some((i, in_flight));
                    }
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Where the issue thread waits when every lane is out of credits.
#[derive(Default)]
pub struct CreditGate {
    waiting: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl CreditGate {
    /// Waits until `ready()` or `timeout`. `ready` is re-checked after announcing the wait, so a
    /// release that races with the wait is never missed.
    pub fn wait(&self, ready: impl Fn() -> bool, timeout: Duration) {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.waiting.store(true, Ordering::SeqCst);
        if ready() {
            self.waiting.store(false, Ordering::SeqCst);
            return;
        }
        let _ = self.cv.wait_timeout(guard, timeout);
    }

    /// Credits were released: wakes the issue thread if it waits (a relaxed check otherwise).
    pub fn notify(&self) {
        if self.waiting.swap(false, Ordering::SeqCst) {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.cv.notify_all();
        }
    }
}

/// The QueryIssuer; see the module docs.
pub struct QueryIssuer {
    /// The lanes, added as connections open (an accelerator that rejoins adds its own; lost
    /// lanes stay, closed).
    lanes: arc_swap::ArcSwap<Vec<Arc<Lane>>>,
    dispatcher: Dispatcher,
    next: AtomicUsize,
    gate: Arc<CreditGate>,
    issued: Counter,
    waits: Counter,
    issued_total: AtomicU64,
    redispatched: Counter,
    redispatched_total: AtomicU64,
    late: AtomicU64,
    failures: FailureSink,
    /// "No accelerator left" was reported (it is said once).
    stranded: AtomicBool,
}

impl QueryIssuer {
    /// An issuer with no lanes yet (connections add theirs with [`QueryIssuer::add_lanes`]);
    /// `gate` is the one the connections notify, `failures` where "no lane is left" goes.
    pub fn new(dispatcher: Dispatcher, gate: Arc<CreditGate>, failures: FailureSink) -> QueryIssuer {
        QueryIssuer {
            lanes: arc_swap::ArcSwap::from_pointee(Vec::new()),
            dispatcher,
            next: AtomicUsize::new(0),
            gate,
            issued: metrics::counter!(m::SAMPLES_ISSUED),
            waits: metrics::counter!(m::ISSUE_WAITS),
            issued_total: AtomicU64::new(0),
            redispatched: metrics::counter!(m::REDISPATCHED),
            redispatched_total: AtomicU64::new(0),
            late: AtomicU64::new(0),
            failures,
            stranded: AtomicBool::new(false),
        }
    }

    /// The arbitration policy.
    pub fn dispatcher(&self) -> Dispatcher {
        self.dispatcher
    }

    /// Where the issue thread waits for credits (connections notify it as they free some).
    pub fn gate(&self) -> &Arc<CreditGate> {
        &self.gate
    }

    /// A late answer to a re-dispatched sample was dropped.
    pub fn note_late(&self, n: u64) {
        self.late.fetch_add(n, Ordering::Relaxed);
    }

    /// Late answers dropped so far (all connections, those already stopped included).
    pub fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// The lanes (a snapshot).
    pub fn lanes(&self) -> Arc<Vec<Arc<Lane>>> {
        self.lanes.load_full()
    }

    /// Adds the lanes of an accelerator that joined during the run.
    pub fn add_lanes(&self, new: &[Arc<Lane>]) {
        self.lanes.rcu(|old| {
            let mut v = Vec::clone(old);
            v.extend(new.iter().cloned());
            v
        });
        self.gate.notify();
    }

    /// Samples issued so far.
    pub fn issued(&self) -> u64 {
        self.issued_total.load(Ordering::Relaxed)
    }

    /// Samples completed so far (all lanes).
    pub fn completed(&self) -> u64 {
        self.lanes.load().iter().map(|l| l.completed()).sum()
    }

    /// Places every sample of one LoadGen query; blocks while every lane is out of credits.
    pub fn issue(&self, samples: IssuedSamples<'_>) {
        let n = samples.len() as u64;
        let issued = Nanos::now();
        for sample in samples {
            if !self.place(Submission { sample, issued, first_reported: false }) {
                return;
            }
        }
        self.issued.increment(n);
        self.issued_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Places one sample on a lane (waiting for a credit if every lane is full); false when no
    /// lane is left (the supervisor has been told).
    fn place(&self, s: Submission) -> bool {
        let mut lanes = self.lanes.load();
        let mut sample = Some(s);
        let mut stranded: Vec<Submission> = Vec::new();
        while let Some(s) = sample.take().or_else(|| stranded.pop()) {
            let start = self.next.load(Ordering::Relaxed);
            let view = |i: usize| (lanes[i].in_flight(), lanes[i].capacity, lanes[i].is_open());
            match self.dispatcher.pick(lanes.len(), start, view) {
                Some(i) if lanes[i].try_reserve() => {
                    self.next.store(i + 1, Ordering::Relaxed);
                    // Cannot fail: a reserved credit guarantees room in the queue.
                    if let Err(back) = lanes[i].queue.push(s) {
                        lanes[i].abandon(1);
                        sample = Some(back);
                        continue;
                    }
                    lanes[i].wake();
                    // The lane may have closed between the reservation and the push, after its
                    // connection took back what was queued: take back what is left and place it
                    // again (whoever pops a sample owns it, so none is lost or doubled).
                    if !lanes[i].is_open() {
                        while let Some(back) = lanes[i].queue.pop() {
                            lanes[i].abandon(1);
                            stranded.push(back);
                        }
                    }
                }
                Some(_) => sample = Some(s),
                None if lanes.iter().all(|l| !l.is_open()) => {
                    if !self.stranded.swap(true, Ordering::AcqRel) {
                        self.failures.report(RunFailure::NoAcceleratorLeft);
                    }
                    return false;
                }
                None => {
                    self.waits.increment(1);
                    let any_free = || lanes.iter().any(|l| l.is_open() && l.in_flight() < l.capacity);
                    self.gate.wait(any_free, Duration::from_millis(5));
                    // Lanes may have joined meanwhile.
                    lanes = self.lanes.load();
                    sample = Some(s);
                }
            }
        }
        true
    }

    /// Samples of a lost connection, placed again on the lanes still open, from a thread of
    /// their own (placing may wait for credits, which the connections' threads must not). Each
    /// sample was owned by exactly one connection, which gave it up: it completes once.
    pub fn redispatch(self: &Arc<Self>, from: &str, subs: Vec<Submission>) {
        if subs.is_empty() {
            return;
        }
        let n = subs.len() as u64;
        self.redispatched.increment(n);
        self.redispatched_total.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(connection = from, samples = n, "re-dispatching the samples of a lost connection");
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("qdl-redispatch".into()).spawn(move || {
            for s in subs {
                if !me.place(s) {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            self.failures.report(RunFailure::RedispatchThread(e));
        }
    }

    /// Samples re-dispatched so far.
    pub fn redispatched(&self) -> u64 {
        self.redispatched_total.load(Ordering::Relaxed)
    }

    /// LoadGen's FlushQueries: every sample is already on its way; make sure every lane is awake.
    pub fn flush(&self) {
        for l in self.lanes.load().iter() {
            l.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_rotates_and_skips_full_or_closed_lanes() {
        let lanes = [(0, 2, true), (2, 2, false), (1, 2, true), (0, 2, false)];
        let view = |i: usize| lanes[i];
        let d = Dispatcher::RoundRobin;
        assert_eq!(d.pick(4, 0, view), Some(0));
        assert_eq!(d.pick(4, 1, view), Some(2));
        assert_eq!(d.pick(4, 3, view), Some(0));
        let full = |_| (2, 2, true);
        assert_eq!(d.pick(4, 0, full), None);
    }

    #[test]
    fn least_in_flight_picks_the_emptiest_open_lane() {
        let lanes = [(5, 8, true), (1, 8, false), (3, 8, true), (3, 8, true)];
        let d = Dispatcher::LeastInFlight;
        assert_eq!(d.pick(4, 0, |i| lanes[i]), Some(2));
        // Ties go to the first lane after the rotating start.
        assert_eq!(d.pick(4, 3, |i| lanes[i]), Some(3));
        assert_eq!(Dispatcher::for_config(Dispatch::Auto, true), Dispatcher::RoundRobin);
        assert_eq!(Dispatcher::for_config(Dispatch::Auto, false), Dispatcher::LeastInFlight);
    }

    #[test]
    fn lane_credits_bound_the_queue() {
        let lane = Lane::new("x", 2);
        assert!(lane.try_reserve() && lane.try_reserve());
        assert!(!lane.try_reserve());
        assert_eq!(lane.in_flight(), 2);
        lane.release(1);
        assert!(lane.try_reserve());
        lane.close();
        lane.release(2);
        assert!(!lane.try_reserve(), "a closed lane takes nothing");
    }

    #[test]
    fn gate_wakes_on_release_and_never_misses_one() {
        let gate = Arc::new(CreditGate::default());
        let lane = Lane::new("x", 1);
        assert!(lane.try_reserve());
        let (g, l) = (gate.clone(), lane.clone());
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while l.in_flight() >= 1 {
                g.wait(|| l.in_flight() < 1, Duration::from_secs(10));
            }
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(20));
        lane.release(1);
        gate.notify();
        assert!(t.join().unwrap() < Duration::from_secs(5), "woken by notify, not by the timeout");
    }
}
