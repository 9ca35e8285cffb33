//! Configuration of both nodes, read from TOML. Every field has a default (documented with its
//! unit); unknown fields are errors; [`FrontendConfig::validate`] and
//! [`AcceleratorConfig::validate`] name the offending field. Relative paths are resolved against
//! the directory of the file they appear in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::workload::WorkloadSpec;

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config (unknown field, wrong type, ...).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `batcher.max_batch`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.to_string(), reason: reason.into() }
}

fn check(ok: bool, field: &str, reason: &str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(invalid(field, reason)) }
}

fn check_addr(value: &str, field: &str, allow_empty: bool) -> Result<(), ConfigError> {
    if value.is_empty() && allow_empty {
        return Ok(());
    }
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|e| invalid(field, format!("{value:?} is not an IP:port address ({e})")))
}

fn load_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_toml(&text, path)
}

fn parse_toml<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text)
        .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().to_string() })
}

fn resolve(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(path) = p
        && path.is_relative()
    {
        *path = base.join(&*path);
    }
}

/// Heartbeat settings of a node, in config form.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Interval between heartbeats on the control connection, ms. Default 1000.
    pub interval_ms: u64,
    /// A peer silent for this many intervals is declared dead. Default 3.
    pub misses: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { interval_ms: 1000, misses: 3 }
    }
}

impl HeartbeatConfig {
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        check(
            (10..=600_000).contains(&self.interval_ms),
            &format!("{section}.interval_ms"),
            "must be between 10 and 600000 ms",
        )?;
        check((1..=100).contains(&self.misses), &format!("{section}.misses"), "must be between 1 and 100")
    }

    /// As the control endpoint's type.
    pub fn to_heartbeat(self) -> crate::control::Heartbeat {
        crate::control::Heartbeat { interval: crate::time::Nanos::from_millis(self.interval_ms), misses: self.misses }
    }
}

/// `[tls]` (both nodes): TLS on the control channel (see [`crate::tls`]). Off by default: the
/// shared-secret handshake authenticates both sides either way; TLS adds confidentiality and the
/// accelerator's certificate. Both nodes of a cluster must agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Run the control channel in TLS. Default false.
    pub enabled: bool,
    /// (accelerator) Its certificate chain, PEM; relative paths resolve against the config
    /// file's directory. Required when enabled.
    pub cert_file: Option<PathBuf>,
    /// (accelerator) Its private key, PEM. Required when enabled.
    pub key_file: Option<PathBuf>,
    /// (frontend) CA certificates the accelerators' certificates must chain to, PEM. Required
    /// when enabled.
    pub ca_file: Option<PathBuf>,
    /// (frontend) The name to verify the accelerators' certificates against, instead of the host
    /// part of their addresses. Default none.
    pub server_name: Option<String>,
}

impl TlsConfig {
    fn validate(&self, accelerator: bool) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let need = |p: &Option<PathBuf>, field: &str| match p {
            None => Err(invalid(field, "is required with tls.enabled = true")),
            Some(p) if !p.is_file() => Err(invalid(field, format!("{} is not a file", p.display()))),
            Some(_) => Ok(()),
        };
        if accelerator {
            need(&self.cert_file, "tls.cert_file")?;
            need(&self.key_file, "tls.key_file")
        } else {
            need(&self.ca_file, "tls.ca_file")
        }
    }

    fn resolve(&mut self, base: &Path) {
        resolve(base, &mut self.cert_file);
        resolve(base, &mut self.key_file);
        resolve(base, &mut self.ca_file);
    }
}

/// `[auth]` (both nodes): the shared secret the control channel is authenticated with (see
/// [`crate::auth`]). The secret itself is never in a config file or on the command line: it is
/// in a file of its own (mode 0600), or in the `QDL_SECRET` environment variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A file holding the secret (at least 16 bytes; surrounding whitespace ignored); relative
    /// paths resolve against the config file's directory. `QDL_SECRET_FILE` overrides it and
    /// `QDL_SECRET` (the secret itself) overrides both. Default none.
    pub secret_file: Option<PathBuf>,
    /// Refuse to start without a secret. With false and no secret the node uses an empty key and
    /// talks only to nodes that have none either: for a closed lab only. Default true.
    pub required: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { secret_file: None, required: true }
    }
}

