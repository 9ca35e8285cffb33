//! The continuous (in-flight) batching scheduler of an LLM engine, as a sans-IO core (the policy
//! of vLLM's and llama.cpp server's schedulers): one engine context, one sequence per request,
//! and each engine step is ONE batch that mixes decode tokens and prefill chunks.
//!
//! The driver feeds requests with [`Scheduler::handle_request`], asks for the next step with
//! [`Scheduler::poll_step`], runs it on the engine, reports the sampled tokens with
//! [`Scheduler::handle_step_done`] (or a failed step with [`Scheduler::handle_step_failed`]) and
//! then takes the events with [`Scheduler::poll_event`]. Time is passed in; nothing here blocks,
//! spawns or reads a clock.
//!
//! # Policy
//! ```text
//!  queue (FIFO)            running (<= max_running, KV reserved)         one step (<= max_tokens_per_step)
//!  +----+----+----+        +----------------------------------+         +---------------------------------+
//!  | r5 | r4 | r3 | -----> | decoding:   s0 s2 s3             | ------> | D s0 | D s2 | D s3 |  1 token each
//!  +----+----+----+ admit  | prefilling: s1 (chunk 2 of 4)    |         | P s1 [256..512)              |  oldest first
//!        when it fits      +----------------------------------+         | P s4 [0..n) (r3 just admitted)|  from what is left
//!                                                                       +---------------------------------+
//! ```
//! - **KV**: admission reserves `prompt_len + max_new_tokens` tokens of `kv_tokens` for the whole
//!   life of the sequence (no preemption, so a running sequence always finishes); the reservation is
//!   released when the sequence finishes. A request whose reservation exceeds the whole budget is
//!   refused at once ([`Refusal::TooLong`]); any other waits until it fits.
//! - **Admission** is strictly FIFO: when the head of the queue does not fit (no KV, no free
//!   sequence, or no tokens left in this step), nothing behind it is admitted (no head-of-line
//!   skipping, so a long request is never starved by short ones).
//! - **A step** holds first one decode token for every decoding sequence, then prefill chunks
//!   from the tokens left: sequences already prefilling (oldest first), then newly admitted ones,
//!   each chunk `min(remaining prompt, max_prefill_chunk, tokens left)`.
//! - **Decode never starves**: a sequence only starts decoding after a prefill chunk that fitted
//!   in the same step as all the decodes, so the decoding sequences never outnumber
//!   `max_tokens_per_step` and every one of them gets a token in every step. Should they ever
//!   outnumber it, the oldest are decoded and the queue rotates, so each is served in turn.
//! - **Stopping**: a sequence stops when it samples its EOS token after at least `min_new_tokens`
//!   tokens (the EOS token is part of the output) or when it has `max_new_tokens` tokens.
//!
//! # Events
//! The prompt's last chunk yields the first token ([`Event::FirstToken`], which names the
//! [`SeqId`]: the driver finds the request with [`Scheduler::key`]); [`Event::Finished`] hands the
//! key back with every generated token. A sequence's id stays valid (and is not reused) until its
//! `Finished` event has been polled, and its `FirstToken` always comes first. Poll the events after
//! each step: sequence ids of finished sequences are only freed when their events are taken.

use std::collections::VecDeque;

use qdl_shared::time::Nanos;
use thiserror::Error;

/// The scheduler's limits. All are counts; none may be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Sequences admitted at once, decoding or prefilling (default 64). Sequence ids stay below it.
    pub max_running: usize,
    /// Tokens in one engine batch: decode tokens plus prefill chunk tokens (default 512).
    pub max_tokens_per_step: usize,
    /// Largest prefill chunk of one sequence in one step, in tokens (default 256); at most
    /// `max_tokens_per_step`.
    pub max_prefill_chunk: usize,
    /// Context (KV cache) budget in tokens, across all running sequences (default 32768); at most
    /// `u32::MAX` (positions are `u32`).
    pub kv_tokens: usize,
    /// Requests waiting for admission (default 1024); beyond it a request is refused.
    pub max_queued: usize,
}

