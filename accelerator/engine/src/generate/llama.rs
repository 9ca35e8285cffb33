//! [`LlamaEngine`]: a real generative engine, llama.cpp in-process (crate `llama-cpp-2`); and
//! [`Tokenizer`], a model file's tokenizer alone (its vocabulary, no weights), with which the
//! frontend tokenizes a text file of prompts.
//!
//! ```text
//!  LoadedModel (one per model file and process, &'static, shared by every worker's engine)
//!     └─ LlamaEngine × worker: one llama_context (n_ctx = context_tokens, unified KV cache,
//!          n_seq_max sequences), one llama sequence id per scheduler SeqId (the same number)
//!          step(plan) = ONE LlamaBatch: every prefill chunk's tokens and every decode token,
//!                       ONE llama_decode, then greedy (argmax) sampling of each item with
//!                       logits, in plan order
//! ```
//!
//! - **Sequences**: the scheduler's [`SeqId`]s stay below its `max_running`, so the engine uses
//!   them as llama.cpp sequence ids directly; `n_seq_max` (at most [`MAX_SEQUENCES`], llama.cpp's
//!   `LLAMA_MAX_SEQ`) must be at least `max_running`. [`TokenEngine::begin`] keeps the prompt
//!   (prefill chunks are ranges of it) and clears whatever the sequence's KV held;
//!   [`TokenEngine::end`] drops both.
//! - **KV**: one cache of `n_ctx` cells shared by all sequences (`kv_unified`), as the scheduler's
//!   `kv_tokens` budget is shared; with `kv_tokens <= n_ctx` (the config checks it) a step always
//!   finds room. Without `kv_unified` llama.cpp would give each sequence `n_ctx / n_seq_max`.
//! - **Sampling**: greedy (temperature 0): the first largest logit; deterministic.
//! - **Devices**: with llama.cpp libraries built with CUDA (feature `llama-cuda`, or
//!   `llama-dynamic` run against CUDA-built libraries) the model's layers go to the GPU
//!   (`backend.llama.gpu_layers`, default all); [`LoadedModel::placement`] reads where they went
//!   from llama.cpp's load log, so a silent fall-back to the CPU shows as device "cpu".
//! - **Lifetimes**: a `LlamaContext<'m>` borrows its `LlamaModel`. Models are loaded once per
//!   process and path and leaked ([`LoadedModel::load`] returns `&'static`), so a context is a
//!   `LlamaContext<'static>` in safe code, no self-reference and no `unsafe impl Send`: the crate
//!   makes `LlamaModel` `Send + Sync` and `LlamaContext` and `LlamaBatch` `Send` (not `Sync`), so
//!   an engine is `Send` and moves to its worker thread. A process serves one model for its whole
//!   life, so the leak is the model's memory held until exit, once per distinct file.
//! - **Errors** are [`BackendError`]s: a missing or unreadable model file and a context llama.cpp
//!   cannot create are `Setup` errors; a failed decode is `Failed` with llama.cpp's code. Nothing
//!   here panics on bad input.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::DecodeError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use qdl_shared::workload::Generation;

use super::engine::TokenEngine;
use super::scheduler::{SeqId, StepOutput, StepPlan, Work};
use crate::backend::BackendError;

mod placement;
mod tokenizer;
pub use placement::Placement;
pub use tokenizer::{MAX_TOKENIZE_BYTES, Tokenizer};

/// The most sequences one llama.cpp context holds (llama.cpp's `LLAMA_MAX_SEQ`).
pub const MAX_SEQUENCES: u32 = qdl_shared::config::LLAMA_MAX_SEQUENCES;

/// llama.cpp's process-wide backend, initialised once (llama.cpp allows one initialisation per
/// process; it is never freed). Its log goes to `tracing` (target `llama.cpp`): warnings and
/// errors as such, the rest at debug level.
fn backend() -> Result<&'static LlamaBackend, BackendError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // SAFETY: `forward_log` is a plain function valid for the whole process and ignores
            // the (null) user data; llama.cpp calls it with a NUL-terminated string.
            unsafe {
                llama_cpp_sys_2::llama_log_set(Some(forward_log), std::ptr::null_mut());
                llama_cpp_sys_2::ggml_log_set(Some(forward_log), std::ptr::null_mut());
            }
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| BackendError::Setup(format!("cannot initialise llama.cpp: {e}")))
}

/// llama.cpp's and ggml's log callback: each message to `tracing`.
unsafe extern "C" fn forward_log(level: llama_cpp_sys_2::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that lives for the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    placement::observe(text);
    match level {
        llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR => tracing::error!(target: "llama.cpp", "{text}"),
        llama_cpp_sys_2::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama.cpp", "{text}"),
        _ => tracing::debug!(target: "llama.cpp", "{text}"),
    }
}