impl AuthConfig {
    /// The secret this config and the environment give (see [`crate::auth::Secret::load`]).
    pub fn secret(&self) -> Result<crate::auth::Secret, crate::auth::AuthError> {
        crate::auth::Secret::load(self.secret_file.as_deref(), self.required)
    }
}

/// Log output of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` env-filter directive, e.g. "info" or "qdl_frontend=debug". `RUST_LOG` wins.
    /// Default "info".
    pub filter: String,
    /// "text" or "json". Default "text".
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { filter: "info".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

// ---------------------------------------------------------------------------------------------
// Accelerator
// ---------------------------------------------------------------------------------------------

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
/// (tensorrt, cuda) each visible NVIDIA GPU (or each one listed in `gpus`) gets a `GpuWorker`;
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
}

impl BackendKind {
    /// The name used in config and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Synthetic => "synthetic",
            BackendKind::Echo => "echo",
            BackendKind::Onnx => "onnx",
        }
    }
}

/// `[backend]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// "synthetic", "echo" or "onnx". Default "synthetic".
    pub kind: BackendKind,
    /// The synthetic backend's latency model.
    pub synthetic: SyntheticConfig,
    /// The onnx backend: model, ONNX Runtime library, execution providers.
    pub onnx: OnnxConfig,
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

/// `[backend.synthetic]`: batch latency = `fixed_us + per_sample_us × batch`, per workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// The model for workloads without their own entry. Default 200 µs + 50 µs/sample.
    pub default: LatencyModel,
    /// Per-workload models, keyed by workload name (`[backend.synthetic.workloads.resnet50]`).
    pub workloads: BTreeMap<String, LatencyModel>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig { default: LatencyModel { fixed_us: 200.0, per_sample_us: 50.0 }, workloads: BTreeMap::new() }
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
        self.tls.validate(true)?;
        self.backend.synthetic.default.validate("backend.synthetic.default")?;
        for (name, m) in &self.backend.synthetic.workloads {
            m.validate(&format!("backend.synthetic.workloads.{name}"))?;
        }
        self.transport.validate()?;
        self.heartbeat.validate("heartbeat")
    }
}

// ---------------------------------------------------------------------------------------------
// Transport (both nodes)
// ---------------------------------------------------------------------------------------------

/// Which data transport a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TCP data connections (works everywhere).
    #[default]
    Tcp,
    /// RDMA reliable connections through libibverbs (InfiniBand, RoCE, Soft-RoCE).
    Rdma,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Rdma => "rdma",
        })
    }
}

/// How RDMA completions are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CompletionMode {
    /// Sleep on the completion channel (registered with the I/O thread's event loop); wake on
    /// solicited completions. Costs no CPU when idle.
    #[default]
    Event,
    /// Busy-poll the completion queue: lowest latency, one core per I/O thread at 100 %.
    Poll,
}

/// `[transport]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// "tcp" or "rdma". Default "tcp".
    pub kind: TransportKind,
    /// RDMA settings, used when `kind = "rdma"`.
    pub rdma: RdmaConfig,
}

impl TransportConfig {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.rdma.validate("transport.rdma")
    }
}

