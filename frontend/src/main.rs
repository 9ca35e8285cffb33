//! `qdl-frontend`: runs the official MLPerf LoadGen against accelerators across the network.

mod app;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use qdl_shared::config::{AcceleratorConfig, Dispatch, FrontendConfig, ModeName, ScenarioName};

use app::progress::ProgressMode;

/// Runs the official MLPerf LoadGen against accelerators across the network.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one LoadGen test over the network (or in-process with --local).
    Run(Box<RunArgs>),
    /// The lab: two accelerators on loopback, each workload and scenario over the network and
    /// in-process, and a table of the ratios (the README's first command).
    Lab(LabArgs),
    /// Measure the figures that decide the hot path, side by side: Offline network/local ratios,
    /// ResNet-50 payload throughput against iperf3, the highest VALID BERT Server QPS.
    Bench(BenchArgs),
    /// Check every response of an accuracy run against the reference outputs.
    CheckAccuracy {
        /// A run's output directory (holds report.json and mlperf_log_accuracy.json).
        dir: PathBuf,
        /// Reference outputs of a tensors workload (`<output>.npy` per output tensor); default:
        /// the run's workload.reference_dir.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Absolute tolerance for floating-point outputs.
        #[arg(long, default_value_t = 1e-4)]
        atol: f64,
        /// Relative tolerance for floating-point outputs.
        #[arg(long, default_value_t = 1e-3)]
        rtol: f64,
    },
}

