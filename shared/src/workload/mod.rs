//! Workloads: what one sample's input tensors look like, what its output is, and the reference
//! output the `echo` and `synthetic` backends produce so every response can be checked end to end.
//!
//! A sample's input is its tensors' raw little-endian bytes, concatenated in declaration order
//! (no padding): that is what travels in a request frame and sits in a slot.
//!
//! # Generative (LLM) workloads
//! A generative workload ([`WorkloadSpec::is_generative`], `output_kind = "tokens"` with a
//! [`Generation`]) has one input tensor, `input_ids`: int32 `[max_input_tokens]`. The slot is sized
//! for the longest prompt, but a request carries the prompt at its true length (a whole number of
//! int32 ids, at least one: [`WorkloadSpec::check_input_len`]). The answer is up to
//! `max_output_tokens` int32 ids, little-endian; their count is the output length (what LoadGen is
//! told as the token count), EOS included when the model stopped on it. The synthetic engine's
//! answer is [`reference_tokens`].
//!
//! # Layout
//! - this module: [`WorkloadSpec`] and its tensors, validation, the built-in workloads, and
//!   [`reference_output`] for fixed-shape workloads;
//! - [`generation`]: what a generative workload adds ([`Generation`], the prompt-length
//!   distribution) and the synthetic engine's answer, [`reference_tokens`].

mod generation;

pub use generation::*;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Element types of tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 => 8,
        }
    }

    /// The numpy `descr` for little-endian data ("<i4", "|i1", ...).
    pub fn numpy_descr(self) -> &'static str {
        match self {
            DType::I8 => "|i1",
            DType::U8 => "|u1",
            DType::I32 => "<i4",
            DType::I64 => "<i8",
            DType::F16 => "<f2",
            DType::F32 => "<f4",
        }
    }
}

/// One input tensor of a sample (shape without the batch dimension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The tensor's name (e.g. "input_ids").
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Per-sample shape.
    pub shape: Vec<u32>,
}

impl TensorSpec {
    /// Bytes of one sample's tensor (saturating: [`WorkloadSpec::validate`] refuses sizes above
    /// 4 GiB before anything relies on them).
    pub fn bytes(&self) -> usize {
        self.shape.iter().fold(self.dtype.size(), |acc, &d| acc.saturating_mul(d as usize))
    }
}

/// What one sample's output bytes mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// A u32 class id in 0..1000 (ResNet-50's ArgMax).
    ClassId,
    /// Two u32 token positions `start <= end < 384` (BERT's answer span).
    Span,
    /// `bytes` bytes of digest (any other workload).
    Digest,
    /// The model's output tensors (the workload's `outputs`), each sample's concatenated in
    /// declaration order as raw little-endian elements: what a real model (the `onnx` backend)
    /// answers. There is no reference function; `check-accuracy --reference` compares them with
    /// outputs computed elsewhere.
    Tensors,
    /// Generated token ids (generative workloads, which need a [`Generation`]): up to
    /// `max_output_tokens` int32 ids, little-endian; the response's length is the output length.
    /// `output_bytes` is the response slot, `4 × max_output_tokens`. The synthetic engine answers
    /// [`reference_tokens`].
    Tokens,
}

/// A workload: named input tensors and a fixed-size output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// The workload's name; also the model name LoadGen's config files use ("resnet50", "bert").
    /// In `[workload.spec]` it may be left out: `workload.name` is used.
    #[serde(default)]
    pub name: String,
    /// Input tensors, in wire order.
    pub inputs: Vec<TensorSpec>,
    /// What the output means.
    pub output_kind: OutputKind,
    /// Output bytes per sample. With `output_kind = "tensors"` it may be left out (0): it is the
    /// sum of the `outputs`' sizes.
    #[serde(default)]
    pub output_bytes: u32,
    /// The model outputs a sample's answer is made of (`output_kind = "tensors"` only), per-sample
    /// shapes (without the batch dimension), in the order they are concatenated. (Always
    /// serialized: the wire encoding is not self-describing.)
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// How a generative workload generates (`output_kind = "tokens"` only, and required there).
    /// Kept last: the wire encoding is not self-describing, so fields are only ever appended.
    #[serde(default)]
    pub generation: Option<Generation>,
}

