//! `qdl-frontend run`: one LoadGen test, over the network or in-process (`--local`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use anyhow::{Context as _, anyhow, bail};
use futures::future::join_all;
#[cfg(feature = "local")]
use qdl_engine::{local::LocalTransport, worker::WorkerPool};
use qdl_frontend::client::{
    AcceleratorClient, ClientError, ClientTls, Close as CloseClient, ConnectRdma, Established, QueryStats, SetRunState,
};
use qdl_frontend::connection::{Abandon, Close, ConnectionActor, ConnectionParts, FailureHandler, GetStats};
use qdl_frontend::issuer::{CreditGate, Dispatcher, Lane, QueryIssuer, Redispatcher};
use qdl_frontend::plot::{Series, bar_chart, line_chart};
use qdl_frontend::qsl::{SampleSource, SampleStore};
use qdl_frontend::report::{AcceleratorReport, FrontendReport, RunReport, parse_detail_log};
use qdl_frontend::settings::{Layers, Overrides, Resolved, advice};
use qdl_frontend::sut::{Clients, QdlQsl, QdlSut, SutName, duplicate_names, network_sut_name, snapshot};
use qdl_frontend::timeline::{LatencyBuckets, Timeline, TimelinePoint};
use qdl_loadgen::{LogSettings, Scenario, TestMode, TestSettings};
use qdl_shared::config::{AcceleratorConfig, FrontendConfig, ModeName, ScenarioName};
use qdl_shared::transport::rdma::{InitiatorSetup, RdmaDevice, RdmaMetrics};
use qdl_shared::transport::tcp::{TcpInitiator, connect_data};
use qdl_shared::transport::{InitiatorTransport, TransportMetrics};
use qdl_shared::wire::attach::Attach;
use qdl_shared::wire::message::DataTransport;
use qdl_shared::wire::message::{RunState, SessionRequest};
use qdl_shared::workload::WorkloadSpec;
use tokio::net::TcpStream;

use super::io::Io;
use super::progress::{Progress, ProgressMode, thousands};

/// How long warm-up may take.
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
        ScenarioName::Server => Scenario::Server,
        ScenarioName::SingleStream => Scenario::SingleStream,
        ScenarioName::MultiStream => Scenario::MultiStream,
    }
}