/// The GPUs llama.cpp's ggml backends found, as `CUDA0 (NVIDIA H200, 139.7 GiB)`: none when its
/// libraries were built without a GPU backend, whatever the machine has.
pub fn gpu_devices() -> Result<Vec<String>, BackendError> {
    backend()?;
    Ok(placement::gpu_devices())
}

/// A model file loaded by llama.cpp, shared by every engine of the process that uses it.
pub struct LoadedModel {
    model: LlamaModel,
    path: PathBuf,
    vocab: u32,
    context_trained: u32,
    /// The layers llama.cpp was asked to offload (`None`: all).
    gpu_layers: Option<u32>,
    /// Where llama.cpp put the weights, from its load log.
    placement: Placement,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel").field("path", &self.path).field("vocab", &self.vocab).finish()
    }
}

impl LoadedModel {
    /// Loads the GGUF file at `path` with every layer on the GPU, if llama.cpp has one:
    /// [`LoadedModel::load_with`] with `None`.
    pub fn load(path: &Path) -> Result<&'static LoadedModel, BackendError> {
        LoadedModel::load_with(path, None)
    }

    /// Loads the GGUF file at `path` with `gpu_layers` of its layers on the GPU (llama.cpp's
    /// `n_gpu_layers`; `None`: all of them, `Some(0)`: none; without a GPU backend all are on the
    /// CPU), or returns the model this process already loaded from it with the same `gpu_layers`
    /// (see the module docs: models are never unloaded). [`LoadedModel::placement`] says where
    /// the weights went.
    pub fn load_with(path: &Path, gpu_layers: Option<u32>) -> Result<&'static LoadedModel, BackendError> {
        static MODELS: Mutex<Vec<&'static LoadedModel>> = Mutex::new(Vec::new());
        if !path.is_file() {
            return Err(BackendError::Setup(format!(
                "llama model {} is not a file (backend.llama.model; scripts/models fetches SmolLM2-135M into \
                 target/models/smollm2)",
                path.display()
            )));
        }
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if key.to_str().is_none() {
            return Err(BackendError::Setup(format!("llama model path {} is not valid UTF-8", path.display())));
        }
        let backend = backend()?;
        // One load at a time: a second caller for the same file waits and shares it.
        let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = models.iter().find(|m| m.path == key && m.gpu_layers == gpu_layers) {
            return Ok(m);
        }
        let mut params = LlamaModelParams::default();
        if let Some(n) = gpu_layers {
            params = params.with_n_gpu_layers(n);
        }
        placement::start();
        let model = LlamaModel::load_from_file(backend, &key, &params);
        let placement = placement::finish();
        let model = model.map_err(|e| {
            BackendError::Setup(format!(
                "llama.cpp cannot load {} ({e}): not a GGUF model it supports, or truncated (its log says why)",
                path.display()
            ))
        })?;
        let vocab = u32::try_from(model.n_vocab())
            .map_err(|_| BackendError::Setup(format!("{}: negative vocabulary size", path.display())))?;
        let context_trained = model.n_ctx_train();
        tracing::info!("llama.cpp loaded {}: {}", path.display(), placement.describe());
        let loaded: &'static LoadedModel =
            Box::leak(Box::new(LoadedModel { model, path: key, vocab, context_trained, gpu_layers, placement }));
        models.push(loaded);
        Ok(loaded)
    }

    /// The model's vocabulary size (token ids are `0..vocab`).
    pub fn vocab(&self) -> u32 {
        self.vocab
    }

    /// The context length the model was trained with, tokens.
    pub fn context_trained(&self) -> u32 {
        self.context_trained
    }

    /// Where its layers run: "cuda" (llama.cpp put weights on a CUDA GPU: a `llama-cuda` build,
    /// or CUDA-built libraries, that found a GPU) or "cpu".
    pub fn device(&self) -> &'static str {
        if self.placement.on_gpu() { "cuda" } else { "cpu" }
    }

    /// Where llama.cpp put its weights (read from its load log).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The model file's name, for logs.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// The model's end-of-sequence token.
    pub fn eos(&self) -> i32 {
        self.model.vocab().eos().0
    }

    /// `text` as token ids, special tokens (`<|im_start|>`) parsed, nothing added.
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.model.vocab().tokenize(text.as_bytes(), false, true).into_iter().map(|t| t.0).collect()
    }

    /// `tokens` as text, special tokens written out (invalid UTF-8 replaced); ids outside the
    /// vocabulary are left out.
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let tokens: Vec<LlamaToken> =
            tokens.iter().filter(|&&t| t >= 0 && (t as u32) < self.vocab).map(|&t| LlamaToken(t)).collect();
        if tokens.is_empty() {
            return String::new();
        }
        String::from_utf8_lossy(&self.model.vocab().detokenize(&tokens, false, true)).into_owned()
    }
}

