//! A worker under load with a real model: the accelerator's own `WorkerPool` (batcher, worker
//! thread, onnx backend) on one GPU or the CPU, fed with a model directory's samples as fast as a
//! window of in-flight samples allows, every answer compared with the directory's reference
//! outputs. `qdl-gpu-check --model-dir` runs it on each GPU; tests run it on the CPU.
//!
//! A model directory is what `scripts/models` writes: `model.onnx`, `frontend.toml` (the
//! workload: `[workload.spec]`, `dataset_dir`, `reference_dir`), the dataset (`<input>.npy`) and the
//! references (`<output>.npy`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qdl_shared::config::{
    BackendConfig, BackendKind, BatcherConfig, ConfigError, ExecutionProviderName, FrontendConfig, OnnxConfig,
    WorkersConfig,
};
use qdl_shared::npy::{NpyError, NpyFile};
use qdl_shared::time::Nanos;
use qdl_shared::transport::{Payload, PayloadSource};
use qdl_shared::workload::{DType, WorkloadSpec};

use crate::backend::BackendError;
use crate::worker::{Input, WorkItem, WorkerError, WorkerPool, refuse, reply_channel};

/// Errors of a load check: a model directory that cannot be used, a worker that cannot start,
/// or a wrong answer.
#[derive(Debug, thiserror::Error)]
pub enum LoadCheckError {
    /// `frontend.toml` cannot be read, or its workload does not resolve.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `frontend.toml` does not name a directory the check needs.
    #[error("frontend.toml names no {0}")]
    MissingDir(&'static str),
    /// A NumPy file of samples or references cannot be read or does not fit the workload.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// The directory has no samples, or fewer references than samples.
    #[error("{}: {samples} samples, references for {references}", dir.display())]
    TooFewReferences {
        /// The model directory.
        dir: PathBuf,
        /// Samples in the dataset.
        samples: usize,
        /// Samples with reference outputs.
        references: usize,
    },
    /// The worker cannot start.
    #[error(transparent)]
    Workers(#[from] WorkerError),
    /// The backend cannot serve the workload (the model and the workload differ).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The worker stopped before answering every sample.
    #[error("the worker stopped")]
    WorkerStopped,
    /// A sample was answered with an error.
    #[error("sample {sample}: {message}")]
    Answered {
        /// The sample's id in the run.
        sample: u64,
        /// The worker's error message.
        message: String,
    },
    /// An answer differs from its reference.
    #[error("sample {sample}: {mismatch}")]
    Wrong {
        /// The sample's index in the directory.
        sample: usize,
        /// How it differs.
        mismatch: Mismatch,
    },
}

/// How an answer differs from its reference.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Mismatch {
    /// An output that is not floating point differs.
    #[error("output {output:?} differs from the reference")]
    Differs {
        /// The output's name.
        output: String,
    },
    /// A floating-point element is out of tolerance (or NaN).
    #[error("output {output:?}[{element}] = {got}, reference {want}")]
    OutOfTolerance {
        /// The output's name.
        output: String,
        /// The element's index in the output.
        element: usize,
        /// The answer.
        got: f64,
        /// The reference.
        want: f64,
    },
}

/// Samples in flight at once.
const WINDOW: usize = 256;

/// A model directory, loaded.
pub struct ModelDir {
    /// The model file.
    pub model: PathBuf,
    /// The workload.
    pub spec: WorkloadSpec,
    /// Samples available.
    pub samples: usize,
    inputs: Arc<Samples>,
    reference: Vec<u8>,
}

struct Samples(Vec<u8>);

impl PayloadSource for Samples {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Reads `<dir>/<name>.npy` for each tensor (samples stacked) and interleaves them per sample.
fn read_stacked(dir: &Path, tensors: &[qdl_shared::workload::TensorSpec]) -> Result<(Vec<u8>, usize), NpyError> {
    let mut files = Vec::new();
    let mut n = usize::MAX;
    for t in tensors {
        let f = NpyFile::open(&dir.join(format!("{}.npy", t.name)))?;
        n = n.min(f.expect(t.dtype, &t.shape, true)?);
        files.push(f);
    }
    let per: usize = tensors.iter().map(|t| t.bytes()).sum();
    let mut out = vec![0u8; n * per];
    for i in 0..n {
        let mut at = i * per;
        for (t, f) in tensors.iter().zip(&files) {
            f.read_at((i * t.bytes()) as u64, &mut out[at..at + t.bytes()])?;
            at += t.bytes();
        }
    }
    Ok((out, n))
}

impl ModelDir {
    /// Loads `dir`; see the module docs.
    pub fn open(dir: &Path) -> Result<ModelDir, LoadCheckError> {
        let cfg = FrontendConfig::load(&dir.join("frontend.toml"))?;
        let spec = cfg.workload.resolve_spec()?;
        let data = cfg.workload.dataset_dir.ok_or(LoadCheckError::MissingDir("dataset_dir"))?;
        let refs = cfg.workload.reference_dir.ok_or(LoadCheckError::MissingDir("reference_dir"))?;
        let (inputs, n) = read_stacked(&data, &spec.inputs)?;
        let (reference, m) = read_stacked(&refs, &spec.outputs)?;
        if n == 0 || m < n {
            return Err(LoadCheckError::TooFewReferences { dir: dir.to_path_buf(), samples: n, references: m });
        }
        Ok(ModelDir { model: dir.join("model.onnx"), spec, samples: n, inputs: Arc::new(Samples(inputs)), reference })
    }
}

/// What a load run did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The execution provider that served ("cpu", "cuda", "tensorrt").
    pub provider: String,
    /// What the worker ran and where.
    pub device: String,
    /// Samples answered (all checked).
    pub samples: u64,
    /// Seconds the load ran.
    pub seconds: f64,
    /// The largest absolute error of a floating-point output element.
    pub max_abs_error: f64,
    /// Batches formed: (size, count).
    pub batch_sizes: Vec<(u32, u64)>,
    /// Providers passed over, and why.
    pub notes: Vec<String>,
}

impl LoadReport {
    /// Samples per second.
    pub fn rate(&self) -> f64 {
        self.samples as f64 / self.seconds.max(1e-9)
    }
}

/// Load settings.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The GPU to run on (`None`: the CPU).
    pub gpu: Option<u32>,
    /// Execution providers to try, in order.
    pub providers: Vec<ExecutionProviderName>,
    /// The ONNX Runtime library (`None`: the backend's own search).
    pub library: Option<PathBuf>,
    /// How long to keep the worker busy, at least one pass over the samples.
    pub duration: Duration,
    /// Largest batch.
    pub max_batch: u32,
    /// Tolerance of floating-point outputs: |got - want| <= atol + rtol·|want|.
    pub atol: f64,
    /// See `atol`.
    pub rtol: f64,
}

