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

/// One batch, gathered: `n` samples of `spec.input_bytes()` each, back to back in `input`.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The workload.
    pub spec: &'a WorkloadSpec,
    /// Samples in the batch.
    pub n: usize,
    /// Their inputs, contiguous.
    pub input: &'a [u8],
    /// When the worker took the batch from its queue, before gathering it: a device's batch time
    /// (host-to-device copies included) counts from here.
    pub formed: std::time::Instant,
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

    /// Runs one batch; `output` receives `batch.n` outputs of `spec.output_bytes` each.
    fn infer(&mut self, batch: &Batch<'_>, output: &mut [u8]) -> Result<(), BackendError>;

    /// Prepares for `spec` before the timed run (loads, compiles, touches memory).
    fn warmup(&mut self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        let n = self.max_batch().unwrap_or(1).min(8);
        let input = vec![0u8; spec.input_bytes() * n];
        let mut output = vec![0u8; spec.output_bytes as usize * n];
        self.infer(&Batch { spec, n, input: &input, formed: std::time::Instant::now() }, &mut output)
    }
}

/// Writes the reference output of each sample of `batch` into `output`.
pub fn reference_batch(batch: &Batch<'_>, output: &mut [u8]) {
    let (ib, ob) = (batch.spec.input_bytes(), batch.spec.output_bytes as usize);
    for (i, out) in output.chunks_exact_mut(ob).take(batch.n).enumerate() {
        qdl_shared::workload::reference_output(batch.spec.output_kind, &batch.input[i * ib..(i + 1) * ib], out);
    }
}

/// Builds the configured backend for one worker.
pub fn build(config: &BackendConfig) -> Box<dyn Backend> {
    match config.kind {
        BackendKind::Echo => Box::new(echo::Echo),
        BackendKind::Synthetic => Box::new(synthetic::Synthetic::new(config.synthetic.clone())),
    }
}
