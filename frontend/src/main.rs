//! `qdl-frontend`: runs the official MLPerf LoadGen against accelerators across the network.

mod app;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use qdl_frontend::settings::Overrides;
use qdl_shared::config::{AcceleratorConfig, Dispatch, FrontendConfig, ModeName, ScenarioName};
use qdl_shared::exit;

use app::progress::ProgressMode;

/// Runs the official MLPerf LoadGen against accelerators across the network.
#[derive(Parser, Debug)]
#[command(version, about, after_help = exit::FRONTEND_HELP)]
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
    #[command(after_help = LAB_HELP)]
    Lab(LabArgs),
    /// Measure the figures that decide the hot path, side by side: Offline network/local ratios,
    /// ResNet-50 payload throughput against iperf3, the highest VALID BERT Server QPS.
    Bench(BenchArgs),
    /// Tokenize a text file of prompts (one per line) with a GGUF model file's tokenizer into a
    /// dataset directory (input_ids.npy, input_lens.npy) that workload.dataset_dir reads: for a
    /// frontend built without llama.cpp (no feature `local`).
    #[command(after_help = TOKENIZE_HELP)]
    Tokenize(TokenizeArgs),
    /// Check every response of an accuracy run against the reference outputs.
    #[command(after_help = "Exit status: 0 every answer is right, 5 a wrong, missing or duplicated answer, \
                            1 the run's files cannot be read.")]
    CheckAccuracy {
        /// A run's output directory (holds report.json and mlperf_log_accuracy.json).
        dir: PathBuf,
        /// Reference outputs of a tensors workload (`<output>.npy` per output tensor; default: the
        /// run's workload.reference_dir), or for an LLM on a real model the output directory of a
        /// reference accuracy run of the same model at batch 1 (`generation.max_running = 1`).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Absolute tolerance for floating-point outputs.
        #[arg(long, default_value_t = 1e-4)]
        atol: f64,
        /// Relative tolerance for floating-point outputs.
        #[arg(long, default_value_t = 1e-3)]
        rtol: f64,
    },
    /// The Network-division submission tree: check one against the official checker's v6.1 rules.
    #[command(after_help = app::submission::HELP)]
    Submission(SubmissionArgs),
}

#[derive(Args, Debug)]
struct SubmissionArgs {
    /// Check the tree under DIR (the directory that holds network/) instead of producing one.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["benchmark", "submitter", "system", "out", "system_facts", "test_mode"])]
    check: Option<PathBuf>,
    /// The benchmark to produce (llama3.1-8b).
    #[arg(long, value_parser = ["llama3.1-8b"], required_unless_present = "check")]
    benchmark: Option<String>,
    /// The submitter (the folder under network/).
    #[arg(long, required_unless_present = "check")]
    submitter: Option<String>,
    /// The system's name (systems/<SYSTEM>.json, results/<SYSTEM>/).
    #[arg(long, required_unless_present = "check")]
    system: Option<String>,
    /// Where the tree (and the runs, under OUT/runs) go: the checker's --input.
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    out: Option<PathBuf>,
    /// A JSON object of systems/<SYSTEM>.json keys, merged over what qdl knows of the host.
    #[arg(long, value_name = "FILE.json")]
    system_facts: Option<PathBuf>,
    /// Short runs for CI: the tree says "TEST MODE: shortened settings, not a submission".
    #[arg(long)]
    test_mode: bool,
}