impl Default for SchedulerLimits {
    fn default() -> Self {
        SchedulerLimits {
            max_running: 64,
            max_tokens_per_step: 512,
            max_prefill_chunk: 256,
            kv_tokens: 32768,
            max_queued: 1024,
        }
    }
}

/// Limits that make no sense.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitsError {
    /// A limit is zero (its name).
    #[error("scheduler limit {0} must be at least 1")]
    Zero(&'static str),
    /// The prefill chunk is larger than a whole step.
    #[error("max_prefill_chunk {chunk} exceeds max_tokens_per_step {step}")]
    ChunkExceedsStep {
        /// `max_prefill_chunk`.
        chunk: usize,
        /// `max_tokens_per_step`.
        step: usize,
    },
    /// More running sequences than sequence ids (`u32`).
    #[error("max_running {0} exceeds the range of sequence ids")]
    TooManySequences(usize),
    /// A context budget beyond the range of positions (`u32`).
    #[error("kv_tokens {0} exceeds the range of positions")]
    KvTooLarge(usize),
}

impl SchedulerLimits {
    /// Checks that the limits make sense.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let named = [
            ("max_running", self.max_running),
            ("max_tokens_per_step", self.max_tokens_per_step),
            ("max_prefill_chunk", self.max_prefill_chunk),
            ("kv_tokens", self.kv_tokens),
            ("max_queued", self.max_queued),
        ];
        if let Some((name, _)) = named.iter().find(|(_, v)| *v == 0) {
            return Err(LimitsError::Zero(name));
        }
        if self.max_prefill_chunk > self.max_tokens_per_step {
            return Err(LimitsError::ChunkExceedsStep {
                chunk: self.max_prefill_chunk,
                step: self.max_tokens_per_step,
            });
        }
        if u32::try_from(self.max_running).is_err() {
            return Err(LimitsError::TooManySequences(self.max_running));
        }
        if u32::try_from(self.kv_tokens).is_err() {
            return Err(LimitsError::KvTooLarge(self.kv_tokens));
        }
        Ok(())
    }
}

/// A generation request: the prompt's tokens stay with the driver, found by `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRequest<K> {
    /// The driver's key for the request (and its prompt).
    pub key: K,
    /// Prompt tokens; at least 1.
    pub prompt_len: u32,
    /// Most tokens to generate; at least 1.
    pub max_new_tokens: u32,
    /// Fewest tokens to generate before EOS may stop the sequence (capped by `max_new_tokens`).
    pub min_new_tokens: u32,
    /// The end-of-sequence token, if any.
    pub eos: Option<i32>,
}

impl<K> GenRequest<K> {
    /// The context tokens admission reserves: `prompt_len + max_new_tokens`.
    pub fn kv_need(&self) -> usize {
        let need = u64::from(self.prompt_len) + u64::from(self.max_new_tokens);
        usize::try_from(need).unwrap_or(usize::MAX)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The prompt has no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// `max_new_tokens` is 0 (the prompt's last chunk always samples a token).
    #[error("max_new_tokens is 0")]
    NoNewTokens,
    /// The request's reservation exceeds the whole context budget: it could never run.
    #[error("the request needs {needs} context tokens, the budget is {budget}")]
    TooLong {
        /// `prompt_len + max_new_tokens`.
        needs: usize,
        /// `kv_tokens`.
        budget: usize,
    },
    /// `max_queued` requests already wait.
    #[error("{max_queued} requests already wait")]
    QueueFull {
        /// `max_queued`.
        max_queued: usize,
    },
}

/// A refused request, handed back with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused<K> {
    /// Why.
    pub reason: Refusal,
    /// The request, untouched.
    pub request: GenRequest<K>,
}

/// An engine sequence id: below `max_running`, reused once a sequence's `Finished` event (or its
/// failure) has been handed out.
pub type SeqId = u32;

/// One item of a step's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Prompt tokens `[start, start + len)` of sequence `seq` go into its context.
    Prefill {
        /// The sequence.
        seq: SeqId,
        /// First prompt position of the chunk.
        start: u32,
        /// Tokens in the chunk (at least 1).
        len: u32,
        /// Whether this is the prompt's last chunk: the engine samples the first token from the
        /// last position's logits.
        logits: bool,
    },
    /// The sequence's last generated token, fed at `pos`; the engine samples the next token.
    Decode {
        /// The sequence.
        seq: SeqId,
        /// The last generated token.
        token: i32,
        /// Its position: `prompt_len + generated - 1`.
        pos: u32,
    },
}