/// Runs the load; an error names the first wrong answer or what could not be set up.
pub fn worker_load(dir: &ModelDir, opts: &LoadOptions) -> Result<LoadReport, LoadCheckError> {
    let backend = BackendConfig {
        kind: BackendKind::Onnx,
        onnx: OnnxConfig {
            model: Some(dir.model.clone()),
            library: opts.library.clone(),
            execution_providers: opts.providers.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let workers = WorkersConfig { count: 1, gpus: Some(opts.gpu.into_iter().collect()) };
    let batcher = BatcherConfig { max_batch: opts.max_batch, max_queue_delay_us: 1000, max_queue: 4096 };
    let pool = WorkerPool::start(&workers, batcher, &Default::default(), &backend)?;
    pool.check(&dir.spec)?;
    let spec = Arc::new(dir.spec.clone());
    let (ib, ob) = (spec.input_bytes(), spec.output_bytes as usize);
    let (sink, mut replies) = reply_channel(WINDOW as u32);
    let source: Arc<dyn PayloadSource> = dir.inputs.clone();
    let worker = pool.pick();
    let started = Instant::now();
    let (mut sent, mut answered, mut worst) = (0u64, 0u64, 0.0f64);
    let mut result = Ok(());
    loop {
        let done_sending = started.elapsed() >= opts.duration && sent >= dir.samples as u64;
        while !done_sending && result.is_ok() && (sent - answered) < WINDOW as u64 {
            let i = (sent % dir.samples as u64) as usize;
            let payload = Payload::new(source.clone(), i * ib, ib).expect("sample within the buffer");
            let item = WorkItem {
                len: payload.len() as u32,
                input: Input::Buffer(payload),
                sample_id: sent,
                slot: (sent % WINDOW as u64) as u32,
                reply: sink.clone(),
                spec: spec.clone(),
                received: Nanos::now(),
            };
            if let Err(item) = worker.try_submit(item) {
                refuse(item, qdl_shared::wire::data::DataErrorCode::Overloaded, "queue full");
            }
            sent += 1;
        }
        if answered == sent {
            break;
        }
        let r = match replies.blocking_recv() {
            Some(crate::worker::Answer::Done(r)) => r,
            // Fixed-shape workloads have no first tokens.
            Some(crate::worker::Answer::FirstTokens(_)) => continue,
            None => return Err(LoadCheckError::WorkerStopped),
        };
        for (k, e) in r.entries.iter().enumerate() {
            answered += 1;
            if result.is_err() {
                continue;
            }
            if let Some((_, msg)) = &r.error {
                result = Err(LoadCheckError::Answered { sample: e.sample_id, message: msg.clone() });
                continue;
            }
            let i = (e.sample_id % dir.samples as u64) as usize;
            match compare(&spec, r.output(k), &dir.reference[i * ob..(i + 1) * ob], opts.atol, opts.rtol) {
                Ok(err) => worst = worst.max(err),
                Err(mismatch) => result = Err(LoadCheckError::Wrong { sample: i, mismatch }),
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = LoadReport {
        provider: pool.providers().join(","),
        device: pool.workers_described().join("; "),
        samples: answered,
        seconds,
        max_abs_error: worst,
        batch_sizes: pool.batch_sizes(),
        notes: pool.notes().to_vec(),
    };
    drop(worker);
    pool.shutdown();
    result.map(|()| report)
}

/// Compares one answer with its reference; the largest absolute error of a float element, or
/// the first element out of tolerance.
fn compare(spec: &WorkloadSpec, got: &[u8], want: &[u8], atol: f64, rtol: f64) -> Result<f64, Mismatch> {
    let mut at = 0;
    let mut worst = 0.0f64;
    for t in &spec.outputs {
        let (g, w) = (&got[at..at + t.bytes()], &want[at..at + t.bytes()]);
        at += t.bytes();
        if t.dtype != DType::F32 {
            if g != w {
                return Err(Mismatch::Differs { output: t.name.clone() });
            }
            continue;
        }
        for (e, (g, w)) in g.chunks_exact(4).zip(w.chunks_exact(4)).enumerate() {
            let g = f32::from_le_bytes(g.try_into().expect("4 bytes")) as f64;
            let w = f32::from_le_bytes(w.try_into().expect("4 bytes")) as f64;
            let err = (g - w).abs();
            // NaN answers fail: they are never within tolerance.
            if err.is_nan() || err > atol + rtol * w.abs() {
                return Err(Mismatch::OutOfTolerance { output: t.name.clone(), element: e, got: g, want: w });
            }
            worst = worst.max(err);
        }
    }
    Ok(worst)
}