/// BERT's sequence length.
pub const BERT_SEQ_LEN: u32 = 384;

impl WorkloadSpec {
    /// ResNet-50: one 3x224x224 int8 image (150,528 bytes) in, a 4-byte class id out.
    pub fn resnet50() -> WorkloadSpec {
        WorkloadSpec {
            name: "resnet50".into(),
            inputs: vec![TensorSpec { name: "input".into(), dtype: DType::I8, shape: vec![3, 224, 224] }],
            output_kind: OutputKind::ClassId,
            output_bytes: 4,
            outputs: Vec::new(),
            generation: None,
        }
    }

    /// BERT (SQuAD, seq 384): input_ids, input_mask, segment_ids as int32 (4,608 bytes) in, an
    /// 8-byte answer span out.
    pub fn bert() -> WorkloadSpec {
        let t = |name: &str| TensorSpec { name: name.into(), dtype: DType::I32, shape: vec![BERT_SEQ_LEN] };
        WorkloadSpec {
            name: "bert".into(),
            inputs: vec![t("input_ids"), t("input_mask"), t("segment_ids")],
            output_kind: OutputKind::Span,
            output_bytes: 8,
            outputs: Vec::new(),
            generation: None,
        }
    }

    /// A generative workload named `name`: one int32 `input_ids` tensor of
    /// `[g.max_input_tokens]`, `tokens` output of `4 × g.max_output_tokens` bytes.
    pub fn generative(name: &str, g: Generation) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            inputs: vec![TensorSpec { name: INPUT_IDS.into(), dtype: DType::I32, shape: vec![g.max_input_tokens] }],
            output_kind: OutputKind::Tokens,
            output_bytes: g.output_bytes(),
            outputs: Vec::new(),
            generation: Some(g),
        }
    }

    /// Llama-3.1-8B-Instruct on CNN-DailyMail summarization, as MLPerf's reference runs it
    /// (mlcommons/inference `language/llama3.1-8b/`):
    /// - `max_output_tokens = 128`, `min_output_tokens = 1`: `SUT_VLLM.py`'s sampling parameters
    ///   (`max_tokens`, `min_tokens`; greedy);
    /// - `max_input_tokens = 8000`: the `tokenizer.model_max_length` `download_cnndm.py` (the
    ///   dataset's preparation) sets; the CNN-DM prompts stay well below it;
    /// - EOS `128009` (`<|eot_id|>`, the Instruct tokenizer's `eos_token`, which `download_cnndm.py`
    ///   also pads with; `SUT_VLLM.py` adds no stop ids of its own, so vLLM stops on the model's
    ///   `generation_config` EOS ids, of which the chat model ends its turn with this one), BOS
    ///   `128000` (`<|begin_of_text|>`, which `tokenizer.encode` prepends), vocabulary 128,256 (the
    ///   model's config);
    /// - generated prompts: `min 64, max 3072, skew 3` (mean about 816 tokens), shaped like the
    ///   dataset's prompts (an instruction plus a news article), not measured from it.
    pub fn llama3_1_8b() -> WorkloadSpec {
        WorkloadSpec::generative(
            "llama3.1-8b",
            Generation {
                max_input_tokens: 8000,
                max_output_tokens: 128,
                min_output_tokens: 1,
                eos_token: 128_009,
                bos_token: Some(128_000),
                vocab_size: 128_256,
                input_lengths: Some(LengthDistribution { min: 64, max: 3072, skew: 3 }),
            },
        )
    }

    /// Llama-2-70B-Chat on OpenOrca, as MLPerf's reference runs it (mlcommons/inference
    /// `language/llama2-70b/`):
    /// - `max_output_tokens = 1024`, `min_output_tokens = 1`: `SUT.py`'s `gen_kwargs`
    ///   (`max_new_tokens`, `min_new_tokens`; greedy);
    /// - `max_input_tokens = 1024`: `SUT.py` pads every prompt to `max_seq_len = 1024` and
    ///   `dataset.py` sets `model_max_length=1024`; `processorca.py` (`--seqlen_limit=1024`) keeps
    ///   only prompts shorter than that;
    /// - EOS `2` (`</s>`; also `compliance/TEST06/run_verification.py`'s default `--eos_token_id`,
    ///   and the last token of the answers in the submission samples' TEST06 accuracy logs), BOS `1`
    ///   (`<s>`), vocabulary 32,000 (the Llama-2 tokenizer);
    /// - generated prompts: `min 16, max 1023, skew 3` (mean about 268 tokens), shaped like the
    ///   dataset's prompts, not measured from them.
    pub fn llama2_70b() -> WorkloadSpec {
        WorkloadSpec::generative(
            "llama2-70b",
            Generation {
                max_input_tokens: 1024,
                max_output_tokens: 1024,
                min_output_tokens: 1,
                eos_token: 2,
                bos_token: Some(1),
                vocab_size: 32_000,
                input_lengths: Some(LengthDistribution { min: 16, max: 1023, skew: 3 }),
            },
        )
    }

    /// SmolLM2-135M-Instruct, the small model local tests run for real: BOS `1` (`<|im_start|>`),
    /// EOS `2` (`<|im_end|>`), vocabulary 49,152 (the model's config). The limits are this
    /// project's choice, sized for quick tests, not a benchmark's: prompts of at most 512 tokens
    /// (generated ones `min 8, max 512, skew 2`, mean about 176), answers of 1 to 64 tokens.
    pub fn smollm2_135m() -> WorkloadSpec {
        WorkloadSpec::generative(
            "smollm2-135m",
            Generation {
                max_input_tokens: 512,
                max_output_tokens: 64,
                min_output_tokens: 1,
                eos_token: 2,
                bos_token: Some(1),
                vocab_size: 49_152,
                input_lengths: Some(LengthDistribution { min: 8, max: 512, skew: 2 }),
            },
        )
    }

    /// The names [`WorkloadSpec::builtin`] knows.
    pub const BUILTIN: [&'static str; 5] = ["resnet50", "bert", "llama3.1-8b", "llama2-70b", "smollm2-135m"];

    /// A built-in workload by name (one of [`WorkloadSpec::BUILTIN`]).
    pub fn builtin(name: &str) -> Option<WorkloadSpec> {
        match name {
            "resnet50" => Some(WorkloadSpec::resnet50()),
            "bert" => Some(WorkloadSpec::bert()),
            "llama3.1-8b" => Some(WorkloadSpec::llama3_1_8b()),
            "llama2-70b" => Some(WorkloadSpec::llama2_70b()),
            "smollm2-135m" => Some(WorkloadSpec::smollm2_135m()),
            _ => None,
        }
    }

    /// The model name LoadGen's config files (mlperf.conf, user.conf) use for this workload: the
    /// name, except that a `llama3.1-` prefix is written `llama3_1-` there (mlcommons/inference
    /// `loadgen/mlperf.conf` keys `llama3_1-8b`, `llama3_1-8b-edge`, `llama3_1-405b`, ...;
    /// `llama2-70b` is unchanged).
    pub fn loadgen_model(&self) -> String {
        match self.name.strip_prefix("llama3.1-") {
            Some(rest) => format!("llama3_1-{rest}"),
            None => self.name.clone(),
        }
    }

    /// Whether this is a generative workload (it has a [`Generation`]; [`WorkloadSpec::validate`]
    /// ties that to `output_kind = "tokens"`).
    pub fn is_generative(&self) -> bool {
        self.generation.is_some()
    }

    /// Input bytes per sample: for generative workloads the most (the slot size, a prompt of
    /// `max_input_tokens`), a request's true length may be less ([`WorkloadSpec::check_input_len`]).
    pub fn input_bytes(&self) -> usize {
        self.inputs.iter().map(TensorSpec::bytes).sum()
    }

    /// The fewest input bytes a request may carry: one int32 id (4) for generative workloads,
    /// [`WorkloadSpec::input_bytes`] for the others.
    pub fn min_input_bytes(&self) -> usize {
        if self.is_generative() { 4 } else { self.input_bytes() }
    }

    /// Checks a request's input length: exactly [`WorkloadSpec::input_bytes`], or for generative
    /// workloads a whole number of int32 ids from [`WorkloadSpec::min_input_bytes`] to
    /// [`WorkloadSpec::input_bytes`].
    pub fn check_input_len(&self, len: usize) -> Result<(), InputLengthError> {
        let max = self.input_bytes();
        if !self.is_generative() {
            return if len == max { Ok(()) } else { Err(InputLengthError::Size { expected: max, got: len }) };
        }
        let min = self.min_input_bytes();
        if len < min || len > max {
            return Err(InputLengthError::Range { min, max, got: len });
        }
        if !len.is_multiple_of(4) {
            return Err(InputLengthError::Unaligned(len));
        }
        Ok(())
    }

    /// Fills in what can be derived: a tensors workload's `output_bytes` (when 0) from its
    /// outputs, a tokens workload's (when 0) from its `max_output_tokens`.
    pub fn complete(mut self) -> WorkloadSpec {
        if self.output_kind == OutputKind::Tensors && self.output_bytes == 0 {
            let sum = self.outputs.iter().fold(0u64, |acc, t| acc.saturating_add(t.bytes() as u64));
            self.output_bytes = sum.min(u32::MAX as u64) as u32;
        }
        if self.output_kind == OutputKind::Tokens
            && self.output_bytes == 0
            && let Some(g) = &self.generation
        {
            self.output_bytes = g.output_bytes();
        }
        self
    }

    /// The reference answer to `input` (a request's bytes, at their true length), as response
    /// bytes, into `out` (cleared first): for generative workloads [`reference_tokens`]' ids as
    /// int32 little-endian (as long as the answer), for the others [`reference_output`]'s
    /// `output_bytes`.
    pub fn reference_response(&self, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match &self.generation {
            Some(g) => {
                let mut tokens = Vec::new();
                reference_tokens(input, g, &mut tokens);
                out.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
            }
            None => {
                out.resize(self.output_bytes as usize, 0);
                reference_output(self.output_kind, input, out);
            }
        }
    }

    /// Checks internal consistency (used for specs that arrive over the network or from config).
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(WorkloadError::Name);
        }
        if self.inputs.is_empty() || self.inputs.len() > 16 {
            return Err(WorkloadError::InputCount);
        }
        check_tensors("input", &self.inputs)?;
        let total = self.inputs.iter().try_fold(0u64, |acc, t| acc.checked_add(t.bytes() as u64));
        if total.is_none_or(|b| b == 0 || b > u32::MAX as u64) {
            return Err(WorkloadError::InputSize);
        }
        if self.output_kind != OutputKind::Tokens && self.generation.is_some() {
            return Err(WorkloadError::GenerationWithoutTokens(self.output_kind));
        }
        let want = match self.output_kind {
            OutputKind::Tokens => {
                let g = self.generation.as_ref().ok_or(WorkloadError::TokensWithoutGeneration)?;
                self.check_generation(g)?;
                Some(g.output_bytes())
            }
            OutputKind::ClassId => Some(4),
            OutputKind::Span => Some(8),
            OutputKind::Digest => None,
            OutputKind::Tensors => {
                if self.outputs.is_empty() || self.outputs.len() > 16 {
                    return Err(WorkloadError::OutputCount);
                }
                check_tensors("output", &self.outputs)?;
                let sum = self.outputs.iter().try_fold(0u64, |acc, t| acc.checked_add(t.bytes() as u64));
                match sum {
                    Some(b) if b <= u32::MAX as u64 => Some(b as u32),
                    _ => return Err(WorkloadError::OutputSize),
                }
            }
        };
        if self.output_kind != OutputKind::Tensors && !self.outputs.is_empty() {
            return Err(WorkloadError::OutputsWithoutTensors(self.output_kind));
        }
        if let Some(w) = want
            && self.output_bytes != w
        {
            return Err(WorkloadError::OutputBytes {
                kind: self.output_kind,
                expected: w,
                declared: self.output_bytes,
            });
        }
        if self.output_bytes == 0 {
            return Err(WorkloadError::NoOutputBytes);
        }
        Ok(())
    }

    /// The rules of a generative workload (see [`WorkloadError`]'s generative variants).
    fn check_generation(&self, g: &Generation) -> Result<(), WorkloadError> {
        if !(1..=MAX_INPUT_TOKENS).contains(&g.max_input_tokens) {
            return Err(WorkloadError::InputTokens(g.max_input_tokens));
        }
        let ids_ok = matches!(&self.inputs[..], [t] if t.name == INPUT_IDS && t.dtype == DType::I32
            && t.shape == [g.max_input_tokens]);
        if !ids_ok {
            return Err(WorkloadError::GenerativeInput { max_input_tokens: g.max_input_tokens });
        }
        if !(1..=MAX_OUTPUT_TOKENS).contains(&g.max_output_tokens) {
            return Err(WorkloadError::OutputTokens(g.max_output_tokens));
        }
        if g.min_output_tokens > g.max_output_tokens {
            return Err(WorkloadError::MinOutputTokens { min: g.min_output_tokens, max: g.max_output_tokens });
        }
        if !(MIN_VOCAB..=MAX_VOCAB).contains(&g.vocab_size) {
            return Err(WorkloadError::VocabSize(g.vocab_size));
        }
        let specials = std::iter::once(("eos", g.eos_token)).chain(g.bos_token.map(|b| ("bos", b)));
        for (which, id) in specials {
            if id < 0 || id as u32 >= g.vocab_size {
                return Err(WorkloadError::SpecialToken { which, id, vocab: g.vocab_size });
            }
        }
        if g.bos_token == Some(g.eos_token) {
            return Err(WorkloadError::BosIsEos(g.eos_token));
        }
        if let Some(d) = g.input_lengths
            && (d.min == 0 || d.min > d.max || d.max > g.max_input_tokens || !(1..=8).contains(&d.skew))
        {
            return Err(WorkloadError::InputLengths { min: d.min, max: d.max, skew: d.skew });
        }
        Ok(())
    }
}

