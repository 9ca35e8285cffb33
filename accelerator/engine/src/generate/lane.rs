//! [`GenerativeLane`]: a worker's generative side, the thin driver of the continuous-batching
//! [`Scheduler`] over a [`TokenEngine`].
//!
//! ```text
//!  WorkItem ──handle_item──▶ Scheduler (queue, running, KV)        step():
//!                              │ poll_step → StepPlan ──▶ engine.begin (new sequences)
//!                              │                          engine.step  (one batch)
//!                              ◀── handle_step_done(outputs)
//!                              │ poll_event: FirstToken ──▶ sink.first_tokens (one per sink per step)
//!                              │             Finished   ──▶ sink.deliver (the slot is freed)
//! ```
//! A refused request (queue full, longer than the context budget, empty) is answered with an
//! error at once; a failed step fails every running sequence with an error answer: a sample is
//! always answered, never lost.

use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram};
use qdl_shared::config::GenerationConfig;
use qdl_shared::metrics::accelerator as m;
use qdl_shared::time::Nanos;
use qdl_shared::wire::data::DataErrorCode;

use super::engine::TokenEngine;
use super::scheduler::{Event, GenRequest, Refusal, Scheduler, SchedulerLimits, StepOutput, Work};
use crate::worker::{FirstToken, FirstTokens, Replies, Reply, ReplySink, WorkItem, refuse};

/// The metrics of one worker's generative lane.
struct LaneMetrics {
    ttft: Histogram,
    tpot: Histogram,
    generated: Counter,
    prefilled: Counter,
    running: Gauge,
    queued: Gauge,
    kv_used: Gauge,
    step_prefill: Histogram,
    step_decode: Histogram,
}

impl LaneMetrics {
    fn new(worker: &str, kv_budget: u32) -> LaneMetrics {
        let w = || worker.to_string();
        metrics::gauge!(m::KV_TOKENS_BUDGET, "worker" => w()).set(kv_budget as f64);
        LaneMetrics {
            ttft: metrics::histogram!(m::TIME_TO_FIRST_TOKEN, "worker" => w()),
            tpot: metrics::histogram!(m::TIME_PER_OUTPUT_TOKEN, "worker" => w()),
            generated: metrics::counter!(m::TOKENS_GENERATED, "worker" => w()),
            prefilled: metrics::counter!(m::TOKENS_PREFILLED, "worker" => w()),
            running: metrics::gauge!(m::RUNNING_SEQUENCES, "worker" => w()),
            queued: metrics::gauge!(m::QUEUED_REQUESTS, "worker" => w()),
            kv_used: metrics::gauge!(m::KV_TOKENS_USED, "worker" => w()),
            step_prefill: metrics::histogram!(m::STEP, "worker" => w(), "kind" => "prefill"),
            step_decode: metrics::histogram!(m::STEP, "worker" => w(), "kind" => "decode"),
        }
    }
}