/// `[transport.rdma]`: device selection and the data path's efficiency knobs (each one is
/// visible in the `qdl_rdma_*` metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdmaConfig {
    /// Device name (`ibv_devices` lists them, e.g. "mlx5_0" or "rxe0"); "" = the first device.
    /// Default "".
    pub device: String,
    /// Port number on the device (1-based). Default 1.
    pub port: u8,
    /// GID index; -1 picks the first RoCE v2 IPv4 GID, else the first non-zero GID. Default -1.
    pub gid_index: i32,
    /// Path MTU, bytes (256, 512, 1024, 2048 or 4096); 0 = the port's active MTU. The smaller of
    /// the two sides' values is used. Default 0.
    pub mtu: u32,
    /// Payloads of at most this many bytes are copied into the work request ("inline") instead of
    /// being read by the NIC from memory; 0 disables. Capped by what the device allows. Default 256.
    pub inline_threshold: u32,
    /// Every Nth write is signalled (generates a local completion that frees send-queue entries);
    /// the rest are unsignalled. Default 64.
    pub signal_every: u32,
    /// Most work requests posted with one doorbell (a chain). Default 256.
    pub max_chain: u32,
    /// Send-queue depth, work requests. Default 2048.
    pub send_queue_depth: u32,
    /// Mark the last work request of every chain solicited, so an event-driven peer wakes once per
    /// chain. Default true.
    pub solicit: bool,
    /// "event" (completion channel) or "poll" (busy polling). Default "event".
    pub completion: CompletionMode,
    /// Local ACK timeout exponent: the NIC waits 4.096 µs × 2^n for an ACK before retrying
    /// (14 ≈ 67 ms). Default 14.
    pub ack_timeout: u8,
    /// Retries before the connection is declared broken (0..=7). Default 7.
    pub retry_count: u8,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: String::new(),
            port: 1,
            gid_index: -1,
            mtu: 0,
            inline_threshold: 256,
            signal_every: 64,
            max_chain: 256,
            send_queue_depth: 2048,
            solicit: true,
            completion: CompletionMode::Event,
            ack_timeout: 14,
            retry_count: 7,
        }
    }
}

impl RdmaConfig {
    /// Checks every value; `prefix` is the section's dotted path.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let f = |name: &str| format!("{prefix}.{name}");
        check(
            self.device.len() <= 64 && self.device.chars().all(|c| c.is_ascii_graphic()),
            &f("device"),
            "must be a device name of at most 64 printable characters",
        )?;
        check(self.port >= 1, &f("port"), "must be at least 1 (ports are numbered from 1)")?;
        check((-1..=255).contains(&self.gid_index), &f("gid_index"), "must be -1 (automatic) or 0 to 255")?;
        check(
            matches!(self.mtu, 0 | 256 | 512 | 1024 | 2048 | 4096),
            &f("mtu"),
            "must be 0 (the port's MTU), 256, 512, 1024, 2048 or 4096",
        )?;
        check(self.inline_threshold <= 4096, &f("inline_threshold"), "must be at most 4096 bytes")?;
        check((16..=65_536).contains(&self.send_queue_depth), &f("send_queue_depth"), "must be between 16 and 65536")?;
        check(
            self.signal_every >= 1 && self.signal_every <= self.send_queue_depth / 2,
            &f("signal_every"),
            "must be between 1 and half of send_queue_depth",
        )?;
        check(
            self.max_chain >= 1 && self.max_chain <= self.send_queue_depth,
            &f("max_chain"),
            "must be between 1 and send_queue_depth",
        )?;
        check(self.ack_timeout <= 31, &f("ack_timeout"), "must be between 0 and 31")?;
        check(self.retry_count <= 7, &f("retry_count"), "must be between 0 and 7")
    }
}

// ---------------------------------------------------------------------------------------------
// Frontend
// ---------------------------------------------------------------------------------------------

/// The frontend's configuration (`config/frontend.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendConfig {
    /// The node and its accelerators.
    pub frontend: FrontendSection,
    /// What runs.
    pub workload: WorkloadConfig,
    /// LoadGen's test settings.
    pub loadgen: LoadgenConfig,
    /// The in-process baseline (`run --local`).
    pub local: LocalConfig,
    /// Control-connection heartbeats.
    pub heartbeat: HeartbeatConfig,
    /// Control-channel authentication.
    pub auth: AuthConfig,
    /// TLS on the control channel.
    pub tls: TlsConfig,
    /// Data transport to the accelerators.
    pub transport: TransportConfig,
    /// Logging.
    pub log: LogConfig,
}

/// How the QueryIssuer picks a connection for each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Dispatch {
    /// Round-robin in Offline, least-in-flight otherwise (NVIDIA's choice).
    #[default]
    Auto,
    /// Each connection in turn.
    RoundRobin,
    /// The connection with the fewest samples in flight.
    LeastInFlight,
}

