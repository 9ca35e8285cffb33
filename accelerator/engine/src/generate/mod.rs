//! Generative inference (LLMs): continuous (in-flight) batching.
//!
//! - [`scheduler`]: the continuous-batching policy, sans-IO: which sequences prefill (in chunks)
//!   and which decode in each engine step, under limits on running sequences, tokens per step and
//!   the context (KV) budget; events for first tokens and completions.
//! - [`engine`]: the [`engine::TokenEngine`] a worker steps, and the synthetic one.
//! - [`lane`]: [`lane::GenerativeLane`], a worker's generative side: the thin driver that feeds
//!   the scheduler, steps the engine and answers first tokens and finished samples.
//! - `llama` (cargo feature `llama`): `llama::LlamaEngine`, llama.cpp in-process; and
//!   `llama::Tokenizer`, a GGUF file's tokenizer alone (the frontend's prompts files).

pub mod engine;
pub mod lane;
#[cfg(feature = "llama")]
pub mod llama;
pub mod scheduler;