/// Why a request's input length does not fit the workload ([`WorkloadSpec::check_input_len`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputLengthError {
    /// A fixed-size workload's request is not exactly one sample.
    #[error("a sample is {expected} bytes, not {got}")]
    Size {
        /// The sample size, bytes.
        expected: usize,
        /// The request's length, bytes.
        got: usize,
    },
    /// A generative workload's prompt is empty or longer than the slot.
    #[error("a prompt is {min} to {max} bytes, not {got}")]
    Range {
        /// The fewest bytes (one id).
        min: usize,
        /// The most bytes (the slot).
        max: usize,
        /// The request's length, bytes.
        got: usize,
    },
    /// A generative workload's prompt is not a whole number of int32 ids.
    #[error("a prompt of {0} bytes is not a whole number of int32 ids")]
    Unaligned(usize),
}

/// Checks a list of tensors: names unique and non-empty, 1 to 8 non-zero dimensions, at most 4 GiB.
fn check_tensors(side: &'static str, tensors: &[TensorSpec]) -> Result<(), WorkloadError> {
    for (i, t) in tensors.iter().enumerate() {
        if t.name.is_empty() || t.name.len() > 256 {
            return Err(WorkloadError::TensorName { side, index: i });
        }
        if tensors[..i].iter().any(|o| o.name == t.name) {
            return Err(WorkloadError::DuplicateTensor { side, name: t.name.clone() });
        }
        if t.shape.is_empty() || t.shape.len() > 8 || t.shape.contains(&0) {
            return Err(WorkloadError::TensorShape(t.name.clone()));
        }
        let bytes = t.shape.iter().try_fold(t.dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
        if bytes.is_none_or(|b| b > u32::MAX as u64) {
            return Err(WorkloadError::TensorSize(t.name.clone()));
        }
    }
    Ok(())
}

/// Why a [`WorkloadSpec`] is inconsistent ([`WorkloadSpec::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The name is empty or longer than 64 characters.
    #[error("workload name must be 1 to 64 characters")]
    Name,
    /// No input tensor, or more than 16.
    #[error("a workload needs 1 to 16 input tensors")]
    InputCount,
    /// The inputs add up to 0 bytes or more than 4 GiB.
    #[error("input size must be between 1 byte and 4 GiB")]
    InputSize,
    /// A tensors workload without output tensors, or with more than 16.
    #[error("a tensors workload needs 1 to 16 output tensors in `outputs`")]
    OutputCount,
    /// The output tensors add up to more than 4 GiB.
    #[error("output size must be at most 4 GiB")]
    OutputSize,
    /// `outputs` given for an output kind that is not `tensors`.
    #[error("`outputs` is only for output_kind = \"tensors\", not {0:?}")]
    OutputsWithoutTensors(OutputKind),
    /// `output_bytes` differs from the size the output kind has.
    #[error("{kind:?} outputs are {expected} bytes, not {declared}")]
    OutputBytes {
        /// The output kind.
        kind: OutputKind,
        /// Its size, bytes.
        expected: u32,
        /// The declared `output_bytes`.
        declared: u32,
    },
    /// `output_bytes` is 0.
    #[error("output_bytes must be at least 1")]
    NoOutputBytes,
    /// A tensor's name is empty or longer than 256 characters.
    #[error("{side} tensor {index} needs a name of 1 to 256 characters")]
    TensorName {
        /// "input" or "output".
        side: &'static str,
        /// Its position in the list.
        index: usize,
    },
    /// Two tensors on one side have the same name.
    #[error("{side} tensor {name:?} is declared twice")]
    DuplicateTensor {
        /// "input" or "output".
        side: &'static str,
        /// The name.
        name: String,
    },
    /// A tensor has no dimension, more than 8, or one of size 0.
    #[error("tensor {0:?} needs 1 to 8 non-zero dimensions")]
    TensorShape(String),
    /// A tensor is larger than 4 GiB.
    #[error("tensor {0:?} is larger than 4 GiB")]
    TensorSize(String),
    /// `output_kind = "tokens"` without a `generation` section.
    #[error("a tokens workload needs a `generation` section")]
    TokensWithoutGeneration,
    /// A `generation` section for an output kind that is not `tokens`.
    #[error("`generation` is only for output_kind = \"tokens\", not {0:?}")]
    GenerationWithoutTokens(OutputKind),
    /// `max_input_tokens` is 0 or above [`MAX_INPUT_TOKENS`].
    #[error("max_input_tokens must be 1 to {MAX_INPUT_TOKENS}, not {0}")]
    InputTokens(u32),
    /// A generative workload's inputs are not exactly one int32 `input_ids` of
    /// `[max_input_tokens]`.
    #[error("a generative workload has exactly one input, `input_ids`: i32 [{max_input_tokens}]")]
    GenerativeInput {
        /// The declared `max_input_tokens`.
        max_input_tokens: u32,
    },
    /// `max_output_tokens` is 0 or above [`MAX_OUTPUT_TOKENS`].
    #[error("max_output_tokens must be 1 to {MAX_OUTPUT_TOKENS}, not {0}")]
    OutputTokens(u32),
    /// `min_output_tokens` is above `max_output_tokens`.
    #[error("min_output_tokens {min} is above max_output_tokens {max}")]
    MinOutputTokens {
        /// The declared `min_output_tokens`.
        min: u32,
        /// The declared `max_output_tokens`.
        max: u32,
    },
    /// `vocab_size` is outside [`MIN_VOCAB`] to [`MAX_VOCAB`].
    #[error("vocab_size must be {MIN_VOCAB} to {MAX_VOCAB}, not {0}")]
    VocabSize(u32),
    /// The EOS or BOS id is not in `0..vocab_size`.
    #[error("{which} token {id} is not in 0..{vocab}")]
    SpecialToken {
        /// "eos" or "bos".
        which: &'static str,
        /// The declared id.
        id: i32,
        /// The vocabulary size.
        vocab: u32,
    },
    /// BOS and EOS are the same id.
    #[error("bos and eos are both {0}")]
    BosIsEos(i32),
    /// The generated prompts' length distribution is not `1 <= min <= max <= max_input_tokens`
    /// with a skew of 1 to 8.
    #[error("input_lengths needs 1 <= min <= max <= max_input_tokens and skew 1 to 8, not {min}..={max}, skew {skew}")]
    InputLengths {
        /// The declared shortest.
        min: u32,
        /// The declared longest.
        max: u32,
        /// The declared skew.
        skew: u32,
    },
}