#[derive(Args, Debug)]
struct LabArgs {
    /// Workloads to run.
    #[arg(long, short, value_parser = ["resnet50", "bert", "all"], default_value = "all")]
    workload: String,
    /// Scenarios to run.
    #[arg(long, short, value_parser = ["offline", "server", "all"], default_value = "all")]
    scenario: String,
    /// Where the lab writes its runs and lab-report.json.
    #[arg(long, short, default_value = "lab-results")]
    output_dir: PathBuf,
    /// Minimum duration of each LoadGen test, ms.
    #[arg(long, default_value_t = 5000)]
    duration_ms: u64,
    /// Accelerator config for the lab's accelerators (default: a synthetic device sized for a
    /// 2-core machine, written to OUTPUT_DIR/accelerator.toml).
    #[arg(long)]
    accelerator_config: Option<PathBuf>,
    /// Accelerators to start.
    #[arg(long, default_value_t = 2)]
    accelerators: usize,
    /// A frontend config whose [workload] the lab runs instead of ResNet-50 and BERT (e.g. a
    /// real model's workload written by scripts/models, with an onnx accelerator config).
    #[arg(long)]
    frontend_config: Option<PathBuf>,
    /// Run this ONNX model on the accelerators and in-process (the onnx backend on top of the
    /// accelerator config); give its workload with --frontend-config.
    #[arg(long, requires = "frontend_config")]
    model: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Where the bench writes its runs and bench-report.json.
    #[arg(long, short, default_value = "bench-results")]
    output_dir: PathBuf,
    /// Minimum duration of each test, ms.
    #[arg(long, default_value_t = 5000)]
    duration_ms: u64,
    /// Skip the iperf3 comparison.
    #[arg(long)]
    skip_iperf: bool,
    /// Upper end of the Server QPS search.
    #[arg(long, default_value_t = 200000.0)]
    max_qps: f64,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Config file (TOML, see config/frontend.toml); flags below override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// An accelerator as HOST:PORT; repeat for several (replaces frontend.accelerators).
    #[arg(long = "accelerator", short = 'a')]
    accelerators: Vec<String>,
    /// Workload (resnet50, bert, or a name described in [workload.spec]).
    #[arg(long, short)]
    workload: Option<String>,
    /// LoadGen scenario.
    #[arg(long, short, value_parser = ["offline", "server", "singlestream", "multistream"])]
    scenario: Option<String>,
    /// LoadGen mode.
    #[arg(long, short, value_parser = ["performance", "accuracy"])]
    mode: Option<String>,
    /// Directory for LoadGen's logs and report.json.
    #[arg(long, short)]
    output_dir: Option<PathBuf>,
    /// A LoadGen user.conf, applied after mlperf.conf.
    #[arg(long)]
    user_conf: Option<PathBuf>,
    /// Run the in-process baseline ("Closed division"): same batcher, workers and backend, no network.
    #[arg(long)]
    local: bool,
    /// The accelerator config the local baseline runs (overrides local.accelerator_config).
    #[arg(long)]
    accelerator_config: Option<PathBuf>,
    /// Accelerators in the local box (overrides local.accelerators).
    #[arg(long)]
    local_accelerators: Option<u32>,
    /// Data connections per accelerator.
    #[arg(long)]
    connections: Option<u32>,
    /// Slots per connection.
    #[arg(long)]
    slots: Option<u32>,
    /// Dispatch policy.
    #[arg(long, value_parser = ["auto", "round-robin", "least-in-flight"])]
    dispatch: Option<String>,
    /// Minimum test duration, ms.
    #[arg(long)]
    min_duration_ms: Option<u64>,
    /// Minimum query count.
    #[arg(long)]
    min_query_count: Option<u64>,
    /// Server target QPS.
    #[arg(long)]
    target_qps: Option<f64>,
    /// Offline expected QPS.
    #[arg(long)]
    expected_qps: Option<f64>,
    /// Samples in the QSL.
    #[arg(long)]
    total_samples: Option<u32>,
    /// Samples loaded at once.
    #[arg(long)]
    performance_samples: Option<u32>,
    /// Accuracy mode: only this many samples.
    #[arg(long)]
    accuracy_samples: Option<u64>,
    /// Seed of the sample generator.
    #[arg(long)]
    seed: Option<u64>,
    /// A directory of .npy samples instead of generated ones.
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Prometheus metrics address ("" disables).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Progress output.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Exit with status 3 when LoadGen judges the run INVALID.
    #[arg(long)]
    require_valid: bool,
    /// Data transport to the accelerators (overrides transport.kind).
    #[arg(long, value_parser = ["tcp", "rdma"])]
    transport: Option<String>,
    /// RDMA device, e.g. mlx5_0 or rxe0 (overrides transport.rdma.device; default: the first).
    #[arg(long)]
    rdma_device: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn parse_enum<T: serde::de::DeserializeOwned>(v: &str) -> anyhow::Result<T> {
    Ok(serde_json::from_value(serde_json::Value::String(v.to_string()))?)
}

fn frontend_config(a: &RunArgs) -> anyhow::Result<FrontendConfig> {
    let mut c = match &a.config {
        Some(p) => FrontendConfig::load(p)?,
        None => FrontendConfig::default(),
    };
    if !a.accelerators.is_empty() {
        c.frontend.accelerators = a.accelerators.clone();
    }
    if let Some(v) = &a.workload {
        c.workload.name = v.clone();
    }
    if let Some(v) = &a.scenario {
        c.loadgen.scenario = parse_enum::<ScenarioName>(v)?;
    }
    if let Some(v) = &a.mode {
        c.loadgen.mode = parse_enum::<ModeName>(v)?;
    }
    if let Some(v) = &a.output_dir {
        c.loadgen.output_dir = v.clone();
    }
    if let Some(v) = &a.user_conf {
        c.loadgen.user_conf = Some(v.clone());
    }
    if let Some(v) = &a.accelerator_config {
        c.local.accelerator_config = Some(v.clone());
    }
    if let Some(v) = a.local_accelerators {
        c.local.accelerators = v;
    }
    if let Some(v) = a.connections {
        c.frontend.connections_per_accelerator = v;
    }
    if let Some(v) = a.slots {
        c.frontend.slots_per_connection = v;
    }
    if let Some(v) = &a.dispatch {
        c.frontend.dispatch = parse_enum::<Dispatch>(v)?;
    }
    c.loadgen.min_duration_ms = a.min_duration_ms.or(c.loadgen.min_duration_ms);
    c.loadgen.min_query_count = a.min_query_count.or(c.loadgen.min_query_count);
    c.loadgen.server_target_qps = a.target_qps.or(c.loadgen.server_target_qps);
    c.loadgen.offline_expected_qps = a.expected_qps.or(c.loadgen.offline_expected_qps);
    c.loadgen.accuracy_sample_count = a.accuracy_samples.or(c.loadgen.accuracy_sample_count);
    c.workload.total_samples = a.total_samples.or(c.workload.total_samples);
    c.workload.performance_samples = a.performance_samples.or(c.workload.performance_samples);
    if let Some(v) = a.seed {
        c.workload.seed = v;
    }
    if let Some(v) = &a.dataset {
        c.workload.dataset_dir = Some(v.clone());
    }
    if let Some(v) = &a.metrics_listen {
        c.frontend.metrics_listen = v.clone();
    }
    if let Some(v) = &a.transport {
        c.transport.kind = parse_enum(v)?;
    }
    if let Some(v) = &a.rdma_device {
        c.transport.rdma.device = v.clone();
    }
    if let Some(v) = &a.log_format {
        c.log.format = parse_enum(v)?;
    }
    c.validate()?;
    Ok(c)
}

fn cmd_run(a: RunArgs) -> anyhow::Result<i32> {
    let config = frontend_config(&a)?;
    qdl_shared::telemetry::init_logging(&config.log)?;
    qdl_shared::telemetry::install_metrics(&config.frontend.metrics_listen)?;
    qdl_shared::metrics::describe_frontend();
    let accelerator_config = match &config.local.accelerator_config {
        Some(p) => AcceleratorConfig::load(p)?,
        None => AcceleratorConfig::default(),
    };
    let out = config.loadgen.output_dir.clone();
    let report =
        app::run::run(app::run::RunOptions { config, local: a.local, accelerator_config, progress: a.progress })?;
    app::run::print_summary(&report, &out);
    if a.require_valid && report.mode == ModeName::Performance && !report.loadgen.is_valid() {
        return Ok(3);
    }
    Ok(0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(a) => cmd_run(*a)?,
        Command::Lab(a) => {
            app::signals::install("lab", || {});
            let all = |v: &str, options: &[&str]| -> Vec<String> {
                if v == "all" { options.iter().map(|s| s.to_string()).collect() } else { vec![v.to_string()] }
            };
            let workloads = match &a.frontend_config {
                Some(p) => vec![qdl_shared::config::FrontendConfig::load(p)?.workload.name],
                None => all(&a.workload, &["resnet50", "bert"]),
            };
            let opts = app::lab::LabOptions {
                workloads,
                frontend_config: a.frontend_config.clone(),
                model: a.model.clone(),
                scenarios: all(&a.scenario, &["offline", "server"]),
                output_dir: a.output_dir.clone(),
                duration_ms: a.duration_ms,
                accelerator_config: a.accelerator_config,
                accelerators: a.accelerators.max(1),
            };
            let report = app::lab::lab(opts)?;
            app::lab::print_table(&report, &a.output_dir);
            if report.rows.iter().all(|r| r.errors.is_empty()) { 0 } else { 1 }
        }
        Command::Bench(a) => {
            app::signals::install("bench", || {});
            let opts = app::bench::BenchOptions {
                output_dir: a.output_dir.clone(),
                duration_ms: a.duration_ms,
                skip_iperf: a.skip_iperf,
                max_qps: a.max_qps,
            };
            let report = app::bench::bench(opts)?;
            app::bench::print(&report, &a.output_dir);
            0
        }
        Command::CheckAccuracy { dir, reference, atol, rtol } => {
            let tol = app::accuracy::Tolerance { atol, rtol };
            let v = app::accuracy::check(&dir, reference.as_deref(), tol)
                .with_context(|| format!("checking {}", dir.display()))?;
            if app::accuracy::print(&v) { 0 } else { 1 }
        }
    };
    std::process::exit(code);
}
