//! The `onnx` backend: a real model run by ONNX Runtime (through `ort`, loaded at run time).
//!
//! - The library is found and loaded once per process ([`library`]); a missing or too old one is
//!   a start-up error.
//! - Execution providers are tried in the configured order (tensorrt → cuda → cpu by default):
//!   the first whose registration succeeds serves the worker, and the others' reasons are kept
//!   for the start-up log. TensorRT's engines are cached in `trt_engine_cache_dir`.
//! - The model's inputs and outputs ([`model::ModelInfo`]) are read from the model; a session's
//!   workload is checked against them before any sample is sent, and a fixed batch dimension
//!   caps the batcher.
//! - A batch arrives as `n` samples back to back, each its tensors concatenated. With one input
//!   tensor the batch buffer is handed to ONNX Runtime as is (no copy); otherwise each tensor is
//!   gathered into its own buffer. Only the workload's outputs are computed; each sample's are
//!   concatenated into its answer.
//! - On a GPU worker with the CUDA or TensorRT provider the session runs on that worker's
//!   device, and (CUDA) the batch goes through the worker's pinned staging and device buffers
//!   with I/O bound to them ([`gpu`]).

pub mod gpu;
pub mod library;
pub mod model;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use ort::ep::{self, ExecutionProvider as _};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{DynTensor, TensorElementType, TensorRef, ValueType};
use qdl_shared::config::{ExecutionProviderName, OnnxConfig};
use qdl_shared::workload::{DType, WorkloadSpec};

use super::{Backend, BackendError, Batch};
use model::{ModelInfo, ModelTensor};

/// Errors of the onnx backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OnnxError {
    /// No ONNX Runtime library was found.
    #[error(
        "ONNX Runtime library not found: set backend.onnx.library or ORT_DYLIB_PATH to libonnxruntime.so \
         (1.31 or newer), or install the Python package (pip install onnxruntime); {looked}"
    )]
    LibraryNotFound {
        /// Where it looked last, and why that failed.
        looked: String,
    },
    /// The library could not be loaded (absent, not ONNX Runtime, too old).
    #[error("cannot load ONNX Runtime: {reason}")]
    Library {
        /// Why.
        reason: String,
    },
    /// The model could not be loaded with any configured execution provider.
    #[error("cannot load model {model}: {reason}")]
    Model {
        /// The model file.
        model: String,
        /// Why, for each provider tried.
        reason: String,
    },
    /// A run failed.
    #[error("{0}")]
    Run(String),
}

impl From<OnnxError> for BackendError {
    fn from(e: OnnxError) -> BackendError {
        match e {
            OnnxError::Run(m) => BackendError::Failed(m),
            other => BackendError::Setup(other.to_string()),
        }
    }
}

/// Where a worker runs its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The CPU.
    Cpu,
    /// A GPU, by CUDA ordinal.
    Gpu(u32),
}

/// A loaded model on one worker; see the module docs.
pub struct OnnxBackend {
    session: Session,
    info: Arc<ModelInfo>,
    provider: ExecutionProviderName,
    placement: Placement,
    /// Per-input gather buffers (u64 words: aligned for every dtype).
    scratch: Vec<Vec<u64>>,
    /// Run options selecting the current workload's outputs.
    selected: Option<(Vec<String>, RunOptions<HasSelectedOutputs>)>,
    gpu: Option<gpu::GpuIo>,
    skipped: Vec<String>,
}

/// Reads a model's inputs and outputs from a session.
fn model_info(session: &Session, path: &Path) -> ModelInfo {
    let tensor = |o: &ort::value::Outlet| {
        let (dtype, type_name, dims) = match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => (dtype_of(*ty), format!("{ty:?}"), shape.to_vec()),
            other => (None, format!("{other:?}"), Vec::new()),
        };
        ModelTensor { name: o.name().to_string(), dtype, type_name, dims }
    };
    ModelInfo {
        file: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string()),
        inputs: session.inputs().iter().map(tensor).collect(),
        outputs: session.outputs().iter().map(tensor).collect(),
    }
}

fn dtype_of(t: TensorElementType) -> Option<DType> {
    Some(match t {
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Float32 => DType::F32,
        _ => return None,
    })
}

