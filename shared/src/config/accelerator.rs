//! The accelerator's configuration file (`config/accelerator.toml`): the node, its limits, the
//! batcher, the workers and the backend, beside the [common](super::common) sections.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    AuthConfig, ConfigError, HeartbeatConfig, LogConfig, TlsConfig, TransportConfig, check, check_addr, hostname,
    invalid, load_toml, parse_toml, resolve,
};

/// The accelerator's configuration (`config/accelerator.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AcceleratorConfig {
    /// The node itself.
    pub accelerator: AcceleratorSection,
    /// What sessions may ask for.
    pub limits: LimitsConfig,
    /// Dynamic batching.
    pub batcher: BatcherConfig,
    /// Continuous batching of generative (LLM) workloads, per worker.
    pub generation: super::GenerationConfig,
    /// Workers (one per device).
    pub workers: WorkersConfig,
    /// The inference backend.
    pub backend: BackendConfig,
    /// Control-connection heartbeats.
    pub heartbeat: HeartbeatConfig,
    /// Control-channel authentication.
    pub auth: AuthConfig,
    /// TLS on the control channel.
    pub tls: TlsConfig,
    /// Data transport. With `kind = "rdma"` the accelerator opens its RDMA device at start and
    /// serves RDMA sessions as well as TCP ones.
    pub transport: TransportConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[accelerator]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcceleratorSection {
    /// This accelerator's name, reported to frontends and part of LoadGen's SUT name; must be
    /// unique among the accelerators of a run. Default: the host name (so one config file can
    /// be shared by every node).
    pub name: String,
    /// Address to listen on for control and data connections. Default "0.0.0.0:7070".
    pub listen: String,
    /// Prometheus metrics address; "" disables. Default "127.0.0.1:9102".
    pub metrics_listen: String,
    /// Threads running connection I/O. Default 1.
    pub io_threads: u32,
}

impl Default for AcceleratorSection {
    fn default() -> Self {
        AcceleratorSection {
            name: hostname(),
            listen: "0.0.0.0:7070".into(),
            metrics_listen: "127.0.0.1:9102".into(),
            io_threads: 1,
        }
    }
}

/// `[limits]`: hard limits a session cannot exceed; requests above them are granted less (slots)
/// or refused (sizes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent sessions (frontends). Default 4.
    pub max_sessions: u32,
    /// Data connections per session. Default 16.
    pub max_connections_per_session: u32,
    /// Slots per data connection. Default 8192.
    pub max_slots_per_connection: u32,
    /// Input bytes per sample. Default 16 MiB.
    pub max_sample_bytes: u32,
    /// Output bytes per sample. Default 1 MiB.
    pub max_output_bytes: u32,
    /// Slot memory per session (connections × slots × sample bytes), bytes; a request above it is
    /// granted fewer slots. Default 8 GiB.
    pub max_session_memory_bytes: u64,
    /// Open TCP connections (control and data) in all. When they are full, a new connection
    /// evicts the oldest one still in its handshake; if all are authenticated it is refused.
    /// Default 1024.
    pub max_connections: u32,
    /// Open TCP connections from one address; more are refused. Default 64.
    pub max_connections_per_peer: u32,
    /// Connections still in their handshake (preamble, attach block, authentication) at once.
    /// When they are full, a new connection evicts the oldest of them (first those that have not
    /// sent their preamble), so a flood of half-open connections cannot keep a frontend out.
    /// Default 256.
    pub max_pending_handshakes: u32,
    /// Connections from one address still in their handshake at once; more are refused (a real
    /// frontend opens its data connections one after another). Default 16.
    pub max_pending_per_peer: u32,
    /// Time a connection has to send its 8-byte preamble after the accept, ms. Default 2000.
    pub preamble_timeout_ms: u64,
    /// Time a connection has to finish its handshake after the accept, authentication included,
    /// ms. Default 10000.
    pub handshake_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sessions: 4,
            max_connections_per_session: 16,
            max_slots_per_connection: 8192,
            max_sample_bytes: 16 << 20,
            max_output_bytes: 1 << 20,
            max_session_memory_bytes: 8 << 30,
            max_connections: 1024,
            max_connections_per_peer: 64,
            max_pending_handshakes: 256,
            max_pending_per_peer: 16,
            preamble_timeout_ms: 2_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// `[batcher]`: Triton-style dynamic batching per worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatcherConfig {
    /// Largest batch. Default 64.
    pub max_batch: u32,
    /// Longest a sample waits for a batch to fill before a smaller batch runs, µs. Default 500.
    pub max_queue_delay_us: u64,
    /// Samples queued per worker beyond which new samples are refused ("overloaded"). Default 65536.
    pub max_queue: u32,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig { max_batch: 64, max_queue_delay_us: 500, max_queue: 65_536 }
    }
}