/// `[frontend]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendSection {
    /// This node's name (sent in Hello, for the accelerators' logs). Default "frontend".
    pub name: String,
    /// Accelerators as "host:port". Default none (give them here or with --accelerator).
    pub accelerators: Vec<String>,
    /// Data connections (queue pairs) per accelerator. Default 2.
    pub connections_per_accelerator: u32,
    /// Slots per connection: the most samples in flight on one connection. Default 8192.
    pub slots_per_connection: u32,
    /// "auto", "round-robin" or "least-in-flight". Default "auto".
    pub dispatch: Dispatch,
    /// Threads running connection I/O. Default 1.
    pub io_threads: u32,
    /// Prometheus metrics address; "" disables. Default "127.0.0.1:9101".
    pub metrics_listen: String,
    /// Time allowed to connect and complete the handshake with each accelerator, ms. Default 5000.
    pub connect_timeout_ms: u64,
    /// Warm the accelerators' backends up before the test. Default true.
    pub warmup: bool,
}

impl Default for FrontendSection {
    fn default() -> Self {
        FrontendSection {
            name: "frontend".into(),
            accelerators: Vec::new(),
            connections_per_accelerator: 2,
            slots_per_connection: 8192,
            dispatch: Dispatch::Auto,
            io_threads: 1,
            metrics_listen: "127.0.0.1:9101".into(),
            connect_timeout_ms: 5000,
            warmup: true,
        }
    }
}

/// `[workload]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    /// "resnet50" or "bert", or any name when `spec` describes the tensors. Default "resnet50".
    pub name: String,
    /// Seed of the deterministic sample generator. Default 0x5eed.
    pub seed: u64,
    /// A directory of .npy files to load samples from instead of generating them. Default none.
    pub dataset_dir: Option<PathBuf>,
    /// Samples in the QSL. Default: ResNet-50 50000, BERT 10833, others 1024 (or the dataset's).
    pub total_samples: Option<u32>,
    /// Samples loaded at once (LoadGen's performance sample count). Default: ResNet-50 1024,
    /// BERT 10833, others 1024 (capped at total_samples).
    pub performance_samples: Option<u32>,
    /// A custom workload's tensors (`[workload.spec]`); built-in names need none.
    pub spec: Option<WorkloadSpec>,
    /// Reference outputs for `check-accuracy` of a tensors workload: `<output>.npy` per output
    /// tensor, samples stacked along the first axis (e.g. computed by ONNX Runtime in Python).
    /// Recorded in report.json. Default none.
    pub reference_dir: Option<PathBuf>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            name: "resnet50".into(),
            seed: 0x5eed,
            dataset_dir: None,
            total_samples: None,
            performance_samples: None,
            spec: None,
            reference_dir: None,
        }
    }
}

impl WorkloadConfig {
    /// The workload's tensors: `spec`, or the built-in one named `name`.
    pub fn resolve_spec(&self) -> Result<WorkloadSpec, ConfigError> {
        match &self.spec {
            Some(spec) => {
                let mut s = spec.clone().complete();
                s.name = self.name.clone();
                s.validate().map_err(|r| invalid("workload.spec", r))?;
                Ok(s)
            }
            None => WorkloadSpec::builtin(&self.name).ok_or_else(|| {
                invalid(
                    "workload.name",
                    format!("unknown workload {:?}: use resnet50, bert, or describe it in [workload.spec]", self.name),
                )
            }),
        }
    }

    /// Samples in the QSL.
    pub fn total(&self) -> u32 {
        self.total_samples.unwrap_or(match self.name.as_str() {
            "resnet50" => 50_000,
            "bert" => 10_833,
            _ => 1024,
        })
    }

    /// Samples loaded at once.
    pub fn performance(&self) -> u32 {
        self.performance_samples
            .unwrap_or(match self.name.as_str() {
                "bert" => 10_833,
                _ => 1024,
            })
            .min(self.total())
    }
}

/// LoadGen scenarios, in config form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioName {
    /// All samples in one query.
    #[default]
    Offline,
    /// Poisson arrivals at a target QPS.
    Server,
    /// One sample at a time.
    SingleStream,
    /// Groups of samples back to back.
    MultiStream,
}

impl ScenarioName {
    /// The lowercase name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Offline => "offline",
            ScenarioName::Server => "server",
            ScenarioName::SingleStream => "singlestream",
            ScenarioName::MultiStream => "multistream",
        }
    }
}

/// LoadGen modes, in config form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    /// A timed run judged VALID or INVALID.
    #[default]
    Performance,
    /// Every sample once; responses logged for checking.
    Accuracy,
}

