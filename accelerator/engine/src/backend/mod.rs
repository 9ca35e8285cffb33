//! Inference backends behind one trait. A worker owns one backend instance and calls it with a
//! whole batch gathered into one contiguous input buffer.
//!
//! Both built-in backends answer every sample with the workload's reference output
//! ([`qdl_shared::workload::reference_output`]), a documented function of the sample's bytes, so
//! every response can be checked end to end:
//! - [`echo::Echo`]: answers at once (the network-only upper bound);
//! - [`synthetic::Synthetic`]: answers after `fixed + per_sample × batch` µs, waiting rather than
//!   spinning, so it stands for a device of a known rate without using the CPU.
//!
//! [`onnx::OnnxBackend`] runs a real model with ONNX Runtime and answers with its output tensors.
//!
//! [`build`] makes one backend per worker, choosing the workers' devices: GPUs for the onnx
//! backend with a GPU execution provider when a driver and GPUs are there, CPU workers otherwise.

pub mod echo;
#[cfg(feature = "llama")]
pub mod llama;
pub mod onnx;
pub mod synthetic;

use std::sync::Arc;

use qdl_shared::config::{BackendConfig, BackendKind, WorkersConfig};
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
    /// The backend could not be set up (library, model, device).
    #[error("{0}")]
    Setup(String),
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

    /// What it runs and where, for logs ("onnx onet.onnx on cpu").
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// The execution provider (onnx) or device kind serving it: "cpu", "cuda", "tensorrt",
    /// or "virtual" for the synthetic and echo backends.
    fn provider(&self) -> &'static str {
        "virtual"
    }

    /// Runs one batch; `output` receives `batch.n` outputs of `spec.output_bytes` each.
    fn infer(&mut self, batch: &Batch<'_>, output: &mut [u8]) -> Result<(), BackendError>;

    /// The engine for generative (LLM) workloads, if this backend serves them; the worker's
    /// continuous-batching lane steps it.
    fn token_engine(&self) -> Option<Box<dyn crate::generate::engine::TokenEngine>> {
        None
    }

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

/// Checks workloads against what the backends can serve, without reaching into the workers.
#[derive(Clone)]
pub enum Checker {
    /// Serves any valid workload (echo, synthetic).
    Any,
    /// Serves workloads that describe this model.
    Model(Arc<onnx::model::ModelInfo>),
    /// Serves generative workloads of this vocabulary size (the llama backend's model).
    Generative {
        /// The model's file name, for the error.
        model: String,
        /// Its vocabulary size.
        vocab: u32,
    },
}

impl Checker {
    /// Whether `spec` can be served; the error says why not.
    pub fn check(&self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        match self {
            Checker::Any => Ok(()),
            Checker::Model(info) => info.check(spec).map_err(|e| BackendError::Unsupported {
                backend: "onnx",
                workload: spec.name.clone(),
                reason: e.to_string(),
            }),
            Checker::Generative { model, vocab } => {
                let unsupported = |reason: String| BackendError::Unsupported {
                    backend: "llama",
                    workload: spec.name.clone(),
                    reason,
                };
                match spec.generation {
                    None => Err(unsupported("the llama backend serves generative (LLM) workloads only".into())),
                    Some(g) if g.vocab_size != *vocab => Err(unsupported(format!(
                        "the workload's vocabulary has {} tokens, the model {model} has {vocab}: it is not this \
                         model's workload",
                        g.vocab_size
                    ))),
                    Some(_) => Ok(()),
                }
            }
        }
    }
}

/// The backends of a node's workers.
pub struct Backends {
    /// One per worker.
    pub backends: Vec<Box<dyn Backend>>,
    /// The workload check.
    pub checker: Checker,
    /// Start-up notes: devices found or not, providers passed over and why.
    pub notes: Vec<String>,
}

/// Builds one backend per worker; see the module docs. `count` is the number of workers without
/// GPUs (`workers.count`).
pub fn build(
    config: &BackendConfig,
    workers: &WorkersConfig,
    generation: &qdl_shared::config::GenerationConfig,
) -> Result<Backends, BackendError> {
    let count = workers.count.max(1) as usize;
    match config.kind {
        BackendKind::Echo => Ok(Backends {
            backends: (0..count).map(|_| Box::new(echo::Echo) as Box<dyn Backend>).collect(),
            checker: Checker::Any,
            notes: Vec::new(),
        }),
        BackendKind::Synthetic => Ok(Backends {
            backends: (0..count)
                .map(|_| Box::new(synthetic::Synthetic::new(config.synthetic.clone())) as Box<dyn Backend>)
                .collect(),
            checker: Checker::Any,
            notes: Vec::new(),
        }),
        BackendKind::Onnx => build_onnx(config, workers, count),
        BackendKind::Llama => build_llama(config, count, generation.max_running),
    }
}

/// `count` llama workers sharing one model, each with its own context of `sequences` sequences
/// (`generation.max_running`, which the config keeps at or below llama.cpp's 256).
#[cfg(feature = "llama")]
fn build_llama(config: &BackendConfig, count: usize, sequences: u32) -> Result<Backends, BackendError> {
    let l = &config.llama;
    let mut loaded = Vec::with_capacity(count);
    for _ in 0..count {
        loaded.push(llama::LlamaBackend::load(l, sequences.clamp(1, crate::generate::llama::MAX_SEQUENCES))?);
    }
    let first = loaded[0].model();
    let mut notes = vec![format!(
        "llama.cpp: {} (vocabulary {}, trained context {}), shared by {count} worker(s), each a context of {} \
         tokens and {} thread(s)",
        first.file_name(),
        first.vocab(),
        first.context_trained(),
        l.context_tokens,
        l.threads
    )];
    if l.context_tokens > first.context_trained() {
        notes.push(format!(
            "backend.llama.context_tokens ({}) is beyond the context the model was trained with ({})",
            l.context_tokens,
            first.context_trained()
        ));
    }
    // Sessions are checked against the model when they are set up, before any sample.
    let checker = Checker::Generative { model: first.file_name().to_string(), vocab: first.vocab() };
    let backends = loaded.into_iter().map(|b| Box::new(b) as Box<dyn Backend>).collect();
    Ok(Backends { backends, checker, notes })
}

#[cfg(not(feature = "llama"))]
fn build_llama(_: &BackendConfig, _: usize, _: u32) -> Result<Backends, BackendError> {
    Err(BackendError::Setup(
        "backend.kind = \"llama\": this qdl-accelerator was built without llama.cpp (cargo feature `llama`); \
         rebuild with `--features qdl-engine/llama`"
            .into(),
    ))
}

fn build_onnx(config: &BackendConfig, workers: &WorkersConfig, count: usize) -> Result<Backends, BackendError> {
    let mut notes = Vec::new();
    let (_, located) = onnx::library::environment(config.onnx.library.as_deref()).map_err(BackendError::from)?;
    notes.push(format!("ONNX Runtime {} (from {})", located.path.display(), located.source));
    let wants_gpu = config.onnx.execution_providers.iter().any(|p| p.is_gpu());
    let gpus: Vec<u32> = match (&workers.gpus, wants_gpu) {
        (_, false) => Vec::new(),
        (Some(list), true) if list.is_empty() => {
            notes.push("workers.gpus = []: CPU workers only".into());
            Vec::new()
        }
        (list, true) => match crate::gpu::discover() {
            Ok(found) => {
                for g in &found {
                    notes.push(format!(
                        "GPU {}: {} ({} MiB, compute {}.{})",
                        g.ordinal,
                        g.name,
                        g.total_bytes >> 20,
                        g.compute_capability.0,
                        g.compute_capability.1
                    ));
                }
                let visible: Vec<u32> = found.iter().map(|g| g.ordinal).collect();
                match list {
                    None => visible,
                    Some(list) => {
                        if let Some(missing) = list.iter().find(|g| !visible.contains(g)) {
                            return Err(BackendError::Setup(format!(
                                "workers.gpus lists GPU {missing}, but the visible GPUs are {visible:?}"
                            )));
                        }
                        list.clone()
                    }
                }
            }
            Err(e) => {
                notes.push(format!("no GPU used ({e}): running {count} CPU worker(s)"));
                Vec::new()
            }
        },
    };
    let placements: Vec<onnx::Placement> = if gpus.is_empty() {
        vec![onnx::Placement::Cpu; count]
    } else {
        gpus.iter().map(|&g| onnx::Placement::Gpu(g)).collect()
    };
    let mut backends: Vec<Box<dyn Backend>> = Vec::new();
    let mut info = None;
    for p in placements {
        let b = onnx::OnnxBackend::load(&config.onnx, p)?;
        for s in b.skipped() {
            if !notes.contains(s) {
                notes.push(s.clone());
            }
        }
        info.get_or_insert_with(|| {
            notes.push(format!("model {}", b.info().summary()));
            b.info().clone()
        });
        backends.push(Box::new(b));
    }
    let info = info.expect("at least one worker");
    Ok(Backends { backends, checker: Checker::Model(info), notes })
}