/// Writes the reference output of one sample's `input` into `out` (`output_bytes` long).
///
/// This is the documented, deterministic function the `echo` and `synthetic` backends compute and
/// `check-accuracy` recomputes. With `h(s) = xxh3_64(input, seed s)` (XXH3, 64-bit):
/// - `ClassId`: `u32 LE (h(0) % 1000)`.
/// - `Span`: `start = h(0) % 384`, `end = start + (h(0) >> 32) % (384 - start)`, as two u32 LE.
/// - `Digest` (and `Tensors`, for the echo and synthetic backends): the little-endian bytes of
///   `h(0), h(1), h(2), ...`, truncated to the output size.
/// - `Tokens`: the digest too, as this function does not know the [`Generation`]; a generative
///   workload's answer is [`reference_tokens`] (or [`WorkloadSpec::reference_response`]).
///
/// Any changed input byte changes the output with overwhelming probability, so a corrupted or
/// misrouted sample shows up as a wrong answer.
pub fn reference_output(kind: OutputKind, input: &[u8], out: &mut [u8]) {
    match kind {
        OutputKind::ClassId => {
            let class = (xxh3_64(input) % 1000) as u32;
            out[..4].copy_from_slice(&class.to_le_bytes());
        }
        OutputKind::Span => {
            let h = xxh3_64(input);
            let start = (h % BERT_SEQ_LEN as u64) as u32;
            let end = start + ((h >> 32) % (BERT_SEQ_LEN - start) as u64) as u32;
            out[..4].copy_from_slice(&start.to_le_bytes());
            out[4..8].copy_from_slice(&end.to_le_bytes());
        }
        // A real model's outputs have no reference function: the digest stands in for the
        // echo and synthetic backends, so such workloads can still be run over the network.
        OutputKind::Digest | OutputKind::Tensors | OutputKind::Tokens => {
            for (i, chunk) in out.chunks_mut(8).enumerate() {
                let h = if i == 0 { xxh3_64(input) } else { xxh3_64_with_seed(input, i as u64) };
                chunk.copy_from_slice(&h.to_le_bytes()[..chunk.len()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sizes() {
        assert_eq!(WorkloadSpec::resnet50().input_bytes(), 150_528);
        assert_eq!(WorkloadSpec::bert().input_bytes(), 3 * 384 * 4);
        WorkloadSpec::resnet50().validate().unwrap();
        WorkloadSpec::bert().validate().unwrap();
    }

    #[test]
    fn reference_outputs_are_documented_functions() {
        let input = b"qdl reference input";
        let h = xxh3_64(input);
        let mut class = [0u8; 4];
        reference_output(OutputKind::ClassId, input, &mut class);
        assert_eq!(u32::from_le_bytes(class) as u64, h % 1000);

        let mut span = [0u8; 8];
        reference_output(OutputKind::Span, input, &mut span);
        let start = u32::from_le_bytes(span[..4].try_into().unwrap());
        let end = u32::from_le_bytes(span[4..].try_into().unwrap());
        assert!(start <= end && end < BERT_SEQ_LEN);
        assert_eq!(start as u64, h % 384);

        let mut digest = [0u8; 12];
        reference_output(OutputKind::Digest, input, &mut digest);
        assert_eq!(&digest[..8], &h.to_le_bytes());
        assert_eq!(&digest[8..], &xxh3_64_with_seed(input, 1).to_le_bytes()[..4]);
    }

    #[test]
    fn one_flipped_byte_changes_the_answer() {
        let mut input = vec![7u8; 4608];
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        reference_output(OutputKind::Digest, &input, &mut a);
        input[4000] ^= 1;
        reference_output(OutputKind::Digest, &input, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn validate_rejects_inconsistent_specs() {
        let mut w = WorkloadSpec::resnet50();
        w.output_bytes = 8;
        assert_eq!(
            w.validate(),
            Err(WorkloadError::OutputBytes { kind: OutputKind::ClassId, expected: 4, declared: 8 })
        );
        let mut w = WorkloadSpec::bert();
        w.inputs[0].shape = vec![0];
        assert_eq!(w.validate(), Err(WorkloadError::TensorShape(w.inputs[0].name.clone())));
        let mut w = WorkloadSpec::bert();
        w.inputs[0].shape = vec![u32::MAX, u32::MAX];
        assert_eq!(w.validate(), Err(WorkloadError::TensorSize(w.inputs[0].name.clone())));
        let mut w = WorkloadSpec::bert();
        w.inputs[1].name = "input_ids".into();
        assert_eq!(w.validate(), Err(WorkloadError::DuplicateTensor { side: "input", name: "input_ids".into() }));
        let mut w = WorkloadSpec::resnet50();
        w.outputs = vec![TensorSpec { name: "x".into(), dtype: DType::F32, shape: vec![1] }];
        assert_eq!(w.validate(), Err(WorkloadError::OutputsWithoutTensors(OutputKind::ClassId)));
    }

    #[test]
    fn tensors_workloads_derive_their_output_size() {
        let spec = WorkloadSpec {
            name: "onet".into(),
            inputs: vec![TensorSpec { name: "input_3".into(), dtype: DType::F32, shape: vec![48, 48, 3] }],
            output_kind: OutputKind::Tensors,
            output_bytes: 0,
            outputs: vec![
                TensorSpec { name: "dense_5".into(), dtype: DType::F32, shape: vec![4] },
                TensorSpec { name: "softmax_2".into(), dtype: DType::F32, shape: vec![2] },
            ],
            generation: None,
        }
        .complete();
        assert_eq!(spec.output_bytes, 24);
        spec.validate().unwrap();
        let mut wrong = spec.clone();
        wrong.output_bytes = 20;
        assert_eq!(
            wrong.validate(),
            Err(WorkloadError::OutputBytes { kind: OutputKind::Tensors, expected: 24, declared: 20 })
        );
        let mut none = spec;
        none.outputs.clear();
        assert_eq!(none.validate(), Err(WorkloadError::OutputCount));
    }
}