#[derive(Args, Debug)]
struct LabArgs {
    /// Workloads to run (llama3.1-8b on the synthetic generative engine; smollm2-135m is the
    /// workload of `--model` with a .gguf).
    #[arg(long, short, value_parser = ["resnet50", "bert", "llama3.1-8b", "llama2-70b", "smollm2-135m", "all"], default_value = "all")]
    workload: String,
    /// Scenarios to run (MLPerf's spellings Offline, Server and Interactive work too);
    /// Interactive runs for generative workloads only.
    #[arg(long, short, value_parser = lowercase(&["offline", "server", "interactive", "all"]), ignore_case = true, default_value = "all")]
    scenario: String,
    /// Where the lab writes its runs and lab-report.json.
    #[arg(long, short, default_value = "lab-results")]
    output_dir: PathBuf,
    /// Minimum duration of each LoadGen test, ms. Far below mlperf.conf's 600000: the lab's runs
    /// are for comparing, not for submitting (each says so).
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
    /// Run this model on the accelerators and in-process, on top of the accelerator config: an
    /// ONNX model on the onnx backend (give its workload with --frontend-config), or an LLM
    /// (.gguf) on llama.cpp, whose workload is smollm2-135m unless --workload names another
    /// generative one (Server and Interactive bounds for CPU cores in OUTPUT_DIR/<workload>.user.conf).
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TokenizeArgs {
    /// The GGUF model file whose tokenizer tokenizes the prompts (only its vocabulary is read).
    #[arg(long)]
    tokenizer: PathBuf,
    /// The prompts: a UTF-8 text file, one prompt per line (the format of workload.prompts_file).
    #[arg(long)]
    prompts: PathBuf,
    /// The generative workload the prompts are for (its max_input_tokens and vocabulary).
    #[arg(long, short, value_parser = ["llama3.1-8b", "llama2-70b", "smollm2-135m"])]
    workload: String,
    /// The dataset directory to write (made if missing; its two files are replaced).
    #[arg(long)]
    out: PathBuf,
}

/// `tokenize --help`'s epilogue.
const TOKENIZE_HELP: &str = "The prompts file: sample i is the i-th line that is not blank; a \\n in a line is a
newline, \\\\ a backslash; special tokens written out (<|im_start|>) are parsed; BOS is added when
the tokenizer's metadata says so; prompts longer than the workload's max_input_tokens are cut to
their first max_input_tokens tokens. The same as `run` with workload.prompts_file and
workload.tokenizer does when the QSL loads, so both runs send the same samples.
Exit status: 0 written, 1 a file cannot be read or written or a prompt is refused.";

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
    /// Run only these parts (comma-separated: offline, payload, server, metrics, llm, llama).
    #[arg(long, value_delimiter = ',', value_parser = app::bench::PARTS)]
    only: Vec<String>,
    /// A real LLM (.gguf, e.g. scripts/models' SmolLM2) for part 6: llama.cpp Offline and Server,
    /// network against local (minutes on two cores).
    #[arg(long)]
    llama_model: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Config file (TOML, see config/frontend.toml); flags below override it. Without one, every
    /// setting has its default (shown below).
    #[arg(long, short, env = "QDL_CONFIG")]
    config: Option<PathBuf>,
    /// An accelerator as HOST:PORT; repeat for several, or give a comma-separated list
    /// (replaces frontend.accelerators).
    #[arg(long = "accelerator", short = 'a', env = "QDL_ACCELERATORS", value_delimiter = ',')]
    accelerators: Vec<String>,
    /// Workload (resnet50, bert, llama3.1-8b, llama2-70b, smollm2-135m, or a name described in
    /// [workload.spec]).
    #[arg(long, short)]
    workload: Option<String>,
    /// LoadGen scenario: offline, server, singlestream, multistream, interactive (or MLPerf's
    /// Offline, Server, SingleStream, MultiStream, Interactive). Interactive is LoadGen's Server
    /// scenario with the LLM's `<model>-interactive` bounds from mlperf.conf.
    #[arg(long, short, value_parser = lowercase(&["offline", "server", "singlestream", "multistream", "interactive"]), ignore_case = true)]
    scenario: Option<String>,
    /// LoadGen mode.
    #[arg(long, short, value_parser = ["performance", "accuracy"])]
    mode: Option<String>,
    /// Directory for LoadGen's logs and report.json.
    #[arg(long, short)]
    output_dir: Option<PathBuf>,
    /// A LoadGen user.conf: applied after mlperf.conf and the config's [loadgen], before the
    /// flags below (overrides loadgen.user_conf).
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
    /// Minimum test duration, ms (overrides user.conf and loadgen.min_duration_ms).
    #[arg(long)]
    min_duration_ms: Option<u64>,
    /// Minimum query count (overrides user.conf and loadgen.min_query_count).
    #[arg(long)]
    min_query_count: Option<u64>,
    /// Server target QPS (overrides user.conf's target_qps and loadgen.server_target_qps).
    #[arg(long)]
    target_qps: Option<f64>,
    /// Offline expected QPS (overrides user.conf's target_qps and loadgen.offline_expected_qps).
    #[arg(long)]
    expected_qps: Option<f64>,
    /// Samples in the QSL.
    #[arg(long)]
    total_samples: Option<u32>,
    /// Samples loaded at once.
    #[arg(long)]
    performance_samples: Option<u32>,
    /// Accuracy mode: only this many samples (overrides user.conf and loadgen.accuracy_sample_count).
    #[arg(long)]
    accuracy_samples: Option<u64>,
    /// Seed of the sample generator.
    #[arg(long)]
    seed: Option<u64>,
    /// A directory of .npy samples instead of generated ones (replaces workload.dataset_dir and
    /// clears workload.prompts_file).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// A text file of prompts, one per line, tokenized when the QSL loads (untimed) by
    /// --tokenizer's tokenizer (replaces workload.prompts_file and clears workload.dataset_dir).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// The GGUF model file whose tokenizer tokenizes the prompts (replaces workload.tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Prometheus metrics address ("" disables).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Progress output.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Exit with status 4 when LoadGen judges a performance run INVALID (without it, INVALID is
    /// reported and the status is 0).
    #[arg(long)]
    require_valid: bool,
    /// `--transport`, `--rdma-device`, `--log-format`.
    #[command(flatten)]
    common: qdl_shared::config::cli::CommonFlags,
}

