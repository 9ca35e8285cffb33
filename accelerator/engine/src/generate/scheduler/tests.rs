//! The scheduler's tests: a fake engine on a virtual clock checks its invariants every step.

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
    let mut failed: Vec<_> = s.handle_step_failed().into_iter().map(|(_, key)| key).collect();
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