/// `[workers]`: one worker per device. With the `onnx` backend and a GPU execution provider
/// (tensorrt, cuda) each visible NVIDIA GPU (or each one listed in `gpus`) gets a `DeviceWorker`;
/// without a GPU or its driver the node runs `count` CPU workers and says so at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Worker threads when no GPU is used (CPU workers, or the virtual devices of the synthetic
    /// and echo backends). Default 1.
    pub count: u32,
    /// GPUs to use, by CUDA ordinal (`[0, 1]`); absent: every visible GPU; `[]`: none (CPU
    /// workers only). Only the `onnx` backend uses GPUs. Default absent.
    pub gpus: Option<Vec<u32>>,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig { count: 1, gpus: None }
    }
}

/// Which backend runs inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Models a device's batch latency (fixed + per-sample cost) by waiting, then returns the
    /// reference output: stands for a known accelerator rate without using one.
    #[default]
    Synthetic,
    /// Returns the reference output at once: the network-only upper bound.
    Echo,
    /// Runs a real ONNX model with ONNX Runtime (`[backend.onnx]`): TensorRT or CUDA on GPUs,
    /// the CPU elsewhere.
    Onnx,
    /// Runs a real LLM (a GGUF file) with llama.cpp in-process (`[backend.llama]`): generative
    /// workloads only. Needs a qdl-accelerator built with the cargo feature `llama` of qdl-engine.
    Llama,
}

impl BackendKind {
    /// The name used in config and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Synthetic => "synthetic",
            BackendKind::Echo => "echo",
            BackendKind::Onnx => "onnx",
            BackendKind::Llama => "llama",
        }
    }
}

/// `[backend]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// "synthetic", "echo", "onnx" or "llama". Default "synthetic".
    pub kind: BackendKind,
    /// The synthetic backend's latency model.
    pub synthetic: SyntheticConfig,
    /// The onnx backend: model, ONNX Runtime library, execution providers.
    pub onnx: OnnxConfig,
    /// The llama backend: model, threads, context size.
    pub llama: LlamaConfig,
}

/// An ONNX Runtime execution provider, in config form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProviderName {
    /// NVIDIA TensorRT (through ONNX Runtime's TensorRT execution provider); needs a GPU, the
    /// `onnxruntime-gpu` build, CUDA, cuDNN and TensorRT libraries.
    Tensorrt,
    /// NVIDIA CUDA (ONNX Runtime's CUDA execution provider); needs a GPU, CUDA and cuDNN.
    Cuda,
    /// The CPU; always available.
    Cpu,
}

impl ExecutionProviderName {
    /// The name used in config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProviderName::Tensorrt => "tensorrt",
            ExecutionProviderName::Cuda => "cuda",
            ExecutionProviderName::Cpu => "cpu",
        }
    }

    /// Whether it runs on a GPU.
    pub fn is_gpu(self) -> bool {
        !matches!(self, ExecutionProviderName::Cpu)
    }
}