/// Why a generative lane could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid [generation] limits: {0}")]
pub struct LaneError(#[from] super::scheduler::LimitsError);

/// A worker's generative side; see the module docs.
pub struct GenerativeLane {
    scheduler: Scheduler<WorkItem>,
    engine: Box<dyn TokenEngine>,
    outputs: Vec<StepOutput>,
    metrics: LaneMetrics,
}

impl GenerativeLane {
    /// A lane with `config`'s limits over `engine`; `worker` is the metrics label.
    pub fn new(config: &GenerationConfig, engine: Box<dyn TokenEngine>, worker: &str) -> Result<Self, LaneError> {
        let limits = SchedulerLimits {
            max_running: config.max_running as usize,
            max_tokens_per_step: config.max_tokens_per_step as usize,
            max_prefill_chunk: config.max_prefill_chunk as usize,
            kv_tokens: config.kv_tokens as usize,
            max_queued: config.max_queued as usize,
        };
        Ok(GenerativeLane {
            scheduler: Scheduler::new(limits)?,
            engine,
            outputs: Vec::new(),
            metrics: LaneMetrics::new(worker, config.kv_tokens),
        })
    }

    /// Whether requests are queued or running.
    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    /// A generative sample: queued for admission, or answered with an error at once.
    pub fn handle_item(&mut self, item: WorkItem, now: Nanos) {
        let Some(g) = item.spec.generation else {
            return refuse(item, DataErrorCode::BackendFailed, "not a generative workload");
        };
        let prompt_len = item.input_bytes().len() / 4;
        let req = GenRequest {
            key: item,
            prompt_len: prompt_len as u32,
            max_new_tokens: g.max_output_tokens,
            min_new_tokens: g.min_output_tokens,
            eos: Some(g.eos_token),
        };
        if let Err(refused) = self.scheduler.handle_request(req, now) {
            let code = match refused.reason {
                Refusal::QueueFull { .. } => DataErrorCode::Overloaded,
                _ => DataErrorCode::BackendFailed,
            };
            refuse(refused.request.key, code, &refused.reason.to_string());
        }
        self.publish();
    }

    /// Runs one engine step, if any is due, and hands out its answers.
    pub fn step(&mut self) {
        let Some(plan) = self.scheduler.poll_step(Nanos::now()) else { return };
        let started = Instant::now();
        let mut prefill = 0u64;
        let mut result = Ok(());
        for w in &plan.work {
            if let Work::Prefill { seq, start, len, .. } = *w {
                prefill += len as u64;
                if start == 0 && result.is_ok() {
                    result = self.begin(seq);
                }
            }
        }
        self.outputs.clear();
        if result.is_ok() {
            result = self.engine.step(&plan, &mut self.outputs);
        }
        let took = started.elapsed().as_secs_f64();
        if prefill > 0 { &self.metrics.step_prefill } else { &self.metrics.step_decode }.record(took);
        self.metrics.prefilled.increment(prefill);
        let done = result.map_err(|e| e.to_string()).and_then(|()| {
            self.scheduler.handle_step_done(&self.outputs, Nanos::now()).map_err(|e| format!("engine step: {e}"))
        });
        match done {
            Ok(()) => self.metrics.generated.increment(self.outputs.len() as u64),
            Err(msg) => self.fail_running(&msg),
        }
        self.deliver_events();
        self.publish();
    }

    /// Starts sequence `seq` on the engine with its request's prompt.
    fn begin(&mut self, seq: u32) -> Result<(), crate::backend::BackendError> {
        let Some(item) = self.scheduler.key(seq) else { return Ok(()) };
        let prompt: Vec<i32> =
            item.input_bytes().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let Some(g) = item.spec.generation else {
            return Err(crate::backend::BackendError::Failed("a request without generation limits".into()));
        };
        self.engine.begin(seq, &prompt, &g)
    }

    /// Fails every running sequence (the engine failed a step): each is answered with an error.
    fn fail_running(&mut self, msg: &str) {
        tracing::error!(engine = self.engine.name(), "{msg}");
        for (seq, item) in self.scheduler.handle_step_failed() {
            self.engine.end(seq);
            refuse(item, DataErrorCode::BackendFailed, msg);
        }
    }

    /// Hands out the step's events: first tokens, then finished samples, one delivery per sink
    /// and kind (first tokens before final answers, as LoadGen needs them).
    fn deliver_events(&mut self) {
        let mut firsts: Vec<(Arc<dyn ReplySink>, FirstTokens)> = Vec::new();
        let mut finals: Vec<(Arc<dyn ReplySink>, Replies)> = Vec::new();
        let now = Nanos::now();
        while let Some(ev) = self.scheduler.poll_event() {
            match ev {
                Event::FirstToken { seq, token, .. } => {
                    let Some(item) = self.scheduler.key(seq) else { continue };
                    self.metrics.ttft.record(now.since(item.received).as_secs_f64());
                    let note =
                        FirstToken { sample_id: item.sample_id, slot: item.slot, token, received: item.received };
                    group(&mut firsts, &item.reply, FirstTokens::default).entries.push(note);
                }
                Event::Finished { seq, key: item, tokens, first_token_at, at, .. } => {
                    self.engine.end(seq);
                    if tokens.len() > 1 {
                        let per = at.since(first_token_at).as_secs_f64() / (tokens.len() - 1) as f64;
                        self.metrics.tpot.record(per);
                    }
                    let r = group(&mut finals, &item.reply, || Replies {
                        entries: Vec::new(),
                        outputs: Vec::new(),
                        output_bytes: 0,
                        ends: Vec::new(),
                        error: None,
                    });
                    r.outputs.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
                    r.ends.push(r.outputs.len());
                    r.entries.push(Reply {
                        sample_id: item.sample_id,
                        slot: item.slot,
                        input: item.input,
                        received: item.received,
                    });
                }
            }
        }
        for (sink, f) in firsts {
            sink.first_tokens(f);
        }
        for (sink, r) in finals {
            sink.deliver(r);
        }
    }

    fn publish(&self) {
        self.metrics.running.set(self.scheduler.running() as f64);
        self.metrics.queued.set(self.scheduler.queued() as f64);
        self.metrics.kv_used.set(self.scheduler.kv_used() as f64);
    }
}

/// The entry of `groups` for `sink`, made with `new` if there is none.
fn group<'g, T>(
    groups: &'g mut Vec<(Arc<dyn ReplySink>, T)>,
    sink: &Arc<dyn ReplySink>,
    new: impl FnOnce() -> T,
) -> &'g mut T {
    let i = match groups.iter().position(|(s, _)| Arc::ptr_eq(s, sink)) {
        Some(i) => i,
        None => {
            groups.push((sink.clone(), new()));
            groups.len() - 1
        }
    };
    &mut groups[i].1
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use qdl_shared::config::{BackendConfig, BackendKind, BatcherConfig, TokenModel, WorkersConfig};
    use qdl_shared::transport::{Payload, PayloadSource};
    use qdl_shared::workload::{WorkloadSpec, reference_tokens};

    use super::*;
    use crate::backend::BackendError;
    use crate::worker::{Input, WorkerPool};

    /// One thing a sink saw: (sample id, Some(first token), -, -) or (sample id, None, output,
    /// failed).
    type Sight = (u64, Option<i32>, Vec<u8>, bool);

    /// What a sink saw, in order.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Sight>>);

    impl ReplySink for Seen {
        fn deliver(&self, r: Replies) {
            let mut v = self.0.lock().unwrap();
            for (i, e) in r.entries.iter().enumerate() {
                let out = if r.error.is_none() { r.output(i).to_vec() } else { Vec::new() };
                v.push((e.sample_id, None, out, r.error.is_some()));
            }
        }

        fn first_tokens(&self, t: FirstTokens) {
            let mut v = self.0.lock().unwrap();
            for f in t.entries {
                v.push((f.sample_id, Some(f.token), Vec::new(), false));
            }
        }
    }

    struct Prompts(Vec<u8>);

    impl PayloadSource for Prompts {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    fn run(backend: BackendConfig, generation: GenerationConfig, prompts: &[Vec<i32>]) -> Vec<Sight> {
        let spec = Arc::new(WorkloadSpec::builtin("llama3.1-8b").unwrap());
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for p in prompts {
            ranges.push((buf.len(), p.len() * 4));
            buf.extend(p.iter().flat_map(|t| t.to_le_bytes()));
        }
        let src: Arc<dyn PayloadSource> = Arc::new(Prompts(buf));
        let batcher = BatcherConfig::default();
        let pool = WorkerPool::start(&WorkersConfig::default(), batcher, &generation, &backend).unwrap();
        let sink = Arc::new(Seen::default());
        let w = pool.pick();
        for (i, &(at, len)) in ranges.iter().enumerate() {
            let item = WorkItem {
                input: Input::Buffer(Payload::new(src.clone(), at, len).unwrap()),
                sample_id: i as u64,
                slot: i as u32,
                reply: sink.clone(),
                spec: spec.clone(),
                received: Nanos::now(),
                len: len as u32,
            };
            w.try_submit(item).map_err(|_| "queue full").unwrap();
        }
        drop(w);
        // The workers answer everything queued before they stop.
        pool.shutdown();
        Arc::try_unwrap(sink).ok().unwrap().0.into_inner().unwrap()
    }

    fn prompts(n: usize) -> Vec<Vec<i32>> {
        (0..n).map(|i| (0..(5 + i * 37 % 300) as i32).map(|t| 1000 + t * 7 + i as i32).collect()).collect()
    }

    #[test]
    fn every_sample_gets_its_first_token_then_its_reference_answer() {
        let backend = BackendConfig { kind: BackendKind::Echo, ..Default::default() };
        let generation =
            GenerationConfig { max_running: 8, max_tokens_per_step: 128, max_prefill_chunk: 64, ..Default::default() };
        let ps = prompts(40);
        let seen = run(backend, generation, &ps);
        let g = WorkloadSpec::builtin("llama3.1-8b").unwrap().generation.unwrap();
        for (i, p) in ps.iter().enumerate() {
            let mine: Vec<_> = seen.iter().filter(|s| s.0 == i as u64).collect();
            assert_eq!(mine.len(), 2, "sample {i}: one first token, one answer: {mine:?}");
            let bytes: Vec<u8> = p.iter().flat_map(|t| t.to_le_bytes()).collect();
            let mut want = Vec::new();
            reference_tokens(&bytes, &g, &mut want);
            assert_eq!(mine[0].1, Some(want[0]), "sample {i}: the first token comes first");
            let got: Vec<i32> =
                mine[1].2.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            assert!(!mine[1].3, "sample {i} failed");
            assert_eq!(got, want, "sample {i}: every token");
        }
    }

    #[test]
    fn a_full_context_budget_makes_requests_wait_and_every_one_is_answered() {
        let mut backend = BackendConfig { kind: BackendKind::Synthetic, ..Default::default() };
        backend.synthetic.tokens = TokenModel { fixed_us: 50.0, per_prefill_token_us: 0.0, per_sequence_us: 0.0 };
        // Room for about two sequences at a time (prompt + 128 output tokens each).
        let generation = GenerationConfig { max_running: 16, kv_tokens: 900, ..Default::default() };
        let seen = run(backend, generation, &prompts(12));
        let answers = seen.iter().filter(|s| s.1.is_none()).count();
        let errors = seen.iter().filter(|s| s.3).count();
        assert_eq!((answers, errors), (12, 0), "{seen:?}");
    }

    #[test]
    fn a_prompt_longer_than_the_budget_is_answered_with_an_error() {
        let backend = BackendConfig { kind: BackendKind::Echo, ..Default::default() };
        let generation = GenerationConfig { kv_tokens: 100, ..Default::default() };
        let seen = run(backend, generation, &[vec![5; 10]]);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].3, "refused with an error answer, not dropped: {seen:?}");
    }

    /// An engine whose every step fails; it records the sequences it was told to end.
    struct Failing(Arc<Mutex<Vec<u32>>>);

    impl TokenEngine for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn begin(&mut self, _: u32, _: &[i32], _: &qdl_shared::workload::Generation) -> Result<(), BackendError> {
            Ok(())
        }
        fn step(&mut self, _: &super::super::scheduler::StepPlan, _: &mut Vec<StepOutput>) -> Result<(), BackendError> {
            Err(BackendError::Failed("device lost".into()))
        }
        fn end(&mut self, seq: u32) {
            self.0.lock().unwrap().push(seq);
        }
    }

    #[test]
    fn a_failed_step_answers_every_running_sample_with_an_error_and_ends_its_sequences() {
        let ended = Arc::new(Mutex::new(Vec::new()));
        let generation = GenerationConfig { max_running: 4, ..Default::default() };
        let mut lane = GenerativeLane::new(&generation, Box::new(Failing(ended.clone())), "t").unwrap();
        let spec = Arc::new(WorkloadSpec::builtin("llama3.1-8b").unwrap());
        let src: Arc<dyn PayloadSource> = Arc::new(Prompts(vec![7; 6 * 40]));
        let sink = Arc::new(Seen::default());
        for i in 0..6 {
            let item = WorkItem {
                input: Input::Buffer(Payload::new(src.clone(), i * 40, 40).unwrap()),
                sample_id: i as u64,
                slot: i as u32,
                reply: sink.clone(),
                spec: spec.clone(),
                received: Nanos::now(),
                len: 40,
            };
            lane.handle_item(item, Nanos::now());
        }
        // Four run, two wait; the step fails: the four are answered with errors, the two run next.
        lane.step();
        let mut e = ended.lock().unwrap().clone();
        e.sort_unstable();
        assert_eq!(e, vec![0, 1, 2, 3], "every running sequence is ended on the engine");
        let failed: Vec<u64> = sink.0.lock().unwrap().iter().filter(|s| s.3).map(|s| s.0).collect();
        assert_eq!(failed, vec![0, 1, 2, 3]);
        lane.step();
        assert_eq!(sink.0.lock().unwrap().iter().filter(|s| s.3).count(), 6, "none lost, none answered twice");
        assert!(!lane.has_work());
    }
}
