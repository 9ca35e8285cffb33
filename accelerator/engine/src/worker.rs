//! The [`WorkerPool`] of `DeviceWorker`s: one thread per device (a GPU, the CPU, or a virtual
//! device), each owning a [`Batcher`] and a backend.
//!
//! ```text
//!  ConnectionActor ──try_submit(WorkItem)──▶ [bounded channel] ──▶ DeviceWorker thread
//!  or LocalTransport                                               │ Batcher: max batch / delay
//!        ▲                                                         │ gather → backend.infer
//!        └──────────── ReplySink::deliver(Replies) ◀───────────────┘ one delivery per sink per batch
//! ```
//!
//! Public for a node's data connection (the accelerator's `ConnectionActor`): [`WorkerSender`],
//! [`WorkItem`] with its [`Input`], [`reply_channel`] and the [`Replies`] it delivers, and
//! [`refuse`] for an item a full queue gave back. The frontend's local baseline uses only the
//! pool and [`crate::local::LocalTransport`].
//!
//! A sample's input travels as an [`Input`]: the slot lease it was received into (network), or a
//! range of the frontend's sample buffer (the in-process baseline). The lease comes back with the
//! reply, so the slot stays busy until its response is queued. The channel is bounded
//! (`batcher.max_queue`); a full worker answers "overloaded" at once instead of queueing more.
//!
//! For the synthetic and echo backends a "device" is virtual: the worker thread stands for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use metrics::{Gauge, Histogram};
use qdl_shared::config::{BackendConfig, BatcherConfig, GenerationConfig, WorkersConfig};
use qdl_shared::metrics::{Sampler, accelerator as m};
use qdl_shared::slots::SlotLease;
use qdl_shared::time::Nanos;
use qdl_shared::transport::Payload;
use qdl_shared::wire::data::DataErrorCode;
use qdl_shared::workload::WorkloadSpec;

use crate::backend::{self, Backend, BackendError, Batch};
use crate::batcher::{BatchPolicy, Batcher};
use crate::generate::lane::GenerativeLane;

/// Where a sample's input bytes are.
#[derive(Debug)]
pub enum Input {
    /// The accelerator slot it was received into.
    Slot(SlotLease),
    /// A range of a shared buffer (the frontend's sample buffer, in the local baseline).
    Buffer(Payload),
}

impl Input {
    /// The input bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Input::Slot(l) => l.bytes(),
            Input::Buffer(p) => p.as_slice(),
        }
    }
}

/// Receives a worker's answers for the samples it submitted.
pub trait ReplySink: Send + Sync {
    /// The answers of one batch (or engine step) that belong to this sink. Must not block.
    fn deliver(&self, replies: Replies);

    /// First tokens of generative samples still in flight (one delivery per sink per engine
    /// step); their final answers follow through [`ReplySink::deliver`]. Must not block.
    fn first_tokens(&self, tokens: FirstTokens) {
        let _ = tokens;
    }
}

/// What a worker hands a connection through [`reply_channel`].
#[derive(Debug)]
pub enum Answer {
    /// Final answers (each frees its slot).
    Done(Replies),
    /// First tokens of samples still in flight.
    FirstTokens(FirstTokens),
}

/// A [`ReplySink`] that forwards answers into a bounded channel.
struct ChannelSink(tokio::sync::mpsc::Sender<Answer>);

impl ChannelSink {
    fn send(&self, answer: Answer) {
        use tokio::sync::mpsc::error::TrySendError;
        match self.0.try_send(answer) {
            Ok(()) => {}
            // The receiver is gone: dropping the replies frees their slots.
            Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => {
                // Cannot happen (see `reply_channel`); never drop silently.
                tracing::error!("reply channel full; answers dropped");
            }
        }
    }
}

impl ReplySink for ChannelSink {
    fn deliver(&self, replies: Replies) {
        self.send(Answer::Done(replies));
    }

    fn first_tokens(&self, tokens: FirstTokens) {
        self.send(Answer::FirstTokens(tokens));
    }
}

/// A sink and the channel it feeds, for a connection of `slots` slots: a worker never blocks on
/// it, because every message in it answers at least one of the connection's in-flight samples,
/// each of which has at most one first-token message and one final one (capacity 2 × slots).
pub fn reply_channel(slots: u32) -> (Arc<dyn ReplySink>, tokio::sync::mpsc::Receiver<Answer>) {
    let (tx, rx) = tokio::sync::mpsc::channel(2 * slots as usize + 1);
    (Arc::new(ChannelSink(tx)), rx)
}

