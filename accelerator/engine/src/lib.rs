//! # qdl-engine: what runs inference, on the accelerator node and in the frontend's local baseline
//!
//! # Layout
//! - [`worker`]: the [`worker::WorkerPool`] of `DeviceWorker` threads (one per GPU, CPU or
//!   virtual device), each with its [`batcher`] and backend; and the hand-off types a node's
//!   connection submits samples and takes answers with.
//! - [`batcher`]: the dynamic batching policy, sans-IO.
//! - [`generate`]: generative inference (LLMs): the continuous-batching scheduler, sans-IO.
//! - [`backend`]: the backend trait; the `echo`, `synthetic` and `onnx` (ONNX Runtime) backends;
//!   one backend per worker, on GPUs or CPUs.
//! - [`gpu`]: NVIDIA GPUs through the CUDA driver: discovery, batched input staging, GPU checks.
//! - [`loadcheck`]: a worker under load with a real model, answers checked (`qdl-gpu-check`).
//! - [`local`]: [`local::LocalTransport`], the in-process transport of the frontend's local
//!   baseline (the wire replaced by direct hand-offs to the workers).
//! - [`checktable`]: the check binaries' result table (`check | gpu | result | detail | ms`).
//! - The binaries (`src/bin/`): `qdl-gpu-check` checks a machine's GPUs and a worker under load;
//!   `qdl-llama-check` (cargo feature `llama`) runs the llama.cpp engine on a few prompts and
//!   checks its answers and where its weights went against reference answers of the CPU.
//!
//! The accelerator node (`qdl-accelerator`) and the frontend depend on this crate and on
//! `qdl-shared`, never on each other.

#![warn(missing_docs)]

pub mod backend;
pub mod batcher;
pub mod checktable;
pub mod generate;
pub mod gpu;
pub mod loadcheck;
pub mod local;
pub mod worker;
