//! The accelerator's generative (LLM) sections: `[generation]` (the continuous-batching
//! scheduler's limits, per worker) and `[backend.synthetic.tokens]` (the synthetic engine's step
//! time model).

use serde::{Deserialize, Serialize};

use super::{ConfigError, check};

/// `[generation]`: the limits of each worker's continuous-batching scheduler (one engine context
/// per worker; see `qdl_engine::generate::scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// Sequences running at once (prefilling or decoding). Default 64.
    pub max_running: u32,
    /// Tokens in one engine step (one decode token per running sequence plus prefill chunks).
    /// Default 512.
    pub max_tokens_per_step: u32,
    /// The largest prefill chunk of one sequence in one step, tokens. Default 256.
    pub max_prefill_chunk: u32,
    /// The context (KV cache) budget across the running sequences, tokens; a sequence reserves
    /// its prompt plus its maximum output at admission. Default 131072.
    pub kv_tokens: u32,
    /// Requests waiting for admission; beyond this a request is answered "overloaded". Default 4096.
    pub max_queued: u32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_running: 64,
            max_tokens_per_step: 512,
            max_prefill_chunk: 256,
            kv_tokens: 131_072,
            max_queued: 4096,
        }
    }
}

impl GenerationConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check((1..=4096).contains(&self.max_running), "generation.max_running", "must be between 1 and 4096")?;
        check(
            (1..=1 << 20).contains(&self.max_tokens_per_step),
            "generation.max_tokens_per_step",
            "must be between 1 and 1048576",
        )?;
        check(
            (1..=self.max_tokens_per_step).contains(&self.max_prefill_chunk),
            "generation.max_prefill_chunk",
            "must be between 1 and generation.max_tokens_per_step",
        )?;
        check(self.kv_tokens >= 2, "generation.kv_tokens", "must be at least 2")?;
        check((1..=1 << 20).contains(&self.max_queued), "generation.max_queued", "must be between 1 and 1048576")
    }
}

/// `[backend.synthetic.tokens]`: the synthetic generative engine's step time,
/// `fixed_us + per_prefill_token_us × prefill tokens + per_sequence_us × sequences in the step`.
///
/// The default stands for one H100 running llama3.1-8b: Red Hat's MLPerf Inference v5.1
/// submission (FP8, vLLM, one H100) reached 5,777 tokens/s Offline; with 64 sequences decoding,
/// 64 / (8,000 + 64 × 50 µs) ≈ 5,700 tokens/s, in the same range. For eight H200 run eight workers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenModel {
    /// Cost of any step, µs. Default 8000.
    pub fixed_us: f64,
    /// Cost per prompt token prefilled in the step, µs. Default 20.
    pub per_prefill_token_us: f64,
    /// Cost per sequence in the step (decoding or prefilling), µs. Default 50.
    pub per_sequence_us: f64,
}

impl Default for TokenModel {
    fn default() -> Self {
        TokenModel { fixed_us: 8000.0, per_prefill_token_us: 20.0, per_sequence_us: 50.0 }
    }
}

impl TokenModel {
    /// The modelled time of a step with `prefill_tokens` prompt tokens and `sequences`
    /// sequences, ns.
    pub fn step_ns(&self, prefill_tokens: usize, sequences: usize) -> u64 {
        let us =
            self.fixed_us + self.per_prefill_token_us * prefill_tokens as f64 + self.per_sequence_us * sequences as f64;
        (us * 1000.0).max(0.0) as u64
    }

    pub(super) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let ok = |v: f64| v.is_finite() && (0.0..=10_000_000.0).contains(&v);
        for (name, v) in [
            ("fixed_us", self.fixed_us),
            ("per_prefill_token_us", self.per_prefill_token_us),
            ("per_sequence_us", self.per_sequence_us),
        ] {
            check(ok(v), &format!("{field}.{name}"), "must be between 0 and 10000000 µs")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{acc, field_of};
    use super::*;

    #[test]
    fn the_step_time_adds_up() {
        let m = TokenModel { fixed_us: 100.0, per_prefill_token_us: 2.0, per_sequence_us: 10.0 };
        assert_eq!(m.step_ns(50, 3), (100 + 100 + 30) * 1000);
        assert_eq!(TokenModel::default().step_ns(0, 64), (8000 + 64 * 50) * 1000);
    }

    #[test]
    fn invalid_generation_values_name_their_field() {
        let cases = [
            ("[generation]\nmax_running = 0", "generation.max_running"),
            ("[generation]\nmax_tokens_per_step = 0", "generation.max_tokens_per_step"),
            ("[generation]\nmax_tokens_per_step = 8\nmax_prefill_chunk = 9", "generation.max_prefill_chunk"),
            ("[generation]\nkv_tokens = 1", "generation.kv_tokens"),
            ("[generation]\nmax_queued = 0", "generation.max_queued"),
            ("[backend.synthetic.tokens]\nfixed_us = -1.0", "backend.synthetic.tokens.fixed_us"),
            ("[backend.synthetic.tokens]\nper_sequence_us = nan", "backend.synthetic.tokens.per_sequence_us"),
        ];
        for (toml, field) in cases {
            assert_eq!(field_of(acc(toml).unwrap_err()), field, "{toml}");
        }
        assert!(acc("[generation]\nmax_running = 8\n[backend.synthetic.tokens]\nfixed_us = 5.0").is_ok());
    }
}