/// The first token of one generative sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstToken {
    /// The correlation tag.
    pub sample_id: u64,
    /// The slot its answers go into.
    pub slot: u32,
    /// The token id.
    pub token: i32,
    /// When its request was read.
    pub received: Nanos,
}

/// First tokens of one engine step for one sink.
#[derive(Debug, Default)]
pub struct FirstTokens {
    /// The samples' first tokens.
    pub entries: Vec<FirstToken>,
}

/// One sample to infer.
pub struct WorkItem {
    /// Its input.
    pub input: Input,
    /// The frontend's correlation tag (echoed in the response).
    pub sample_id: u64,
    /// Slot index to answer into.
    pub slot: u32,
    /// Who receives the answer.
    pub reply: Arc<dyn ReplySink>,
    /// The session's workload; samples of different workloads never share a batch.
    pub spec: Arc<WorkloadSpec>,
    /// When its request was read (the start of its residence in the accelerator).
    pub received: Nanos,
    /// The input's true length, bytes: the sample size for fixed-shape workloads, the prompt's
    /// length (a multiple of 4, at most the slot) for generative ones.
    pub len: u32,
}

impl WorkItem {
    /// The input bytes at their true length.
    pub fn input_bytes(&self) -> &[u8] {
        let b = self.input.bytes();
        &b[..(self.len as usize).min(b.len())]
    }
}

/// One answered sample.
#[derive(Debug)]
pub struct Reply {
    /// The correlation tag.
    pub sample_id: u64,
    /// The slot to answer into.
    pub slot: u32,
    /// The input, handed back (dropping a slot lease frees the slot).
    pub input: Input,
    /// When its request was read.
    pub received: Nanos,
}

/// Answers of one batch for one sink: entry `i`'s output is `outputs[i*output_bytes..]`, or
/// with variable-length outputs (generative workloads) `outputs[ends[i-1]..ends[i]]`.
#[derive(Debug)]
pub struct Replies {
    /// The samples answered.
    pub entries: Vec<Reply>,
    /// Their outputs, back to back (empty on error).
    pub outputs: Vec<u8>,
    /// Bytes per output (fixed-size outputs).
    pub output_bytes: usize,
    /// Where each output ends in `outputs` (variable-length outputs; empty otherwise).
    pub ends: Vec<usize>,
    /// Set if the samples failed instead.
    pub error: Option<(DataErrorCode, String)>,
}

impl Replies {
    /// The output of entry `i`.
    pub fn output(&self, i: usize) -> &[u8] {
        if self.ends.is_empty() {
            return &self.outputs[i * self.output_bytes..(i + 1) * self.output_bytes];
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.outputs[start..self.ends[i]]
    }

    /// Answers that failed with `code`.
    pub fn failed(entries: Vec<Reply>, code: DataErrorCode, message: String) -> Replies {
        Replies { entries, outputs: Vec::new(), output_bytes: 0, ends: Vec::new(), error: Some((code, message)) }
    }
}

enum WorkerMsg {
    Sample(WorkItem),
    Warmup { spec: Arc<WorkloadSpec>, done: tokio::sync::oneshot::Sender<Result<(), BackendError>> },
}

/// The sending side of one worker's queue.
#[derive(Clone)]
pub struct WorkerSender {
    tx: Sender<WorkerMsg>,
    index: usize,
}

impl WorkerSender {
    /// Queues a sample without blocking; a full (or stopped) worker hands it back.
    pub fn try_submit(&self, item: WorkItem) -> Result<(), WorkItem> {
        match self.tx.try_send(WorkerMsg::Sample(item)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(WorkerMsg::Sample(i)) | TrySendError::Disconnected(WorkerMsg::Sample(i))) => Err(i),
            Err(_) => unreachable!("only samples are sent here"),
        }
    }