/// LoadGen's settings for this run, in layers: mlperf.conf < the TOML config's `[loadgen]` <
/// user.conf < flags (see [`qdl_frontend::settings`]).
pub fn loadgen_settings(
    cfg: &FrontendConfig,
    config_path: Option<&Path>,
    flags: &Overrides,
    model: &str,
) -> Result<Resolved, qdl_loadgen::LoadgenError> {
    let l = &cfg.loadgen;
    let layers = Layers {
        model: model.to_string(),
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

#[derive(Default)]
struct Connections {
    lanes: Vec<Arc<Lane>>,
    actors: Vec<Addr<ConnectionActor>>,
    clients: Vec<Addr<AcceleratorClient>>,
    accelerators: Vec<AcceleratorReport>,
    pool: Option<Arc<WorkerPool>>,
}

struct Shared {
    store: Arc<SampleStore>,
    latencies: Arc<LatencyBuckets>,
    gate: Arc<CreditGate>,
    failure: FailureHandler,
    io: Vec<actix::ArbiterHandle>,
    redispatch: Arc<Redispatcher>,
    /// Each accelerator's data connections, by the address it was given as.
    by_accelerator: std::sync::Mutex<std::collections::HashMap<String, Vec<Addr<ConnectionActor>>>>,
    /// The control sessions in the order the accelerators were given; one that rejoins takes
    /// its old place.
    clients: Clients,
    /// The addresses they were given as, in the same order.
    given: std::sync::Mutex<Vec<String>>,
    /// How to connect an accelerator that comes back (set once the first ones are connected).
    join: std::sync::OnceLock<Arc<JoinContext>>,
    /// The data connections of accelerators that rejoined.
    rejoined: std::sync::Mutex<Vec<Addr<ConnectionActor>>>,
    /// The test is over: lost accelerators are not waited for any more.
    ended: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// What happens when the control session with the accelerator at `addr` is lost: once its
    /// data connections exist they give their samples back for the other accelerators (the run
    /// goes on); before that, the run fails.
    fn accelerator_lost(self: &Arc<Self>, addr: String) -> FailureHandler {
        let sh = self.clone();
        Arc::new(move |msg: String| {
            let conns = sh.by_accelerator.lock().unwrap_or_else(|p| p.into_inner()).get(&addr).cloned();
            match conns {
                Some(conns) if !conns.is_empty() => {
                    tracing::error!("{msg}: re-dispatching its samples to the accelerators left");
                    for c in conns {
                        c.do_send(Abandon(msg.clone()));
                    }
                    if !sh.ended.load(std::sync::atomic::Ordering::Acquire) {
                        rejoin(sh.clone(), addr.clone());
                    }
                }
                _ => (sh.failure)(msg),
            }
        })
    }
}

impl Connections {
    /// Starts a `ConnectionActor` for a new lane on an I/O arbiter (round-robin); the transport
    /// is built there, inside the arbiter's runtime.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        shared: &Arc<Shared>,
        accelerator: &str,
        addr: Option<&str>,
        connection: u32,
        slots: u32,
        output_bytes: u32,
        transport: impl FnOnce() -> Box<dyn InitiatorTransport> + Send + 'static,
    ) {
        let lane = Lane::new(format!("{accelerator}/{connection}"), slots);
        let (sh, l, acc) = (shared.clone(), lane.clone(), accelerator.to_string());
        let arbiter = &shared.io[self.actors.len() % shared.io.len()];
        let actor = ConnectionActor::start_in_arbiter(arbiter, move |_| {
            ConnectionActor::new(ConnectionParts {
                label: l.label().to_string(),
                accelerator: acc,
                connection,
                lane: l,
                transport: transport(),
                slots,
                output_bytes,
                store: sh.store.clone(),
                gate: sh.gate.clone(),
                on_failure: sh.failure.clone(),
                redispatch: sh.redispatch.clone(),
                latencies: sh.latencies.clone(),
            })
        });
        if let Some(addr) = addr {
            let mut map = shared.by_accelerator.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(addr.to_string()).or_default().push(actor.clone());
        }
        self.actors.push(actor);
        self.lanes.push(lane);
    }
}

async fn connect_network(cfg: FrontendConfig, spec: WorkloadSpec, shared: Arc<Shared>) -> anyhow::Result<Connections> {
    let f = &cfg.frontend;
    if f.accelerators.is_empty() {
        return Err(qdl_shared::config::ConfigError::Invalid {
            field: "frontend.accelerators".into(),
            reason: "no accelerator given: pass --accelerator HOST:PORT (or QDL_ACCELERATORS, or \
                     frontend.accelerators in the config), or --local"
                .into(),
        }
        .into());
    }
    let rdma = RdmaDevice::open_configured(&cfg.transport)?;
    let request = SessionRequest {
        workload: spec.clone(),
        connections: f.connections_per_accelerator,
        slots_per_connection: f.slots_per_connection,
        transport: if rdma.is_some() { DataTransport::Rdma } else { DataTransport::Tcp },
    };
    let timeout = Duration::from_millis(f.connect_timeout_ms);
    let hb = cfg.heartbeat.to_heartbeat();
    let secret = cfg.auth.secret()?;
    if secret.is_none() {
        tracing::warn!("the control channel is NOT authenticated ([auth] required = false, no secret)");
    }
    let tls = if cfg.tls.enabled {
        let ca = cfg.tls.ca_file.as_deref().context("tls.ca_file")?;
        Some(ClientTls { config: qdl_shared::tls::client_config(ca)?, server_name: cfg.tls.server_name.clone() })
    } else {
        None
    };
    let sessions = join_all(f.accelerators.iter().map(|a| {
        let lost = shared.accelerator_lost(a.clone());
        AcceleratorClient::connect(a, &f.name, request.clone(), hb, secret.clone(), tls.clone(), timeout, lost)
    }))
    .await;
    let mut clients: Vec<(Addr<AcceleratorClient>, Established)> = Vec::new();
    let mut errors: Vec<ClientError> = Vec::new();
    for s in sessions {
        match s {
            Ok(c) => clients.push(c),
            Err(e) => errors.push(e),
        }
    }
    if let Some(e) = errors.into_iter().next() {
        for (c, _) in &clients {
            c.do_send(CloseClient);
        }
        return Err(e.into());
    }
    let names: Vec<String> = clients.iter().map(|(_, e)| e.name.clone()).collect();
    let dups = duplicate_names(&names);
    if !dups.is_empty() {
        for (c, _) in &clients {
            c.do_send(CloseClient);
        }
        bail!("accelerator names must be unique (the SUT name lists them); duplicated: {}", dups.join(", "));
    }
    let mut out = Connections {
        lanes: Vec::new(),
        actors: Vec::new(),
        clients: Vec::new(),
        accelerators: Vec::new(),
        pool: None,
    };
    let ctx = Arc::new(JoinContext { node: f.name.clone(), request, heartbeat: hb, secret, tls, timeout, rdma });
    for ((client, est), given) in clients.into_iter().zip(&f.accelerators) {
        attach_accelerator(&shared, &ctx, &mut out, given, client, &est).await?;
    }
    let _ = shared.join.set(ctx);
    Ok(out)
}

/// What connecting an accelerator needs, kept for accelerators that rejoin during the run.
struct JoinContext {
    node: String,
    request: SessionRequest,
    heartbeat: qdl_shared::control::Heartbeat,
    secret: qdl_shared::auth::Secret,
    tls: Option<ClientTls>,
    timeout: Duration,
    rdma: Option<Arc<RdmaDevice>>,
}

/// Opens the data connections of an established session and starts their actors.
async fn attach_accelerator(
    shared: &Arc<Shared>,
    ctx: &JoinContext,
    out: &mut Connections,
    given: &str,
    client: Addr<AcceleratorClient>,
    est: &Established,
) -> anyhow::Result<()> {
    let g = est.grant.clone();
    if g.input_slot_bytes as usize != ctx.request.workload.input_bytes()
        || g.output_slot_bytes != ctx.request.workload.output_bytes
    {
        bail!(
            "accelerator {} granted slots of {}/{} bytes for a workload of {}/{} bytes",
            est.name,
            g.input_slot_bytes,
            g.output_slot_bytes,
            ctx.request.workload.input_bytes(),
            ctx.request.workload.output_bytes
        );
    }
    if g.slots_per_connection < ctx.request.slots_per_connection || g.connections < ctx.request.connections {
        tracing::warn!(
            accelerator = %est.name,
            "granted {} connections × {} slots (asked {} × {})",
            g.connections,
            g.slots_per_connection,
            ctx.request.connections,
            ctx.request.slots_per_connection
        );
    }
    // Exists at 0 from the first attach, so dashboards see it before the first rejoin.
    let _ = metrics::counter!(qdl_shared::metrics::frontend::REJOINS, "accelerator" => est.name.clone());
    for c in 0..g.connections {
        let (name, out_bytes) = (est.name.clone(), g.output_slot_bytes);
        if let Some(dev) = &ctx.rdma {
            let setup = InitiatorSetup::new(
                dev,
                g.slots_per_connection,
                g.input_slot_bytes,
                out_bytes,
                RdmaMetrics::registered("frontend"),
            )
            .with_context(|| format!("RDMA connection {c} to accelerator {}", est.name))?;
            let peer = tokio::time::timeout(
                ctx.timeout,
                client.send(ConnectRdma { connection: c, endpoint: setup.endpoint() }),
            )
            .await
            .map_err(|_| anyhow::anyhow!("accelerator {}: no answer to RDMA connection {c} in time", est.name))?
            .context("the accelerator's control actor stopped")??;
            let init = setup
                .connect(&peer, TransportMetrics::for_frontend(&name))
                .with_context(|| format!("RDMA connection {c} to accelerator {}", est.name))?;
            out.add(shared, &est.name, Some(given), c, g.slots_per_connection, out_bytes, move || Box::new(init));
            continue;
        }
        let attach = Attach { token: g.token, connection: c };
        let stream = connect_data(est.addr, attach, ctx.timeout)
            .await
            .with_context(|| format!("data connection {c} to accelerator {} ({})", est.name, est.addr))?;
        let std_stream = stream.into_std().context("detaching the data connection")?;
        out.add(shared, &est.name, Some(given), c, g.slots_per_connection, out_bytes, move || {
            let stream = TcpStream::from_std(std_stream).expect("I/O arbiters run a tokio runtime with I/O enabled");
            Box::new(TcpInitiator::new(stream, out_bytes, TransportMetrics::for_frontend(&name)))
        });
    }
    out.accelerators.push(AcceleratorReport {
        address: est.addr.to_string(),
        name: est.name.clone(),
        connections: g.connections,
        slots_per_connection: g.slots_per_connection,
        backend: g.backend.clone(),
        workers: g.workers,
        max_batch: g.max_batch,
        batch_sizes: Vec::new(),
    });
    out.clients.push(client);
    Ok(())
}

/// Tries, once a second until the run ends, to bring back the accelerator at `addr`: a new
/// session (authenticated as at the start), its data connections, and their lanes added to the
/// issuer. LoadGen is told nothing: the SUT is the same, with its capacity back.
fn rejoin(shared: Arc<Shared>, addr: String) {
    let Some(ctx) = shared.join.get().cloned() else { return };
    actix::spawn(async move {
        let mut attempt = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(if attempt == 0 { 200 } else { 1000 })).await;
            attempt += 1;
            if shared.ended.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let lost = shared.accelerator_lost(addr.clone());
            let connected = AcceleratorClient::connect(
                &addr,
                &ctx.node,
                ctx.request.clone(),
                ctx.heartbeat,
                ctx.secret.clone(),
                ctx.tls.clone(),
                ctx.timeout,
                lost,
            )
            .await;
            let (client, est) = match connected {
                Ok(c) => c,
                Err(e) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::info!(accelerator = %addr, attempt, "not back yet: {e}");
                    }
                    continue;
                }
            };
            let _ = client.send(SetRunState(RunState::Start)).await;
            let mut out = Connections::default();
            match attach_accelerator(&shared, &ctx, &mut out, &addr, client.clone(), &est).await {
                Ok(()) => {
                    let issuer = shared.redispatch.issuer();
                    match issuer {
                        Some(issuer) => issuer.add_lanes(&out.lanes),
                        None => return,
                    }
                    shared.rejoined.lock().unwrap_or_else(|p| p.into_inner()).extend(out.actors.iter().cloned());
                    let at = shared.given.lock().unwrap_or_else(|p| p.into_inner()).iter().position(|g| *g == addr);
                    let mut clients = shared.clients.lock().unwrap_or_else(|p| p.into_inner());
                    match at.filter(|&i| i < clients.len()) {
                        Some(i) => clients[i] = client,
                        None => clients.push(client),
                    }
                    drop(clients);
                    metrics::counter!(qdl_shared::metrics::frontend::REJOINS, "accelerator" => est.name.clone())
                        .increment(1);
                    tracing::warn!(
                        accelerator = %est.name,
                        addr = %addr,
                        connections = out.lanes.len(),
                        "accelerator rejoined the run"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(accelerator = %addr, "rejoin failed: {e:#}");
                    client.do_send(CloseClient);
                }
            }
        }
    });
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
    _: &Arc<Shared>,
) -> anyhow::Result<Connections> {
    bail!(NO_LOCAL_BASELINE)
}

