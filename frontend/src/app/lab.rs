//! `qdl-frontend lab`: the README's main job. Starts two accelerators on loopback, runs each
//! chosen workload and scenario over the network and in-process ("accelerators in the box"),
//! and prints a table like Table 1 of NVIDIA's Network-division article.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use qdl_frontend::report::RunReport;
use qdl_shared::config::AcceleratorConfig;
use serde::Serialize;

use super::cluster::{Accelerators, Live, preferred_metrics, run_test};
use super::progress::thousands;

/// The lab's accelerator: a synthetic device sized so the whole lab fits a 2-core machine
/// (about 3,000 ResNet-50 or 4,300 BERT samples/s per accelerator).
pub const LAB_ACCELERATOR_TOML: &str = r#"# The accelerators of `qdl-frontend lab` (written here for reference; pass
# --accelerator-config to the lab to use another).
[limits]
max_session_memory_bytes = 1073741824

[batcher]
max_batch = 16
max_queue_delay_us = 1000

[workers]
count = 1

[backend]
kind = "synthetic"

# ResNet-50: a batch of 16 takes 0.5 ms + 16 x 0.3 ms = 5.3 ms (about 3,000 samples/s).
[backend.synthetic.workloads.resnet50]
fixed_us = 500.0
per_sample_us = 300.0

# BERT: a batch of 16 takes 0.5 ms + 16 x 0.2 ms = 3.7 ms (about 4,300 samples/s).
[backend.synthetic.workloads.bert]
fixed_us = 500.0
per_sample_us = 200.0

# LLMs (llama3.1-8b): continuous batching of up to 32 sequences; a step takes
# 4 ms + 2 us per prompt token + 20 us per sequence (about 6,900 tokens/s, 80 samples/s).
[generation]
max_running = 32

[backend.synthetic.tokens]
fixed_us = 4000.0
per_prefill_token_us = 2.0
per_sequence_us = 20.0
"#;

/// Lab options.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Workloads to run.
    pub workloads: Vec<String>,
    /// Scenarios to run ("offline", "server").
    pub scenarios: Vec<String>,
    /// Where everything goes.
    pub output_dir: PathBuf,
    /// Minimum duration of each test, ms.
    pub duration_ms: u64,
    /// Accelerator config (default: [`LAB_ACCELERATOR_TOML`]).
    pub accelerator_config: Option<PathBuf>,
    /// Accelerators to start.
    pub accelerators: usize,
    /// A frontend config whose workload is run (with `workloads` = its name).
    pub frontend_config: Option<PathBuf>,
    /// A real model the accelerators (and the in-process baseline) run, on top of the
    /// accelerator config.
    pub model: Option<LabModel>,
}

/// A real model for the lab's accelerators.
#[derive(Debug, Clone)]
pub enum LabModel {
    /// An ONNX model on the onnx backend (its workload from the frontend config).
    Onnx(PathBuf),
    /// An LLM (.gguf) on the llama backend (llama.cpp), its workload a generative one.
    Llama(PathBuf),
}