/// How an engine's context is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Sequences the context holds (`n_seq_max`): at least the scheduler's `max_running`, at
    /// most [`MAX_SEQUENCES`].
    pub sequences: u32,
    /// The context's KV cache, tokens, shared by the sequences (`n_ctx`; llama.cpp rounds it up
    /// to a multiple of 256). It is also the largest batch one step may hold.
    pub context_tokens: u32,
    /// CPU threads for decoding and prompt batches.
    pub threads: u32,
}

/// A llama.cpp context stepped by a worker's generative lane; see the module docs.
pub struct LlamaEngine {
    model: &'static LoadedModel,
    context: LlamaContext<'static>,
    batch: LlamaBatch<'static>,
    /// Tokens the batch was allocated for.
    capacity: usize,
    /// Per begun sequence: its prompt.
    prompts: HashMap<SeqId, Vec<i32>>,
    /// The batch rows with logits: (sequence, row), in plan order.
    rows: Vec<(SeqId, i32)>,
    options: EngineOptions,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine").field("model", &self.model.path).field("options", &self.options).finish()
    }
}

/// Serialises context creation: the crate warns that creating two contexts of one model at once
/// is unsound (llama.cpp may adjust the model's hyper-parameters while making a context).
static CONTEXTS: Mutex<()> = Mutex::new(());

impl LlamaEngine {
    /// A context of `model` with `options`.
    pub fn new(model: &'static LoadedModel, options: EngineOptions) -> Result<LlamaEngine, BackendError> {
        if !(1..=MAX_SEQUENCES).contains(&options.sequences) {
            return Err(BackendError::Setup(format!(
                "a llama.cpp context holds 1 to {MAX_SEQUENCES} sequences, not {}",
                options.sequences
            )));
        }
        let threads = i32::try_from(options.threads.max(1)).unwrap_or(i32::MAX);
        let n_ctx = NonZeroU32::new(options.context_tokens)
            .ok_or_else(|| BackendError::Setup("the llama.cpp context needs at least 1 token".into()))?;
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(options.context_tokens)
            .with_n_seq_max(options.sequences)
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let context = {
            let _one_at_a_time = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
            model.model.new_context(backend()?, params).map_err(|e| {
                BackendError::Setup(format!(
                    "llama.cpp cannot create a context for {} ({e}; n_ctx {}, {} sequences, {} threads): \
                     out of memory? (its log says why)",
                    model.file_name(),
                    options.context_tokens,
                    options.sequences,
                    options.threads
                ))
            })?
        };
        let capacity = 512;
        Ok(LlamaEngine {
            model,
            context,
            batch: LlamaBatch::new(capacity, 1),
            capacity,
            prompts: HashMap::new(),
            rows: Vec::new(),
            options,
        })
    }

    /// The model it runs.
    pub fn model(&self) -> &'static LoadedModel {
        self.model
    }

    /// The options it was made with.
    pub fn options(&self) -> EngineOptions {
        self.options
    }

    /// The context's size, tokens (`n_ctx`, after llama.cpp's rounding).
    pub fn context_tokens(&self) -> u32 {
        self.context.n_ctx()
    }

    fn llama_seq(&self, seq: SeqId) -> Result<i32, BackendError> {
        if seq < self.options.sequences {
            Ok(seq as i32)
        } else {
            Err(BackendError::Failed(format!(
                "sequence {seq} is beyond the llama.cpp context's {} sequences (generation.max_running is larger \
                 than the engine was made for)",
                self.options.sequences
            )))
        }
    }

    /// Fills the batch with `plan`'s tokens and records the rows with logits.
    fn fill(&mut self, plan: &StepPlan) -> Result<(), BackendError> {
        let (tokens, limit) = (plan.tokens(), self.context.n_batch() as usize);
        // llama.cpp aborts the process (an assertion) on a batch above its n_batch.
        if tokens > limit {
            return Err(BackendError::Failed(format!(
                "a step of {tokens} tokens is more than the llama.cpp context takes at once ({limit}, \
                 backend.llama.context_tokens): lower generation.max_tokens_per_step"
            )));
        }
        if tokens > self.capacity {
            self.capacity = tokens.next_power_of_two().min(limit);
            self.batch = LlamaBatch::new(self.capacity, 1);
        }
        self.batch.clear();
        self.rows.clear();
        for w in &plan.work {
            let seq = self.llama_seq(w.seq())?;
            match *w {
                Work::Prefill { seq: id, start, len, logits } => {
                    let prompt = self
                        .prompts
                        .get(&id)
                        .ok_or_else(|| BackendError::Failed(format!("sequence {id} was scheduled but never began")))?;
                    let (from, to) = (start as usize, start as usize + len as usize);
                    if to > prompt.len() || len == 0 {
                        return Err(BackendError::Failed(format!(
                            "prefill chunk [{from}, {to}) of sequence {id} is not within its prompt of {} tokens",
                            prompt.len()
                        )));
                    }
                    for (k, &token) in prompt[from..to].iter().enumerate() {
                        let last = logits && from + k + 1 == to;
                        push(&mut self.batch, self.model.vocab, token, start + k as u32, seq, last)?;
                    }
                    if logits {
                        self.rows.push((id, self.batch.n_tokens() - 1));
                    }
                }
                Work::Decode { seq: id, token, pos } => {
                    if !self.prompts.contains_key(&id) {
                        return Err(BackendError::Failed(format!("sequence {id} was scheduled but never began")));
                    }
                    push(&mut self.batch, self.model.vocab, token, pos, seq, true)?;
                    self.rows.push((id, self.batch.n_tokens() - 1));
                }
            }
        }
        Ok(())
    }
}