impl Work {
    /// The sequence.
    pub fn seq(&self) -> SeqId {
        match *self {
            Work::Prefill { seq, .. } | Work::Decode { seq, .. } => seq,
        }
    }

    /// Tokens this item puts in the batch.
    pub fn tokens(&self) -> usize {
        match *self {
            Work::Prefill { len, .. } => len as usize,
            Work::Decode { .. } => 1,
        }
    }

    /// Whether the engine samples a token for it (a [`StepOutput`] is due).
    pub fn logits(&self) -> bool {
        match *self {
            Work::Prefill { logits, .. } => logits,
            Work::Decode { .. } => true,
        }
    }
}

/// One engine step: decodes first, then prefill chunks; at most `max_tokens_per_step` tokens and
/// at most one item per sequence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepPlan {
    /// The batch's items.
    pub work: Vec<Work>,
}

impl StepPlan {
    /// Tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.work.iter().map(Work::tokens).sum()
    }

    /// Outputs due: one per item with logits.
    pub fn outputs(&self) -> usize {
        self.work.iter().filter(|w| w.logits()).count()
    }
}

/// A token the engine sampled for a sequence (one per item with logits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutput {
    /// The sequence.
    pub seq: SeqId,
    /// The sampled token.
    pub token: i32,
}

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// It sampled its EOS token (included in the output) after `min_new_tokens`.
    Eos,
    /// It reached `max_new_tokens`.
    MaxTokens,
}

/// What the driver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<K> {
    /// A sequence sampled its first token; [`Scheduler::key`] names its request until its
    /// `Finished` event is taken.
    FirstToken {
        /// The sequence.
        seq: SeqId,
        /// The first generated token.
        token: i32,
        /// When the request arrived.
        arrived: Nanos,
        /// When the step that sampled it completed.
        at: Nanos,
    },
    /// A sequence finished: its request and every generated token, the first one first.
    Finished {
        /// The sequence (free again once this event is taken).
        seq: SeqId,
        /// The request's key.
        key: K,
        /// The generated tokens.
        tokens: Vec<i32>,
        /// Why it stopped.
        reason: FinishReason,
        /// When the request arrived.
        arrived: Nanos,
        /// When its first token came.
        first_token_at: Nanos,
        /// When it finished.
        at: Nanos,
    },
}

/// Outputs that do not match the step in flight; the scheduler's state is left as it was (the step
/// is still in flight: report it again, or as failed).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StepError {
    /// No step is in flight.
    #[error("no step is in flight")]
    NoStepInFlight,
    /// An output for a sequence that is not running. (the sequence)
    #[error("output for sequence {0}, which is not running")]
    UnknownSeq(SeqId),
    /// An output for a running sequence that had no logits in this step. (the sequence)
    #[error("output for sequence {0}, which had no logits in this step")]
    NoLogits(SeqId),
    /// Two outputs for one sequence. (the sequence)
    #[error("two outputs for sequence {0}")]
    Duplicate(SeqId),
    /// No output for an item with logits. (the sequence)
    #[error("no output for sequence {0}")]
    Missing(SeqId),
}

/// A sequence: prefilling while it has no token, decoding until `done`; once done, its slot is
/// held until its `Finished` event is taken.
struct Seq<K> {
    req: GenRequest<K>,
    prefilled: u32,
    tokens: Vec<i32>,
    arrived: Nanos,
    first_token_at: Nanos,
    finished_at: Nanos,
    done: Option<FinishReason>,
}

impl<K> Seq<K> {
    /// Why the sequence stops after sampling `token`, if it does.
    fn stop(&self, token: i32) -> Option<FinishReason> {
        let generated = self.tokens.len();
        if self.req.eos == Some(token) && generated >= self.req.min_new_tokens as usize {
            Some(FinishReason::Eos)
        } else if generated >= self.req.max_new_tokens as usize {
            Some(FinishReason::MaxTokens)
        } else {
            None
        }
    }
}