impl LabModel {
    /// `.gguf` files are LLMs for llama.cpp; anything else is an ONNX model.
    pub fn from_path(path: PathBuf) -> LabModel {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("gguf") => LabModel::Llama(path),
            _ => LabModel::Onnx(path),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct LabRow {
    /// Workload.
    pub workload: String,
    /// Scenario.
    pub scenario: String,
    /// Network: samples/s.
    pub network_samples_per_second: Option<f64>,
    /// Local: samples/s.
    pub local_samples_per_second: Option<f64>,
    /// Network / local.
    pub ratio: Option<f64>,
    /// Network: p99 latency, ms.
    pub network_p99_ms: Option<f64>,
    /// Local: p99 latency, ms.
    pub local_p99_ms: Option<f64>,
    /// LoadGen validity, network.
    pub network_valid: Option<bool>,
    /// LoadGen validity, local.
    pub local_valid: Option<bool>,
    /// Server target QPS used.
    pub target_qps: Option<f64>,
    /// Generative workloads: network output tokens/s (the ratio is of tokens/s).
    pub network_tokens_per_second: Option<f64>,
    /// Generative workloads: local output tokens/s.
    pub local_tokens_per_second: Option<f64>,
    /// Generative workloads: network p99 time to first token, ms.
    pub network_ttft_p99_ms: Option<f64>,
    /// Generative workloads: local p99 time to first token, ms.
    pub local_ttft_p99_ms: Option<f64>,
    /// Generative workloads: network p99 time per output token, ms.
    pub network_tpot_p99_ms: Option<f64>,
    /// Generative workloads: local p99 time per output token, ms.
    pub local_tpot_p99_ms: Option<f64>,
    /// Generative workloads, network: p99 over samples of the first token's time outside the
    /// accelerator (what the network adds to each TTFT), ms.
    pub network_ttft_outside_p99_ms: Option<f64>,
    /// The same in-process (the local transport's share), ms.
    pub local_ttft_outside_p99_ms: Option<f64>,
    /// Errors, if a test failed.
    pub errors: Vec<String>,
}

/// lab-report.json.
#[derive(Debug, Serialize)]
pub struct LabReport {
    /// The rows.
    pub rows: Vec<LabRow>,
    /// Accelerators used.
    pub accelerators: Vec<String>,
    /// The accelerator config (TOML).
    pub accelerator_config: String,
    /// Minimum duration per test, ms.
    pub duration_ms: u64,
    /// Wall time, s.
    pub wall_seconds: f64,
}

/// Modelled capacity of all accelerators for `workload`, samples/s. For a real model (onnx) it
/// is a first guess: the Server target comes from the measured local Offline rate.
pub fn modelled_capacity(cfg: &AcceleratorConfig, workload: &str, accelerators: usize) -> f64 {
    if let Some(g) = qdl_shared::workload::WorkloadSpec::builtin(workload).and_then(|w| w.generation) {
        return generative_capacity(cfg, &g) * accelerators as f64;
    }
    let b = cfg.batcher.max_batch as usize;
    let model = cfg.backend.synthetic.model_for(workload);
    let per_worker = b as f64 / (model.batch_ns(b) as f64 / 1e9).max(1e-9);
    match cfg.backend.kind {
        qdl_shared::config::BackendKind::Synthetic => per_worker * cfg.workers.count as f64 * accelerators as f64,
        qdl_shared::config::BackendKind::Echo => 50_000.0,
        qdl_shared::config::BackendKind::Onnx | qdl_shared::config::BackendKind::Llama => 200.0 * accelerators as f64,
    }
}

/// The QSL of an LLM test: LoadGen rounds an LLM's run up to whole permutations of the loaded
/// samples (mlperf.conf's `sample_concatenate_permutation`), so with the dataset's 13,368 samples
/// every test would last minutes; the QSL holds what `rate` samples/s issue in the test's duration
/// (at least `min`).
pub(super) fn llm_samples(rate: f64, duration_ms: u64, min: u64) -> [String; 4] {
    let n = ((rate * duration_ms as f64 / 1000.0).ceil() as u64).max(min).to_string();
    ["--total-samples".into(), n.clone(), "--performance-samples".into(), n]
}

/// One accelerator's modelled rate for a generative workload, samples/s: `max_running`
/// sequences decode together; an answer has about `0.25 × max + 0.75 × (lo + max) / 2` tokens
/// (see `reference_tokens`).
fn generative_capacity(cfg: &AcceleratorConfig, g: &qdl_shared::workload::Generation) -> f64 {
    let running = cfg.generation.max_running as usize;
    let step_s = cfg.backend.synthetic.tokens.step_ns(0, running) as f64 / 1e9;
    let (max, lo) = (g.max_output_tokens as f64, g.min_output_tokens.max(2) as f64);
    let tokens = 0.25 * max + 0.75 * (lo + max) / 2.0;
    let per_worker = running as f64 / step_s.max(1e-6) / tokens.max(1.0);
    match cfg.backend.kind {
        qdl_shared::config::BackendKind::Synthetic => per_worker * cfg.workers.count as f64,
        // A first guess (SmolLM2-135M on one CPU core); the lab calibrates it.
        qdl_shared::config::BackendKind::Llama => 0.5 * cfg.workers.count as f64,
        _ => 1000.0,
    }
}

fn slots_for(workload: &str) -> &'static str {
    // Enough for the modelled rates times the latency, without touching a GiB of slots.
    if workload == "resnet50" { "512" } else { "2048" }
}

/// Shows progress of one test: a live line on a terminal, a start/end line otherwise.
struct Display {
    terminal: bool,
}

impl Display {
    fn run(
        &self,
        label: &str,
        planned_s: f64,
        f: impl FnOnce(&(dyn Fn(Live) + Sync)) -> anyhow::Result<RunReport>,
    ) -> anyhow::Result<RunReport> {
        let started = Instant::now();
        let result = if self.terminal {
            let bar = indicatif::ProgressBar::new((planned_s * 10.0) as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:36} [{bar:24}] {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            let update = |l: Live| {
                bar.set_position(((l.elapsed_s * 10.0) as u64).min(bar.length().unwrap_or(0)));
                let rate = if l.elapsed_s > 0.0 { l.completed as f64 / l.elapsed_s } else { 0.0 };
                bar.set_message(format!(
                    "{:>5.1} s  {} samples  {}/s",
                    l.elapsed_s,
                    thousands(l.completed),
                    thousands(rate as u64)
                ));
            };
            let r = f(&update);
            bar.finish_and_clear();
            r
        } else {
            eprintln!("lab: {label} ...");
            f(&|_| {})
        };
        let took = started.elapsed().as_secs_f64();
        match &result {
            Ok(r) => eprintln!(
                "lab: {label}: {} samples/s, {} ({took:.1} s)",
                r.loadgen.throughput().map(|t| format!("{t:.0}")).unwrap_or_else(|| "-".into()),
                r.loadgen.validity.as_deref().unwrap_or("-")
            ),
            Err(e) => eprintln!("lab: {label}: FAILED: {e:#}"),
        }
        result
    }
}

/// The accelerator config the lab runs: `--accelerator-config`, else the lab's own, with the
/// model of `--model` put in. Written into `out` so the accelerators and the in-process baseline
/// read the same file; returns its path and text.
fn accelerator_config(opts: &LabOptions, out: &Path) -> anyhow::Result<(PathBuf, String)> {
    let (acc_path, acc_text) = match &opts.accelerator_config {
        Some(p) => (p.clone(), std::fs::read_to_string(p)?),
        None => {
            let p = out.join("accelerator.toml");
            std::fs::write(&p, LAB_ACCELERATOR_TOML)?;
            (p, LAB_ACCELERATOR_TOML.to_string())
        }
    };
    let Some(model) = &opts.model else { return Ok((acc_path, acc_text)) };
    let mut cfg = AcceleratorConfig::load_unchecked(&acc_path)?;
    let (path, file) = match model {
        LabModel::Onnx(p) => {
            cfg.backend.kind = qdl_shared::config::BackendKind::Onnx;
            cfg.backend.onnx.model = Some(std::path::absolute(p).with_context(|| format!("locating {}", p.display()))?);
            (p, "accelerator-onnx.toml")
        }
        LabModel::Llama(p) => {
            cfg.backend.kind = qdl_shared::config::BackendKind::Llama;
            cfg.backend.llama.model =
                Some(std::path::absolute(p).with_context(|| format!("locating {}", p.display()))?);
            // The running sequences share one llama.cpp context: the scheduler's budget is that
            // context (unless a given config says otherwise).
            if opts.accelerator_config.is_none() {
                cfg.generation.max_running = LAB_LLAMA_MAX_RUNNING;
                cfg.generation.kv_tokens = cfg.backend.llama.context_tokens;
            }
            (p, "accelerator-llama.toml")
        }
    };
    cfg.validate()?;
    let text = format!(
        "# The lab's accelerators, running {} (written by qdl-frontend lab --model).\n{}",
        path.display(),
        toml::to_string(&cfg).context("writing the accelerator config")?
    );
    let path = out.join(file);
    std::fs::write(&path, &text)?;
    Ok((path, text))
}

/// Sequences each lab accelerator runs at once on llama.cpp: on a CPU a step's cost grows with
/// its tokens, so more sequences raise TPOT more than tokens/s.
const LAB_LLAMA_MAX_RUNNING: u32 = 8;

/// The latency bounds of a generative workload mlperf.conf does not know, run on a real model in
/// the lab: a user.conf giving its Server and Interactive TTFT and TPOT bounds (LoadGen's default
/// of 100 ms each is a datacenter GPU's, not two CPU cores').
fn llama_user_conf(workload: &str, out: &Path) -> anyhow::Result<PathBuf> {
    let text = format!(
        "# Latency bounds of {workload} on llama.cpp in the lab (CPU cores, not a datacenter GPU): written by\n\
         # qdl-frontend lab; mlperf.conf has no entry for this model. LoadGen reads a file's ttft_latency\n\
         # and tpot_latency only where the same file turns use_token_latencies on.\n\
         {workload}.Server.use_token_latencies = 1\n\
         {workload}.Server.ttft_latency = {}\n\
         {workload}.Server.tpot_latency = {}\n\
         {workload}-interactive.Server.use_token_latencies = 1\n\
         {workload}-interactive.Server.ttft_latency = {}\n\
         {workload}-interactive.Server.tpot_latency = {}\n",
        LLAMA_BOUNDS_MS.0, LLAMA_BOUNDS_MS.1, LLAMA_BOUNDS_MS.2, LLAMA_BOUNDS_MS.3
    );
    let path = out.join(format!("{workload}.user.conf"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The prompts of the lab's SmolLM2 rows: 64 short questions in SmolLM2-Instruct's chat template
/// (`config/prompts/chat.txt`), tokenized by the model when the QSL loads. Short prompts keep
/// prefill cheap on CPU cores, so the ~460 samples LoadGen's Server validity needs at the 99th
/// percentile fit in minutes; the answers end at the model's `<|im_end|>` or 64 tokens.
const LAB_CHAT_PROMPTS: &str = include_str!("../../../config/prompts/chat.txt");

/// The lab's TTFT and TPOT bounds for a real LLM on CPU cores, ms: Server (TTFT, TPOT), then
/// Interactive (TTFT, TPOT). SmolLM2-135M with the lab's chat prompts on two cores at 70 % of its
/// Offline rate (2.4 samples/s) measured a p99 TTFT of 216 ms and a p99 TPOT of 49 ms in the box:
/// Server leaves about 4× and 2× of that, Interactive about 2.3× and 1.5×.
const LLAMA_BOUNDS_MS: (u64, u64, u64, u64) = (1_000, 100, 500, 75);

/// The tests of one lab: what every test needs, and the count for progress.
struct Tests<'a> {
    opts: &'a LabOptions,
    out: &'a Path,
    acc_path: &'a Path,
    accelerators: &'a [String],
    fe_metrics: String,
    /// A user.conf of latency bounds (a real LLM's, see [`llama_user_conf`]).
    user_conf: Option<PathBuf>,
    /// A real LLM's prompts file and the tokenizer (the model) that tokenizes it.
    prompts: Option<(PathBuf, PathBuf)>,
    /// The workload's capacity was measured ([`Tests::calibrate`]), not modelled.
    calibrated: bool,
    display: Display,
    n: usize,
    total: usize,
}

/// A QPS for LoadGen's flags: whole numbers where they are large, two decimals for a real LLM's
/// one or two samples per second.
fn qps(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

impl Tests<'_> {
    /// The samples of an LLM test: the lab's prompts file when it runs a real LLM (all of its
    /// prompts loaded; LoadGen draws from them), else [`llm_samples`].
    fn llm_samples(&self, rate: f64, duration_ms: u64, min: u64) -> Vec<String> {
        match &self.prompts {
            Some((prompts, tokenizer)) => vec![
                "--prompts".into(),
                prompts.display().to_string(),
                "--tokenizer".into(),
                tokenizer.display().to_string(),
            ],
            None => llm_samples(rate, duration_ms, min).to_vec(),
        }
    }

    /// `--config` when the lab was given a frontend config.
    fn base_args(&self) -> Vec<String> {
        match &self.opts.frontend_config {
            Some(p) => vec!["--config".into(), p.display().to_string()],
            None => Vec::new(),
        }
    }

    /// The in-process arguments (the same accelerator config, as many boxes).
    fn local_args(&self) -> [String; 5] {
        [
            "--local".into(),
            "--accelerator-config".into(),
            self.acc_path.display().to_string(),
            "--local-accelerators".into(),
            self.opts.accelerators.to_string(),
        ]
    }

    /// A real model's rate is not known beforehand: a short in-process Offline run measures it,
    /// so the Offline tests are sized to last their minimum duration.
    fn calibrate(&self, w: &str, capacity: f64) -> f64 {
        let mut a = self.base_args();
        a.extend(
            ["--workload", w, "--scenario", "offline", "--min-duration-ms", "1000", "--expected-qps"].map(String::from),
        );
        // An LLM's rate is that of many sequences batched together: its query holds 32 prompts
        // however long that takes (the first guess of its rate is rough).
        a.push(if is_generative(w) { "32".into() } else { format!("{capacity:.0}") });
        if is_generative(w) {
            // One query of a few dozen prompts (LoadGen would round an LLM's run up to whole
            // permutations of the loaded samples).
            a.extend(["--min-query-count".into(), "1".into()]);
            a.extend(self.llm_samples(capacity, 1000, 32));
        }
        a.extend(self.user_conf.iter().flat_map(|p| ["--user-conf".to_string(), p.display().to_string()]));
        a.extend(self.local_args());
        let label = format!("[calibrate] {w} offline local");
        let dir = self.out.join(format!("{w}-calibrate"));
        match self.display.run(&label, 2.0, |p| run_test(&a, &dir, &self.fe_metrics, p)) {
            Ok(r) => r.loadgen.throughput().unwrap_or(capacity),
            Err(e) => {
                eprintln!("lab: calibration failed ({e:#}); sizing for {capacity:.0} samples/s");
                capacity
            }
        }
    }

    /// One row: workload `w` in scenario `sc`, in-process then over the network. A Server row
    /// targets 70 % of the local Offline rate measured before it (`local_offline`).
    fn row(&mut self, w: &str, sc: &str, capacity: f64, local_offline: &mut Option<f64>) -> LabRow {
        let mut row = LabRow {
            workload: w.to_string(),
            scenario: sc.to_string(),
            network_samples_per_second: None,
            local_samples_per_second: None,
            ratio: None,
            network_p99_ms: None,
            local_p99_ms: None,
            network_valid: None,
            local_valid: None,
            target_qps: None,
            network_tokens_per_second: None,
            local_tokens_per_second: None,
            network_ttft_p99_ms: None,
            local_ttft_p99_ms: None,
            network_tpot_p99_ms: None,
            local_tpot_p99_ms: None,
            network_ttft_outside_p99_ms: None,
            local_ttft_outside_p99_ms: None,
            errors: Vec::new(),
        };
        let generative = is_generative(w);
        // Early stopping at the 99th percentile of TTFT and TPOT needs about 460 samples.
        // (A real LLM's rows, at about a sample per second, ask only a little more than that.)
        let min_queries = match (generative, self.user_conf.is_some()) {
            (true, true) => "480",
            (true, false) => "600",
            (false, _) => "100",
        };
        let mut args = self.base_args();
        args.extend(self.user_conf.iter().flat_map(|p| ["--user-conf".to_string(), p.display().to_string()]));
        args.extend(["--workload", w, "--scenario", sc, "--min-duration-ms"].map(String::from));
        args.extend([self.opts.duration_ms.to_string(), "--slots".into(), slots_for(w).into()]);
        args.extend(["--connections".into(), "2".into()]);
        if sc == "offline" {
            // A measured rate (a real model's) varies more than a modelled one: its query is
            // sized for more, so the test still lasts its minimum duration.
            let margin = if self.calibrated { 1.5 } else { 1.1 };
            args.extend(["--expected-qps".into(), qps(capacity * margin)]);
            if generative {
                // mlperf.conf's Offline count (13368 for llama3.1-8b) would take minutes here:
                // the expected rate and the duration size the query instead.
                args.extend(["--min-query-count".into(), "1".into()]);
                args.extend(self.llm_samples(capacity * 1.1, self.opts.duration_ms, 64));
            }
        } else {
            // Server at 70% of what the box sustains offline: VALID on both paths.
            let target = 0.7 * local_offline.unwrap_or(capacity * 0.9);
            row.target_qps = Some(target);
            args.extend(["--target-qps".into(), qps(target), "--min-query-count".into(), min_queries.into()]);
            if generative {
                args.extend(self.llm_samples(target, self.opts.duration_ms, 600));
            }
        }
        for local in [true, false] {
            self.n += 1;
            let kind = if local { "local" } else { "network" };
            let label = format!("[{}/{}] {w} {sc} {kind}", self.n, self.total);
            let dir = self.out.join(format!("{w}-{sc}-{kind}"));
            let mut a = args.clone();
            if local {
                a.extend(self.local_args());
            } else {
                for addr in self.accelerators {
                    a.extend(["--accelerator".into(), addr.clone()]);
                }
            }
            let planned = self.opts.duration_ms as f64 / 1000.0 + 1.0;
            let r = match self.display.run(&label, planned, |p| run_test(&a, &dir, &self.fe_metrics, p)) {
                Ok(r) => r,
                Err(e) => {
                    row.errors.push(format!("{kind}: {e:#}"));
                    continue;
                }
            };
            let (t, p99, valid) = (r.loadgen.throughput(), r.loadgen.p99_ns().map(|v| v / 1e6), r.loadgen.is_valid());
            let l = &r.loadgen;
            let tokens = (l.tokens_per_second, l.ttft_p99_ns().map(|v| v / 1e6), l.tpot_p99_ns().map(|v| v / 1e6));
            let outside = r.frontend.ttft_outside_accelerator.map(|p| p.p99_ms);
            if local {
                (row.local_tokens_per_second, row.local_ttft_p99_ms, row.local_tpot_p99_ms) = tokens;
                row.local_ttft_outside_p99_ms = outside;
            } else {
                (row.network_tokens_per_second, row.network_ttft_p99_ms, row.network_tpot_p99_ms) = tokens;
                row.network_ttft_outside_p99_ms = outside;
            }
            if local {
                (row.local_samples_per_second, row.local_p99_ms, row.local_valid) = (t, p99, Some(valid));
                if sc == "offline" {
                    *local_offline = t;
                }
            } else {
                (row.network_samples_per_second, row.network_p99_ms, row.network_valid) = (t, p99, Some(valid));
            }
        }
        let rates = if generative {
            (row.network_tokens_per_second, row.local_tokens_per_second)
        } else {
            (row.network_samples_per_second, row.local_samples_per_second)
        };
        if let (Some(net), Some(loc)) = rates {
            row.ratio = Some(net / loc);
        }
        row
    }
}

/// Whether `workload` is a built-in generative (LLM) workload.
fn is_generative(workload: &str) -> bool {
    qdl_shared::workload::WorkloadSpec::builtin(workload).is_some_and(|s| s.is_generative())
}

/// How many tests the lab runs (two per row; Interactive rows only for generative workloads).
fn lab_tests(opts: &LabOptions) -> usize {
    let generative = opts.workloads.iter().filter(|w| is_generative(w));
    let interactive = opts.scenarios.iter().any(|s| s == "interactive");
    let other = opts.scenarios.len() - interactive as usize;
    2 * (opts.workloads.len() * other + generative.count() * interactive as usize)
}

/// Runs the lab; returns the report (also written to `output_dir/lab-report.json`).
pub fn lab(opts: LabOptions) -> anyhow::Result<LabReport> {
    // The lab compares each network run with the local baseline.
    if !cfg!(feature = "local") {
        anyhow::bail!(super::run::NO_LOCAL_BASELINE);
    }
    let started = Instant::now();
    let out = &opts.output_dir;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (acc_path, acc_text) = accelerator_config(&opts, out)?;
    let acc_cfg = AcceleratorConfig::load(&acc_path)?;
    let metrics: Vec<String> = (0..opts.accelerators).map(|i| preferred_metrics(9102 + i as u16)).collect();
    let accs = Accelerators::start(opts.accelerators, &acc_path, "lab-acc", &metrics, out)?;
    let fe_metrics = preferred_metrics(9101);
    eprintln!(
        "lab: {} accelerators on {} (metrics: {}; frontend metrics: {fe_metrics}); results in {}",
        accs.addrs.len(),
        accs.addrs.join(", "),
        accs.metrics.join(", "),
        out.display()
    );
    eprintln!(
        "lab: {} ms per test (mlperf.conf asks 600000): the lab compares network and local, its runs are NOT A \
         SUBMISSION",
        opts.duration_ms
    );
    let mut tests = Tests {
        opts: &opts,
        out,
        acc_path: &acc_path,
        accelerators: &accs.addrs,
        fe_metrics,
        user_conf: None,
        prompts: None,
        calibrated: false,
        display: Display { terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()) },
        n: 0,
        total: lab_tests(&opts),
    };
    let mut rows = Vec::new();
    for w in &opts.workloads {
        let mut capacity = modelled_capacity(&acc_cfg, w, opts.accelerators);
        let llama = acc_cfg.backend.kind == qdl_shared::config::BackendKind::Llama;
        tests.user_conf = match llama && is_generative(w) {
            true => Some(llama_user_conf(w, out)?),
            false => None,
        };
        tests.prompts = match (&opts.model, &opts.frontend_config) {
            (Some(LabModel::Llama(model)), None) if w == "smollm2-135m" => {
                let path = out.join("chat-prompts.txt");
                std::fs::write(&path, LAB_CHAT_PROMPTS)?;
                Some((path, model.clone()))
            }
            _ => None,
        };
        tests.calibrated = acc_cfg.backend.kind == qdl_shared::config::BackendKind::Onnx || llama;
        if tests.calibrated {
            capacity = tests.calibrate(w, capacity);
        }
        let mut local_offline: Option<f64> = None;
        let generative = is_generative(w);
        for sc in &opts.scenarios {
            // Interactive is an LLM category (the Server scenario with tighter TTFT/TPOT bounds).
            if sc == "interactive" && !generative {
                continue;
            }
            rows.push(tests.row(w, sc, capacity, &mut local_offline));
        }
    }
    let addrs = accs.addrs.clone();
    let stopped = accs.stop();
    let report = LabReport {
        rows,
        accelerators: addrs,
        accelerator_config: acc_text,
        duration_ms: opts.duration_ms,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::write(out.join("lab-report.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    if let Err(e) = stopped {
        eprintln!("lab: warning: {e}");
    }
    Ok(report)
}

fn fmt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// Prints the table.
pub fn print_table(r: &LabReport, out: &Path) {
    println!();
    println!("Network division vs. accelerators in the box (qdl lab, {} ms per test)", r.duration_ms);
    println!(
        "{:<12} {:<11} {:>14} {:>14} {:>8} {:>13} {:>13}  LoadGen (network/local)",
        "workload", "scenario", "network /s", "local /s", "ratio", "p99 network", "p99 local"
    );
    for row in &r.rows {
        let valid = |v: Option<bool>| match v {
            Some(true) => "VALID",
            Some(false) => "INVALID",
            None => "failed",
        };
        let tokens = row.network_tokens_per_second.is_some() || row.local_tokens_per_second.is_some();
        let (net, loc) = if tokens {
            (row.network_tokens_per_second, row.local_tokens_per_second)
        } else {
            (row.network_samples_per_second, row.local_samples_per_second)
        };
        let unit = if tokens { " tok" } else { "" };
        println!(
            "{:<12} {:<11} {:>14} {:>14} {:>8} {:>13} {:>13}  {}/{}",
            row.workload,
            row.scenario,
            fmt(net, |v| format!("{v:.1}{unit}")),
            fmt(loc, |v| format!("{v:.1}{unit}")),
            fmt(row.ratio, |v| format!("{:.1}%", v * 100.0)),
            // Offline's latency is that of its single query: not a figure to compare.
            fmt(row.network_p99_ms.filter(|_| row.scenario != "offline"), |v| format!("{v:.2} ms")),
            fmt(row.local_p99_ms.filter(|_| row.scenario != "offline"), |v| format!("{v:.2} ms")),
            valid(row.network_valid),
            valid(row.local_valid),
        );
        if tokens && row.scenario != "offline" {
            let ms = |v: Option<f64>| fmt(v, |v| format!("{v:.2} ms"));
            println!(
                "{:<24} TTFT p99 {} / {}, TPOT p99 {} / {} (network / local)",
                "",
                ms(row.network_ttft_p99_ms),
                ms(row.local_ttft_p99_ms),
                ms(row.network_tpot_p99_ms),
                ms(row.local_tpot_p99_ms)
            );
        }
        for e in &row.errors {
            println!("    error: {e}");
        }
    }
    println!("lab report: {}  ({:.0} s)", out.join("lab-report.json").display(), r.wall_seconds);
}
