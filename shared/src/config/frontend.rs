//! The frontend's configuration file (`config/frontend.toml`): the node and its accelerators, the
//! workload, LoadGen's settings and the local baseline, beside the [common](super::common)
//! sections.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    AuthConfig, ConfigError, HeartbeatConfig, LogConfig, TlsConfig, TransportConfig, check, check_addr, invalid,
    load_toml, parse_toml, resolve,
};
use crate::workload::WorkloadSpec;

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
    /// A generative workload's prompts as text, tokenized by `tokenizer` when the QSL loads
    /// (before the test, untimed), instead of generated or pre-tokenized (`dataset_dir`) ones.
    /// A UTF-8 file, one prompt per line: sample `i` is the `i`-th non-empty line; lines holding
    /// only whitespace are skipped, a `\r` before a line's newline is dropped, and inside a line
    /// `\n` stands for a newline and `\\` for a backslash (any other backslash is itself).
    /// Special tokens written out (`<|im_start|>`) are parsed as such; prompts longer than the
    /// workload's `max_input_tokens` are truncated to their first `max_input_tokens` tokens.
    /// Not with `dataset_dir`. Default none.
    pub prompts_file: Option<PathBuf>,
    /// The GGUF model file whose embedded tokenizer tokenizes `prompts_file` (only its
    /// vocabulary is read, not its weights); BOS is added when the file's metadata says so
    /// (`tokenizer.ggml.add_bos_token`). Required with `prompts_file`, only with it. Default none.
    pub tokenizer: Option<PathBuf>,
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
            prompts_file: None,
            tokenizer: None,
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
                s.validate().map_err(|r| invalid("workload.spec", r.to_string()))?;
                Ok(s)
            }
            None => WorkloadSpec::builtin(&self.name).ok_or_else(|| {
                invalid(
                    "workload.name",
                    format!(
                        "unknown workload {:?}: use one of {} or describe it in [workload.spec]",
                        self.name,
                        WorkloadSpec::BUILTIN.join(", ")
                    ),
                )
            }),
        }
    }

    /// Checks `prompts_file` and `tokenizer` (`generative`: whether the workload is an LLM's).
    fn validate_prompts(&self, generative: bool) -> Result<(), ConfigError> {
        let Some(p) = &self.prompts_file else {
            return check(
                self.tokenizer.is_none(),
                "workload.tokenizer",
                "tokenizes workload.prompts_file, which is not set (pre-tokenized samples come from dataset_dir)",
            );
        };
        check(
            generative,
            "workload.prompts_file",
            &format!("workload {:?} is not generative: only an LLM's samples come from a prompts file", self.name),
        )?;
        check(
            self.dataset_dir.is_none(),
            "workload.prompts_file",
            "give either prompts_file (text, tokenized when the QSL loads) or dataset_dir (pre-tokenized), not both",
        )?;
        check(p.is_file(), "workload.prompts_file", &format!("{} is not a file", p.display()))?;
        match &self.tokenizer {
            None => Err(invalid(
                "workload.tokenizer",
                "required with workload.prompts_file: the GGUF model file whose tokenizer tokenizes the prompts",
            )),
            Some(t) => check(t.is_file(), "workload.tokenizer", &format!("{} is not a file", t.display())),
        }
    }

    /// Samples in the QSL: the benchmark's dataset size (resnet50 50000, bert 10833,
    /// llama3.1-8b 13368, llama2-70b 24576), else 1024.
    pub fn total(&self) -> u32 {
        self.total_samples.unwrap_or(match self.name.as_str() {
            "resnet50" => 50_000,
            "bert" => 10_833,
            "llama3.1-8b" => 13_368,
            "llama2-70b" => 24_576,
            _ => 1024,
        })
    }

    /// Samples loaded at once: mlperf.conf's performance_sample_count (bert, the LLMs: the whole
    /// dataset), else 1024.
    pub fn performance(&self) -> u32 {
        self.performance_samples
            .unwrap_or(match self.name.as_str() {
                "bert" => 10_833,
                "llama3.1-8b" => 13_368,
                "llama2-70b" => 24_576,
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
    /// MLPerf's Interactive category of the LLM benchmarks: LoadGen's Server scenario with the
    /// `<model>-interactive` keys of mlperf.conf (tighter TTFT/TPOT bounds).
    Interactive,
}

impl ScenarioName {
    /// The lowercase name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Offline => "offline",
            ScenarioName::Server => "server",
            ScenarioName::SingleStream => "singlestream",
            ScenarioName::MultiStream => "multistream",
            ScenarioName::Interactive => "interactive",
        }
    }

    /// Whether LoadGen runs it as its Server scenario (Server and Interactive).
    pub fn is_server(self) -> bool {
        matches!(self, ScenarioName::Server | ScenarioName::Interactive)
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
        resolve(base, &mut self.workload.prompts_file);
        resolve(base, &mut self.workload.tokenizer);
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
        let spec = w.resolve_spec()?;
        check(w.total_samples != Some(0), "workload.total_samples", "must be at least 1")?;
        check(w.performance_samples != Some(0), "workload.performance_samples", "must be at least 1")?;
        if let Some(d) = &w.dataset_dir {
            check(d.is_dir(), "workload.dataset_dir", &format!("{} is not a directory", d.display()))?;
        }
        w.validate_prompts(spec.is_generative())?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{fe, field_of};

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
    fn prompts_files_need_a_generative_workload_and_a_tokenizer() {
        use super::super::{ConfigError, FrontendConfig};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prompts.txt"), "Hello\n").unwrap();
        std::fs::write(dir.path().join("model.gguf"), "GGUF").unwrap();
        let load =
            |body: &str| FrontendConfig::from_toml(&format!("[workload]\n{body}"), Path::new("test.toml"), dir.path());
        // Relative paths resolve against the config's directory, like dataset_dir's.
        let ok = load("name = \"smollm2-135m\"\nprompts_file = \"prompts.txt\"\ntokenizer = \"model.gguf\"").unwrap();
        assert_eq!(ok.workload.prompts_file, Some(dir.path().join("prompts.txt")));
        assert_eq!(ok.workload.tokenizer, Some(dir.path().join("model.gguf")));
        let d = dir.path().display();
        let cases = [
            // Only an LLM's samples are prompts.
            ("prompts_file = \"prompts.txt\"\ntokenizer = \"model.gguf\"", "workload.prompts_file", "not generative"),
            (
                "name = \"bert\"\nprompts_file = \"prompts.txt\"\ntokenizer = \"model.gguf\"",
                "workload.prompts_file",
                "not generative",
            ),
            (
                &format!(
                    "name = \"llama3.1-8b\"\nprompts_file = \"p.txt\"\ntokenizer = \"model.gguf\"\ndataset_dir = \"{d}\""
                ),
                "workload.prompts_file",
                "not both",
            ),
            (
                "name = \"llama2-70b\"\nprompts_file = \"nope.txt\"\ntokenizer = \"model.gguf\"",
                "workload.prompts_file",
                "nope.txt is not a file",
            ),
            (
                "name = \"llama2-70b\"\nprompts_file = \".\"\ntokenizer = \"model.gguf\"",
                "workload.prompts_file",
                "is not a file",
            ),
            (
                "name = \"smollm2-135m\"\nprompts_file = \"prompts.txt\"",
                "workload.tokenizer",
                "required with workload.prompts_file",
            ),
            (
                "name = \"smollm2-135m\"\nprompts_file = \"prompts.txt\"\ntokenizer = \"no.gguf\"",
                "workload.tokenizer",
                "no.gguf is not a file",
            ),
            (
                "name = \"smollm2-135m\"\ntokenizer = \"model.gguf\"",
                "workload.tokenizer",
                "prompts_file, which is not set",
            ),
        ];
        for (body, field, reason) in cases {
            match load(body).unwrap_err() {
                ConfigError::Invalid { field: f, reason: r } => {
                    assert_eq!(f, field, "{body}");
                    assert!(r.contains(reason), "{body}: {r}");
                }
                e => panic!("{body}: {e}"),
            }
        }
    }

    #[test]
    fn custom_workload_spec_in_config() {
        let f = fe("[workload]\nname = \"tiny\"\n[workload.spec]\nname = \"ignored\"\noutput_kind = \"digest\"\noutput_bytes = 16\n\
                    inputs = [{ name = \"x\", dtype = \"f32\", shape = [2, 8] }]")
        .unwrap();
        let spec = f.workload.resolve_spec().unwrap();
        assert_eq!((spec.name.as_str(), spec.input_bytes(), spec.output_bytes), ("tiny", 64, 16));
    }
}
