//! # qdl-accelerator: the node that runs inference for frontends across the network
//!
//! # Layout
//! - [`server`]: the node: listener, [`server::control::ControlActor`] per session,
//!   [`server::connection::ConnectionActor`] per data connection, the session
//!   [`server::registry::Registry`], and [`server::run`] with the supervision tree and shutdown.
//! - [`worker`]: `GpuWorker` threads (one per device) with their [`batcher`] and backend; also
//!   used in-process by the frontend's local baseline.
//! - [`batcher`]: the dynamic batching policy, sans-IO.
//! - [`backend`]: the backend trait; the `echo`, `synthetic` and `onnx` (ONNX Runtime) backends;
//!   one backend per worker, on GPUs or CPUs.
//! - [`gpu`]: NVIDIA GPUs through the CUDA driver: discovery, batched input staging, GPU checks.
//! - [`loadcheck`]: a worker under load with a real model, answers checked (qdl-gpu-check).
//! - [`pump`]: how actors drive their I/O without a message per sample.
//!
//! Data path of one sample: the connection's transport reads the request into its slot (leased),
//! the `ConnectionActor` hands it to its worker's bounded queue, the worker batches, gathers,
//! infers, and delivers the answers back to the connection, which queues the response into the
//! same slot index and frees the slot.

#![warn(missing_docs)]

pub mod backend;
pub mod batcher;
pub mod gpu;
pub mod loadcheck;
pub mod pump;
pub mod server;
pub mod worker;