#[cfg(feature = "local")]
fn connect_local(
    cfg: &FrontendConfig,
    acc: &AcceleratorConfig,
    spec: &WorkloadSpec,
    shared: &Arc<Shared>,
) -> anyhow::Result<Connections> {
    let boxes = cfg.local.accelerators as usize;
    let per_box = acc.workers.count as usize;
    let workers = qdl_shared::config::WorkersConfig { count: (boxes * per_box) as u32, gpus: acc.workers.gpus.clone() };
    let pool = Arc::new(WorkerPool::start(&workers, acc.batcher, &acc.backend).context("starting local workers")?);
    for note in pool.notes() {
        tracing::info!("{note}");
    }
    pool.check(spec)?;
    let spec = Arc::new(spec.clone());
    let slots = cfg.frontend.slots_per_connection.min(acc.limits.max_slots_per_connection);
    let conns = cfg.frontend.connections_per_accelerator;
    let mut out = Connections {
        lanes: Vec::new(),
        actors: Vec::new(),
        clients: Vec::new(),
        accelerators: Vec::new(),
        pool: Some(pool.clone()),
    };
    for b in 0..boxes {
        let name = format!("local-{b}");
        for c in 0..conns as usize {
            // Connections of one box share that box's workers, as they would on a real accelerator.
            let worker = pool.sender(b * per_box + c % per_box);
            let sp = spec.clone();
            out.add(shared, &name, None, c as u32, slots, spec.output_bytes, move || {
                Box::new(LocalTransport::new(worker, sp, slots))
            });
        }
        out.accelerators.push(AcceleratorReport {
            address: "in-process".into(),
            name,
            connections: conns,
            slots_per_connection: slots,
            backend: pool.backend().into(),
            workers: per_box as u32,
            max_batch: pool.max_batch() as u32,
            batch_sizes: Vec::new(),
        });
    }
    Ok(out)
}