enum Pending {
    First { seq: SeqId, token: i32, at: Nanos },
    Finished { seq: SeqId },
}

struct InFlight {
    work: Vec<Work>,
    started: Nanos,
}

/// The continuous-batching scheduler (see the module doc for the policy).
pub struct Scheduler<K> {
    limits: SchedulerLimits,
    queue: VecDeque<(GenRequest<K>, Nanos)>,
    slots: Vec<Option<Seq<K>>>,
    free: Vec<SeqId>,
    prefilling: VecDeque<SeqId>,
    decoding: VecDeque<SeqId>,
    running: usize,
    kv_used: usize,
    in_flight: Option<InFlight>,
    events: VecDeque<Pending>,
}

impl<K> Scheduler<K> {
    /// An empty scheduler, if the limits make sense.
    pub fn new(limits: SchedulerLimits) -> Result<Self, LimitsError> {
        limits.validate()?;
        Ok(Scheduler {
            limits,
            queue: VecDeque::new(),
            slots: Vec::new(),
            free: Vec::new(),
            prefilling: VecDeque::new(),
            decoding: VecDeque::new(),
            running: 0,
            kv_used: 0,
            in_flight: None,
            events: VecDeque::new(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    /// Sequences admitted and not finished (prefilling or decoding).
    pub fn running(&self) -> usize {
        self.running
    }

    /// Requests waiting for admission.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Context tokens reserved by the running sequences.
    pub fn kv_used(&self) -> usize {
        self.kv_used
    }

    /// Whether anything is queued or running.
    pub fn has_work(&self) -> bool {
        self.running > 0 || !self.queue.is_empty()
    }

    /// When the step in flight was planned, if one is.
    pub fn in_flight_since(&self) -> Option<Nanos> {
        self.in_flight.as_ref().map(|f| f.started)
    }

    /// How long the oldest waiting request has waited at `now`.
    pub fn oldest_wait(&self, now: Nanos) -> Option<Nanos> {
        self.queue.front().map(|(_, arrived)| now.since(*arrived))
    }

    /// The request key of sequence `seq`: from its admission until its `Finished` event is taken.
    pub fn key(&self, seq: SeqId) -> Option<&K> {
        self.slot(seq).map(|s| &s.req.key)
    }

    fn slot(&self, seq: SeqId) -> Option<&Seq<K>> {
        self.slots.get(seq as usize).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, seq: SeqId) -> Option<&mut Seq<K>> {
        self.slots.get_mut(seq as usize).and_then(Option::as_mut)
    }

    fn is_running(&self, seq: SeqId) -> bool {
        self.slot(seq).is_some_and(|s| s.done.is_none())
    }

    /// A request arrived at `now`: queued, or refused and handed back.
    pub fn handle_request(&mut self, req: GenRequest<K>, now: Nanos) -> Result<(), Refused<K>> {
        let needs = req.kv_need();
        let reason = if req.prompt_len == 0 {
            Refusal::EmptyPrompt
        } else if req.max_new_tokens == 0 {
            Refusal::NoNewTokens
        } else if needs > self.limits.kv_tokens {
            Refusal::TooLong { needs, budget: self.limits.kv_tokens }
        } else if self.queue.len() >= self.limits.max_queued {
            Refusal::QueueFull { max_queued: self.limits.max_queued }
        } else {
            self.queue.push_back((req, now));
            return Ok(());
        };
        Err(Refused { reason, request: req })
    }

    /// The next step to run, or `None` when nothing can run (or a step is still in flight: report
    /// it first with `handle_step_done` or `handle_step_failed`).
    pub fn poll_step(&mut self, now: Nanos) -> Option<StepPlan> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut work = Vec::new();
        let mut left = self.limits.max_tokens_per_step;
        let decodes = self.decoding.len().min(left);
        for &seq in self.decoding.iter().take(decodes) {
            if let Some(s) = self.slots.get(seq as usize).and_then(Option::as_ref)
                && let Some(&token) = s.tokens.last()
            {
                let pos = s.req.prompt_len.saturating_add(s.tokens.len() as u32 - 1);
                work.push(Work::Decode { seq, token, pos });
                left -= 1;
            }
        }
        self.decoding.rotate_left(decodes);
        for &seq in &self.prefilling {
            if left == 0 {
                break;
            }
            if let Some(s) = self.slots.get(seq as usize).and_then(Option::as_ref) {
                let chunk = chunk(seq, s, left, self.limits.max_prefill_chunk);
                left -= chunk.tokens();
                work.push(chunk);
            }
        }
        while left > 0
            && let Some(seq) = self.admit()
            && let Some(s) = self.slot(seq)
        {
            let chunk = chunk(seq, s, left, self.limits.max_prefill_chunk);
            left -= chunk.tokens();
            work.push(chunk);
        }
        if work.is_empty() {
            return None;
        }
        self.in_flight = Some(InFlight { work: work.clone(), started: now });
        Some(StepPlan { work })
    }

    /// Admits the head of the queue if it fits: a free sequence id and its KV reservation.
    fn admit(&mut self) -> Option<SeqId> {
        let (req, _) = self.queue.front()?;
        let needs = req.kv_need();
        let id_free = !self.free.is_empty() || self.slots.len() < self.limits.max_running;
        if self.running >= self.limits.max_running || !id_free || self.kv_used + needs > self.limits.kv_tokens {
            return None;
        }
        let (req, arrived) = self.queue.pop_front()?;
        let seq = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            (self.slots.len() - 1) as SeqId
        });
        let (first_token_at, finished_at) = (Nanos::ZERO, Nanos::ZERO);
        let new = Seq { req, prefilled: 0, tokens: Vec::new(), arrived, first_token_at, finished_at, done: None };
        self.slots[seq as usize] = Some(new);
        self.running += 1;
        self.kv_used += needs;
        self.prefilling.push_back(seq);
        Some(seq)
    }

    /// The step in flight completed at `now` with `outputs` (one per item with logits, any order).
    /// Bad outputs are refused and change nothing.
    pub fn handle_step_done(&mut self, outputs: &[StepOutput], now: Nanos) -> Result<(), StepError> {
        let flight = self.in_flight.as_ref().ok_or(StepError::NoStepInFlight)?;
        let got = self.match_outputs(&flight.work, outputs)?;
        let Some(flight) = self.in_flight.take() else { return Err(StepError::NoStepInFlight) };
        for work in flight.work {
            let seq = work.seq();
            if let (Work::Prefill { len, .. }, Some(s)) = (work, self.slot_mut(seq)) {
                s.prefilled = s.prefilled.saturating_add(len);
            }
            // Only items with logits have a token.
            if let Some(token) = got.get(seq as usize).copied().flatten() {
                self.take_token(seq, token, now);
            }
        }
        Ok(())
    }

    /// Checks `outputs` against the items with logits of `work`: each sequence's token, by id.
    fn match_outputs(&self, work: &[Work], outputs: &[StepOutput]) -> Result<Vec<Option<i32>>, StepError> {
        let mut due = vec![false; self.slots.len()];
        for w in work.iter().filter(|w| w.logits()) {
            if let Some(d) = due.get_mut(w.seq() as usize) {
                *d = true;
            }
        }
        let mut got: Vec<Option<i32>> = vec![None; self.slots.len()];
        for out in outputs {
            let seq = out.seq;
            if !self.is_running(seq) {
                return Err(StepError::UnknownSeq(seq));
            }
            if !due.get(seq as usize).copied().unwrap_or(false) {
                return Err(StepError::NoLogits(seq));
            }
            match got.get_mut(seq as usize) {
                Some(Some(_)) => return Err(StepError::Duplicate(seq)),
                Some(slot) => *slot = Some(out.token),
                None => return Err(StepError::UnknownSeq(seq)),
            }
        }
        if let Some(w) = work.iter().find(|w| w.logits() && got.get(w.seq() as usize).copied().flatten().is_none()) {
            return Err(StepError::Missing(w.seq()));
        }
        Ok(got)
    }

    /// A sequence sampled a token: the first one (from its prompt's last chunk) moves it from
    /// prefilling to decoding; any may finish it.
    fn take_token(&mut self, seq: SeqId, token: i32, now: Nanos) {
        let Some(s) = self.slot_mut(seq) else { return };
        let first = s.tokens.is_empty();
        s.tokens.push(token);
        let stop = s.stop(token);
        if first {
            s.first_token_at = now;
            self.events.push_back(Pending::First { seq, token, at: now });
            self.prefilling.retain(|&p| p != seq);
        }
        match stop {
            Some(reason) => self.finish(seq, reason, now),
            None if first => self.decoding.push_back(seq),
            None => {}
        }
    }

    /// Releases the sequence's KV; its slot waits for its `Finished` event to be taken.
    fn finish(&mut self, seq: SeqId, reason: FinishReason, now: Nanos) {
        let Some(s) = self.slot_mut(seq) else { return };
        s.done = Some(reason);
        s.finished_at = now;
        let reserved = s.req.kv_need();
        self.kv_used -= reserved;
        self.running -= 1;
        self.decoding.retain(|&d| d != seq);
        self.prefilling.retain(|&p| p != seq);
        self.events.push_back(Pending::Finished { seq });
    }

    /// The step in flight failed (an engine error): every running sequence fails with it. Their
    /// sequence ids and keys come back in id order, for the driver to end on the engine and answer
    /// with an error; their KV and ids are freed and their pending `FirstToken` events dropped.
    /// Queued requests stay queued.
    pub fn handle_step_failed(&mut self) -> Vec<(SeqId, K)> {
        self.in_flight = None;
        let failed: Vec<SeqId> = (0..self.slots.len() as SeqId).filter(|&seq| self.is_running(seq)).collect();
        self.events.retain(|e| !matches!(e, Pending::First { seq, .. } if failed.contains(seq)));
        let mut keys = Vec::with_capacity(failed.len());
        for seq in failed {
            if let Some(s) = self.slots.get_mut(seq as usize).and_then(Option::take) {
                self.kv_used -= s.req.kv_need();
                self.running -= 1;
                self.free.push(seq);
                keys.push((seq, s.req.key));
            }
        }
        self.prefilling.clear();
        self.decoding.clear();
        keys
    }

    /// Shutdown: every running sequence (in sequence-id order), then every queued request (in
    /// arrival order), for the driver to answer. `Finished` events already due stay to be taken.
    pub fn drain(&mut self) -> Vec<K> {
        let mut keys: Vec<K> = self.handle_step_failed().into_iter().map(|(_, key)| key).collect();
        keys.extend(self.queue.drain(..).map(|(req, _)| req.key));
        keys
    }

    /// The next event, in order: a sequence's `FirstToken` always precedes its `Finished`.
    pub fn poll_event(&mut self) -> Option<Event<K>> {
        loop {
            match self.events.pop_front()? {
                Pending::First { seq, token, at } => {
                    if let Some(s) = self.slot(seq) {
                        return Some(Event::FirstToken { seq, token, arrived: s.arrived, at });
                    }
                }
                Pending::Finished { seq } => {
                    if let Some(s) = self.slots.get_mut(seq as usize).and_then(Option::take) {
                        self.free.push(seq);
                        return Some(Event::Finished {
                            seq,
                            key: s.req.key,
                            tokens: s.tokens,
                            reason: s.done.unwrap_or(FinishReason::MaxTokens),
                            arrived: s.arrived,
                            first_token_at: s.first_token_at,
                            at: s.finished_at,
                        });
                    }
                }
            }
        }
    }
}

/// The next prefill chunk of `s`: `min(remaining prompt, max_chunk, left)` tokens (`left >= 1`).
fn chunk<K>(seq: SeqId, s: &Seq<K>, left: usize, max_chunk: usize) -> Work {
    let remaining = s.req.prompt_len.saturating_sub(s.prefilled);
    let len = remaining.min(u32::try_from(max_chunk.min(left)).unwrap_or(u32::MAX));
    Work::Prefill { seq, start: s.prefilled, len, logits: len == remaining }
}

#[cfg(test)]
mod tests;
