//! The `llama` backend: an LLM (a GGUF file) run by llama.cpp in-process, for generative
//! workloads only (cargo feature `llama`).
//!
//! - The model is loaded once per process and shared by every worker
//!   ([`LoadedModel::load`]): its weights are in memory once; each worker has its own context
//!   (KV cache, compute buffers, threads), made at start-up so that a context llama.cpp cannot
//!   create is a start-up error, and handed to the worker's generative lane by
//!   [`Backend::token_engine`].
//! - Fixed-shape batches ([`Backend::infer`]) are refused: this backend only generates.
//! - [`Backend::check`] refuses workloads that are not generative and those whose vocabulary is
//!   not the model's; the workers run it at warm-up ([`Backend::warmup`]).
//! - Devices: `backend.llama.gpu_layers` layers (default all) go to the GPU when the llama.cpp
//!   libraries have a CUDA backend; [`Backend::provider`] says "cuda" only when llama.cpp's load
//!   log shows weights in a CUDA device's memory, else "cpu".

use std::cell::Cell;

use qdl_shared::config::LlamaConfig;
use qdl_shared::workload::WorkloadSpec;

use super::{Backend, BackendError, Batch};
use crate::generate::engine::TokenEngine;
use crate::generate::llama::{EngineOptions, LlamaEngine, LoadedModel};

/// One worker's llama backend; see the module docs.
pub struct LlamaBackend {
    model: &'static LoadedModel,
    options: EngineOptions,
    /// The engine made at start-up, until the worker takes it.
    engine: Cell<Option<LlamaEngine>>,
}

impl LlamaBackend {
    /// Loads `config.model` with `config.gpu_layers` of its layers on the GPU (or shares it, when
    /// this process has loaded it already) and makes one context of `config.context_tokens`
    /// tokens for `sequences` sequences (at least the scheduler's `max_running`).
    pub fn load(config: &LlamaConfig, sequences: u32) -> Result<LlamaBackend, BackendError> {
        let path = config.model.as_deref().ok_or_else(|| {
            BackendError::Setup("backend.llama.model is not set (a .gguf file; scripts/models fetches one)".into())
        })?;
        let model = LoadedModel::load_with(path, config.gpu_layers)?;
        let options = EngineOptions { sequences, context_tokens: config.context_tokens, threads: config.threads };
        let engine = LlamaEngine::new(model, options)?;
        Ok(LlamaBackend { model, options, engine: Cell::new(Some(engine)) })
    }

    /// The model it serves.
    pub fn model(&self) -> &'static LoadedModel {
        self.model
    }

    /// Its engine's options.
    pub fn options(&self) -> EngineOptions {
        self.options
    }
}

impl Backend for LlamaBackend {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        let unsupported =
            |reason: String| BackendError::Unsupported { backend: "llama", workload: spec.name.clone(), reason };
        let Some(g) = spec.generation else {
            return Err(unsupported("the llama backend serves generative (LLM) workloads only".into()));
        };
        if g.vocab_size != self.model.vocab() {
            return Err(unsupported(format!(
                "the workload's vocabulary has {} tokens, the model {} has {}: it is not this model's workload",
                g.vocab_size,
                self.model.file_name(),
                self.model.vocab()
            )));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("llama {} on {}", self.model.file_name(), self.model.device())
    }

    fn provider(&self) -> &'static str {
        self.model.device()
    }

    fn infer(&mut self, batch: &Batch<'_>, _output: &mut [u8]) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            backend: "llama",
            workload: batch.spec.name.clone(),
            reason: "the llama backend only generates (continuous batching); it runs no fixed-shape batches".into(),
        })
    }

    fn token_engine(&self) -> Option<Box<dyn TokenEngine>> {
        if let Some(engine) = self.engine.take() {
            return Some(Box::new(engine));
        }
        match LlamaEngine::new(self.model, self.options) {
            Ok(engine) => Some(Box::new(engine)),
            Err(e) => {
                tracing::error!("llama backend: {e}");
                None
            }
        }
    }

    /// Checks the workload (there is nothing to compile; the weights are mapped at load).
    fn warmup(&mut self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        self.check(spec)
    }
}