impl ModeName {
    /// The lowercase name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ModeName::Performance => "performance",
            ModeName::Accuracy => "accuracy",
        }
    }
}

/// `[loadgen]`: the test. Its optional overrides sit above mlperf.conf and below a user.conf and
/// the command-line flags (mlperf.conf < `[loadgen]` < user.conf < flags); unset ones keep
/// mlperf.conf's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadgenConfig {
    /// "offline", "server", "singlestream" or "multistream". Default "offline".
    pub scenario: ScenarioName,
    /// "performance" or "accuracy". Default "performance".
    pub mode: ModeName,
    /// Where LoadGen's logs and report.json go. Default "results".
    pub output_dir: PathBuf,
    /// A LoadGen user.conf, applied after mlperf.conf and this section's overrides (its values win
    /// over them). Default none.
    pub user_conf: Option<PathBuf>,
    /// Minimum duration, ms (mlperf.conf: 600000).
    pub min_duration_ms: Option<u64>,
    /// Maximum duration, ms (0 = unbounded).
    pub max_duration_ms: Option<u64>,
    /// Minimum query count.
    pub min_query_count: Option<u64>,
    /// Maximum query count (0 = unbounded).
    pub max_query_count: Option<u64>,
    /// Server target QPS.
    pub server_target_qps: Option<f64>,
    /// Server latency bound, ms (mlperf.conf: ResNet-50 15, BERT 130).
    pub server_target_latency_ms: Option<f64>,
    /// Offline expected QPS (sizes the single Offline query).
    pub offline_expected_qps: Option<f64>,
    /// SingleStream expected latency, ms.
    pub single_stream_expected_latency_ms: Option<f64>,
    /// MultiStream expected latency, ms.
    pub multi_stream_expected_latency_ms: Option<f64>,
    /// MultiStream samples per query (8).
    pub multi_stream_samples_per_query: Option<u64>,
    /// Accuracy mode: only this many samples (0 = all).
    pub accuracy_sample_count: Option<u64>,
    /// Overrides the performance sample count.
    pub performance_sample_count: Option<u64>,
    /// Write LoadGen's trace (costly at high rates). Default false.
    pub trace: bool,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        LoadgenConfig {
            scenario: ScenarioName::Offline,
            mode: ModeName::Performance,
            output_dir: PathBuf::from("results"),
            user_conf: None,
            min_duration_ms: None,
            max_duration_ms: None,
            min_query_count: None,
            max_query_count: None,
            server_target_qps: None,
            server_target_latency_ms: None,
            offline_expected_qps: None,
            single_stream_expected_latency_ms: None,
            multi_stream_expected_latency_ms: None,
            multi_stream_samples_per_query: None,
            accuracy_sample_count: None,
            performance_sample_count: None,
            trace: false,
        }
    }
}

/// `[local]`: the in-process "Closed division" baseline of `run --local`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// The accelerator config whose batcher, workers and backend the baseline runs. Default
    /// none: the accelerator defaults.
    pub accelerator_config: Option<PathBuf>,
    /// How many such accelerators the box holds (their workers run side by side). Default 1.
    pub accelerators: u32,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig { accelerator_config: None, accelerators: 1 }
    }
}

