//! What a generative (LLM) workload adds to a [`super::WorkloadSpec`]: its [`Generation`] limits,
//! the documented length distribution of generated prompts, and the synthetic engine's answer,
//! [`reference_tokens`].

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// The largest `max_output_tokens` a generative workload may declare.
pub const MAX_OUTPUT_TOKENS: u32 = 32_768;
/// The largest `max_input_tokens` a generative workload may declare (a 4 MiB input slot).
pub const MAX_INPUT_TOKENS: u32 = 1 << 20;
/// The smallest vocabulary a generative workload may declare.
pub const MIN_VOCAB: u32 = 256;
/// The largest vocabulary a generative workload may declare.
pub const MAX_VOCAB: u32 = 1 << 24;

/// The name of a generative workload's single input tensor.
pub const INPUT_IDS: &str = "input_ids";

fn one() -> u32 {
    1
}

/// How generated prompts' true lengths are distributed (tokens, BOS included).
///
/// With `span = max − min + 1`, a length is `min + min(r₁ % span, …, r_skew % span)` for `skew`
/// uniform 64-bit draws `rᵢ`: `skew = 1` is uniform over `[min, max]`; larger values pile lengths
/// up near `min` with a long tail to `max`, as real prompt sets do (the mean is about
/// `min + span / (skew + 1)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LengthDistribution {
    /// Shortest prompt, tokens (at least 1).
    pub min: u32,
    /// Longest prompt, tokens (at most the workload's `max_input_tokens`).
    pub max: u32,
    /// Number of uniform draws whose minimum is taken, 1 to 8 (1: uniform). Default 1.
    #[serde(default = "one")]
    pub skew: u32,
}

impl LengthDistribution {
    /// Draws one length, taking the uniform 64-bit draws `rᵢ` from `next` (see the type's docs).
    pub fn draw(&self, mut next: impl FnMut() -> u64) -> u32 {
        let span = self.max.saturating_sub(self.min) as u64 + 1;
        let offset = (0..self.skew.max(1)).map(|_| next() % span).min().unwrap_or(0);
        self.min.saturating_add(offset as u32)
    }
}

/// How a generative workload generates: its prompt and answer limits and special tokens.
///
/// Token counts are in tokens; ids are int32 in `0..vocab_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Generation {
    /// The longest prompt, tokens: the input slot holds this many int32 ids.
    pub max_input_tokens: u32,
    /// The longest answer, tokens, EOS included (MLPerf's `max_new_tokens`), 1 to
    /// [`MAX_OUTPUT_TOKENS`].
    pub max_output_tokens: u32,
    /// The shortest answer the model is held to, tokens (MLPerf's `min_new_tokens`). Default 1.
    #[serde(default = "one")]
    pub min_output_tokens: u32,
    /// The end-of-sequence id: generation stops after it.
    pub eos_token: i32,
    /// The beginning-of-sequence id generated prompts start with (none when absent).
    #[serde(default)]
    pub bos_token: Option<i32>,
    /// The vocabulary size: ids are `0..vocab_size`, [`MIN_VOCAB`] to [`MAX_VOCAB`].
    pub vocab_size: u32,
    /// Generated prompts' lengths; absent: [`Generation::input_lengths`]' default.
    #[serde(default)]
    pub input_lengths: Option<LengthDistribution>,
}

impl Generation {
    /// The distribution generated prompts' lengths follow: `input_lengths`, or when absent
    /// `min = 1, max = max_input_tokens, skew = 2`.
    pub fn input_lengths(&self) -> LengthDistribution {
        self.input_lengths.unwrap_or(LengthDistribution { min: 1, max: self.max_input_tokens.max(1), skew: 2 })
    }

    /// The response slot: `4 × max_output_tokens` bytes.
    pub fn output_bytes(&self) -> u32 {
        self.max_output_tokens.saturating_mul(4)
    }
}

