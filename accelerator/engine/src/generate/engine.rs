//! The engine a generative worker steps: [`TokenEngine`], and the synthetic one,
//! [`SyntheticTokens`].
//!
//! An engine holds one context with a sequence per request (the scheduler's [`SeqId`]). The
//! worker tells it when a sequence starts ([`TokenEngine::begin`], with the prompt) and ends
//! ([`TokenEngine::end`]), and runs each [`StepPlan`] with [`TokenEngine::step`], which samples
//! one token for every item with logits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use qdl_shared::config::TokenModel;
use qdl_shared::workload::{Generation, reference_tokens};

use super::scheduler::{SeqId, StepOutput, StepPlan, Work};
use crate::backend::BackendError;

/// A generative engine; see the module docs.
pub trait TokenEngine: Send {
    /// Its name, for logs ("synthetic", "llama.cpp").
    fn name(&self) -> &'static str;

    /// Sequence `seq` starts with `prompt` (int32 token ids); its prefill chunks follow.
    fn begin(&mut self, seq: SeqId, prompt: &[i32], generation: &Generation) -> Result<(), BackendError>;

    /// Runs one step; pushes one [`StepOutput`] per item with logits, in the plan's order.
    fn step(&mut self, plan: &StepPlan, out: &mut Vec<StepOutput>) -> Result<(), BackendError>;

    /// Sequence `seq` ended (finished or failed): its context is freed.
    fn end(&mut self, seq: SeqId);
}

/// The synthetic engine: each step takes the [`TokenModel`]'s time (the worker thread sleeps,
/// using no CPU), and the tokens are the workload's reference answer
/// ([`qdl_shared::workload::reference_tokens`]), so `check-accuracy` verifies every token.
pub struct SyntheticTokens {
    model: TokenModel,
    /// Per running sequence: its prompt length and reference answer, computed at `begin`.
    answers: HashMap<SeqId, (u32, Vec<i32>)>,
}

impl SyntheticTokens {
    /// An engine with this step time model.
    pub fn new(model: TokenModel) -> SyntheticTokens {
        SyntheticTokens { model, answers: HashMap::new() }
    }
}

impl TokenEngine for SyntheticTokens {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn begin(&mut self, seq: SeqId, prompt: &[i32], generation: &Generation) -> Result<(), BackendError> {
        let bytes: Vec<u8> = prompt.iter().flat_map(|t| t.to_le_bytes()).collect();
        let mut answer = Vec::new();
        reference_tokens(&bytes, generation, &mut answer);
        if answer.is_empty() {
            return Err(BackendError::Failed("the reference answer is empty".into()));
        }
        self.answers.insert(seq, (prompt.len() as u32, answer));
        Ok(())
    }

    fn step(&mut self, plan: &StepPlan, out: &mut Vec<StepOutput>) -> Result<(), BackendError> {
        let started = Instant::now();
        let mut prefill = 0usize;
        for w in &plan.work {
            let (prompt_len, answer) = self
                .answers
                .get(&w.seq())
                .ok_or_else(|| BackendError::Failed(format!("sequence {} was scheduled but never began", w.seq())))?;
            // Generated token n (0-based) comes from the prompt's last chunk (n = 0) or from
            // feeding token n-1 at position prompt_len + n - 1.
            let n = match *w {
                Work::Prefill { len, logits, .. } => {
                    prefill += len as usize;
                    if !logits {
                        continue;
                    }
                    0
                }
                Work::Decode { pos, .. } => (pos + 1).saturating_sub(*prompt_len) as usize,
            };
            let token = *answer.get(n).unwrap_or_else(|| answer.last().expect("not empty"));
            out.push(StepOutput { seq: w.seq(), token });
        }
        let deadline = started + Duration::from_nanos(self.model.step_ns(prefill, plan.work.len()));
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
        Ok(())
    }

    fn end(&mut self, seq: SeqId) {
        self.answers.remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation() -> Generation {
        qdl_shared::workload::WorkloadSpec::builtin("llama3.1-8b").and_then(|w| w.generation).expect("built in")
    }

    #[test]
    fn it_answers_the_reference_tokens_in_order_and_takes_the_modelled_time() {
        let g = generation();
        let mut e =
            SyntheticTokens::new(TokenModel { fixed_us: 2000.0, per_prefill_token_us: 0.0, per_sequence_us: 0.0 });
        let prompt: Vec<i32> = (100..140).collect();
        e.begin(3, &prompt, &g).unwrap();
        let bytes: Vec<u8> = prompt.iter().flat_map(|t| t.to_le_bytes()).collect();
        let mut want = Vec::new();
        reference_tokens(&bytes, &g, &mut want);
        let mut got = Vec::new();
        let t = Instant::now();
        let plan = StepPlan { work: vec![Work::Prefill { seq: 3, start: 0, len: 40, logits: true }] };
        e.step(&plan, &mut got).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(2), "{:?}", t.elapsed());
        for n in 1..want.len() {
            let plan = StepPlan { work: vec![Work::Decode { seq: 3, token: want[n - 1], pos: 40 + n as u32 - 1 }] };
            e.step(&plan, &mut got).unwrap();
        }
        assert_eq!(got.iter().map(|o| o.token).collect::<Vec<_>>(), want);
        e.end(3);
        let plan = StepPlan { work: vec![Work::Decode { seq: 3, token: 1, pos: 41 }] };
        assert!(e.step(&plan, &mut got).is_err(), "an ended sequence is an error, not a panic");
    }
}
