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
    /// keys come back in sequence-id order for the driver to answer with an error; their KV and
    /// ids are freed and their pending `FirstToken` events dropped. Queued requests stay queued.
    pub fn handle_step_failed(&mut self) -> Vec<K> {
        self.in_flight = None;
        let failed: Vec<SeqId> = (0..self.slots.len() as SeqId).filter(|&seq| self.is_running(seq)).collect();
        self.events.retain(|e| !matches!(e, Pending::First { seq, .. } if failed.contains(seq)));
        let mut keys = Vec::with_capacity(failed.len());
        for seq in failed {
            if let Some(s) = self.slots.get_mut(seq as usize).and_then(Option::take) {
                self.kv_used -= s.req.kv_need();
                self.running -= 1;
                self.free.push(seq);
                keys.push(s.req.key);
            }
        }
        self.prefilling.clear();
        self.decoding.clear();
        keys
    }

    /// Shutdown: every running sequence (in sequence-id order), then every queued request (in
    /// arrival order), for the driver to answer. `Finished` events already due stay to be taken.
    pub fn drain(&mut self) -> Vec<K> {
        let mut keys = self.handle_step_failed();
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
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    const EOS: i32 = 7;

    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The fake model: the token sampled at position `pos` of request `key` (EOS one time in 16).
    fn model(key: u64, pos: u32) -> i32 {
        (mix((key << 32) | u64::from(pos)) % 16) as i32
    }

    /// What the fake model generates for `r`, and why it stops.
    fn expected(r: &GenRequest<u64>) -> (Vec<i32>, FinishReason) {
        let mut out = Vec::new();
        loop {
            let token = model(r.key, r.prompt_len - 1 + out.len() as u32);
            out.push(token);
            let n = out.len() as u32;
            if r.eos == Some(token) && n >= r.min_new_tokens {
                return (out, FinishReason::Eos);
            }
            if n >= r.max_new_tokens {
                return (out, FinishReason::MaxTokens);
            }
        }
    }

    fn req(key: u64, prompt_len: u32, max_new_tokens: u32) -> GenRequest<u64> {
        GenRequest { key, prompt_len, max_new_tokens, min_new_tokens: 0, eos: Some(EOS) }
    }

    fn limits(max_running: usize, step: usize, chunk: usize, kv: usize, queued: usize) -> SchedulerLimits {
        SchedulerLimits {
            max_running,
            max_tokens_per_step: step,
            max_prefill_chunk: chunk,
            kv_tokens: kv,
            max_queued: queued,
        }
    }

    /// The scheduler driven by a fake engine on a virtual clock, checking the invariants each step.
    struct Sim {
        s: Scheduler<u64>,
        lim: SchedulerLimits,
        now: Nanos,
        reqs: HashMap<u64, GenRequest<u64>>,
        /// The fake engine's context per sequence: key, positions filled, last token sampled.
        cache: HashMap<SeqId, (u64, u32, Option<i32>)>,
        first: HashMap<u64, i32>,
        done: HashMap<u64, (Vec<i32>, FinishReason)>,
        plans: Vec<StepPlan>,
    }

    impl Sim {
        fn new(lim: SchedulerLimits) -> Sim {
            let s = Scheduler::new(lim).expect("limits");
            let (reqs, cache, first, done) = Default::default();
            Sim { s, lim, now: Nanos::ZERO, reqs, cache, first, done, plans: Vec::new() }
        }

        fn submit(&mut self, r: GenRequest<u64>) -> Result<(), Refused<u64>> {
            self.reqs.insert(r.key, r.clone());
            let key = r.key;
            let res = self.s.handle_request(r, self.now);
            if res.is_err() {
                self.reqs.remove(&key);
            }
            res
        }

        /// Runs one step; false when there is none.
        fn step(&mut self) -> bool {
            let Some(plan) = self.s.poll_step(self.now) else { return false };
            assert_eq!(self.s.poll_step(self.now), None, "a second plan while one is in flight");
            self.check_plan(&plan);
            let outputs = self.engine(&plan);
            assert_eq!(outputs.len(), plan.outputs());
            self.now = self.now + Nanos(20_000 + 100 * plan.tokens() as u64);
            self.s.handle_step_done(&outputs, self.now).expect("good outputs");
            self.take_events();
            assert!(self.s.kv_used() <= self.lim.kv_tokens);
            self.plans.push(plan);
            true
        }

        fn check_plan(&self, plan: &StepPlan) {
            assert!(plan.tokens() <= self.lim.max_tokens_per_step, "{plan:?}");
            assert!(self.s.running() <= self.lim.max_running);
            assert!(self.s.kv_used() <= self.lim.kv_tokens);
            let seqs: HashSet<SeqId> = plan.work.iter().map(Work::seq).collect();
            assert_eq!(seqs.len(), plan.work.len(), "a sequence twice in {plan:?}");
            for w in &plan.work {
                assert!((w.seq() as usize) < self.lim.max_running);
                if let Work::Prefill { len, .. } = *w {
                    assert!(len >= 1 && len as usize <= self.lim.max_prefill_chunk, "{w:?}");
                }
            }
            for (&seq, _) in self.cache.iter().filter(|(_, c)| c.2.is_some()) {
                let decoded = plan.work.iter().any(|w| matches!(*w, Work::Decode { seq: s, .. } if s == seq));
                assert!(decoded, "decoding sequence {seq} left out of {plan:?}");
            }
        }

        /// The fake engine: checks each item against its context, samples with `model`.
        fn engine(&mut self, plan: &StepPlan) -> Vec<StepOutput> {
            let mut out = Vec::new();
            for w in &plan.work {
                match *w {
                    Work::Prefill { seq, start, len, logits } => {
                        let key = *self.s.key(seq).expect("a prefilling sequence has a key");
                        if start == 0 {
                            assert!(self.cache.insert(seq, (key, 0, None)).is_none(), "id {seq} reused while alive");
                        }
                        let c = self.cache.get_mut(&seq).expect("a prefill continues");
                        assert_eq!((c.0, c.1, c.2), (key, start, None));
                        c.1 += len;
                        let p = self.reqs[&key].prompt_len;
                        assert!(c.1 <= p);
                        assert_eq!(logits, c.1 == p);
                        if logits {
                            c.2 = Some(model(key, p - 1));
                            out.push(StepOutput { seq, token: model(key, p - 1) });
                        }
                    }
                    Work::Decode { seq, token, pos } => {
                        let c = self.cache.get_mut(&seq).expect("a decode follows a prefill");
                        assert_eq!((Some(token), pos), (c.2, c.1), "decode of {seq}");
                        c.1 += 1;
                        c.2 = Some(model(c.0, pos));
                        out.push(StepOutput { seq, token: model(c.0, pos) });
                    }
                }
            }
            out.reverse();
            out
        }

        fn take_events(&mut self) {
            while let Some(event) = self.s.poll_event() {
                match event {
                    Event::FirstToken { seq, token, arrived, at } => {
                        let key = *self.s.key(seq).expect("the key outlives FirstToken");
                        assert!(arrived <= at && at == self.now);
                        assert!(self.first.insert(key, token).is_none(), "two first tokens for {key}");
                    }
                    Event::Finished { seq, key, tokens, reason, arrived, first_token_at, at } => {
                        assert_eq!(self.first.get(&key), tokens.first(), "FirstToken of {key} before Finished");
                        assert!(arrived <= first_token_at && first_token_at <= at && at == self.now);
                        assert_eq!(self.cache.remove(&seq).map(|c| c.0), Some(key));
                        assert!(self.s.key(seq).is_none());
                        assert!(self.done.insert(key, (tokens, reason)).is_none(), "{key} finished twice");
                    }
                }
            }
        }

        /// Feeds `arrivals` (in time order) and runs until everything finished; the refusals, with
        /// the queue length each met.
        fn run(&mut self, arrivals: Vec<(Nanos, GenRequest<u64>)>) -> Vec<(Refusal, GenRequest<u64>, usize)> {
            let mut arrivals = VecDeque::from(arrivals);
            let mut refused = Vec::new();
            loop {
                while arrivals.front().is_some_and(|(at, _)| *at <= self.now)
                    && let Some((_, r)) = arrivals.pop_front()
                {
                    let queued = self.s.queued();
                    if let Err(e) = self.submit(r.clone()) {
                        assert_eq!(e.request, r, "the refused request comes back");
                        refused.push((e.reason, r, queued));
                    }
                }
                if !self.step() {
                    assert!(!self.s.has_work(), "idle with {} queued", self.s.queued());
                    match arrivals.front() {
                        Some((at, _)) => self.now = self.now.max(*at),
                        None => return refused,
                    }
                }
            }
        }

        fn check_all_done(&self) {
            for (key, r) in &self.reqs {
                assert_eq!(self.done.get(key), Some(&expected(r)), "request {key}");
            }
            assert_eq!(self.done.len(), self.reqs.len());
            assert_eq!((self.s.running(), self.s.queued(), self.s.kv_used()), (0, 0, 0));
        }
    }

    fn at_once(reqs: impl IntoIterator<Item = GenRequest<u64>>) -> Vec<(Nanos, GenRequest<u64>)> {
        reqs.into_iter().map(|r| (Nanos::ZERO, r)).collect()
    }

    #[test]
    fn limits_are_validated() {
        assert!(Scheduler::<u64>::new(SchedulerLimits::default()).is_ok());
        let zeroes = [limits(0, 8, 8, 8, 8), limits(8, 0, 8, 8, 8), limits(8, 8, 0, 8, 8), limits(8, 8, 8, 0, 8)];
        let names = ["max_running", "max_tokens_per_step", "max_prefill_chunk", "kv_tokens"];
        for (lim, name) in zeroes.into_iter().zip(names) {
            assert_eq!(Scheduler::<u64>::new(lim).err(), Some(LimitsError::Zero(name)));
        }
        assert_eq!(Scheduler::<u64>::new(limits(8, 8, 8, 8, 0)).err(), Some(LimitsError::Zero("max_queued")));
        let err = Scheduler::<u64>::new(limits(8, 8, 9, 8, 8)).err();
        assert_eq!(err, Some(LimitsError::ChunkExceedsStep { chunk: 9, step: 8 }));
        let big = u32::MAX as usize + 1;
        assert_eq!(Scheduler::<u64>::new(limits(big, 8, 8, 8, 8)).err(), Some(LimitsError::TooManySequences(big)));
        assert_eq!(Scheduler::<u64>::new(limits(8, 8, 8, big, 8)).err(), Some(LimitsError::KvTooLarge(big)));
    }

    #[test]
    fn refusals_hand_the_request_back() {
        let mut s = Scheduler::new(limits(4, 64, 16, 100, 2)).expect("limits");
        let refuse = |s: &mut Scheduler<u64>, r: GenRequest<u64>| {
            let e = s.handle_request(r.clone(), Nanos::ZERO).expect_err("refused");
            assert_eq!(e.request, r);
            e.reason
        };
        assert_eq!(refuse(&mut s, req(1, 0, 5)), Refusal::EmptyPrompt);
        assert_eq!(refuse(&mut s, req(2, 5, 0)), Refusal::NoNewTokens);
        assert_eq!(refuse(&mut s, req(3, 90, 11)), Refusal::TooLong { needs: 101, budget: 100 });
        assert_eq!(s.handle_request(req(4, 90, 10), Nanos::ZERO), Ok(()));
        assert_eq!(s.handle_request(req(5, 1, 1), Nanos::ZERO), Ok(()));
        assert_eq!(refuse(&mut s, req(6, 1, 1)), Refusal::QueueFull { max_queued: 2 });
        assert_eq!((s.queued(), s.running(), s.kv_used()), (2, 0, 0));
        assert_eq!(s.oldest_wait(Nanos::from_millis(3)), Some(Nanos::from_millis(3)));
    }

    #[test]
    fn every_request_finishes_once_with_the_engines_tokens() {
        let mut sim = Sim::new(limits(8, 64, 16, 2000, 100));
        let arrivals: Vec<_> = (0..60u64)
            .map(|k| (Nanos::from_micros(50 * k), req(k, 1 + (mix(k) % 120) as u32, 1 + (mix(k + 99) % 40) as u32)))
            .collect();
        assert!(sim.run(arrivals).is_empty());
        sim.check_all_done();
        let reasons: HashSet<_> = sim.done.values().map(|(_, reason)| *reason).collect();
        assert_eq!(reasons.len(), 2, "both EOS and max-token stops happened");
    }

    #[test]
    fn full_context_budget_makes_requests_wait_and_loses_none() {
        let mut sim = Sim::new(limits(8, 64, 32, 100, 16));
        let reqs = (0..10).map(|k| GenRequest { eos: None, ..req(k, 30, 20) });
        assert!(sim.run(at_once(reqs)).is_empty(), "none refused");
        sim.check_all_done();
        let widest = sim.plans.iter().map(|p| p.work.len()).max();
        assert_eq!(widest, Some(2), "two reservations of 50 fill the budget of 100");
    }

    #[test]
    fn long_prompt_prefills_in_chunks_while_others_decode() {
        let mut sim = Sim::new(limits(4, 32, 16, 1000, 8));
        sim.submit(GenRequest { eos: None, ..req(1, 4, 40) }).expect("queued");
        assert!(sim.step());
        sim.submit(GenRequest { eos: None, ..req(2, 100, 3) }).expect("queued");
        assert!(sim.run(Vec::new()).is_empty());
        sim.check_all_done();
        let chunks: Vec<&StepPlan> =
            sim.plans.iter().filter(|p| p.work.iter().any(|w| matches!(w, Work::Prefill { seq: 1, .. }))).collect();
        assert_eq!(chunks.len(), 7, "100 prompt tokens in chunks of 16");
        for plan in chunks {
            assert!(matches!(plan.work[0], Work::Decode { seq: 0, .. }), "decode goes on in {plan:?}");
        }
    }

    #[test]
    fn min_new_tokens_suppresses_an_early_eos() {
        let key = (0..).find(|&k| model(k, 4) == EOS).expect("a first token that is EOS");
        let mut sim = Sim::new(limits(4, 32, 16, 1000, 8));
        assert!(sim.run(at_once([req(key, 5, 10)])).is_empty());
        assert_eq!(sim.done[&key], (vec![EOS], FinishReason::Eos), "EOS stops and is included");
        let mut sim = Sim::new(limits(4, 32, 16, 1000, 8));
        assert!(sim.run(at_once([GenRequest { min_new_tokens: 3, ..req(key, 5, 10) }])).is_empty());
        sim.check_all_done();
        let (tokens, _) = &sim.done[&key];
        assert!(tokens.len() >= 3 && tokens[0] == EOS, "{tokens:?}");
    }

    #[test]
    fn max_new_tokens_one_yields_first_token_then_finished() {
        let mut s = Scheduler::new(limits(2, 16, 8, 100, 4)).expect("limits");
        s.handle_request(req(9, 3, 1), Nanos(5)).expect("queued");
        let plan = s.poll_step(Nanos(10)).expect("a step");
        assert_eq!(plan.work, vec![Work::Prefill { seq: 0, start: 0, len: 3, logits: true }]);
        assert_eq!(s.in_flight_since(), Some(Nanos(10)));
        s.handle_step_done(&[StepOutput { seq: 0, token: 42 }], Nanos(20)).expect("good outputs");
        assert_eq!((s.running(), s.kv_used(), s.in_flight_since()), (0, 0, None));
        let first = Event::FirstToken { seq: 0, token: 42, arrived: Nanos(5), at: Nanos(20) };
        assert_eq!(s.poll_event(), Some(first));
        assert_eq!(s.key(0), Some(&9));
        let (reason, t) = (FinishReason::MaxTokens, Nanos(20));
        let finished =
            Event::Finished { seq: 0, key: 9, tokens: vec![42], reason, arrived: Nanos(5), first_token_at: t, at: t };
        assert_eq!(s.poll_event(), Some(finished));
        assert_eq!((s.poll_event(), s.key(0)), (None, None));
        assert_eq!(s.poll_step(Nanos(30)), None);
    }

    #[test]
    fn step_done_rejects_bad_outputs_and_changes_nothing() {
        let mut s = Scheduler::new(limits(4, 16, 4, 100, 4)).expect("limits");
        let out = |seq, token| StepOutput { seq, token };
        assert_eq!(s.handle_step_done(&[], Nanos(1)), Err(StepError::NoStepInFlight));
        for (key, prompt) in [(1, 2), (2, 9), (3, 2)] {
            s.handle_request(req(key, prompt, 5), Nanos::ZERO).expect("queued");
        }
        let plan = s.poll_step(Nanos(1)).expect("a step");
        assert_eq!(plan.work.iter().map(Work::logits).collect::<Vec<_>>(), [true, false, true]);
        let bad: [(&[StepOutput], StepError); 4] = [
            (&[out(0, 1), out(2, 1), out(3, 1)], StepError::UnknownSeq(3)),
            (&[out(0, 1), out(1, 1), out(2, 1)], StepError::NoLogits(1)),
            (&[out(0, 1), out(0, 2), out(2, 1)], StepError::Duplicate(0)),
            (&[out(2, 1)], StepError::Missing(0)),
        ];
        for (outputs, err) in bad {
            assert_eq!(s.handle_step_done(outputs, Nanos(2)), Err(err));
            assert_eq!((s.running(), s.kv_used(), s.in_flight_since(), s.poll_event()), (3, 28, Some(Nanos(1)), None));
        }
        s.handle_step_done(&[out(2, 1), out(0, 1)], Nanos(2)).expect("good outputs");
        let next = s.poll_step(Nanos(3)).expect("a step");
        let want = [
            Work::Decode { seq: 0, token: 1, pos: 2 },
            Work::Decode { seq: 2, token: 1, pos: 2 },
            Work::Prefill { seq: 1, start: 4, len: 4, logits: false },
        ];
        assert_eq!(next.work, want);
    }

    #[test]
    fn step_failed_returns_running_frees_kv_and_keeps_the_queue() {
        let mut s = Scheduler::new(limits(2, 16, 4, 100, 4)).expect("limits");
        for key in 1..=3 {
            s.handle_request(req(key, 2, 5), Nanos::ZERO).expect("queued");
        }
        s.poll_step(Nanos(1)).expect("a step");
        s.handle_step_done(&[StepOutput { seq: 0, token: 1 }, StepOutput { seq: 1, token: 2 }], Nanos(2)).expect("ok");
        s.poll_step(Nanos(3)).expect("a step");
        let mut failed = s.handle_step_failed();
        failed.sort_unstable();
        assert_eq!(failed, [1, 2]);
        assert_eq!((s.running(), s.kv_used(), s.queued(), s.poll_event(), s.key(0)), (0, 0, 1, None, None));
        assert_eq!(s.handle_step_done(&[], Nanos(4)), Err(StepError::NoStepInFlight));
        let plan = s.poll_step(Nanos(5)).expect("the queued request runs");
        assert!(matches!(plan.work[..], [Work::Prefill { start: 0, len: 2, .. }]));
        assert_eq!(s.kv_used(), 7);
    }

    #[test]
    fn drain_returns_queued_and_running() {
        let mut s = Scheduler::new(limits(2, 16, 4, 100, 8)).expect("limits");
        for key in 1..=5 {
            s.handle_request(req(key, 6, 5), Nanos::ZERO).expect("queued");
        }
        s.poll_step(Nanos(1)).expect("a step");
        assert_eq!((s.running(), s.queued()), (2, 3));
        assert_eq!(s.drain(), [1, 2, 3, 4, 5]);
        assert_eq!((s.running(), s.queued(), s.kv_used(), s.has_work()), (0, 0, 0, false));
        assert_eq!((s.poll_step(Nanos(2)), s.poll_event()), (None, None));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn invariants_hold_over_random_mixes(
            (max_running, step, chunk_pct, kv, max_queued) in (1usize..8, 1usize..48, 1usize..=100, 1usize..300, 1usize..12),
            mix in proptest::collection::vec((0u32..80, 0u32..24, 0u32..30, any::<bool>(), 0u64..400), 0..40),
        ) {
            let mut sim = Sim::new(limits(max_running, step, (step * chunk_pct / 100).max(1), kv, max_queued));
            let mut at = 0;
            let arrivals: Vec<_> = mix.iter().enumerate().map(|(k, &(prompt_len, max_new_tokens, min_new_tokens, eos, gap_us))| {
                at += gap_us * 1000;
                (Nanos(at), GenRequest { key: k as u64, prompt_len, max_new_tokens, min_new_tokens, eos: eos.then_some(EOS) })
            }).collect();
            let refused = sim.run(arrivals);
            for (reason, r, queued) in &refused {
                let want = if r.prompt_len == 0 {
                    Refusal::EmptyPrompt
                } else if r.max_new_tokens == 0 {
                    Refusal::NoNewTokens
                } else if r.kv_need() > kv {
                    Refusal::TooLong { needs: r.kv_need(), budget: kv }
                } else {
                    prop_assert_eq!(*queued, max_queued);
                    Refusal::QueueFull { max_queued }
                };
                prop_assert_eq!(reason, &want);
            }
            prop_assert_eq!(sim.reqs.len() + refused.len(), mix.len());
            sim.check_all_done();
        }
    }
}