/// `[backend.onnx]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxConfig {
    /// The model file (.onnx); relative paths resolve against the config file's directory.
    /// Required with `kind = "onnx"` (or `--model`). Default none.
    pub model: Option<PathBuf>,
    /// The ONNX Runtime shared library (libonnxruntime.so.1.x, version 1.31 or newer). Default
    /// none: `ORT_DYLIB_PATH`, then the library of the Python `onnxruntime` (or
    /// `onnxruntime-gpu`) package if `python3` can import it.
    pub library: Option<PathBuf>,
    /// Execution providers to try, in order; the first that registers is used (and reported at
    /// start-up and in `qdl_backend_info`). Default ["tensorrt", "cuda", "cpu"].
    pub execution_providers: Vec<ExecutionProviderName>,
    /// Threads ONNX Runtime uses inside one operator, per worker (1 is right on 2-core
    /// machines). Default 1.
    pub intra_op_threads: u32,
    /// Where the TensorRT execution provider caches built engines (and timing data), so a
    /// restart does not rebuild them; relative paths resolve against the config file's
    /// directory. Default none (no cache: engines are built at every start).
    pub trt_engine_cache_dir: Option<PathBuf>,
    /// Let TensorRT use FP16 kernels. Default false.
    pub trt_fp16: bool,
}

impl Default for OnnxConfig {
    fn default() -> Self {
        OnnxConfig {
            model: None,
            library: None,
            execution_providers: vec![
                ExecutionProviderName::Tensorrt,
                ExecutionProviderName::Cuda,
                ExecutionProviderName::Cpu,
            ],
            intra_op_threads: 1,
            trt_engine_cache_dir: None,
            trt_fp16: false,
        }
    }
}

impl OnnxConfig {
    fn validate(&self, kind: BackendKind) -> Result<(), ConfigError> {
        if kind == BackendKind::Onnx {
            match &self.model {
                None => {
                    return Err(invalid("backend.onnx.model", "is required with backend.kind = \"onnx\" (or --model)"));
                }
                Some(p) if !p.is_file() => {
                    return Err(invalid("backend.onnx.model", format!("{} is not a file", p.display())));
                }
                Some(_) => {}
            }
            if let Some(l) = &self.library {
                check(l.is_file(), "backend.onnx.library", &format!("{} is not a file", l.display()))?;
            }
        }
        check(
            !self.execution_providers.is_empty(),
            "backend.onnx.execution_providers",
            "must name at least one of \"tensorrt\", \"cuda\", \"cpu\"",
        )?;
        for (i, p) in self.execution_providers.iter().enumerate() {
            check(
                !self.execution_providers[..i].contains(p),
                "backend.onnx.execution_providers",
                &format!("names {:?} twice", p.as_str()),
            )?;
        }
        check((1..=256).contains(&self.intra_op_threads), "backend.onnx.intra_op_threads", "must be between 1 and 256")
    }
}

/// llama.cpp's largest number of sequences in one context (`LLAMA_MAX_SEQ`).
pub const LLAMA_MAX_SEQUENCES: u32 = 256;

/// The most layers `backend.llama.gpu_layers` names (no model has nearly as many; leave the
/// field unset for all of them).
pub const LLAMA_MAX_GPU_LAYERS: u32 = 4096;

/// `[backend.llama]`: an LLM run by llama.cpp in-process, one context per worker whose sequences
/// (one per running request, `[generation]`) share one KV cache of `context_tokens` tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaConfig {
    /// The model file (.gguf); relative paths resolve against the config file's directory.
    /// Required with `kind = "llama"`. Default none.
    pub model: Option<PathBuf>,
    /// CPU threads llama.cpp uses per worker, for decoding and prompt batches alike (1 is right
    /// on 2-core machines). Default 1.
    pub threads: u32,
    /// The llama.cpp context of each worker (its `n_ctx`), tokens: the KV cache the running
    /// sequences share. With `kind = "llama"`, `generation.kv_tokens` (the scheduler's budget)
    /// must fit in it, so the context never runs out. Default 8192.
    pub context_tokens: u32,
    /// Layers llama.cpp puts on the GPU (its `n_gpu_layers`), counted in the model's layers plus
    /// one for its output layer: unset (the default) = all of them (llama.cpp's -1), 0 = none
    /// (the model on the CPU), at most 4096. Only llama.cpp libraries built with CUDA have a GPU to
    /// put them on (the cargo feature `llama-cuda`, or `llama-dynamic` run against CUDA-built
    /// libraries, as `scripts/gpu-check` does); elsewhere every layer is on the CPU whatever this
    /// says. The start-up log names where they went.
    pub gpu_layers: Option<u32>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig { model: None, threads: 1, context_tokens: 8192, gpu_layers: None }
    }
}