/// The lab's exit statuses, shown after `lab --help`.
const LAB_HELP: &str = "The lab's tests are short (--duration-ms; mlperf.conf asks 600000 ms): each run says
NOT A SUBMISSION, and an INVALID verdict is shown in the table, not an error.
Exit status: 0 every test ran, 1 a test failed or could not start, 78 bad configuration,
130/143 interrupted by SIGINT/SIGTERM (the accelerators and the current test are stopped).";

/// How LoadGen's settings are layered, shown after `run --help`.
const RUN_HELP: &str = "LoadGen settings, each layer overriding the ones above it:
  1. mlperf.conf (compiled into LoadGen) for the workload and scenario
  2. the config file's [loadgen] section (--config or QDL_CONFIG)
  3. user.conf (--user-conf or loadgen.user_conf)
  4. the flags --min-duration-ms, --min-query-count, --target-qps, --expected-qps,
     --accuracy-samples
Every setting that is not mlperf.conf's is printed with its source and listed in report.json
(loadgen_settings); settings that shorten the official run are called out as NOT A SUBMISSION.";

/// A parser of one of `names`, in any case ("Offline" or "offline"), returning it in lower case.
fn lowercase(names: &[&'static str]) -> impl TypedValueParser<Value = String> {
    PossibleValuesParser::new(names.iter().map(|n| PossibleValue::new(*n))).map(|v: String| v.to_ascii_lowercase())
}

/// The `run` flags whose defaults come from the config's defaults: shown in `--help` the way
/// clap shows its own (`[default: ...]`), so the help cannot drift from the code.
fn with_defaults(cmd: clap::Command) -> clap::Command {
    let d = FrontendConfig::default();
    let defaults = [
        ("config", "none: every setting has its default".to_string()),
        ("accelerators", "none (frontend.accelerators)".into()),
        ("workload", d.workload.name.clone()),
        ("scenario", d.loadgen.scenario.as_str().into()),
        ("mode", d.loadgen.mode.as_str().into()),
        ("output_dir", d.loadgen.output_dir.display().to_string()),
        ("local_accelerators", d.local.accelerators.to_string()),
        ("connections", d.frontend.connections_per_accelerator.to_string()),
        ("slots", d.frontend.slots_per_connection.to_string()),
        ("dispatch", "auto".into()),
        ("min_duration_ms", "mlperf.conf's, 600000".into()),
        ("min_query_count", "mlperf.conf's".into()),
        ("target_qps", "mlperf.conf's".into()),
        ("expected_qps", "mlperf.conf's".into()),
        (
            "total_samples",
            "resnet50 50000, bert 10833, llama3.1-8b 13368, llama2-70b 24576, or the dataset's count".into(),
        ),
        ("performance_samples", "bert and the LLMs all their samples, others 1024".into()),
        ("accuracy_samples", "all".into()),
        ("seed", d.workload.seed.to_string()),
        ("metrics_listen", d.frontend.metrics_listen.clone()),
        ("transport", "tcp".into()),
        ("log_format", "text".into()),
    ];
    cmd.mut_subcommand("run", |run| {
        let run = run.after_help(format!("{RUN_HELP}\n\n{}", exit::FRONTEND_HELP));
        let run = ignore_empty_env(ignore_empty_env(run, "config", "QDL_CONFIG"), "accelerators", "QDL_ACCELERATORS");
        defaults.into_iter().fold(run, |cmd, (id, value)| {
            cmd.mut_arg(id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            })
        })
    })
}