/// The SplitMix64 output function (`z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
/// z *= 0x94D049BB133111EB; z ^= z >> 31`).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Writes the reference answer of a generative workload to the prompt `input` (its true-length
/// int32 ids, as bytes) into `out` (cleared first).
///
/// This is the documented, deterministic function the synthetic engine generates and
/// `check-accuracy` recomputes. With `h = xxh3_64(input)` (XXH3, 64-bit, seed 0), `max =
/// max_output_tokens` and `lo = min(max(2, min_output_tokens), max)`:
/// - the length: `n = max` when `h % 4 == 0` (a quarter of the answers run to the limit, as
///   answers cut off at `max_new_tokens` do), else `n = lo + (h >> 2) % (max − lo + 1)`;
/// - token `i < n`: with `m = mix64(h + (i+1) × 0x9E3779B97F4A7C15)` (SplitMix64's output
///   function, wrapping arithmetic), `t = m % (vocab_size − 1)`, then `t + 1` if `t >= eos`: an id
///   in `0..vocab_size` that is never EOS;
/// - except the last token, which is EOS when `n < max` (the answer stopped on EOS); an answer of
///   `max` tokens has none.
///
/// Any changed input byte changes the answer with overwhelming probability.
pub fn reference_tokens(input: &[u8], g: &Generation, out: &mut Vec<i32>) {
    out.clear();
    let max = g.max_output_tokens;
    if max == 0 {
        return;
    }
    let lo = g.min_output_tokens.max(2).min(max);
    let h = xxh3_64(input);
    let n = if h.is_multiple_of(4) { max } else { lo + ((h >> 2) % (max - lo + 1) as u64) as u32 };
    let span = (g.vocab_size as u64).saturating_sub(1).max(1);
    let eos = g.eos_token as i64;
    out.reserve(n as usize);
    for i in 0..n as u64 {
        let t = (mix64(h.wrapping_add((i + 1).wrapping_mul(GOLDEN))) % span) as i64;
        out.push(if t >= eos { t + 1 } else { t } as i32);
    }
    if n < max
        && let Some(last) = out.last_mut()
    {
        *last = g.eos_token;
    }
}