impl OnnxBackend {
    /// Loads `config.model` for one worker at `placement`, trying the configured execution
    /// providers in order (GPU ones only on a GPU placement).
    pub fn load(config: &OnnxConfig, placement: Placement) -> Result<OnnxBackend, OnnxError> {
        let path = config.model.as_deref().ok_or_else(|| OnnxError::Model {
            model: "(none)".into(),
            reason: "backend.onnx.model is not set (or pass --model)".into(),
        })?;
        let (env, _) = library::environment(config.library.as_deref())?;
        let mut skipped = Vec::new();
        for &provider in &config.execution_providers {
            let device = match (provider.is_gpu(), placement) {
                (true, Placement::Gpu(d)) => d as i32,
                (true, Placement::Cpu) => {
                    skipped.push(format!("execution provider {}: this worker has no GPU", provider.as_str()));
                    continue;
                }
                (false, _) => 0,
            };
            match session_with(&env, config, provider, device, path) {
                Ok(session) => {
                    let info = Arc::new(model_info(&session, path));
                    let gpu = match (provider, placement) {
                        (ExecutionProviderName::Cuda, Placement::Gpu(d)) => match gpu::GpuIo::new(d) {
                            Ok(io) => Some(io),
                            Err(e) => {
                                skipped.push(format!(
                                    "GPU {d} staging unavailable ({e}): ONNX Runtime copies the inputs itself"
                                ));
                                None
                            }
                        },
                        _ => None,
                    };
                    return Ok(OnnxBackend {
                        session,
                        info,
                        provider,
                        placement,
                        scratch: Vec::new(),
                        selected: None,
                        gpu,
                        skipped,
                    });
                }
                Err(reason) => skipped.push(format!("execution provider {}: {reason}", provider.as_str())),
            }
        }
        let reason = skipped.iter().map(|s| s.trim_start_matches("execution provider ")).collect::<Vec<_>>().join("; ");
        Err(OnnxError::Model { model: path.display().to_string(), reason })
    }

    /// The model's inputs and outputs.
    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
    }

    /// The execution provider serving this worker.
    pub fn provider(&self) -> ExecutionProviderName {
        self.provider
    }

    /// Where it runs.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Providers tried before the one in use, with the reason each was passed over.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    fn select(&mut self, spec: &WorkloadSpec) -> Result<(), OnnxError> {
        let names: Vec<String> = spec.outputs.iter().map(|t| t.name.clone()).collect();
        if self.selected.as_ref().is_some_and(|(n, _)| *n == names) {
            return Ok(());
        }
        let selector = names.iter().fold(OutputSelector::no_default(), |s, n| s.with(n.clone()));
        let options = RunOptions::new().map_err(|e| OnnxError::Run(e.to_string()))?.with_outputs(selector);
        self.selected = Some((names, options));
        Ok(())
    }

    /// Runs `n` samples padded to `rows`; outputs go to `output`.
    fn run_cpu(&mut self, batch: &Batch<'_>, rows: usize, output: &mut [u8]) -> Result<(), OnnxError> {
        let spec = batch.spec;
        let (n, ib) = (batch.n, spec.input_bytes());
        self.select(spec)?;
        // Zero copy: one input tensor, no padding, the buffer aligned for the element type.
        let direct = spec.inputs.len() == 1
            && rows == n
            && (batch.input.as_ptr() as usize).is_multiple_of(spec.inputs[0].dtype.size());
        if !direct {
            self.scratch.resize_with(spec.inputs.len(), Vec::new);
            let mut offset = 0;
            for (k, t) in spec.inputs.iter().enumerate() {
                let b = t.bytes();
                let words = (rows * b).div_ceil(8);
                let buf = &mut self.scratch[k];
                buf.clear();
                buf.resize(words, 0);
                let bytes = as_bytes_mut(buf);
                for i in 0..n {
                    bytes[i * b..(i + 1) * b].copy_from_slice(&batch.input[i * ib + offset..i * ib + offset + b]);
                }
                offset += b;
            }
        }
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(spec.inputs.len());
        for (k, t) in spec.inputs.iter().enumerate() {
            let bytes: &[u8] =
                if direct { &batch.input[..n * ib] } else { &as_bytes(&self.scratch[k])[..rows * t.bytes()] };
            let mut shape = vec![rows as i64];
            shape.extend(t.shape.iter().map(|&d| d as i64));
            inputs.push((Cow::Borrowed(t.name.as_str()), input_value(t.dtype, bytes, shape)?));
        }
        let options = &self.selected.as_ref().expect("selected above").1;
        let outputs = self.session.run_with_options(inputs, options).map_err(|e| OnnxError::Run(e.to_string()))?;
        split_outputs(&outputs, spec, rows, n, output)
    }
}