    /// The worker's index.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// Answers `item` with an error right away (used when it cannot be queued).
pub fn refuse(item: WorkItem, code: DataErrorCode, message: &str) {
    let reply = Reply { sample_id: item.sample_id, slot: item.slot, input: item.input, received: item.received };
    item.reply.deliver(Replies::failed(vec![reply], code, message.to_string()));
}

/// The workers of a node.
pub struct WorkerPool {
    senders: Vec<WorkerSender>,
    sizes: Vec<Arc<[AtomicU64]>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
    max_batch: usize,
    backend: &'static str,
    checker: backend::Checker,
    notes: Vec<String>,
    described: Vec<String>,
    providers: Vec<&'static str>,
}

/// Errors starting workers.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The backend could not be set up.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A worker thread could not be started.
    #[error("cannot start worker threads: {0}")]
    Spawn(std::io::Error),
    /// The `[generation]` limits are not usable.
    #[error(transparent)]
    Generation(#[from] crate::generate::lane::LaneError),
}

impl WorkerPool {
    /// Starts one worker per device (see [`backend::build`]), each with its own batcher and
    /// backend instance. Backends are built here, so a model that cannot be loaded is an error
    /// before any thread starts.
    pub fn start(
        workers: &WorkersConfig,
        batcher: BatcherConfig,
        generation: &GenerationConfig,
        backend_cfg: &BackendConfig,
    ) -> Result<WorkerPool, WorkerError> {
        let built = backend::build(backend_cfg, workers, generation)?;
        let mut max_batch = batcher.max_batch as usize;
        for b in &built.backends {
            if let Some(limit) = b.max_batch() {
                max_batch = max_batch.min(limit);
            }
        }
        let backend_name = built.backends.first().map(|b| b.name()).unwrap_or("none");
        let mut described: Vec<String> = Vec::new();
        let mut providers = Vec::new();
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let mut sizes = Vec::new();
        for (index, backend) in built.backends.into_iter().enumerate() {
            described.push(backend.describe());
            providers.push(backend.provider());
            metrics::gauge!(
                m::BACKEND_INFO,
                "worker" => index.to_string(),
                "backend" => backend.name(),
                "provider" => backend.provider(),
                "device" => backend.describe()
            )
            .set(1.0);
            let policy = BatchPolicy {
                max_batch,
                max_queue_delay: Nanos::from_micros(batcher.max_queue_delay_us),
                max_queue: batcher.max_queue as usize,
            };
            let (tx, rx) = crossbeam_channel::bounded(batcher.max_queue as usize);
            let counts: Arc<[AtomicU64]> = (0..=max_batch).map(|_| AtomicU64::new(0)).collect();
            sizes.push(counts.clone());
            let generative = match backend.token_engine() {
                Some(engine) => Some(GenerativeLane::new(generation, engine, &index.to_string())?),
                None => None,
            };
            let worker = DeviceWorker::new(index, policy, backend, generative, rx, counts);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("qdl-worker-{index}"))
                    .spawn(move || worker.run())
                    .map_err(WorkerError::Spawn)?,
            );
            senders.push(WorkerSender { tx, index });
        }
        Ok(WorkerPool {
            senders,
            sizes,
            threads,
            next: AtomicUsize::new(0),
            max_batch,
            backend: backend_name,
            checker: built.checker,
            notes: built.notes,
            described,
            providers,
        })
    }

    /// Start-up notes: devices found or not, execution providers passed over and why.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The distinct providers serving the workers ("cpu", "cuda", "virtual", ...).
    pub fn providers(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        for p in &self.providers {
            if !v.contains(p) {
                v.push(p);
            }
        }
        v
    }

    /// What each worker runs and where ("onnx onet.onnx on cpu").
    pub fn workers_described(&self) -> &[String] {
        &self.described
    }

    /// Workers in the pool.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether the pool is empty (never, once started).
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// The largest batch any worker forms.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The next worker in round-robin order (each new connection gets one).
    pub fn pick(&self) -> WorkerSender {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].clone()
    }

    /// Batches formed by all workers since the last [`WorkerPool::reset_stats`]: (size, count),
    /// sizes ascending, zero counts left out.
    pub fn batch_sizes(&self) -> Vec<(u32, u64)> {
        self.batch_sizes_of(0..self.sizes.len())
    }

    /// [`WorkerPool::batch_sizes`] of workers `workers` only.
    pub fn batch_sizes_of(&self, workers: std::ops::Range<usize>) -> Vec<(u32, u64)> {
        let sizes = &self.sizes[workers.start.min(self.sizes.len())..workers.end.min(self.sizes.len())];
        (0..=self.max_batch)
            .map(|b| (b as u32, sizes.iter().map(|w| w[b].load(Ordering::Relaxed)).sum::<u64>()))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Starts the statistics afresh (at the start of a run).
    pub fn reset_stats(&self) {
        for w in &self.sizes {
            for c in w.iter() {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Worker `i` (modulo the pool's size).
    pub fn sender(&self, i: usize) -> WorkerSender {
        self.senders[i % self.senders.len()].clone()
    }

    /// Checks that the workers' backend can serve `spec` (for the onnx backend: that `spec`
    /// describes the model's inputs and outputs).
    pub fn check(&self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        self.checker.check(spec)
    }

    /// Warms every worker up for `spec` and waits until all are done.
    pub async fn warmup(&self, spec: Arc<WorkloadSpec>) -> Result<(), BackendError> {
        let mut waits = Vec::new();
        for s in &self.senders {
            let (done, wait) = tokio::sync::oneshot::channel();
            s.tx.try_send(WorkerMsg::Warmup { spec: spec.clone(), done })
                .map_err(|_| BackendError::Failed("worker busy or stopped; warm up before the run".into()))?;
            waits.push(wait);
        }
        for w in waits {
            w.await.map_err(|_| BackendError::Failed("worker stopped during warm-up".into()))??;
        }
        Ok(())
    }

    /// Stops the workers after they have answered everything queued, and waits for them. Workers
    /// stop once every [`WorkerSender`] (the pool's and those handed out) is dropped.
    pub fn shutdown(self) {
        drop(self.senders);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Distinct `workload` label values per worker; later workloads are counted as [`OTHER_WORKLOAD`].
pub(crate) const MAX_WORKLOAD_LABELS: usize = 8;
/// Longest workload name used as a label value; longer ones are counted as [`OTHER_WORKLOAD`].
pub(crate) const MAX_WORKLOAD_LABEL_LEN: usize = 64;
/// The `workload` label value of workloads beyond the bounds.
pub(crate) const OTHER_WORKLOAD: &str = "other";

/// A worker's handles for one workload (label `workload`).
struct WorkloadMetrics {
    name: String,
    batch_size: Histogram,
    queue_delay: Histogram,
    inference: Histogram,
}

struct DeviceWorker {
    batcher: Batcher<WorkItem>,
    backend: Box<dyn Backend>,
    /// The generative side (continuous batching), if the backend has a token engine.
    generative: Option<GenerativeLane>,
    rx: Receiver<WorkerMsg>,
    gather: Vec<u8>,
    outputs: Vec<u8>,
    batch: Vec<(WorkItem, Nanos)>,
    /// The worker's label value, for [`WorkloadMetrics`].
    worker: String,
    /// Per-workload handles, built at a workload's first batch (at most [`MAX_WORKLOAD_LABELS`]).
    per_workload: Vec<WorkloadMetrics>,
    queue_depth: Gauge,
    sizes: Arc<[AtomicU64]>,
    sampler: Sampler,
}

fn same_spec(a: &WorkItem, b: &WorkItem) -> bool {
    Arc::ptr_eq(&a.spec, &b.spec) || a.spec == b.spec
}

impl DeviceWorker {
    fn new(
        index: usize,
        policy: BatchPolicy,
        backend: Box<dyn Backend>,
        generative: Option<GenerativeLane>,
        rx: Receiver<WorkerMsg>,
        sizes: Arc<[AtomicU64]>,
    ) -> DeviceWorker {
        let w = index.to_string();
        DeviceWorker {
            batcher: Batcher::new(policy),
            backend,
            generative,
            rx,
            gather: Vec::new(),
            outputs: Vec::new(),
            batch: Vec::with_capacity(policy.max_batch),
            queue_depth: metrics::gauge!(m::QUEUE_DEPTH, "worker" => w.clone()),
            worker: w,
            per_workload: Vec::new(),
            sizes,
            sampler: Sampler::default(),
        }
    }

    fn run(mut self) {
        // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack; the argument is a
        // plain integer (1000 ns).
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
        let mut open = true;
        while open || !self.batcher.is_empty() || self.generating() {
            let msg = if !open {
                None
            } else if self.generating() {
                // Engine steps run back to back while sequences are running: take what arrived.
                match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(crossbeam_channel::TryRecvError::Empty) => None,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        open = false;
                        None
                    }
                }
            } else if self.batcher.is_empty() {
                self.rx.recv().ok()
            } else {
                let deadline = self.batcher.poll_timeout().expect("queue is not empty");
                let wait = deadline.since(Nanos::now());
                match self.rx.recv_timeout(wait.as_duration()) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        None
                    }
                }
            };
            match msg {
                Some(m) => self.handle(m),
                None if self.batcher.is_empty() && !self.generating() => open = false,
                None => {}
            }
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m);
            }
            // Once the queue is closed, nothing will arrive: run what is left without waiting.
            let now = if open { Nanos::now() } else { Nanos(u64::MAX / 2) };
            let mut batch = std::mem::take(&mut self.batch);
            while self.batcher.poll_batch(now, same_spec, &mut batch) {
                self.run_batch(&mut batch);
            }
            self.batch = batch;
            self.queue_depth.set(self.batcher.len() as f64);
            // One engine step per turn, so fixed-shape batches interleave with generation.
            if let Some(g) = &mut self.generative {
                g.step();
            }
        }
    }

    /// Whether generative requests are queued or running.
    fn generating(&self) -> bool {
        self.generative.as_ref().is_some_and(GenerativeLane::has_work)
    }

    fn handle(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Sample(item) if item.spec.is_generative() => match &mut self.generative {
                Some(g) => g.handle_item(item, Nanos::now()),
                None => {
                    let msg = format!("the {} backend does not serve generative workloads", self.backend.name());
                    refuse(item, DataErrorCode::BackendFailed, &msg);
                }
            },
            WorkerMsg::Sample(item) => {
                if let Err(item) = self.batcher.handle_arrival(item, Nanos::now()) {
                    refuse(item, DataErrorCode::Overloaded, "the worker's queue is full");
                }
            }
            WorkerMsg::Warmup { spec, done } => {
                let _ = done.send(self.backend.warmup(&spec));
            }
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<(WorkItem, Nanos)>) {
        let n = batch.len();
        let spec = batch[0].0.spec.clone();
        let (ib, ob) = (spec.input_bytes(), spec.output_bytes as usize);
        let started = Instant::now();
        let now = Nanos::from_instant(started);
        let wm = self.workload_metrics(&spec.name);
        let w = &self.per_workload[wm];
        w.batch_size.record(n as f64);
        if let Some(c) = self.sizes.get(n) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        for (_, at) in batch.iter() {
            if self.sampler.hit() {
                w.queue_delay.record(now.since(*at).as_secs_f64());
            }
        }
        self.outputs.clear();
        self.outputs.resize(n * ob, 0);
        let result = {
            let all_slots = batch.iter().all(|(it, _)| matches!(it.input, Input::Slot(_)));
            let leases = batch.iter().filter_map(|(it, _)| match &it.input {
                Input::Slot(l) => Some(l),
                Input::Buffer(_) => None,
            });
            let input: &[u8] = match all_slots.then(|| SlotLease::contiguous(leases)).flatten() {
                Some(span) => span,
                None => {
                    self.gather.clear();
                    for (it, _) in batch.iter() {
                        self.gather.extend_from_slice(it.input.bytes());
                    }
                    &self.gather
                }
            };
            if input.len() != n * ib {
                Err(BackendError::Failed(format!("batch input is {} bytes, expected {n} × {ib}", input.len())))
            } else {
                self.backend.infer(&Batch { spec: &spec, n, input, formed: started }, &mut self.outputs)
            }
        };
        self.per_workload[wm].inference.record(started.elapsed().as_secs_f64());
        self.deliver(batch, result, ob);
    }

    /// The index in `per_workload` of this workload's handles; built at its first batch. A batch
    /// holds one workload; the name is compared, nothing is allocated once the handles exist.
    fn workload_metrics(&mut self, name: &str) -> usize {
        if let Some(i) = self.per_workload.iter().position(|w| w.name == name) {
            return i;
        }
        // Workload names come from the frontends: beyond the bound they share one label value.
        let other = self.per_workload.len() >= MAX_WORKLOAD_LABELS || name.len() > MAX_WORKLOAD_LABEL_LEN;
        let label = if other { OTHER_WORKLOAD } else { name };
        if let Some(i) = self.per_workload.iter().position(|w| w.name == label) {
            return i;
        }
        let h = |metric: &'static str| metrics::histogram!(metric, "worker" => self.worker.clone(), "workload" => label.to_string());
        let w = WorkloadMetrics {
            batch_size: h(m::BATCH_SIZE),
            queue_delay: h(m::QUEUE_DELAY),
            inference: h(m::INFERENCE),
            name: label.to_string(),
        };
        self.per_workload.push(w);
        self.per_workload.len() - 1
    }

    /// Hands each sink its answers: one delivery per sink per batch.
    fn deliver(&mut self, batch: &mut Vec<(WorkItem, Nanos)>, result: Result<(), BackendError>, ob: usize) {
        let mut groups: Vec<(Arc<dyn ReplySink>, Replies)> = Vec::new();
        let error = result.err().map(|e| (DataErrorCode::BackendFailed, e.to_string()));
        if let Some((_, msg)) = &error {
            tracing::error!(worker = ?std::thread::current().name(), "{msg}");
        }
        for (i, (item, _)) in batch.drain(..).enumerate() {
            let reply =
                Reply { sample_id: item.sample_id, slot: item.slot, input: item.input, received: item.received };
            let g = match groups.iter().position(|(s, _)| Arc::ptr_eq(s, &item.reply)) {
                Some(g) => g,
                None => {
                    let replies = Replies {
                        entries: Vec::new(),
                        outputs: Vec::new(),
                        output_bytes: ob,
                        ends: Vec::new(),
                        error: error.clone(),
                    };
                    groups.push((item.reply, replies));
                    groups.len() - 1
                }
            };
            let r = &mut groups[g].1;
            r.entries.push(reply);
            if r.error.is_none() {
                r.outputs.extend_from_slice(&self.outputs[i * ob..(i + 1) * ob]);
            }
        }
        for (sink, replies) in groups {
            sink.deliver(replies);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdl_shared::config::BackendKind;
    use qdl_shared::slots::SlotArena;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Replies>>);
    impl ReplySink for Collect {
        fn deliver(&self, replies: Replies) {
            self.0.lock().unwrap().push(replies);
        }
    }

    fn pool(max_batch: u32, delay_us: u64) -> WorkerPool {
        let batcher = BatcherConfig { max_batch, max_queue_delay_us: delay_us, max_queue: 1024 };
        let backend = BackendConfig { kind: BackendKind::Echo, ..Default::default() };
        WorkerPool::start(&WorkersConfig::default(), batcher, &GenerationConfig::default(), &backend).unwrap()
    }

    /// A worker with the echo backend and no generative lane, driven by hand (no thread).
    fn echo_worker() -> DeviceWorker {
        let cfg = BackendConfig { kind: BackendKind::Echo, ..Default::default() };
        let backend = crate::backend::build(&cfg, &WorkersConfig::default(), &GenerationConfig::default())
            .unwrap()
            .backends
            .remove(0);
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let policy = BatchPolicy { max_batch: 8, max_queue_delay: Nanos::from_micros(100), max_queue: 8 };
        DeviceWorker::new(0, policy, backend, None, rx, Arc::from(Vec::<AtomicU64>::new()))
    }

    #[test]
    fn workload_labels_are_reused_and_bounded() {
        let mut w = echo_worker();
        let bert = w.workload_metrics("bert");
        assert_eq!(w.workload_metrics("bert"), bert, "a workload's handles are built once");
        for i in 0..20 {
            w.workload_metrics(&format!("custom-{i}"));
        }
        let long = w.workload_metrics(&"x".repeat(MAX_WORKLOAD_LABEL_LEN + 1));
        let names: Vec<&str> = w.per_workload.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names.len(), MAX_WORKLOAD_LABELS + 1, "{names:?}");
        assert_eq!((names[0], names[1]), ("bert", "custom-0"));
        assert_eq!(names[long], OTHER_WORKLOAD);
        assert_eq!(w.workload_metrics("custom-19"), long, "beyond the bound: `other`");
        assert_eq!(w.workload_metrics("custom-1"), 2, "within the bound: its own");
    }

    #[test]
    fn answers_every_sample_with_its_reference_output_and_returns_the_slot() {
        let spec = Arc::new(WorkloadSpec::bert());
        let ib = spec.input_bytes();
        let arena = SlotArena::new(32, ib).unwrap();
        let sink = Arc::new(Collect::default());
        let p = pool(8, 2000);
        let w = p.pick();
        for s in 0..20u32 {
            let mut lease = arena.try_lease(s).unwrap();
            lease.bytes_mut().fill(s as u8 + 1);
            let item = WorkItem {
                input: Input::Slot(lease),
                sample_id: 100 + s as u64,
                slot: s,
                reply: sink.clone(),
                spec: spec.clone(),
                received: Nanos::now(),
                len: spec.input_bytes() as u32,
            };
            w.try_submit(item).map_err(|_| "full").unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while sink.0.lock().unwrap().iter().map(|r| r.entries.len()).sum::<usize>() < 20 {
            assert!(Instant::now() < deadline, "the worker answered everything");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let p_sizes = p.batch_sizes();
        drop(w);
        p.shutdown();
        let got = sink.0.lock().unwrap();
        let mut seen = 0;
        for r in got.iter() {
            assert!(r.error.is_none());
            assert!(r.entries.len() <= 8);
            for (i, e) in r.entries.iter().enumerate() {
                let mut expected = [0u8; 8];
                qdl_shared::workload::reference_output(spec.output_kind, &vec![e.slot as u8 + 1; ib], &mut expected);
                assert_eq!(r.output(i), expected);
                assert_eq!(e.sample_id, 100 + e.slot as u64);
                seen += 1;
            }
        }
        assert_eq!(seen, 20);
        let sizes = p_sizes;
        assert_eq!(sizes.iter().map(|(b, n)| *b as u64 * n).sum::<u64>(), 20, "batch statistics count every sample");
        drop(got);
        sink.0.lock().unwrap().clear();
        assert_eq!(arena.leased(), 0, "every slot was freed once its reply was dropped");
    }

    #[test]
    fn a_full_queue_refuses_instead_of_blocking() {
        let spec = Arc::new(WorkloadSpec::resnet50());
        let sink = Arc::new(Collect::default());
        struct Src(Vec<u8>);
        impl qdl_shared::transport::PayloadSource for Src {
            fn bytes(&self) -> &[u8] {
                &self.0
            }
        }
        let src: Arc<dyn qdl_shared::transport::PayloadSource> = Arc::new(Src(vec![0; spec.input_bytes()]));
        let batcher = BatcherConfig { max_batch: 1, max_queue_delay_us: 0, max_queue: 1 };
        let mut backend = BackendConfig::default();
        backend.synthetic.default = qdl_shared::config::LatencyModel { fixed_us: 50_000.0, per_sample_us: 0.0 };
        let p = WorkerPool::start(&WorkersConfig::default(), batcher, &GenerationConfig::default(), &backend).unwrap();
        let w = p.pick();
        let mut refused = 0;
        for i in 0..20 {
            let item = WorkItem {
                input: Input::Buffer(Payload::new(src.clone(), 0, spec.input_bytes()).unwrap()),
                sample_id: i,
                slot: i as u32,
                reply: sink.clone(),
                spec: spec.clone(),
                received: Nanos::now(),
                len: spec.input_bytes() as u32,
            };
            if let Err(item) = w.try_submit(item) {
                refused += 1;
                refuse(item, DataErrorCode::Overloaded, "full");
            }
        }
        drop(w);
        p.shutdown();
        assert!(refused > 0);
        let got = sink.0.lock().unwrap();
        let answered: usize = got.iter().map(|r| r.entries.len()).sum();
        assert_eq!(answered, 20, "refused samples are answered too, never dropped");
        assert!(got.iter().any(|r| r.error.as_ref().is_some_and(|e| e.0 == DataErrorCode::Overloaded)));
    }

    #[test]
    fn a_worker_without_a_token_engine_answers_generative_samples_with_an_error() {
        let mut w = echo_worker();
        let spec = Arc::new(WorkloadSpec::builtin("llama3.1-8b").unwrap());
        let arena = SlotArena::new(1, spec.input_bytes()).unwrap();
        let sink = Arc::new(Collect::default());
        let item = WorkItem {
            input: Input::Slot(arena.try_lease(0).unwrap()),
            sample_id: 1,
            slot: 0,
            reply: sink.clone(),
            spec,
            received: Nanos::now(),
            len: 8,
        };
        w.handle(WorkerMsg::Sample(item));
        let got = sink.0.lock().unwrap();
        let err = got[0].error.as_ref().expect("answered with an error");
        assert_eq!(err.0, DataErrorCode::BackendFailed);
        assert!(err.1.contains("does not serve generative workloads"), "{}", err.1);
        assert!(w.batcher.is_empty(), "not queued for a batch");
    }
}