impl LlamaConfig {
    fn validate(&self, kind: BackendKind, generation: &super::GenerationConfig) -> Result<(), ConfigError> {
        check((1..=256).contains(&self.threads), "backend.llama.threads", "must be between 1 and 256")?;
        check(
            (64..=1 << 24).contains(&self.context_tokens),
            "backend.llama.context_tokens",
            "must be between 64 and 16777216 tokens",
        )?;
        check(
            self.gpu_layers.is_none_or(|n| n <= LLAMA_MAX_GPU_LAYERS),
            "backend.llama.gpu_layers",
            &format!("must be at most {LLAMA_MAX_GPU_LAYERS} layers (leave it unset for all of them)"),
        )?;
        if kind != BackendKind::Llama {
            return Ok(());
        }
        match &self.model {
            None => {
                return Err(invalid("backend.llama.model", "is required with backend.kind = \"llama\" (a .gguf file)"));
            }
            Some(p) if !p.is_file() => {
                return Err(invalid("backend.llama.model", format!("{} is not a file", p.display())));
            }
            Some(_) => {}
        }
        check(
            generation.kv_tokens <= self.context_tokens,
            "generation.kv_tokens",
            &format!(
                "is {}, more than backend.llama.context_tokens ({}): with backend.kind = \"llama\" the running \
                 sequences share one llama.cpp context, so lower generation.kv_tokens or raise \
                 backend.llama.context_tokens",
                generation.kv_tokens, self.context_tokens
            ),
        )?;
        check(
            generation.max_running <= LLAMA_MAX_SEQUENCES,
            "generation.max_running",
            &format!("must be at most {LLAMA_MAX_SEQUENCES} with backend.kind = \"llama\" (llama.cpp's LLAMA_MAX_SEQ)"),
        )
    }
}

/// `[backend.synthetic]`: batch latency = `fixed_us + per_sample_us × batch`, per workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// The model for workloads without their own entry. Default 200 µs + 50 µs/sample.
    pub default: LatencyModel,
    /// Per-workload models, keyed by workload name (`[backend.synthetic.workloads.resnet50]`).
    pub workloads: BTreeMap<String, LatencyModel>,
    /// The step time of generative workloads (`[backend.synthetic.tokens]`).
    pub tokens: super::TokenModel,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            default: LatencyModel { fixed_us: 200.0, per_sample_us: 50.0 },
            workloads: BTreeMap::new(),
            tokens: super::TokenModel::default(),
        }
    }
}

impl SyntheticConfig {
    /// The model for `workload`.
    pub fn model_for(&self, workload: &str) -> LatencyModel {
        self.workloads.get(workload).copied().unwrap_or(self.default)
    }
}

/// A batch latency model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyModel {
    /// Cost of any batch, µs.
    pub fixed_us: f64,
    /// Additional cost per sample in the batch, µs.
    pub per_sample_us: f64,
}

impl LatencyModel {
    /// Latency of a batch of `n`, ns.
    pub fn batch_ns(&self, n: usize) -> u64 {
        ((self.fixed_us + self.per_sample_us * n as f64) * 1000.0).max(0.0) as u64
    }

    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let ok = |v: f64| v.is_finite() && (0.0..=10_000_000.0).contains(&v);
        check(ok(self.fixed_us), &format!("{field}.fixed_us"), "must be between 0 and 10000000 µs")?;
        check(ok(self.per_sample_us), &format!("{field}.per_sample_us"), "must be between 0 and 10000000 µs")
    }
}