impl FrontendConfig {
    /// Reads a config file (relative paths resolved against its directory) and validates it.
    pub fn load(path: &Path) -> Result<FrontendConfig, ConfigError> {
        let mut cfg: FrontendConfig = load_toml(path)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and validates TOML text; relative paths resolve against `base`.
    pub fn from_toml(text: &str, origin: &Path, base: &Path) -> Result<FrontendConfig, ConfigError> {
        let mut cfg: FrontendConfig = parse_toml(text, origin)?;
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.workload.dataset_dir);
        resolve(base, &mut self.workload.reference_dir);
        resolve(base, &mut self.auth.secret_file);
        self.tls.resolve(base);
        resolve(base, &mut self.loadgen.user_conf);
        resolve(base, &mut self.local.accelerator_config);
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = &self.frontend;
        check(!f.name.is_empty() && f.name.len() <= 64, "frontend.name", "must be 1 to 64 characters")?;
        self.tls.validate(false)?;
        for (i, a) in f.accelerators.iter().enumerate() {
            check(
                a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                &format!("frontend.accelerators[{i}]"),
                &format!("{a:?} is not host:port"),
            )?;
        }
        check(
            (1..=1024).contains(&f.connections_per_accelerator),
            "frontend.connections_per_accelerator",
            "must be between 1 and 1024",
        )?;
        check(
            (1..=1 << 20).contains(&f.slots_per_connection),
            "frontend.slots_per_connection",
            "must be between 1 and 1048576",
        )?;
        check((1..=64).contains(&f.io_threads), "frontend.io_threads", "must be between 1 and 64")?;
        check_addr(&f.metrics_listen, "frontend.metrics_listen", true)?;
        check(
            (1..=600_000).contains(&f.connect_timeout_ms),
            "frontend.connect_timeout_ms",
            "must be between 1 and 600000 ms",
        )?;
        let w = &self.workload;
        w.resolve_spec()?;
        check(w.total_samples != Some(0), "workload.total_samples", "must be at least 1")?;
        check(w.performance_samples != Some(0), "workload.performance_samples", "must be at least 1")?;
        if let Some(d) = &w.dataset_dir {
            check(d.is_dir(), "workload.dataset_dir", &format!("{} is not a directory", d.display()))?;
        }
        let l = &self.loadgen;
        if let Some(p) = &l.user_conf {
            check(p.is_file(), "loadgen.user_conf", &format!("{} is not a file", p.display()))?;
        }
        let positive = |v: Option<f64>, field: &str| {
            check(v.is_none_or(|v| v.is_finite() && v > 0.0), field, "must be a positive number")
        };
        positive(l.server_target_qps, "loadgen.server_target_qps")?;
        positive(l.server_target_latency_ms, "loadgen.server_target_latency_ms")?;
        positive(l.offline_expected_qps, "loadgen.offline_expected_qps")?;
        positive(l.single_stream_expected_latency_ms, "loadgen.single_stream_expected_latency_ms")?;
        positive(l.multi_stream_expected_latency_ms, "loadgen.multi_stream_expected_latency_ms")?;
        check(
            l.multi_stream_samples_per_query != Some(0),
            "loadgen.multi_stream_samples_per_query",
            "must be at least 1",
        )?;
        check((1..=1024).contains(&self.local.accelerators), "local.accelerators", "must be between 1 and 1024")?;
        if let Some(p) = &self.local.accelerator_config {
            check(p.is_file(), "local.accelerator_config", &format!("{} is not a file", p.display()))?;
        }
        self.transport.validate()?;
        self.heartbeat.validate("heartbeat")
    }
}

