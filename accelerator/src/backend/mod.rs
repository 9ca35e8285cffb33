//! Inference backends behind one trait. A worker owns one backend instance and calls it with a
//! whole batch gathered into one contiguous input buffer.
//!
//! Both built-in backends answer every sample with the workload's reference output
//! ([`qdl_shared::workload::reference_output`]), a documented function of the sample's bytes, so
//! every response can be checked end to end:
//! - [`echo::Echo`]: answers at once (the network-only upper bound);
//! - [`synthetic::Synthetic`]: answers after `fixed + per_sample × batch` µs, waiting rather than
//!   spinning, so it stands for a device of a known rate without using the CPU.

pub mod echo;
pub mod synthetic;

use qdl_shared::config::{BackendConfig, BackendKind};
use qdl_shared::workload::WorkloadSpec;

/// Errors of a backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot serve this workload.
    #[error("backend {backend} cannot serve workload {workload}: {reason}")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// The workload.
        workload: String,
        /// Why.
        reason: String,
    },
    /// Inference failed.
    #[error("inference failed: {0}")]
    Failed(String),
}

/// An inference backend; see the module docs.
pub trait Backend: Send {
    /// The backend's name ("echo", "synthetic", ...).
    fn name(&self) -> &'static str;

    /// The largest batch it accepts, if it has a limit.
    fn max_batch(&self) -> Option<usize> {
        None
    }

    /// Whether it can serve `spec` (checked when a session is configured).
    fn check(&self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        let _ = spec;
        Ok(())
    }

    /// Runs one batch: `input` holds `n` samples of `spec.input_bytes()` each, back to back;
    /// `output` receives `n` outputs of `spec.output_bytes` each.
    fn infer(&mut self, spec: &WorkloadSpec, n: usize, input: &[u8], output: &mut [u8]) -> Result<(), BackendError>;

    /// Prepares for `spec` before the timed run (loads, compiles, touches memory).
    fn warmup(&mut self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        let n = self.max_batch().unwrap_or(1).min(8);
        let input = vec![0u8; spec.input_bytes() * n];
        let mut output = vec![0u8; spec.output_bytes as usize * n];
        self.infer(spec, n, &input, &mut output)
    }
}

/// Writes the reference output of each of the `n` samples in `input` into `output`.
pub fn reference_batch(spec: &WorkloadSpec, n: usize, input: &[u8], output: &mut [u8]) {
    let (ib, ob) = (spec.input_bytes(), spec.output_bytes as usize);
    for (i, out) in output.chunks_exact_mut(ob).take(n).enumerate() {
        qdl_shared::workload::reference_output(spec.output_kind, &input[i * ib..(i + 1) * ib], out);
    }
}

/// Builds the configured backend for one worker.
pub fn build(config: &BackendConfig) -> Box<dyn Backend> {
    match config.kind {
        BackendKind::Echo => Box::new(echo::Echo),
        BackendKind::Synthetic => Box::new(synthetic::Synthetic::new(config.synthetic.clone())),
    }
}
