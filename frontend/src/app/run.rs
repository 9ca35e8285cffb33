//! `qdl-frontend run`: one LoadGen test, over the network or in-process (`--local`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use anyhow::{Context as _, anyhow, bail};
use futures::future::join_all;
use qdl_frontend::client::{AcceleratorClient, Close as CloseClient, QueryStats, SetRunState};
use qdl_frontend::connection::{Close, ConnectionStats, GetStats};
use qdl_frontend::issuer::{CreditGate, Dispatcher, QueryIssuer};
use qdl_frontend::qsl::{SampleSource, SampleStore};
use qdl_frontend::report::{AcceleratorReport, FrontendReport, RunReport, parse_detail_log};
use qdl_frontend::settings::{Layers, Overrides, Resolved, advice};
use qdl_frontend::supervisor::{self, Cluster, ClusterParts, RunFailure, SessionRecipe};
use qdl_frontend::sut::{QdlQsl, QdlSut, SutName, network_sut_name, snapshot};
use qdl_frontend::timeline::{Percentiles, RunLatencies, Timeline, TimelinePoint};
use qdl_loadgen::{LogSettings, Scenario, TestMode, TestSettings};
use qdl_shared::config::{AcceleratorConfig, FrontendConfig, ModeName, ScenarioName};
use qdl_shared::wire::message::RunState;
use qdl_shared::workload::WorkloadSpec;

#[cfg(feature = "local")]
use super::baseline::{WorkerPool, connect_local};
use super::io::Io;
use super::progress::{Progress, ProgressMode};
pub use super::summary::print_summary;
use super::summary::write_plots;

/// How long warm-up (and each run-state change) may take.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything `run` needs.
pub struct RunOptions {
    /// The frontend config, CLI overrides applied.
    pub config: FrontendConfig,
    /// Run the in-process baseline instead of going over the network.
    pub local: bool,
    /// The accelerator config the baseline runs (its batcher, workers, backend).
    pub accelerator_config: AcceleratorConfig,
    /// Progress output.
    pub progress: ProgressMode,
    /// The config file `config` was read from, if any (the source of its `[loadgen]` settings).
    pub config_path: Option<PathBuf>,
    /// LoadGen settings given as flags (they override the config and user.conf).
    pub flags: Overrides,
}

fn scenario(s: ScenarioName) -> Scenario {
    match s {
        ScenarioName::Offline => Scenario::Offline,
        ScenarioName::Server | ScenarioName::Interactive => Scenario::Server,
        ScenarioName::SingleStream => Scenario::SingleStream,
        ScenarioName::MultiStream => Scenario::MultiStream,
    }
}

/// LoadGen's settings for this run, in layers: mlperf.conf < the TOML config's `[loadgen]` <
/// user.conf < flags (see [`qdl_frontend::settings`]). `model` is the workload's name in
/// mlperf.conf; the Interactive scenario looks its keys up as `<model>-interactive`.
pub fn loadgen_settings(
    cfg: &FrontendConfig,
    config_path: Option<&Path>,
    flags: &Overrides,
    model: &str,
    generative: bool,
) -> Result<Resolved, qdl_loadgen::LoadgenError> {
    let l = &cfg.loadgen;
    let model =
        if l.scenario == ScenarioName::Interactive { format!("{model}-interactive") } else { model.to_string() };
    let layers = Layers {
        model,
        generative,
        scenario: scenario(l.scenario),
        mode: match l.mode {
            ModeName::Performance => TestMode::PerformanceOnly,
            ModeName::Accuracy => TestMode::AccuracyOnly,
        },
        toml: config_path.map(|p| (p.to_path_buf(), Overrides::from_config(l))),
        user_conf: l.user_conf.clone(),
        flags: flags.clone(),
    };
    Resolved::resolve(&layers)
}

/// Says, before the test, every LoadGen setting that is not mlperf.conf's and where it came
/// from, and loudly when the settings make the run shorter than an official one.
fn print_settings(r: &Resolved) {
    let mut err = std::io::stderr().lock();
    for line in r.describe() {
        let _ = writeln!(err, "loadgen: {line}");
    }
    let short = r.shortened();
    if !short.is_empty() {
        let _ = writeln!(
            err,
            "qdl-frontend: NOT A SUBMISSION: these settings shorten the official run: {}",
            short.join("; ")
        );
    }
}

/// What `--local` and `lab` answer in a build without the local baseline.
pub const NO_LOCAL_BASELINE: &str = "this qdl-frontend was built without the local baseline (cargo feature `local`): run it over the network, or build it with the feature";