/// The machine's host name (`/proc/sys/kernel/hostname`, else `/etc/hostname`), for default node
/// names; "localhost" if neither holds a usable name (1-64 printable ASCII characters).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(text: &str) -> Result<AcceleratorConfig, ConfigError> {
        AcceleratorConfig::from_toml(text, Path::new("test.toml"))
    }

    fn fe(text: &str) -> Result<FrontendConfig, ConfigError> {
        FrontendConfig::from_toml(text, Path::new("test.toml"), Path::new("."))
    }

    fn field_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::Parse { message, .. } => format!("parse: {message}"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_secret_itself_cannot_be_put_in_a_config_file() {
        let e = field_of(acc("[auth]\nsecret = \"hunter2hunter2hunter2\"").unwrap_err());
        assert!(e.starts_with("parse:") && e.contains("secret"), "{e}");
        let a = acc("[auth]\nsecret_file = \"secret\"\nrequired = false").unwrap();
        assert_eq!((a.auth.secret_file.as_deref(), a.auth.required), (Some(Path::new("secret")), false));
    }

    #[test]
    fn empty_files_give_documented_defaults() {
        let a = acc("").unwrap();
        assert_eq!(a.batcher, BatcherConfig { max_batch: 64, max_queue_delay_us: 500, max_queue: 65536 });
        assert_eq!(a.limits.max_slots_per_connection, 8192);
        assert_eq!(a.heartbeat, HeartbeatConfig { interval_ms: 1000, misses: 3 });
        let f = fe("").unwrap();
        assert_eq!(f.frontend.slots_per_connection, 8192);
        assert_eq!(f.frontend.connections_per_accelerator, 2);
        assert_eq!(f.workload.total(), 50_000);
        assert_eq!(f.workload.performance(), 1024);
    }

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
    fn invalid_frontend_values_name_their_field() {
        let cases = [
            ("[frontend]\nname = \"\"", "frontend.name"),
            ("[frontend]\naccelerators = [\"a:1\", \"nohost\"]", "frontend.accelerators[1]"),
            ("[frontend]\naccelerators = [\"a:99999\"]", "frontend.accelerators[0]"),
            ("[frontend]\nconnections_per_accelerator = 0", "frontend.connections_per_accelerator"),
            ("[frontend]\nslots_per_connection = 0", "frontend.slots_per_connection"),
            ("[frontend]\nio_threads = 0", "frontend.io_threads"),
            ("[frontend]\nmetrics_listen = \"x\"", "frontend.metrics_listen"),
            ("[frontend]\nconnect_timeout_ms = 0", "frontend.connect_timeout_ms"),
            ("[workload]\nname = \"gpt\"", "workload.name"),
            ("[workload]\ntotal_samples = 0", "workload.total_samples"),
            ("[workload]\nperformance_samples = 0", "workload.performance_samples"),
            ("[workload]\ndataset_dir = \"/no/such/dir\"", "workload.dataset_dir"),
            ("[loadgen]\nuser_conf = \"/no/such/user.conf\"", "loadgen.user_conf"),
            ("[loadgen]\nserver_target_qps = 0.0", "loadgen.server_target_qps"),
            ("[loadgen]\nserver_target_latency_ms = -5.0", "loadgen.server_target_latency_ms"),
            ("[loadgen]\noffline_expected_qps = inf", "loadgen.offline_expected_qps"),
            ("[loadgen]\nmulti_stream_samples_per_query = 0", "loadgen.multi_stream_samples_per_query"),
            ("[local]\naccelerators = 0", "local.accelerators"),
            ("[local]\naccelerator_config = \"/no/such.toml\"", "local.accelerator_config"),
            ("[heartbeat]\nmisses = 1000", "heartbeat.misses"),
            ("[transport.rdma]\nmax_chain = 100000", "transport.rdma.max_chain"),
            (
                "[workload]\nname = \"tiny\"\n[workload.spec]\nname = \"x\"\noutput_kind = \"class-id\"\noutput_bytes = 3\n\
                 inputs = [{ name = \"x\", dtype = \"f32\", shape = [4] }]",
                "workload.spec",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(field_of(fe(text).unwrap_err()), field, "{text}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_types_are_parse_errors_naming_the_key() {
        let e = acc("[batcher]\nmax_bach = 3").unwrap_err().to_string();
        assert!(e.contains("max_bach"), "{e}");
        let e = fe("[loadgen]\nscenario = \"turbo\"").unwrap_err().to_string();
        assert!(e.contains("turbo") || e.contains("scenario"), "{e}");
        let e = fe("[frontend]\nslots_per_connection = \"many\"").unwrap_err().to_string();
        assert!(e.contains("slots_per_connection"), "{e}");
        let e = acc("[transport]\nkind = \"udp\"").unwrap_err().to_string();
        assert!(e.contains("udp") || e.contains("kind"), "{e}");
    }

    #[test]
    fn custom_workload_spec_in_config() {
        let f = fe("[workload]\nname = \"tiny\"\n[workload.spec]\nname = \"ignored\"\noutput_kind = \"digest\"\noutput_bytes = 16\n\
                    inputs = [{ name = \"x\", dtype = \"f32\", shape = [2, 8] }]")
        .unwrap();
        let spec = f.workload.resolve_spec().unwrap();
        assert_eq!((spec.name.as_str(), spec.input_bytes(), spec.output_bytes), ("tiny", 64, 16));
    }

    #[test]
    fn shipped_config_files_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut checked = 0;
        for dir in [root.clone(), root.join("lab")] {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if name.starts_with("accelerator") && name.ends_with(".toml") {
                    AcceleratorConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    checked += 1;
                } else if name.starts_with("frontend") && name.ends_with(".toml") {
                    FrontendConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 4, "config/ and config/lab/ each hold a frontend and an accelerator config");
    }
}