/// Splits a run's outputs (each `rows × t.shape`) into the first `n` samples' answers: sample
/// `i`'s answer is its row of every output tensor, concatenated in the workload's order.
fn split_outputs(
    outputs: &ort::session::SessionOutputs<'_>,
    spec: &WorkloadSpec,
    rows: usize,
    n: usize,
    output: &mut [u8],
) -> Result<(), OnnxError> {
    let ob = spec.output_bytes as usize;
    let mut offset = 0;
    for t in &spec.outputs {
        let value =
            outputs.get(&t.name).ok_or_else(|| OnnxError::Run(format!("the model gave no output {:?}", t.name)))?;
        let b = t.bytes();
        let data = output_bytes(value, t, rows)?;
        for i in 0..n {
            output[i * ob + offset..i * ob + offset + b].copy_from_slice(&data[i * b..(i + 1) * b]);
        }
        offset += b;
    }
    Ok(())
}

/// The bytes of output `t` of a run of `rows` rows, after checking its type and size.
fn output_bytes<'v>(
    value: &'v ort::value::DynValue,
    t: &qdl_shared::workload::TensorSpec,
    rows: usize,
) -> Result<&'v [u8], OnnxError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(OnnxError::Run(format!("output {:?} is not a tensor", t.name)));
    };
    if dtype_of(*ty) != Some(t.dtype) {
        return Err(OnnxError::Run(format!("output {:?} is {ty:?}, the workload says {:?}", t.name, t.dtype)));
    }
    let want: Vec<i64> = std::iter::once(rows as i64).chain(t.shape.iter().map(|&d| d as i64)).collect();
    if shape.to_vec() != want {
        return Err(OnnxError::Run(format!(
            "output {:?} has shape {shape}, the workload expects {want:?} (batch first)",
            t.name
        )));
    }
    let tensor = value
        .view()
        .downcast::<ort::value::DynTensorValueType>()
        .map_err(|e| OnnxError::Run(format!("output {:?}: {e}", t.name)))?;
    if !tensor.memory_info().is_cpu_accessible() {
        return Err(OnnxError::Run(format!("output {:?} is not in host memory", t.name)));
    }
    let len = rows * t.bytes();
    let ptr = tensor.data_ptr().cast::<u8>();
    if ptr.is_null() {
        return Err(OnnxError::Run(format!("output {:?} has no data", t.name)));
    }
    // SAFETY: the value is a host-accessible tensor (checked above) whose element type and shape
    // were checked to be `rows × t.shape` of `t.dtype`, so its buffer holds exactly `len` bytes;
    // the slice borrows `value`, which outlives it.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A tensor over `bytes` (aligned for `dtype`) shaped `shape`; f16 data is copied into a tensor of
/// ONNX Runtime's (`ort` has no f16 element type without the `half` crate).
fn input_value(dtype: DType, bytes: &[u8], shape: Vec<i64>) -> Result<SessionInputValue<'_>, OnnxError> {
    fn view<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        bytes: &[u8],
        shape: Vec<i64>,
    ) -> Result<SessionInputValue<'_>, OnnxError> {
        debug_assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
        // SAFETY: callers pass buffers aligned for the element type (the u64 scratch, or a batch
        // buffer whose alignment was checked), `T` is a plain integer or float type for which every
        // bit pattern is valid, and the length is whole elements of the slice's bytes.
        let data =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / std::mem::size_of::<T>()) };
        let tensor = TensorRef::from_array_view((shape, data)).map_err(|e| OnnxError::Run(e.to_string()))?;
        Ok(tensor.into())
    }
    match dtype {
        DType::I8 => view::<i8>(bytes, shape),
        DType::U8 => view::<u8>(bytes, shape),
        DType::I32 => view::<i32>(bytes, shape),
        DType::I64 => view::<i64>(bytes, shape),
        DType::F32 => view::<f32>(bytes, shape),
        DType::F16 => {
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            let mut t = DynTensor::new(&ort::memory::Allocator::default(), TensorElementType::Float16, dims)
                .map_err(|e| OnnxError::Run(e.to_string()))?;
            let ptr = t.data_ptr_mut().cast::<u8>();
            // SAFETY: the tensor was just allocated on the CPU with `shape` f16 elements, which is
            // `bytes.len()` bytes (2 per element), and nothing else refers to it yet.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
            Ok(t.into())
        }
    }
}

fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirements; the slice covers exactly the words.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as for `as_bytes`; every byte pattern is a valid u64, so writes through it are sound.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

/// Why one execution provider could not build a session (the backend tries the next one; see
/// [`OnnxError::Model`]).
#[derive(Debug, thiserror::Error)]
enum ProviderError {
    /// This ONNX Runtime build lacks the provider.
    #[error("not in this ONNX Runtime build (install {install})")]
    NotInBuild {
        /// What to install for it.
        install: &'static str,
    },
    /// TensorRT's engine cache directory cannot be created.
    #[error("engine cache {}: {source}", dir.display())]
    EngineCache {
        /// The directory (backend.onnx.trt_engine_cache_dir).
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// ONNX Runtime refused the options or the model.
    #[error("{0}")]
    Ort(#[from] ort::Error),
}

/// Builds a session with exactly `provider` (and the CPU for what it cannot run).
fn session_with(
    env: &ort::environment::Environment,
    config: &OnnxConfig,
    provider: ExecutionProviderName,
    device: i32,
    path: &Path,
) -> Result<Session, ProviderError> {
    fn e<R>(e: ort::Error<R>) -> ProviderError
    where
        ort::Error: From<ort::Error<R>>,
    {
        ProviderError::Ort(e.into())
    }
    let mut builder = Session::builder(env)?
        .with_intra_threads(config.intra_op_threads as usize)
        .map_err(e)?
        .with_no_environment_execution_providers()
        .map_err(e)?;
    let dispatch = match provider {
        ExecutionProviderName::Cpu => None,
        ExecutionProviderName::Cuda => {
            if !ep::CUDA::is_available().unwrap_or(false) {
                return Err(ProviderError::NotInBuild { install: "onnxruntime-gpu" });
            }
            Some(ep::CUDA::default().with_device_id(device).build().error_on_failure())
        }
        ExecutionProviderName::Tensorrt => {
            if !ep::TensorRT::is_available().unwrap_or(false) {
                return Err(ProviderError::NotInBuild { install: "onnxruntime-gpu and TensorRT" });
            }
            let mut trt = ep::TensorRT::default().with_device_id(device).with_fp16(config.trt_fp16);
            if let Some(dir) = &config.trt_engine_cache_dir {
                std::fs::create_dir_all(dir)
                    .map_err(|source| ProviderError::EngineCache { dir: dir.clone(), source })?;
                let d = dir.display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&d)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&d);
            }
            Some(trt.build().error_on_failure())
        }
    };
    if let Some(d) = dispatch {
        builder = builder.with_execution_providers([d]).map_err(e)?;
    }
    Ok(builder.commit_from_file(path)?)
}

impl Backend for OnnxBackend {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn max_batch(&self) -> Option<usize> {
        self.info.fixed_batch()
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), BackendError> {
        self.info.check(spec).map_err(|e| BackendError::Unsupported {
            backend: "onnx",
            workload: spec.name.clone(),
            reason: e.to_string(),
        })
    }

    fn infer(&mut self, batch: &Batch<'_>, output: &mut [u8]) -> Result<(), BackendError> {
        let rows = match self.info.fixed_batch() {
            Some(b) if batch.n > b => {
                return Err(BackendError::Failed(format!("a batch of {} exceeds the model's batch of {b}", batch.n)));
            }
            Some(b) => b,
            None => batch.n,
        };
        if self.gpu.is_some() && gpu::GpuIo::supports(batch) {
            self.select(batch.spec)?;
            let OnnxBackend { session, info, selected, gpu, .. } = self;
            let (Some(io), Some((_, options))) = (gpu.as_mut(), selected.as_ref()) else {
                unreachable!("checked and selected above")
            };
            return io.run(session, options, info, batch, rows, output).map_err(BackendError::from);
        }
        self.run_cpu(batch, rows, output).map_err(BackendError::from)
    }

    fn describe(&self) -> String {
        match self.placement {
            Placement::Cpu => format!("onnx {} on {}", self.info.file, self.provider.as_str()),
            Placement::Gpu(d) => format!("onnx {} on {} (GPU {d})", self.info.file, self.provider.as_str()),
        }
    }

    fn provider(&self) -> &'static str {
        self.provider.as_str()
    }
}