/// ROUGE-L F-measure of two token sequences: 2PR/(P+R) with P and R the longest common
/// subsequence's share of each (1 for two empty sequences). How `check-accuracy` and the GPU
/// check compare a model's answers with its reference answers.
pub fn rouge_l(a: &[i32], b: &[i32]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    for &x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        prev = cur;
    }
    let lcs = prev[b.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, r) = (lcs / a.len() as f64, lcs / b.len() as f64);
    2.0 * p * r / (p + r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn gen_of(spec: &WorkloadSpec) -> Generation {
        spec.generation.unwrap()
    }

    #[test]
    fn generative_builtins_are_valid_and_sized() {
        for (name, max_in, max_out, eos, vocab) in [
            ("llama3.1-8b", 8000, 128, 128_009, 128_256),
            ("llama2-70b", 1024, 1024, 2, 32_000),
            ("smollm2-135m", 512, 64, 2, 49_152),
        ] {
            let spec = WorkloadSpec::builtin(name).unwrap();
            spec.validate().unwrap();
            assert!(spec.is_generative());
            let g = gen_of(&spec);
            assert_eq!(
                (g.max_input_tokens, g.max_output_tokens, g.eos_token, g.vocab_size),
                (max_in, max_out, eos, vocab)
            );
            assert_eq!(spec.input_bytes(), 4 * max_in as usize);
            assert_eq!(spec.output_bytes, 4 * max_out);
            assert_eq!(spec.min_input_bytes(), 4);
            assert_eq!(spec.output_kind, OutputKind::Tokens);
        }
        assert!(WorkloadSpec::BUILTIN.iter().all(|n| WorkloadSpec::builtin(n).is_some_and(|s| s.name == *n)));
        assert!(!WorkloadSpec::bert().is_generative());
        assert_eq!(WorkloadSpec::bert().min_input_bytes(), WorkloadSpec::bert().input_bytes());
    }

    #[test]
    fn loadgen_model_names() {
        assert_eq!(WorkloadSpec::llama3_1_8b().loadgen_model(), "llama3_1-8b");
        assert_eq!(WorkloadSpec::llama2_70b().loadgen_model(), "llama2-70b");
        assert_eq!(WorkloadSpec::bert().loadgen_model(), "bert");
        let mut edge = WorkloadSpec::llama3_1_8b();
        edge.name = "llama3.1-8b-edge".into();
        assert_eq!(edge.loadgen_model(), "llama3_1-8b-edge");
    }

    #[test]
    fn input_lengths_are_checked() {
        let spec = WorkloadSpec::smollm2_135m();
        assert_eq!(spec.check_input_len(4), Ok(()));
        assert_eq!(spec.check_input_len(2048), Ok(()));
        assert_eq!(spec.check_input_len(0), Err(InputLengthError::Range { min: 4, max: 2048, got: 0 }));
        assert_eq!(spec.check_input_len(2052), Err(InputLengthError::Range { min: 4, max: 2048, got: 2052 }));
        assert_eq!(spec.check_input_len(10), Err(InputLengthError::Unaligned(10)));
        let bert = WorkloadSpec::bert();
        assert_eq!(bert.check_input_len(4608), Ok(()));
        assert_eq!(bert.check_input_len(4604), Err(InputLengthError::Size { expected: 4608, got: 4604 }));
    }

    #[test]
    fn validate_rejects_inconsistent_generative_specs() {
        let base = WorkloadSpec::llama2_70b();
        let with = |f: &dyn Fn(&mut Generation)| {
            let mut g = gen_of(&base);
            f(&mut g);
            WorkloadSpec::generative("x", g).validate()
        };
        assert_eq!(with(&|g| g.max_output_tokens = 0), Err(WorkloadError::OutputTokens(0)));
        assert_eq!(with(&|g| g.max_output_tokens = 40_000), Err(WorkloadError::OutputTokens(40_000)));
        assert_eq!(with(&|g| g.min_output_tokens = 2000), Err(WorkloadError::MinOutputTokens { min: 2000, max: 1024 }));
        assert_eq!(with(&|g| g.max_input_tokens = 0), Err(WorkloadError::TensorShape(INPUT_IDS.into())));
        assert_eq!(with(&|g| g.max_input_tokens = 2 << 20), Err(WorkloadError::InputTokens(2 << 20)));
        assert_eq!(with(&|g| g.vocab_size = 10), Err(WorkloadError::VocabSize(10)));
        assert_eq!(
            with(&|g| g.eos_token = 32_000),
            Err(WorkloadError::SpecialToken { which: "eos", id: 32_000, vocab: 32_000 })
        );
        assert_eq!(
            with(&|g| g.bos_token = Some(-1)),
            Err(WorkloadError::SpecialToken { which: "bos", id: -1, vocab: 32_000 })
        );
        assert_eq!(with(&|g| g.bos_token = Some(2)), Err(WorkloadError::BosIsEos(2)));
        let bad = LengthDistribution { min: 10, max: 2000, skew: 1 };
        assert_eq!(
            with(&|g| g.input_lengths = Some(bad)),
            Err(WorkloadError::InputLengths { min: 10, max: 2000, skew: 1 })
        );
        let zero = LengthDistribution { min: 0, max: 10, skew: 1 };
        assert!(matches!(with(&|g| g.input_lengths = Some(zero)), Err(WorkloadError::InputLengths { .. })));

        let mut w = base.clone();
        w.generation = None;
        assert_eq!(w.validate(), Err(WorkloadError::TokensWithoutGeneration));
        let mut w = WorkloadSpec::bert();
        w.generation = base.generation;
        assert_eq!(w.validate(), Err(WorkloadError::GenerationWithoutTokens(OutputKind::Span)));
        let mut w = base.clone();
        w.inputs[0].shape = vec![512];
        assert_eq!(w.validate(), Err(WorkloadError::GenerativeInput { max_input_tokens: 1024 }));
        let mut w = base.clone();
        w.inputs[0].dtype = DType::I64;
        assert_eq!(w.validate(), Err(WorkloadError::GenerativeInput { max_input_tokens: 1024 }));
        let mut w = base.clone();
        w.output_bytes = 1024;
        assert_eq!(
            w.validate(),
            Err(WorkloadError::OutputBytes { kind: OutputKind::Tokens, expected: 4096, declared: 1024 })
        );
        let mut w = base;
        w.output_bytes = 0;
        assert_eq!(w.complete().output_bytes, 4096);
    }

    #[test]
    fn reference_tokens_are_a_documented_function() {
        let g = gen_of(&WorkloadSpec::llama3_1_8b());
        let input: Vec<u8> = [128_000i32, 500, 600, 700].iter().flat_map(|t| t.to_le_bytes()).collect();
        let mut a = Vec::new();
        reference_tokens(&input, &g, &mut a);
        let h = xxh3_64(&input);
        let n = if h.is_multiple_of(4) { 128 } else { 2 + ((h >> 2) % 127) as usize };
        assert_eq!(a.len(), n);
        let t0 = (mix64(h.wrapping_add(GOLDEN)) % (128_256 - 1)) as i32;
        assert_eq!(a[0], if t0 >= 128_009 { t0 + 1 } else { t0 });
        let mut b = vec![7];
        reference_tokens(&input, &g, &mut b);
        assert_eq!(a, b, "deterministic, and `out` is cleared first");
        let mut bytes = Vec::new();
        WorkloadSpec::llama3_1_8b().reference_response(&input, &mut bytes);
        assert_eq!(bytes, a.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>());
    }

    #[test]
    fn reference_tokens_vary_stay_in_bounds_and_end_with_eos() {
        for spec in [WorkloadSpec::llama3_1_8b(), WorkloadSpec::llama2_70b(), WorkloadSpec::smollm2_135m()] {
            let g = gen_of(&spec);
            let mut lens = std::collections::BTreeSet::new();
            let (mut capped, mut out) = (0, Vec::new());
            for i in 0u32..400 {
                let input: Vec<u8> = [1i32, 1000 + i as i32, 7].iter().flat_map(|t| t.to_le_bytes()).collect();
                reference_tokens(&input, &g, &mut out);
                let n = out.len() as u32;
                assert!((2..=g.max_output_tokens).contains(&n), "{} tokens", n);
                lens.insert(n);
                let (last, body) = out.split_last().unwrap();
                assert!(body.iter().all(|&t| t != g.eos_token && (0..g.vocab_size as i32).contains(&t)));
                if n < g.max_output_tokens {
                    assert_eq!(*last, g.eos_token);
                } else {
                    capped += 1;
                    assert_ne!(*last, g.eos_token);
                }
            }
            assert!(lens.len() > 20, "{}: lengths vary: {lens:?}", spec.name);
            assert!((60..=150).contains(&capped), "{}: about a quarter run to the limit: {capped}", spec.name);
        }
    }

    #[test]
    fn reference_tokens_change_with_any_input_byte() {
        let g = gen_of(&WorkloadSpec::llama2_70b());
        let input: Vec<u8> = (0..64i32).flat_map(|t| (t + 100).to_le_bytes()).collect();
        let (mut want, mut got) = (Vec::new(), Vec::new());
        reference_tokens(&input, &g, &mut want);
        for at in 0..input.len() {
            let mut flipped = input.clone();
            flipped[at] ^= 1;
            reference_tokens(&flipped, &g, &mut got);
            assert_ne!(got, want, "byte {at}");
        }
        reference_tokens(&input[..input.len() - 4], &g, &mut got);
        assert_ne!(got, want, "a shorter prompt");
    }

    #[test]
    fn short_limits_and_length_draws() {
        let mut g = gen_of(&WorkloadSpec::smollm2_135m());
        g.max_output_tokens = 1;
        let mut out = Vec::new();
        reference_tokens(b"abcd", &g, &mut out);
        assert_eq!(out.len(), 1);
        assert_ne!(out[0], g.eos_token, "a 1-token answer runs to the limit");
        let d = LengthDistribution { min: 5, max: 9, skew: 2 };
        let mut draws = [3u64, 8].into_iter();
        assert_eq!(d.draw(|| draws.next().unwrap_or(0)), 5 + 3);
        let uniform = LengthDistribution { min: 7, max: 7, skew: 1 };
        assert_eq!(uniform.draw(|| u64::MAX), 7);
    }

    #[test]
    fn generative_specs_serialize() {
        let spec = WorkloadSpec::llama3_1_8b();
        let bytes = postcard::to_allocvec(&spec).unwrap();
        assert_eq!(postcard::from_bytes::<WorkloadSpec>(&bytes).unwrap(), spec);
        let bert = postcard::to_allocvec(&WorkloadSpec::bert()).unwrap();
        assert_eq!(bert.last(), Some(&0), "no generation: one trailing None byte");
        // A spec in a config file: defaults for min_output_tokens, bos_token, input_lengths' skew.
        let text = "name = \"tiny-lm\"\noutput_kind = \"tokens\"\n\
                    inputs = [{ name = \"input_ids\", dtype = \"i32\", shape = [256] }]\n\
                    [generation]\nmax_input_tokens = 256\nmax_output_tokens = 32\neos_token = 2\n\
                    vocab_size = 1000\ninput_lengths = { min = 4, max = 200 }\n";
        let spec = toml::from_str::<WorkloadSpec>(text).unwrap().complete();
        spec.validate().unwrap();
        let g = spec.generation.unwrap();
        assert_eq!((spec.output_bytes, g.min_output_tokens, g.bos_token), (128, 1, None));
        assert_eq!(g.input_lengths(), LengthDistribution { min: 4, max: 200, skew: 1 });
        let mut g = g;
        g.input_lengths = None;
        assert_eq!(g.input_lengths(), LengthDistribution { min: 1, max: 256, skew: 2 });
    }

    #[test]
    fn rouge_l_is_the_lcs_f_measure() {
        assert_eq!(rouge_l(&[1, 2, 3, 4], &[1, 2, 3, 4]), 1.0);
        assert_eq!(rouge_l(&[1, 2], &[3, 4]), 0.0);
        assert_eq!(rouge_l(&[], &[]), 1.0);
        assert_eq!(rouge_l(&[], &[1]), 0.0);
        // LCS 2 of 4 and of 2: P = 0.5, R = 1.
        assert!((rouge_l(&[1, 2, 3, 4], &[1, 3]) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rouge_l(&[1, 3], &[1, 2, 3, 4]), rouge_l(&[1, 2, 3, 4], &[1, 3]), "symmetric");
    }
}