impl AcceleratorConfig {
    /// Reads a config file (relative paths resolved against its directory) and validates it.
    pub fn load(path: &Path) -> Result<AcceleratorConfig, ConfigError> {
        let mut cfg: AcceleratorConfig = load_toml(path)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file without validating it (command-line flags may still complete it);
    /// relative paths are resolved against its directory. Call [`AcceleratorConfig::validate`].
    pub fn load_unchecked(path: &Path) -> Result<AcceleratorConfig, ConfigError> {
        let mut cfg: AcceleratorConfig = load_toml(path)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.auth.secret_file);
        self.tls.resolve(base);
        let o = &mut self.backend.onnx;
        resolve(base, &mut o.model);
        resolve(base, &mut o.library);
        resolve(base, &mut o.trt_engine_cache_dir);
        resolve(base, &mut self.backend.llama.model);
    }

    /// Parses and validates TOML text (`origin` names it in errors).
    pub fn from_toml(text: &str, origin: &Path) -> Result<AcceleratorConfig, ConfigError> {
        let cfg: AcceleratorConfig = parse_toml(text, origin)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.accelerator;
        check(
            !a.name.is_empty() && a.name.len() <= 64 && a.name.chars().all(|c| c.is_ascii_graphic()),
            "accelerator.name",
            "must be 1 to 64 printable ASCII characters without spaces",
        )?;
        check_addr(&a.listen, "accelerator.listen", false)?;
        check_addr(&a.metrics_listen, "accelerator.metrics_listen", true)?;
        check((1..=64).contains(&a.io_threads), "accelerator.io_threads", "must be between 1 and 64")?;
        let l = &self.limits;
        check((1..=1024).contains(&l.max_sessions), "limits.max_sessions", "must be between 1 and 1024")?;
        check(
            (1..=1024).contains(&l.max_connections_per_session),
            "limits.max_connections_per_session",
            "must be between 1 and 1024",
        )?;
        check(
            (1..=1 << 20).contains(&l.max_slots_per_connection),
            "limits.max_slots_per_connection",
            "must be between 1 and 1048576",
        )?;
        check(l.max_sample_bytes >= 1, "limits.max_sample_bytes", "must be at least 1")?;
        check(l.max_output_bytes >= 1, "limits.max_output_bytes", "must be at least 1")?;
        check(
            l.max_session_memory_bytes >= l.max_sample_bytes as u64,
            "limits.max_session_memory_bytes",
            "must hold at least one sample (limits.max_sample_bytes)",
        )?;
        check((1..=1 << 20).contains(&l.max_connections), "limits.max_connections", "must be between 1 and 1048576")?;
        check(
            (1..=l.max_connections).contains(&l.max_connections_per_peer),
            "limits.max_connections_per_peer",
            "must be between 1 and limits.max_connections",
        )?;
        check(
            (1..=l.max_connections).contains(&l.max_pending_handshakes),
            "limits.max_pending_handshakes",
            "must be between 1 and limits.max_connections",
        )?;
        check(
            (1..=l.max_pending_handshakes).contains(&l.max_pending_per_peer),
            "limits.max_pending_per_peer",
            "must be between 1 and limits.max_pending_handshakes",
        )?;
        check(
            (100..=600_000).contains(&l.handshake_timeout_ms),
            "limits.handshake_timeout_ms",
            "must be between 100 and 600000 ms",
        )?;
        check(
            (100..=l.handshake_timeout_ms).contains(&l.preamble_timeout_ms),
            "limits.preamble_timeout_ms",
            "must be between 100 ms and limits.handshake_timeout_ms",
        )?;
        let b = &self.batcher;
        check((1..=65_536).contains(&b.max_batch), "batcher.max_batch", "must be between 1 and 65536")?;
        check(b.max_queue_delay_us <= 10_000_000, "batcher.max_queue_delay_us", "must be at most 10000000 µs (10 s)")?;
        check(b.max_queue >= b.max_batch, "batcher.max_queue", "must be at least batcher.max_batch")?;
        check((1..=1024).contains(&self.workers.count), "workers.count", "must be between 1 and 1024")?;
        if let Some(gpus) = &self.workers.gpus {
            for (i, g) in gpus.iter().enumerate() {
                check(*g < 1024, "workers.gpus", &format!("{g} is not a CUDA device ordinal"))?;
                check(!gpus[..i].contains(g), "workers.gpus", &format!("lists GPU {g} twice"))?;
            }
        }
        self.backend.onnx.validate(self.backend.kind)?;
        self.backend.llama.validate(self.backend.kind, &self.generation)?;
        self.tls.validate(true)?;
        self.backend.synthetic.default.validate("backend.synthetic.default")?;
        for (name, m) in &self.backend.synthetic.workloads {
            m.validate(&format!("backend.synthetic.workloads.{name}"))?;
        }
        self.backend.synthetic.tokens.validate("backend.synthetic.tokens")?;
        self.generation.validate()?;
        self.transport.validate()?;
        self.heartbeat.validate("heartbeat")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{acc, field_of};

    #[test]
    fn invalid_accelerator_values_name_their_field() {
        let cases = [
            ("[accelerator]\nname = \"\"", "accelerator.name"),
            ("[accelerator]\nname = \"has space\"", "accelerator.name"),
            ("[accelerator]\nlisten = \"nowhere\"", "accelerator.listen"),
            ("[accelerator]\nmetrics_listen = \"1.2.3.4\"", "accelerator.metrics_listen"),
            ("[accelerator]\nio_threads = 0", "accelerator.io_threads"),
            ("[limits]\nmax_sessions = 0", "limits.max_sessions"),
            ("[limits]\nmax_connections_per_session = 0", "limits.max_connections_per_session"),
            ("[limits]\nmax_slots_per_connection = 0", "limits.max_slots_per_connection"),
            ("[limits]\nmax_sample_bytes = 0", "limits.max_sample_bytes"),
            ("[limits]\nmax_output_bytes = 0", "limits.max_output_bytes"),
            ("[limits]\nmax_session_memory_bytes = 1", "limits.max_session_memory_bytes"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            ("[limits]\nmax_connections = 8\nmax_connections_per_peer = 9", "limits.max_connections_per_peer"),
            ("[limits]\nmax_pending_handshakes = 0", "limits.max_pending_handshakes"),
            ("[limits]\nhandshake_timeout_ms = 5", "limits.handshake_timeout_ms"),
            ("[limits]\nmax_pending_per_peer = 0", "limits.max_pending_per_peer"),
            ("[limits]\nmax_pending_handshakes = 8\nmax_pending_per_peer = 9", "limits.max_pending_per_peer"),
            ("[limits]\npreamble_timeout_ms = 20000", "limits.preamble_timeout_ms"),
            ("[batcher]\nmax_batch = 0", "batcher.max_batch"),
            ("[batcher]\nmax_queue_delay_us = 99999999999", "batcher.max_queue_delay_us"),
            ("[batcher]\nmax_batch = 128\nmax_queue = 64", "batcher.max_queue"),
            ("[workers]\ncount = 0", "workers.count"),
            ("[workers]\ngpus = [0, 0]", "workers.gpus"),
            ("[workers]\ngpus = [5000]", "workers.gpus"),
            ("[backend]\nkind = \"onnx\"", "backend.onnx.model"),
            ("[backend]\nkind = \"onnx\"\n[backend.onnx]\nmodel = \"/no/such/model.onnx\"", "backend.onnx.model"),
            (
                concat!(
                    "[backend]\nkind = \"onnx\"\n[backend.onnx]\nmodel = \"",
                    env!("CARGO_MANIFEST_DIR"),
                    "/Cargo.toml\"\nlibrary = \"/no/such/lib.so\""
                ),
                "backend.onnx.library",
            ),
            ("[backend.onnx]\nexecution_providers = []", "backend.onnx.execution_providers"),
            ("[backend.onnx]\nexecution_providers = [\"cpu\", \"cpu\"]", "backend.onnx.execution_providers"),
            ("[backend.onnx]\nintra_op_threads = 0", "backend.onnx.intra_op_threads"),
            ("[tls]\nenabled = true", "tls.cert_file"),
            ("[tls]\nenabled = true\ncert_file = \"/no/cert.pem\"\nkey_file = \"/no/key.pem\"", "tls.cert_file"),
            ("[backend.synthetic.default]\nfixed_us = -1.0\nper_sample_us = 1.0", "backend.synthetic.default.fixed_us"),
            (
                "[backend.synthetic.workloads.bert]\nfixed_us = 1.0\nper_sample_us = nan",
                "backend.synthetic.workloads.bert.per_sample_us",
            ),
            ("[heartbeat]\ninterval_ms = 0", "heartbeat.interval_ms"),
            ("[heartbeat]\nmisses = 0", "heartbeat.misses"),
            ("[transport.rdma]\nport = 0", "transport.rdma.port"),
            ("[transport.rdma]\ngid_index = -2", "transport.rdma.gid_index"),
            ("[transport.rdma]\nmtu = 1500", "transport.rdma.mtu"),
            ("[transport.rdma]\ninline_threshold = 100000", "transport.rdma.inline_threshold"),
            ("[transport.rdma]\nsend_queue_depth = 8", "transport.rdma.send_queue_depth"),
            ("[transport.rdma]\nsignal_every = 0", "transport.rdma.signal_every"),
            ("[transport.rdma]\nsend_queue_depth = 64\nsignal_every = 64", "transport.rdma.signal_every"),
            ("[transport.rdma]\nmax_chain = 0", "transport.rdma.max_chain"),
            ("[transport.rdma]\nack_timeout = 32", "transport.rdma.ack_timeout"),
            ("[transport.rdma]\nretry_count = 8", "transport.rdma.retry_count"),
            ("[transport.rdma]\ndevice = \"has space\"", "transport.rdma.device"),
        ];
        for (text, field) in cases {
            assert_eq!(field_of(acc(text).unwrap_err()), field, "{text}");
        }
    }

    #[test]
    fn invalid_llama_values_name_their_field() {
        let model = concat!("model = \"", env!("CARGO_MANIFEST_DIR"), "/Cargo.toml\"");
        let llama = |rest: &str| format!("[backend]\nkind = \"llama\"\n[backend.llama]\n{model}\n{rest}");
        let cases = [
            ("[backend]\nkind = \"llama\"".to_string(), "backend.llama.model"),
            (
                "[backend]\nkind = \"llama\"\n[backend.llama]\nmodel = \"/no/such/model.gguf\"".to_string(),
                "backend.llama.model",
            ),
            ("[backend.llama]\nthreads = 0".to_string(), "backend.llama.threads"),
            ("[backend.llama]\ncontext_tokens = 8".to_string(), "backend.llama.context_tokens"),
            ("[backend.llama]\ngpu_layers = 4097".to_string(), "backend.llama.gpu_layers"),
            (llama(""), "generation.kv_tokens"),
            (llama("context_tokens = 4096\n[generation]\nkv_tokens = 8192"), "generation.kv_tokens"),
            (llama("[generation]\nkv_tokens = 8192\nmax_running = 257"), "generation.max_running"),
        ];
        for (text, field) in cases {
            assert_eq!(field_of(acc(&text).unwrap_err()), field, "{text}");
        }
        let ok = acc(&llama("threads = 2\n[generation]\nkv_tokens = 8192")).unwrap();
        assert_eq!(ok.backend.kind.name(), "llama");
        assert_eq!((ok.backend.llama.threads, ok.backend.llama.context_tokens), (2, 8192));
        assert_eq!(ok.backend.llama.gpu_layers, None, "all layers by default");
        assert_eq!(acc("[backend.llama]\ngpu_layers = 0").unwrap().backend.llama.gpu_layers, Some(0));
        let negative = field_of(acc("[backend.llama]\ngpu_layers = -1").unwrap_err());
        assert!(negative.starts_with("parse:") && negative.contains("gpu_layers"), "{negative}");
        // Not validated against [generation] unless the llama backend is selected.
        assert!(acc("[backend.llama]\ncontext_tokens = 64").is_ok());
    }
}