/// Adds `token` of sequence `seq` at `pos` to `batch` (with logits if `logits`).
fn push(batch: &mut LlamaBatch, vocab: u32, token: i32, pos: u32, seq: i32, logits: bool) -> Result<(), BackendError> {
    if token < 0 || token as u32 >= vocab {
        return Err(BackendError::Failed(format!(
            "token {token} of sequence {seq} is not in the model's vocabulary 0..{vocab}"
        )));
    }
    let pos = i32::try_from(pos).map_err(|_| BackendError::Failed(format!("position {pos} is too large")))?;
    batch
        .add(LlamaToken(token), pos, &[seq], logits)
        .map_err(|e| BackendError::Failed(format!("cannot add to the llama.cpp batch: {e}")))
}

/// The first largest value's index (greedy sampling).
fn argmax(logits: &[f32]) -> i32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as i32
}

/// What llama.cpp's `llama_decode` codes mean (llama.h).
fn decode_failure(e: &DecodeError) -> (i32, &'static str) {
    match *e {
        DecodeError::NoKvCacheSlot => (1, "no room in the KV cache: the context is full"),
        DecodeError::NTokensZero => (-1, "invalid batch"),
        DecodeError::Unknown(2) => (2, "aborted"),
        DecodeError::Unknown(c) if c < 0 => (c, "fatal error"),
        DecodeError::Unknown(c) => (c, "unknown"),
    }
}

impl TokenEngine for LlamaEngine {
    fn name(&self) -> &'static str {
        "llama.cpp"
    }

    fn begin(&mut self, seq: SeqId, prompt: &[i32], _generation: &Generation) -> Result<(), BackendError> {
        let id = self.llama_seq(seq)?;
        if let Some(bad) = prompt.iter().find(|&&t| t < 0 || t as u32 >= self.model.vocab) {
            return Err(BackendError::Failed(format!(
                "token {bad} of the prompt of sequence {seq} is not in the model's vocabulary 0..{}",
                self.model.vocab
            )));
        }
        // A sequence starts empty, whatever an earlier failure left behind.
        let _ = self.context.clear_kv_cache_seq(Some(id as u32), None, None);
        self.prompts.insert(seq, prompt.to_vec());
        Ok(())
    }

    fn step(&mut self, plan: &StepPlan, out: &mut Vec<StepOutput>) -> Result<(), BackendError> {
        self.fill(plan)?;
        if self.batch.n_tokens() == 0 {
            return Ok(());
        }
        if let Err(e) = self.context.decode(&mut self.batch) {
            let (code, meaning) = decode_failure(&e);
            let decode = plan.work.iter().filter(|w| matches!(w, Work::Decode { .. })).count();
            return Err(BackendError::Failed(format!(
                "llama.cpp decode failed with code {code} ({meaning}) on a batch of {} tokens ({decode} decode, \
                 {} sequences; context {} tokens)",
                self.batch.n_tokens(),
                plan.work.len(),
                self.context.n_ctx()
            )));
        }
        for &(seq, row) in &self.rows {
            let token = argmax(self.context.get_logits_ith(row));
            out.push(StepOutput { seq, token });
        }
        Ok(())
    }

    fn end(&mut self, seq: SeqId) {
        self.prompts.remove(&seq);
        if seq < self.options.sequences {
            let _ = self.context.clear_kv_cache_seq(Some(seq), None, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_largest_logit() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -3.0, -2.0]), 2);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn a_missing_model_is_a_setup_error_not_a_panic() {
        let e = LoadedModel::load(Path::new("/no/such/model.gguf")).unwrap_err();
        assert!(matches!(&e, BackendError::Setup(m) if m.contains("is not a file")), "{e}");
    }

    #[test]
    fn a_file_that_is_not_gguf_is_a_setup_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.gguf");
        std::fs::write(&path, b"this is not a GGUF file").unwrap();
        let e = LoadedModel::load(&path).unwrap_err();
        assert!(matches!(&e, BackendError::Setup(m) if m.contains("cannot load")), "{e}");
    }
}