/// Publishes the scenario's latency bound (Server only: LoadGen's target latency at its target
/// percentile; the other scenarios have none) and returns the `test_running` gauge of this run.
fn test_metrics(workload: &str, cfg: &FrontendConfig, s: &TestSettings) -> metrics::Gauge {
    use qdl_shared::metrics::frontend as m;
    let (scenario, mode) = (cfg.loadgen.scenario.as_str(), cfg.loadgen.mode.as_str());
    if cfg.loadgen.scenario == ScenarioName::Server {
        let quantile = s.server_target_latency_percentile.to_string();
        metrics::gauge!(m::LATENCY_BOUND, "workload" => workload.to_string(), "scenario" => scenario, "quantile" => quantile)
            .set(s.server_target_latency_ns as f64 / 1e9);
    }
    metrics::gauge!(m::TEST_RUNNING, "workload" => workload.to_string(), "scenario" => scenario, "mode" => mode)
}

/// The failure handler of a run: a run whose samples can no longer complete cannot be saved, so
/// it says why and exits (status 3, [`qdl_shared::exit::RUN_FAILED`]) rather than leave LoadGen
/// waiting forever.
fn failure_handler(out: PathBuf) -> FailureHandler {
    Arc::new(move |msg: String| {
        if super::signals::interrupted() {
            // The interruption closed the sessions; the signal handler reports and exits.
            std::thread::park_timeout(Duration::from_secs(5));
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "\nqdl-frontend: run failed: {msg}\nLoadGen's logs in {} are incomplete.", out.display());
        let _ = err.flush();
        // SAFETY: _exit ends the process at once without running C++ static destructors, which
        // could block on LoadGen's logger threads that are still running the test.
        unsafe { libc::_exit(qdl_shared::exit::RUN_FAILED) };
    })
}