/// An environment variable that is set but empty (`Environment=QDL_CONFIG=` in a unit) counts as
/// unset rather than as an empty value.
fn ignore_empty_env(cmd: clap::Command, id: &str, var: &str) -> clap::Command {
    if std::env::var_os(var).is_some_and(|v| v.is_empty()) { cmd.mut_arg(id, |a| a.env(None::<&str>)) } else { cmd }
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
    c.workload.total_samples = a.total_samples.or(c.workload.total_samples);
    c.workload.performance_samples = a.performance_samples.or(c.workload.performance_samples);
    if let Some(v) = a.seed {
        c.workload.seed = v;
    }
    // The flags choose the source: a dataset directory or a prompts file, not both.
    if let Some(v) = &a.dataset {
        c.workload.dataset_dir = Some(v.clone());
        c.workload.prompts_file = None;
        c.workload.tokenizer = None;
    }
    if let Some(v) = &a.prompts {
        c.workload.prompts_file = Some(v.clone());
        c.workload.dataset_dir = None;
    }
    if let Some(v) = &a.tokenizer {
        c.workload.tokenizer = Some(v.clone());
    }
    if let Some(v) = &a.metrics_listen {
        c.frontend.metrics_listen = v.clone();
    }
    a.common.apply(&mut c.transport, &mut c.log);
    c.validate()?;
    Ok(c)
}

/// The LoadGen settings given as flags: the top layer, above the config and user.conf.
fn loadgen_flags(a: &RunArgs) -> Overrides {
    Overrides {
        min_duration_ms: a.min_duration_ms,
        min_query_count: a.min_query_count,
        server_target_qps: a.target_qps,
        offline_expected_qps: a.expected_qps,
        accuracy_sample_count: a.accuracy_samples,
        ..Overrides::default()
    }
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
    let report = app::run::run(app::run::RunOptions {
        config,
        local: a.local,
        accelerator_config,
        progress: a.progress,
        config_path: a.config.clone(),
        flags: loadgen_flags(&a),
    })?;
    app::run::print_summary(&report, &out);
    if a.require_valid && report.mode == ModeName::Performance && !report.loadgen.is_valid() {
        eprintln!("qdl-frontend: LoadGen judged the run INVALID and --require-valid was given (exit status 4)");
        return Ok(exit::INVALID);
    }
    Ok(exit::OK)
}

/// `tokenize`: the prompts file tokenized into a dataset directory, a summary on stderr.
fn cmd_tokenize(a: TokenizeArgs) -> anyhow::Result<i32> {
    if !cfg!(feature = "local") {
        anyhow::bail!(
            "tokenize needs llama.cpp, which this qdl-frontend was built without (cargo feature `local`): run it \
             from a default build, then give this one the directory it writes (--dataset DIR)"
        );
    }
    let workload = qdl_shared::config::WorkloadConfig { name: a.workload.clone(), ..Default::default() };
    let spec = workload.resolve_spec()?;
    let Some(g) = spec.generation else { anyhow::bail!("workload {} is not generative", spec.name) };
    eprintln!("qdl-frontend: tokenizing {} with the tokenizer of {}", a.prompts.display(), a.tokenizer.display());
    let t = qdl_frontend::qsl::prompts::tokenize_file(&g, &a.prompts, &a.tokenizer)?;
    for w in &t.tokenized.warnings {
        eprintln!("qdl-frontend: warning: {w}");
    }
    let (ids, lens) =
        t.tokenized.write_dataset(&a.out).with_context(|| format!("writing the dataset {}", a.out.display()))?;
    let s = &t.tokenized.stats;
    eprintln!(
        "qdl-frontend: {} for {} (max_input_tokens {}): wrote {} [{}, {}] and {} [{}] (prompts file sha256 {})",
        s,
        spec.name,
        g.max_input_tokens,
        ids.display(),
        s.prompts,
        s.max,
        lens.display(),
        s.prompts,
        t.sha256
    );
    Ok(exit::OK)
}

/// The exit status for an error: 78 for configuration (a config file, user.conf, secret or TLS
/// file that cannot be read or is invalid), else 1.
fn error_status(e: &anyhow::Error) -> i32 {
    let loadgen_config = e.chain().any(|c| {
        matches!(c.downcast_ref::<qdl_loadgen::LoadgenError>(), Some(qdl_loadgen::LoadgenError::Config { .. }))
    });
    let cluster_config = e.chain().any(|c| {
        c.downcast_ref::<qdl_frontend::supervisor::ClusterError>()
            .is_some_and(qdl_frontend::supervisor::ClusterError::is_config)
    });
    if loadgen_config || cluster_config || e.chain().any(exit::is_config_error) { exit::CONFIG } else { exit::RUNTIME }
}