/// Without the local baseline no run has a worker pool: this uninhabited stand-in lets the run's
/// code ask `if let Some(pool)` in every build.
#[cfg(not(feature = "local"))]
enum WorkerPool {}

#[cfg(not(feature = "local"))]
impl WorkerPool {
    async fn warmup(&self, _spec: Arc<WorkloadSpec>) -> anyhow::Result<()> {
        match *self {}
    }
    fn reset_stats(&self) {
        match *self {}
    }
    fn batch_sizes_of(&self, _workers: std::ops::Range<usize>) -> Vec<(u32, u64)> {
        match *self {}
    }
    fn shutdown(self) {
        match self {}
    }
}

#[cfg(not(feature = "local"))]
fn connect_local(
    _: &FrontendConfig,
    _: &AcceleratorConfig,
    _: &WorkloadSpec,
    _: &Cluster,
) -> anyhow::Result<(Vec<AcceleratorReport>, Arc<WorkerPool>)> {
    bail!(NO_LOCAL_BASELINE)
}

/// Publishes the scenario's latency bound (Server only: LoadGen's target latency at its target
/// percentile; the other scenarios have none) and returns the `test_running` gauge of this run.
fn test_metrics(workload: &str, cfg: &FrontendConfig, s: &TestSettings) -> metrics::Gauge {
    use qdl_shared::metrics::frontend as m;
    let (scenario, mode) = (cfg.loadgen.scenario.as_str(), cfg.loadgen.mode.as_str());
    if cfg.loadgen.scenario.is_server() {
        let quantile = s.server_target_latency_percentile.to_string();
        metrics::gauge!(m::LATENCY_BOUND, "workload" => workload.to_string(), "scenario" => scenario, "quantile" => quantile)
            .set(s.server_target_latency_ns as f64 / 1e9);
    }
    metrics::gauge!(m::TEST_RUNNING, "workload" => workload.to_string(), "scenario" => scenario, "mode" => mode)
}