/// Runs one test and returns its report (also written to the output directory).
pub fn run(opts: RunOptions) -> anyhow::Result<RunReport> {
    if opts.local && !cfg!(feature = "local") {
        bail!(NO_LOCAL_BASELINE);
    }
    let cfg = opts.config;
    let spec = cfg.workload.resolve_spec()?;
    let source = match &cfg.workload.dataset_dir {
        Some(dir) => SampleSource::npy(&spec, dir)?,
        None => SampleSource::generated(&spec, cfg.workload.seed),
    };
    let total = match (cfg.workload.total_samples, source.available()) {
        (None, Some(n)) => n,
        _ => cfg.workload.total() as usize,
    };
    let performance = (cfg.workload.performance() as usize).min(total);
    let store = Arc::new(SampleStore::new(source, total, performance)?);
    let out_dir = cfg.loadgen.output_dir.clone();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let failure = failure_handler(out_dir.clone());
    let resolved = loadgen_settings(&cfg, opts.config_path.as_deref(), &opts.flags, &spec.name)?;
    print_settings(&resolved);
    let settings = resolved.settings.clone();

    let io = Io::start(cfg.frontend.io_threads as usize)?;
    let shared = Arc::new(Shared {
        store: store.clone(),
        latencies: Arc::new(LatencyBuckets::default()),
        gate: Arc::new(CreditGate::default()),
        failure: failure.clone(),
        io: io.io.clone(),
        redispatch: Arc::new(Redispatcher::default()),
        by_accelerator: Default::default(),
        clients: Default::default(),
        given: Default::default(),
        join: Default::default(),
        rejoined: Default::default(),
        ended: Default::default(),
    });
    let conns = if opts.local {
        connect_local(&cfg, &opts.accelerator_config, &spec, &shared)?
    } else {
        let (c, s, sh) = (cfg.clone(), spec.clone(), shared.clone());
        match io.block_on(connect_network(c, s, sh))? {
            Ok(c) => c,
            Err(e) => {
                io.stop();
                return Err(e);
            }
        }
    };
    *shared.clients.lock().unwrap_or_else(|p| p.into_inner()) = conns.clients.clone();
    *shared.given.lock().unwrap_or_else(|p| p.into_inner()) = cfg.frontend.accelerators.clone();
    let where_ = if opts.local { "in-process" } else { "over the network" };
    tracing::info!(
        workload = %spec.name,
        scenario = cfg.loadgen.scenario.as_str(),
        mode = cfg.loadgen.mode.as_str(),
        connections = conns.lanes.len(),
        "connected {where_}"
    );

    // Warm-up, then the test.
    if cfg.frontend.warmup {
        let started = Instant::now();
        if let Some(pool) = &conns.pool {
            let (p, s) = (pool.clone(), Arc::new(spec.clone()));
            io.block_on(async move { p.warmup(s).await })??;
            pool.reset_stats();
        } else {
            set_run_state(&io, &conns.clients, RunState::Warmup)?;
        }
        tracing::info!(ms = started.elapsed().as_millis() as u64, "accelerators warmed up");
    }
    {
        // On Ctrl-C / SIGTERM: say goodbye to the accelerators so their sessions end in order.
        let clients = conns.clients.clone();
        let sh = shared.clone();
        super::signals::install("run", move || {
            // Drain: the samples in flight when the signal came are answered (10 s at most).
            if let Some(issuer) = sh.redispatch.issuer() {
                let target = issuer.issued();
                let deadline = Instant::now() + Duration::from_secs(10);
                while issuer.completed() < target && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                eprintln!(
                    "qdl-frontend: {} of the {target} samples issued before the signal answered",
                    issuer.completed().min(target)
                );
            }
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
    let dispatcher = Dispatcher::for_config(cfg.frontend.dispatch, cfg.loadgen.scenario == ScenarioName::Offline);
    let no_lane = failure.clone();
    let issuer = Arc::new(QueryIssuer::new(
        conns.lanes.clone(),
        dispatcher,
        shared.gate.clone(),
        Box::new(move |m: &str| no_lane(m.to_string())),
    ));
    shared.redispatch.bind(&issuer);
    let sut_name = if opts.local {
        SutName::Local(format!(
            "qdl Local SUT ({} x {} in-process)",
            conns.accelerators.len(),
            conns.accelerators[0].backend
        ))
    } else {
        SutName::Network(shared.clients.clone())
    };
    let sut = QdlSut { issuer: issuer.clone(), name: sut_name };
    let qsl = QdlQsl { store: store.clone(), on_failure: failure.clone() };
    let mut log = LogSettings::new(&out_dir);
    log.enable_trace = cfg.loadgen.trace;
    if !opts.local {
        set_run_state(&io, &conns.clients, RunState::Start)?;
    }
    let label = format!(
        "{} {} {} {}",
        spec.name,
        cfg.loadgen.scenario.as_str(),
        cfg.loadgen.mode.as_str(),
        if opts.local { "local" } else { "network" }
    );
    let progress = {
        let i = issuer.clone();
        Progress::start(opts.progress, label, move || (i.issued(), i.completed()))
    };
    let timeline = {
        let i = issuer.clone();
        Timeline::start(Duration::from_millis(500), shared.latencies.clone(), move || i.completed())
    };
    let status = format!(
        "READY=1\nSTATUS=running {} {} {}",
        spec.name,
        cfg.loadgen.scenario.as_str(),
        cfg.loadgen.mode.as_str()
    );
    if let Err(e) = qdl_shared::sdnotify::notify(&status) {
        tracing::warn!("{e}");
    }
    let running = test_metrics(&spec.name, &cfg, &settings);
    let started = Instant::now();
    running.set(1.0);
    let tested = qdl_loadgen::start_test(&sut, &qsl, &settings, &log);
    running.set(0.0);
    // Lost accelerators are not waited for any more.
    shared.ended.store(true, std::sync::atomic::Ordering::Release);
    tested?;
    let wall = started.elapsed();
    let clients = snapshot(&shared.clients);
    let timeline = timeline.finish();
    drop(progress);
    let mut accelerators = conns.accelerators.clone();
    if let Some(pool) = &conns.pool {
        let per_box = opts.accelerator_config.workers.count as usize;
        for (b, a) in accelerators.iter_mut().enumerate() {
            a.batch_sizes = pool.batch_sizes_of(b * per_box..(b + 1) * per_box);
        }
    } else {
        let clients = clients.clone();
        let stats = io.block_on(async move { join_all(clients.iter().map(|c| c.send(QueryStats))).await })?;
        for (a, s) in accelerators.iter_mut().zip(stats) {
            match s {
                Ok(Ok(s)) => a.batch_sizes = s.batch_sizes,
                Ok(Err(e)) => tracing::warn!("no statistics from {}: {e}", a.name),
                Err(e) => tracing::warn!("no statistics from {}: {e}", a.name),
            }
        }
    }

    // Wind down: final stats, goodbyes, stop.
    if !opts.local
        && let Err(e) = set_run_state(&io, &clients, RunState::Done)
    {
        tracing::warn!("{e}");
    }
    let mut actors = conns.actors.clone();
    actors.extend(shared.rejoined.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
    let asked = actors.clone();
    let stats = io.block_on(async move { join_all(asked.iter().map(|a| a.send(GetStats))).await })?;
    let stats: Vec<_> = stats.into_iter().filter_map(Result::ok).collect();
    for a in &actors {
        a.do_send(Close);
    }
    for c in &clients {
        c.do_send(CloseClient);
    }
    let sut_name = match &sut.name {
        SutName::Local(n) => n.clone(),
        SutName::Network(_) => network_sut_name(&conns.accelerators.iter().map(|a| a.name.clone()).collect::<Vec<_>>()),
    };
    // Each client stops once its Goodbye is written; wait for that (briefly) before stopping.
    let deadline = Instant::now() + Duration::from_secs(1);
    while clients.iter().any(|c| c.connected()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    io.stop();
    if let Some(pool) = conns.pool
        && let Ok(pool) = Arc::try_unwrap(pool)
    {
        pool.shutdown();
    }

    let loadgen = parse_detail_log(&out_dir.join("mlperf_log_detail.txt")).context("reading LoadGen's detail log")?;
    let frontend = FrontendReport {
        wall_seconds: wall.as_secs_f64(),
        samples_issued: issuer.issued(),
        samples_completed: issuer.completed(),
        sample_errors: stats.iter().map(|s| s.errors).sum(),
        bytes_sent: stats.iter().map(|s| s.bytes_sent).sum(),
        bytes_received: stats.iter().map(|s| s.bytes_received).sum(),
        write_calls: stats.iter().map(|s| s.write_calls).sum(),
        dispatch: format!("{dispatcher:?}"),
        redispatched: issuer.redispatched(),
        late_responses: shared.redispatch.late(),
        connections: stats,
    };
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
        advice: advice(&loadgen, &resolved),
        accelerators,
        loadgen,
        frontend,
        timeline,
    };
    report.write(&out_dir).context("writing report.json")?;
    write_plots(&report, &out_dir).context("writing the plots")?;
    Ok(report)
}

/// The plot files written beside LoadGen's logs.
pub const PLOTS: [&str; 3] = ["throughput.svg", "latency.svg", "batch-sizes.svg"];

fn write_plots(r: &RunReport, dir: &std::path::Path) -> std::io::Result<()> {
    let kind = if r.network { "network" } else { "local" };
    let title = |what: &str| format!("{what}: {} {} ({kind})", r.workload.name, r.scenario.as_str());
    let rate =
        Series { name: "completed".into(), points: r.timeline.iter().map(|p| (p.t_s, p.completed_per_s)).collect() };
    std::fs::write(dir.join(PLOTS[0]), line_chart(&title("Throughput"), "seconds", "samples/s", &[rate]))?;
    let pct = |name: &str, f: fn(&TimelinePoint) -> Option<f64>| Series {
        name: name.into(),
        points: r.timeline.iter().filter_map(|p| f(p).map(|v| (p.t_s, v))).collect(),
    };
    let lat = [pct("p50", |p| p.p50_ms), pct("p90", |p| p.p90_ms), pct("p99", |p| p.p99_ms)];
    std::fs::write(dir.join(PLOTS[1]), line_chart(&title("Latency"), "seconds", "ms (issue to response)", &lat))?;
    let mut sizes: std::collections::BTreeMap<u32, u64> = Default::default();
    for a in &r.accelerators {
        for (b, n) in &a.batch_sizes {
            *sizes.entry(*b).or_default() += n;
        }
    }
    // Every size from 1 to the largest formed, so gaps show as gaps.
    let largest = sizes.keys().next_back().copied().unwrap_or(0);
    let bars: Vec<(String, f64)> =
        (1..=largest).map(|b| (b.to_string(), sizes.get(&b).copied().unwrap_or(0) as f64)).collect();
    std::fs::write(dir.join(PLOTS[2]), bar_chart(&title("Batch sizes formed"), "batch size", "batches", &bars))
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

fn human_bytes(b: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

fn ms(ns: Option<f64>) -> String {
    ns.map(|v| format!("{:.2} ms", v / 1e6)).unwrap_or_else(|| "-".into())
}

/// Prints the run's summary table.
pub fn print_summary(r: &RunReport, out_dir: &std::path::Path) {
    let l = &r.loadgen;
    let f = &r.frontend;
    let where_ = if r.network {
        format!("over the network ({} accelerators)", r.accelerators.len())
    } else {
        "in-process (local baseline)".into()
    };
    println!("qdl run: {} {} {} {where_}", r.workload.name, r.scenario.as_str(), r.mode.as_str());
    let row = |k: &str, v: String| println!("  {k:<22} {v}");
    row("SUT", r.sut_name.clone());
    if r.mode == ModeName::Performance {
        let mut verdict = l.validity.clone().unwrap_or_else(|| "-".into());
        if !l.invalid_reasons.is_empty() {
            verdict = format!("{verdict} ({})", l.invalid_reasons.join("; "));
        }
        row("result", verdict);
        row("samples/s", l.throughput().map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()));
        if let Some(s) = l.scheduled_samples_per_second {
            row("scheduled samples/s", format!("{s:.1}"));
        }
        row(
            "latency p50/p99/max",
            format!(
                "{} / {} / {}",
                ms(l.latency_ns.get("50.00").copied()),
                ms(l.p99_ns()),
                ms(l.latency_ns.get("max").copied())
            ),
        );
    }
    row("samples", format!("{} completed, {} failed", thousands(f.samples_completed), thousands(f.sample_errors)));
    if r.network {
        let secs = f.wall_seconds.max(1e-9);
        row(
            "bytes sent / received",
            format!(
                "{} ({}/s) / {}",
                human_bytes(f.bytes_sent as f64),
                human_bytes(f.bytes_sent as f64 / secs),
                human_bytes(f.bytes_received as f64)
            ),
        );
        row("writes per sample", format!("{:.3}", f.write_calls as f64 / f.samples_completed.max(1) as f64));
    }
    for a in &r.advice {
        row("fix", a.clone());
    }
    for e in &l.errors {
        row("LoadGen error", e.clone());
    }
    if !r.shortened.is_empty() {
        row("NOT A SUBMISSION", format!("settings shorten the official run: {}", r.shortened.join("; ")));
    }
    row("logs", out_dir.display().to_string());
    row("plots", PLOTS.join(", "));
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
        let s = loadgen_settings(&cfg, None, &none, "bert").unwrap().settings;
        assert_eq!(s.server_target_latency_ns, 130_000_000, "mlperf.conf's BERT bound");
        assert_eq!(s.min_duration_ms, 600_000);
        assert_eq!(s.qsl_rng_seed, 2085463073848966840);
        assert_eq!((s.scenario, s.mode), (Scenario::Server, TestMode::AccuracyOnly));

        cfg.loadgen.server_target_latency_ms = Some(50.5);
        cfg.loadgen.min_duration_ms = Some(1234);
        cfg.loadgen.server_target_qps = Some(777.0);
        cfg.loadgen.single_stream_expected_latency_ms = Some(2.0);
        cfg.loadgen.accuracy_sample_count = Some(10);
        let r = loadgen_settings(&cfg, Some(Path::new("x.toml")), &none, "bert").unwrap();
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