fn main() {
    let matches = with_defaults(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let code = match command(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if app::signals::interrupted() {
                // The failure follows from the signal: its handler finishes the drain and exits
                // with the signal's status.
                std::thread::sleep(std::time::Duration::from_secs(30));
            }
            eprintln!("Error: {e:?}");
            error_status(&e)
        }
    };
    std::process::exit(code);
}

fn command(command: Command) -> anyhow::Result<i32> {
    Ok(match command {
        Command::Run(a) => cmd_run(*a)?,
        Command::Lab(a) => {
            app::signals::install("lab", || {});
            let all = |v: &str, options: &[&str]| -> Vec<String> {
                if v == "all" { options.iter().map(|s| s.to_string()).collect() } else { vec![v.to_string()] }
            };
            let model = a.model.clone().map(app::lab::LabModel::from_path);
            let workloads = match (&a.frontend_config, &model) {
                (Some(p), _) => vec![qdl_shared::config::FrontendConfig::load(p)?.workload.name],
                (None, Some(app::lab::LabModel::Onnx(p))) => {
                    anyhow::bail!("lab: --model {} (ONNX) needs its workload: give --frontend-config", p.display())
                }
                (None, Some(app::lab::LabModel::Llama(_))) => match a.workload.as_str() {
                    "all" => vec!["smollm2-135m".to_string()],
                    w if qdl_shared::workload::WorkloadSpec::builtin(w).is_some_and(|s| s.is_generative()) => {
                        vec![w.to_string()]
                    }
                    w => anyhow::bail!("lab: --model with a .gguf runs a generative workload, not {w}"),
                },
                (None, None) => all(&a.workload, &["resnet50", "bert", "llama3.1-8b"]),
            };
            let opts = app::lab::LabOptions {
                workloads,
                frontend_config: a.frontend_config.clone(),
                model,
                scenarios: all(&a.scenario, &["offline", "server", "interactive"]),
                output_dir: a.output_dir.clone(),
                duration_ms: a.duration_ms,
                accelerator_config: a.accelerator_config,
                accelerators: a.accelerators.max(1),
            };
            let report = app::lab::lab(opts)?;
            app::lab::print_table(&report, &a.output_dir);
            if report.rows.iter().all(|r| r.errors.is_empty()) { exit::OK } else { exit::RUNTIME }
        }
        Command::Bench(a) => {
            app::signals::install("bench", || {});
            let opts = app::bench::BenchOptions {
                output_dir: a.output_dir.clone(),
                duration_ms: a.duration_ms,
                skip_iperf: a.skip_iperf,
                max_qps: a.max_qps,
                only: a.only,
                llama_model: a.llama_model,
            };
            let report = app::bench::bench(opts)?;
            app::bench::print(&report, &a.output_dir);
            0
        }
        Command::Tokenize(a) => cmd_tokenize(a)?,
        Command::CheckAccuracy { dir, reference, atol, rtol } => {
            let tol = app::accuracy::Tolerance { atol, rtol };
            let v = app::accuracy::check(&dir, reference.as_deref(), tol)
                .with_context(|| format!("checking {}", dir.display()))?;
            if app::accuracy::print(&v) { exit::OK } else { exit::ACCURACY }
        }
        Command::Submission(a) => match a {
            SubmissionArgs { check: Some(dir), .. } => app::submission::check(&dir),
            SubmissionArgs {
                benchmark: Some(benchmark),
                submitter: Some(submitter),
                system: Some(system),
                out: Some(out),
                system_facts,
                test_mode,
                ..
            } => {
                app::signals::install("submission", || {});
                let opts = app::submission_run::SubmissionOptions {
                    benchmark,
                    submitter,
                    system,
                    out,
                    system_facts,
                    test_mode,
                };
                app::submission_run::produce(&opts)?
            }
            _ => anyhow::bail!("submission: give --check DIR, or --benchmark, --submitter, --system and --out"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let m = with_defaults(Cli::command()).try_get_matches_from(args)?;
        Cli::from_arg_matches(&m)
    }

    #[test]
    fn scenarios_parse_in_mlperfs_spelling_and_in_lower_case() {
        for (given, want) in [
            ("Offline", "offline"),
            ("Server", "server"),
            ("SingleStream", "singlestream"),
            ("MultiStream", "multistream"),
            ("multistream", "multistream"),
        ] {
            let Command::Run(a) = parse(&["qdl-frontend", "run", "-s", given]).unwrap().command else { panic!() };
            assert_eq!(a.scenario.as_deref(), Some(want), "{given}");
            assert_eq!(parse_enum::<ScenarioName>(want).unwrap().as_str(), want);
        }
        let Command::Lab(l) = parse(&["qdl-frontend", "lab", "-s", "Server"]).unwrap().command else { panic!() };
        assert_eq!(l.scenario, "server");
        let e = parse(&["qdl-frontend", "run", "-s", "Sideways"]).unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE);
    }

    #[test]
    fn accelerators_come_from_flags_or_a_comma_separated_list() {
        let Command::Run(a) = parse(&["qdl-frontend", "run", "-a", "x:1,y:2", "-a", "z:3"]).unwrap().command else {
            panic!()
        };
        assert_eq!(a.accelerators, ["x:1", "y:2", "z:3"]);
    }

    #[test]
    fn prompts_flags_choose_the_sample_source() {
        let dir = tempfile::tempdir().unwrap();
        let (prompts, model) = (dir.path().join("p.txt"), dir.path().join("m.gguf"));
        std::fs::write(&prompts, "Hello\n").unwrap();
        std::fs::write(&model, "GGUF").unwrap();
        let config = dir.path().join("frontend.toml");
        std::fs::write(
            &config,
            format!("[workload]\nname = \"smollm2-135m\"\ndataset_dir = \"{}\"\n", dir.path().display()),
        )
        .unwrap();
        let (c, p, m) = (config.to_str().unwrap(), prompts.to_str().unwrap(), model.to_str().unwrap());
        let Command::Run(a) =
            parse(&["qdl-frontend", "run", "-c", c, "--prompts", p, "--tokenizer", m]).unwrap().command
        else {
            panic!()
        };
        let cfg = frontend_config(&a).unwrap();
        assert_eq!((cfg.workload.dataset_dir, cfg.workload.prompts_file), (None, Some(prompts.clone())));
        assert_eq!(cfg.workload.tokenizer.as_deref(), Some(model.as_path()));
        let Command::Run(a) = parse(&["qdl-frontend", "run", "-w", "smollm2-135m", "--prompts", p]).unwrap().command
        else {
            panic!()
        };
        let e = frontend_config(&a).unwrap_err().to_string();
        assert!(e.contains("workload.tokenizer"), "{e}");
        let Command::Tokenize(t) =
            parse(&["qdl-frontend", "tokenize", "--tokenizer", m, "--prompts", p, "-w", "llama2-70b", "--out", "d"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!((t.workload.as_str(), t.out.as_path()), ("llama2-70b", std::path::Path::new("d")));
        assert!(
            parse(&["qdl-frontend", "tokenize", "--tokenizer", m, "--prompts", p, "-w", "bert", "--out", "d"]).is_err()
        );
    }

    #[test]
    fn loadgen_flags_are_kept_apart_from_the_config() {
        let Command::Run(a) =
            parse(&["qdl-frontend", "run", "--min-duration-ms", "5", "--target-qps", "7"]).unwrap().command
        else {
            panic!()
        };
        let cfg = frontend_config(&a).unwrap();
        assert_eq!(cfg.loadgen.min_duration_ms, None, "flags are their own layer, above user.conf");
        let f = loadgen_flags(&a);
        assert_eq!((f.min_duration_ms, f.server_target_qps), (Some(5), Some(7.0)));
    }

    #[test]
    fn submission_check_takes_a_dir() {
        let Command::Submission(a) = parse(&["qdl-frontend", "submission", "--check", "out"]).unwrap().command else {
            panic!()
        };
        assert_eq!(a.check, Some(PathBuf::from("out")));
        assert!(parse(&["qdl-frontend", "submission"]).is_err(), "--check or the producing flags are required");
        let produce = ["qdl-frontend", "submission", "--benchmark", "llama3.1-8b", "--submitter", "S", "--system", "x"];
        assert!(parse(&produce).is_err(), "--out is required");
        let Command::Submission(a) = parse(&[&produce[..], &["--out", "o", "--test-mode"]].concat()).unwrap().command
        else {
            panic!()
        };
        assert!(a.test_mode && a.check.is_none() && a.out == Some(PathBuf::from("o")));
        assert!(parse(&["qdl-frontend", "submission", "--check", "d", "--out", "o"]).is_err());
    }
}