/// Ends a run that the supervisor cannot save (its samples can no longer all complete): says
/// why and exits with [`qdl_shared::exit::RUN_FAILED`] (3) rather than leave LoadGen waiting.
fn end_run(failure: RunFailure, out: &Path) {
    if super::signals::interrupted() {
        // The interruption closed the sessions; the signal handler reports and exits.
        std::thread::park_timeout(Duration::from_secs(5));
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\nqdl-frontend: run failed: {failure}\nLoadGen's logs in {} are incomplete.", out.display());
    let _ = err.flush();
    // SAFETY: _exit ends the process at once without running C++ static destructors, which
    // could block on LoadGen's logger threads that are still running the test.
    unsafe { libc::_exit(qdl_shared::exit::RUN_FAILED) };
}

/// The dataset's samples, described by the workload (a directory of .npy files, a text file of
/// prompts tokenized now, before the test, else generated).
fn prepare_samples(cfg: &FrontendConfig) -> anyhow::Result<(WorkloadSpec, Arc<SampleStore>)> {
    let w = &cfg.workload;
    let spec = w.resolve_spec()?;
    let source = match (&w.dataset_dir, &w.prompts_file, &w.tokenizer) {
        (Some(dir), _, _) => SampleSource::npy(&spec, dir)?,
        (None, Some(file), Some(tokenizer)) => SampleSource::prompts(&spec, file, tokenizer)?,
        (None, Some(_), None) => bail!("workload.prompts_file needs workload.tokenizer (a GGUF model file)"),
        (None, None, _) => SampleSource::generated(&spec, w.seed),
    };
    let total = match (w.total_samples, source.available()) {
        (None, Some(n)) => n,
        _ => w.total() as usize,
    };
    let performance = (w.performance() as usize).min(total);
    Ok((spec, Arc::new(SampleStore::new(source, total, performance)?)))
}

/// What the run is connected to.
struct Connected {
    /// Each accelerator (or in-process box), in order.
    accelerators: Vec<AcceleratorReport>,
    /// The in-process workers of the local baseline.
    pool: Option<Arc<WorkerPool>>,
}

/// Connects the cluster: the accelerators over the network, or the in-process workers.
fn connect(opts: &RunOptions, spec: &WorkloadSpec, io: &Io, cluster: &Arc<Cluster>) -> anyhow::Result<Connected> {
    if opts.local {
        let (accelerators, pool) = connect_local(&opts.config, &opts.accelerator_config, spec, cluster)?;
        return Ok(Connected { accelerators, pool: Some(pool) });
    }
    let c = cluster.clone();
    let accelerators = io.block_on(async move { c.connect_network().await })??;
    Ok(Connected { accelerators, pool: None })
}

/// Warms the accelerators (or the in-process workers) up, if the config asks for it.
fn warm_up(cfg: &FrontendConfig, spec: &WorkloadSpec, io: &Io, cluster: &Cluster, c: &Connected) -> anyhow::Result<()> {
    if !cfg.frontend.warmup {
        return Ok(());
    }
    let started = Instant::now();
    if let Some(pool) = &c.pool {
        let (p, s) = (pool.clone(), Arc::new(spec.clone()));
        io.block_on(async move { p.warmup(s).await })??;
        pool.reset_stats();
    } else {
        set_run_state(io, &snapshot(&cluster.clients()), RunState::Warmup)?;
    }
    tracing::info!(ms = started.elapsed().as_millis() as u64, "accelerators warmed up");
    Ok(())
}

/// On Ctrl-C or SIGTERM: the samples in flight are answered (10 s at most), then the sessions
/// are closed in order, so the accelerators see a goodbye, not a lost frontend.
fn on_signal_drain_and_close(cluster: &Arc<Cluster>) {
    let cluster = cluster.clone();
    super::signals::install("run", move || {
        let issuer = cluster.issuer();
        let target = issuer.issued();
        let deadline = Instant::now() + Duration::from_secs(10);
        while issuer.completed() < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!(
            "qdl-frontend: {} of the {target} samples issued before the signal answered",
            issuer.completed().min(target)
        );
        let clients = snapshot(&cluster.clients());
        for c in &clients {
            c.do_send(CloseClient);
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while clients.iter().any(|c| c.connected()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("qdl-frontend: LoadGen's logs in this run's output directory are incomplete");
    });
}

/// What LoadGen's test left behind.
struct Tested {
    wall: Duration,
    timeline: Vec<TimelinePoint>,
}

/// Runs LoadGen's test over `sut` and `qsl` with progress, the timeline and the `test_running`
/// gauge; returns once LoadGen does.
fn start_loadgen(
    sut: &QdlSut,
    qsl: &QdlQsl,
    cfg: &FrontendConfig,
    progress: ProgressMode,
    cluster: &Cluster,
    settings: &TestSettings,
    log: &LogSettings,
) -> anyhow::Result<Tested> {
    let workload = &qsl.store.source().spec().name;
    let (scenario, mode) = (cfg.loadgen.scenario.as_str(), cfg.loadgen.mode.as_str());
    let kind = if matches!(sut.name, SutName::Local(_)) { "local" } else { "network" };
    let label = format!("{workload} {scenario} {mode} {kind}");
    let running = test_metrics(workload, cfg, settings);
    let progress = {
        let i = sut.issuer.clone();
        Progress::start(progress, label, move || (i.issued(), i.completed()))
    };
    let timeline = {
        let i = sut.issuer.clone();
        let generative = qsl.store.source().spec().is_generative();
        Timeline::start(Duration::from_millis(500), cluster.latencies().clone(), generative, move || i.completed())
    };
    let started = Instant::now();
    running.set(1.0);
    let tested = qdl_loadgen::start_test(sut, qsl, settings, log);
    running.set(0.0);
    // Lost accelerators are not asked back any more.
    cluster.end_test();
    tested?;
    let wall = started.elapsed();
    let timeline = timeline.finish();
    drop(progress);
    Ok(Tested { wall, timeline })
}

/// After the test: each accelerator's batch sizes, the run's end said to the accelerators, every
/// connection's counters, then goodbyes and the actor system stopped.
fn wind_down(io: Io, cluster: &Cluster, c: &mut Connected, per_box: usize) -> anyhow::Result<Vec<ConnectionStats>> {
    let clients = snapshot(&cluster.clients());
    if let Some(pool) = &c.pool {
        for (b, a) in c.accelerators.iter_mut().enumerate() {
            a.batch_sizes = pool.batch_sizes_of(b * per_box..(b + 1) * per_box);
        }
    } else {
        let asked = clients.clone();
        let stats = io.block_on(async move { join_all(asked.iter().map(|c| c.send(QueryStats))).await })?;
        for (a, s) in c.accelerators.iter_mut().zip(stats) {
            match s {
                Ok(Ok(s)) => a.batch_sizes = s.batch_sizes,
                Ok(Err(e)) => tracing::warn!("no statistics from {}: {e}", a.name),
                Err(e) => tracing::warn!("no statistics from {}: {e}", a.name),
            }
        }
        if let Err(e) = set_run_state(&io, &clients, RunState::Done) {
            tracing::warn!("{e}");
        }
    }
    let actors = cluster.connections();
    let asked = actors.clone();
    let stats = io.block_on(async move { join_all(asked.iter().map(|a| a.send(GetStats))).await })?;
    let stats: Vec<_> = stats.into_iter().filter_map(Result::ok).collect();
    for a in &actors {
        a.do_send(Close);
    }
    for c in &clients {
        c.do_send(CloseClient);
    }
    // Each client stops once its Goodbye is written; wait for that (briefly) before stopping.
    let deadline = Instant::now() + Duration::from_secs(1);
    while clients.iter().any(|c| c.connected()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    io.stop();
    if let Some(pool) = c.pool.take()
        && let Ok(pool) = Arc::try_unwrap(pool)
    {
        pool.shutdown();
    }
    Ok(stats)
}

/// Runs one test and returns its report (also written to the output directory).
pub fn run(opts: RunOptions) -> anyhow::Result<RunReport> {
    if opts.local && !cfg!(feature = "local") {
        bail!(NO_LOCAL_BASELINE);
    }
    let cfg = &opts.config;
    let (spec, store) = prepare_samples(cfg)?;
    let out_dir = cfg.loadgen.output_dir.clone();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let (config, model) = (opts.config_path.as_deref(), spec.loadgen_model());
    let resolved = loadgen_settings(cfg, config, &opts.flags, &model, spec.is_generative())?;
    print_settings(&resolved);
    let recipe = if opts.local { None } else { Some(Arc::new(SessionRecipe::from_config(cfg, &spec)?)) };

    // Built in order, each from the ones before (see qdl_frontend::supervisor).
    let io = Io::start(cfg.frontend.io_threads as usize)?;
    let (failures, inbox) = supervisor::failure::channel();
    let dispatcher = Dispatcher::for_config(cfg.frontend.dispatch, cfg.loadgen.scenario == ScenarioName::Offline);
    let issuer = Arc::new(QueryIssuer::new(dispatcher, Arc::new(CreditGate::default()), failures.clone()));
    let parts = ClusterParts {
        issuer: issuer.clone(),
        store: store.clone(),
        latencies: Arc::new(RunLatencies::default()),
        io: io.io.clone(),
        control: io.control(),
        failures: failures.clone(),
        recipe,
    };
    let cluster = Cluster::new(parts);
    let out = out_dir.clone();
    supervisor::supervise(&cluster, inbox, move |f| end_run(f, &out)).context("starting the supervisor")?;
    let mut conns = match connect(&opts, &spec, &io, &cluster) {
        Ok(c) => c,
        Err(e) => {
            io.stop();
            return Err(e);
        }
    };
    let where_ = if opts.local { "in-process" } else { "over the network" };
    let (scenario, mode) = (cfg.loadgen.scenario.as_str(), cfg.loadgen.mode.as_str());
    let connections = issuer.lanes().len();
    tracing::info!(workload = %spec.name, scenario, mode, connections, "connected {where_}");
    warm_up(cfg, &spec, &io, &cluster, &conns)?;
    on_signal_drain_and_close(&cluster);

    let name = match opts.local {
        true => SutName::Local(format!(
            "qdl Local SUT ({} x {} in-process)",
            conns.accelerators.len(),
            conns.accelerators[0].backend
        )),
        false => SutName::Network(cluster.clients()),
    };
    let sut = QdlSut { issuer: issuer.clone(), name };
    let qsl = QdlQsl { store: store.clone(), failures };
    let mut log = LogSettings::new(&out_dir);
    log.enable_trace = cfg.loadgen.trace;
    if !opts.local {
        set_run_state(&io, &snapshot(&cluster.clients()), RunState::Start)?;
    }
    if let Err(e) = qdl_shared::sdnotify::notify(&format!("READY=1\nSTATUS=running {} {scenario} {mode}", spec.name)) {
        tracing::warn!("{e}");
    }
    let tested = start_loadgen(&sut, &qsl, cfg, opts.progress, &cluster, &resolved.settings, &log)?;
    let stats = wind_down(io, &cluster, &mut conns, opts.accelerator_config.workers.count as usize)?;
    let sut_name = match &sut.name {
        SutName::Local(n) => n.clone(),
        SutName::Network(_) => network_sut_name(&conns.accelerators.iter().map(|a| a.name.clone()).collect::<Vec<_>>()),
    };
    let mut frontend = frontend_report(&issuer, &tested, stats);
    frontend.ttft_outside_accelerator = Percentiles::of(&cluster.latencies().ttft_outside.take());
    let report = RunReport {
        qdl_version: env!("CARGO_PKG_VERSION").into(),
        loadgen_version: qdl_loadgen::version(),
        network: !opts.local,
        sut_name,
        workload: spec,
        dataset: store.source().info().clone(),
        reference_dir: cfg.workload.reference_dir.clone(),
        total_samples: store.total(),
        performance_samples: store.performance(),
        scenario: cfg.loadgen.scenario,
        mode: cfg.loadgen.mode,
        loadgen_settings: resolved.differences(),
        shortened: resolved.shortened(),
        loadgen: parse_detail_log(&out_dir.join("mlperf_log_detail.txt")).context("reading LoadGen's detail log")?,
        advice: Vec::new(),
        accelerators: conns.accelerators,
        frontend,
        timeline: tested.timeline,
    };
    let report = RunReport { advice: advice(&report.loadgen, &resolved), ..report };
    report.write(&out_dir).context("writing report.json")?;
    write_plots(&report, &out_dir).context("writing the plots")?;
    Ok(report)
}

/// The frontend's part of report.json.
fn frontend_report(issuer: &QueryIssuer, tested: &Tested, stats: Vec<ConnectionStats>) -> FrontendReport {
    FrontendReport {
        wall_seconds: tested.wall.as_secs_f64(),
        samples_issued: issuer.issued(),
        samples_completed: issuer.completed(),
        sample_errors: stats.iter().map(|s| s.errors).sum(),
        bytes_sent: stats.iter().map(|s| s.bytes_sent).sum(),
        bytes_received: stats.iter().map(|s| s.bytes_received).sum(),
        write_calls: stats.iter().map(|s| s.write_calls).sum(),
        dispatch: format!("{:?}", issuer.dispatcher()),
        redispatched: issuer.redispatched(),
        late_responses: issuer.late(),
        ttft_outside_accelerator: None,
        connections: stats,
    }
}

fn set_run_state(io: &Io, clients: &[Addr<AcceleratorClient>], state: RunState) -> anyhow::Result<()> {
    let clients = clients.to_vec();
    let results = io.block_on(async move {
        let all = join_all(clients.iter().map(|c| c.send(SetRunState(state))));
        tokio::time::timeout(WARMUP_TIMEOUT, all).await
    })?;
    let results =
        results.map_err(|_| anyhow!("accelerators did not acknowledge {state:?} within {WARMUP_TIMEOUT:?}"))?;
    for r in results {
        r.map_err(|e| anyhow!("{e}"))?.map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_overrides_apply_on_top_of_mlperf_conf() {
        let mut cfg = FrontendConfig::default();
        cfg.loadgen.scenario = ScenarioName::Server;
        cfg.loadgen.mode = ModeName::Accuracy;
        let none = Overrides::default();
        let s = loadgen_settings(&cfg, None, &none, "bert", false).unwrap().settings;
        assert_eq!(s.server_target_latency_ns, 130_000_000, "mlperf.conf's BERT bound");
        assert_eq!(s.min_duration_ms, 600_000);
        assert_eq!(s.qsl_rng_seed, 2085463073848966840);
        assert_eq!((s.scenario, s.mode), (Scenario::Server, TestMode::AccuracyOnly));

        cfg.loadgen.server_target_latency_ms = Some(50.5);
        cfg.loadgen.min_duration_ms = Some(1234);
        cfg.loadgen.server_target_qps = Some(777.0);
        cfg.loadgen.single_stream_expected_latency_ms = Some(2.0);
        cfg.loadgen.accuracy_sample_count = Some(10);
        let r = loadgen_settings(&cfg, Some(Path::new("x.toml")), &none, "bert", false).unwrap();
        let s = &r.settings;
        assert_eq!(s.server_target_latency_ns, 50_500_000);
        assert_eq!(s.min_duration_ms, 1234);
        assert_eq!(s.server_target_qps, 777.0);
        assert_eq!(s.single_stream_expected_latency_ns, 2e6);
        assert_eq!(s.accuracy_sample_count_override, 10);
        assert_eq!(s.qsl_rng_seed, 2085463073848966840, "untouched settings keep mlperf.conf's values");
        assert_eq!(r.source("min_duration_ms"), "x.toml [loadgen]");
    }
}
