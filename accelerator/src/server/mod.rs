//! The accelerator node: listener, sessions and connections.
//!
//! ```text
//! run() ── actix System (main thread) ───────────────────────────────────────────────
//!   ├─ listener task: accept → read preamble ─┬─ control → ControlActor (System arbiter)
//!   │                                          └─ data → check attach → ConnectionActor
//!   ├─ ControlActor × session        (owns the session; on end: Close → its connections)
//!   └─ io arbiters × accelerator.io_threads
//!        └─ ConnectionActor × data connection ──▶ WorkerPool (GpuWorker threads)
//! ```
//! Shutdown (SIGTERM/SIGINT): the registry refuses new sessions, the listener stops, every
//! ControlActor ends its session (its connections stop reading, answer what is in flight and
//! close), `run` waits for that (at most [`DRAIN_TIMEOUT`]), stops the arbiters and the workers.
//! A second signal exits at once. With `WatchdogSec=`, the System's loop pings systemd's
//! watchdog while it and the io arbiters run (see [`watchdog`]).

pub mod connection;
pub mod control;
pub mod gate;
pub mod registry;
pub mod watchdog;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Arbiter, WeakAddr};
use qdl_shared::config::AcceleratorConfig;
use qdl_shared::config::TransportKind;
use qdl_shared::control::Endpoint;
use qdl_shared::control_link::ControlLink;
use qdl_shared::metrics::accelerator as m;
use qdl_shared::slots::SlotArena;
use qdl_shared::time::Nanos;
use qdl_shared::transport::rdma::{RdmaDevice, RdmaError};
use qdl_shared::transport::tcp::{TcpTarget, read_exact_or_closed, tune};
use qdl_shared::transport::{TargetTransport, TransportMetrics};
use qdl_shared::wire::attach::SessionToken;
use qdl_shared::wire::attach::{ATTACH_LEN, Attach, AttachStatus};
use qdl_shared::wire::preamble::{PREAMBLE_LEN, Preamble, Role};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use self::connection::{ConnectionActor, ConnectionParts};
use self::control::{ControlActor, Shutdown};
use self::registry::{AttachGrant, Registry};
use crate::worker::WorkerPool;

/// How long shutdown waits for sessions to drain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The workers could not be started (backend set-up, threads).
    #[error(transparent)]
    Workers(#[from] crate::worker::WorkerError),
    /// The RDMA transport was selected but cannot be used.
    #[error(transparent)]
    Rdma(#[from] RdmaError),
    /// The shared secret could not be had.
    #[error(transparent)]
    Auth(#[from] qdl_shared::auth::AuthError),
    /// TLS was asked for but cannot be set up.
    #[error(transparent)]
    Tls(#[from] qdl_shared::tls::TlsError),
}

/// What a started node reports.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The node's name.
    pub name: String,
    /// The address it listens on (resolved, e.g. when the port was 0).
    pub listen: SocketAddr,
    /// Workers started.
    pub workers: usize,
    /// The backend.
    pub backend: &'static str,
    /// "tcp", or "tcp+rdma (DEVICE ...)" when RDMA sessions are served too.
    pub transport: String,
    /// The workers' execution providers ("cpu", "cuda", "virtual", ...), comma-separated.
    pub provider: String,
}

struct Shared {
    config: AcceleratorConfig,
    registry: Arc<Registry>,
    pool: Arc<WorkerPool>,
    arbiters: Vec<actix::ArbiterHandle>,
    next_arbiter: AtomicUsize,
    controls: Mutex<Vec<WeakAddr<ControlActor>>>,
    rdma: Option<Arc<RdmaDevice>>,
    secret: qdl_shared::auth::Secret,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gate: Arc<gate::Gate>,
}

/// Runs an accelerator until SIGTERM/SIGINT, then drains and returns. `on_ready` is called once
/// the node listens.
pub fn run(config: AcceleratorConfig, on_ready: impl FnOnce(&Ready)) -> Result<(), NodeError> {
    let secret = config.auth.secret()?;
    let tls = match (&config.tls.enabled, &config.tls.cert_file, &config.tls.key_file) {
        (true, Some(cert), Some(key)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(qdl_shared::tls::server_config(cert, key)?);
            tracing::info!(cert = %cert.display(), "control channel in TLS");
            Some(acceptor)
        }
        _ => None,
    };
    if secret.is_none() {
        tracing::warn!("the control channel is NOT authenticated ([auth] required = false, no secret)");
    }
    let rdma = match config.transport.kind {
        TransportKind::Rdma => {
            let dev = RdmaDevice::open(&config.transport.rdma)?;
            tracing::info!(device = %dev.describe(), "RDMA transport ready");
            Some(dev)
        }
        TransportKind::Tcp => None,
    };
    let pool = Arc::new(WorkerPool::start(&config.workers, config.batcher, &config.backend)?);
    for note in pool.notes() {
        tracing::info!("{note}");
    }
    for (i, w) in pool.workers_described().iter().enumerate() {
        tracing::info!(worker = i, max_batch = pool.max_batch(), "worker {i}: {w}");
    }
    let registry = Registry::new(config.limits);
    let system = actix::System::new();
    let io: Vec<Arbiter> = (0..config.accelerator.io_threads).map(|_| Arbiter::new()).collect();
    let shared = Arc::new(Shared {
        registry: registry.clone(),
        pool: pool.clone(),
        arbiters: io.iter().map(|a| a.handle()).collect(),
        next_arbiter: AtomicUsize::new(0),
        controls: Mutex::new(Vec::new()),
        rdma,
        secret,
        tls,
        gate: gate::Gate::new(&config.limits),
        config,
    });
    let result = system.block_on(serve(shared.clone(), on_ready));
    for a in &io {
        a.stop();
    }
    for a in io {
        let _ = a.join();
    }
    drop(shared);
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.shutdown(),
        Err(_) => tracing::debug!("workers still referenced at exit; leaving them to the process exit"),
    }
    result
}

async fn serve(shared: Arc<Shared>, on_ready: impl FnOnce(&Ready)) -> Result<(), NodeError> {
    let addr = shared.config.accelerator.listen.clone();
    let listener = TcpListener::bind(&addr).await.map_err(|source| NodeError::Bind { addr: addr.clone(), source })?;
    let local = listener.local_addr().map_err(|source| NodeError::Bind { addr, source })?;
    qdl_shared::metrics::describe_accelerator();
    let mut signals = qdl_shared::signals::Signals::new();
    on_ready(&Ready {
        name: shared.config.accelerator.name.clone(),
        listen: local,
        workers: shared.pool.len(),
        backend: shared.pool.backend(),
        provider: shared.pool.providers().join(","),
        transport: match &shared.rdma {
            Some(d) => format!("tcp+rdma({})", d.name()),
            None => "tcp".into(),
        },
    });
    // After READY=1: systemd's watchdog counts from the end of the start-up.
    watchdog::start(&shared.arbiters);
    #[cfg(debug_assertions)]
    watchdog::debug_wedge_hook();
    let accept = {
        let shared = shared.clone();
        actix::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        actix::spawn(async move { accept(stream, peer, shared).await });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    signals.recv().await;
    tracing::info!("shutting down: draining sessions (send the signal again to exit at once)");
    let _ = qdl_shared::sdnotify::notify("STOPPING=1\nSTATUS=draining sessions");
    actix::spawn(async move {
        signals.recv().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    shared.registry.begin_shutdown();
    accept.abort();
    let controls = std::mem::take(&mut *shared.controls.lock().unwrap_or_else(|p| p.into_inner()));
    for c in controls.into_iter().filter_map(|w| w.upgrade()) {
        c.do_send(Shutdown);
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while shared.registry.sessions() > 0 || shared.registry.live_connections() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                sessions = shared.registry.sessions(),
                connections = shared.registry.live_connections(),
                "drain timed out; stopping anyway"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn transport_metrics() -> TransportMetrics {
    TransportMetrics {
        frames_per_write: metrics::histogram!(m::FRAMES_PER_WRITE),
        frames_per_read: metrics::histogram!(m::FRAMES_PER_READ),
        send_delay: metrics::Histogram::noop(),
    }
}

fn refused(kind: &'static str) {
    metrics::counter!(m::CONNECTION_ERRORS, "kind" => kind).increment(1);
}

/// Handles one accepted connection up to the point where an actor owns it.
async fn accept(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let (permit, pending) = match shared.gate.admit(peer.ip()) {
        Ok(p) => p,
        Err(why) => {
            // Closed at once; a flood must not become a log flood (debug level only).
            refused("limit");
            tracing::debug!(%peer, ?why, "connection refused: limit reached");
            return;
        }
    };
    if let Err(e) = tune(&stream) {
        tracing::debug!(%peer, "{e}");
    }
    let handshake = Duration::from_millis(shared.config.limits.handshake_timeout_ms);
    let mut pre = [0u8; PREAMBLE_LEN];
    match tokio::time::timeout(handshake, read_exact_or_closed(&mut stream, &mut pre)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, "connection ended before its preamble: {e}");
            return;
        }
        Err(_) => {
            refused("handshake-timeout");
            tracing::debug!(%peer, "no preamble within {handshake:?}; closing");
            return;
        }
    }
    let preamble = match Preamble::parse(&pre) {
        Ok(p) => p,
        Err(e) => {
            refused("preamble");
            tracing::warn!(%peer, "refusing connection: {e}");
            // Our preamble tells a peer of another version which version we speak.
            let _ = stream.write_all(&Preamble::ours(Role::Control).encode()).await;
            return;
        }
    };
    match preamble.role {
        Role::Control => {
            let a = &shared.config.accelerator;
            let hb = shared.config.heartbeat.to_heartbeat();
            let deadline = Nanos::from_millis(shared.config.limits.handshake_timeout_ms);
            let link = match (&shared.tls, preamble.tls) {
                (None, false) => {
                    let endpoint = Endpoint::server_after_preamble(&a.name, shared.registry.limits(), hb, Nanos::now())
                        .with_handshake_timeout(deadline)
                        .with_secret(shared.secret.clone());
                    ControlLink::new(stream, endpoint)
                }
                (Some(acceptor), true) => {
                    let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            refused("tls");
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            refused("handshake-timeout");
                            return;
                        }
                    };
                    // Inside TLS the frontend sends its preamble again: the endpoint reads it.
                    let endpoint = Endpoint::server(&a.name, shared.registry.limits(), hb, Nanos::now())
                        .with_handshake_timeout(deadline)
                        .with_secret(shared.secret.clone());
                    ControlLink::over(Box::new(tls), Some(peer), endpoint)
                }
                (ours, theirs) => {
                    refused("tls");
                    let msg = if ours.is_some() {
                        "this accelerator requires TLS on the control channel: set [tls] enabled = true and \
                         ca_file on the frontend"
                    } else {
                        "this accelerator does not use TLS on the control channel: set [tls] enabled = false on \
                         the frontend (or enable it on the accelerator)"
                    };
                    tracing::warn!(%peer, frontend_tls = theirs, "refusing control connection: {msg}");
                    let mut reply = Preamble::ours(Role::Control).encode().to_vec();
                    let err = qdl_shared::wire::message::Message::Error {
                        code: qdl_shared::wire::message::ErrorCode::Unsupported,
                        message: msg.into(),
                    };
                    let _ = qdl_shared::wire::message::encode(&err, &mut reply);
                    let _ = stream.write_all(&reply).await;
                    return;
                }
            };
            // The pending place is given back once the frontend has authenticated.
            let actor = ControlActor::new(link, shared.clone(), permit, pending);
            let addr = actor.start();
            let mut controls = shared.controls.lock().unwrap_or_else(|p| p.into_inner());
            controls.retain(|w| w.upgrade().is_some());
            controls.push(addr.downgrade());
        }
        Role::Data => attach_data(stream, peer, shared, permit, pending, handshake).await,
    }
}

async fn attach_data(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    permit: gate::ConnPermit,
    pending: gate::PendingPermit,
    handshake: Duration,
) {
    let mut block = [0u8; ATTACH_LEN];
    match tokio::time::timeout(handshake, read_exact_or_closed(&mut stream, &mut block)).await {
        Ok(Ok(())) => {}
        _ => {
            refused("handshake-timeout");
            tracing::debug!(%peer, "data connection sent no attach block; closing");
            return;
        }
    }
    let mut reply = Preamble::ours(Role::Data).encode().to_vec();
    let attach = match Attach::parse(&block) {
        Ok(a) => a,
        Err(e) => {
            refused("attach");
            tracing::warn!(%peer, "refusing data connection: {e}");
            return;
        }
    };
    // Nothing is allocated for the connection before its token and index check out.
    let grant = match shared.registry.attach(&attach) {
        Ok(g) => g,
        Err(status) => {
            refused("attach");
            tracing::warn!(%peer, connection = attach.connection, "refusing data connection: {}", status.describe());
            reply.extend_from_slice(&status.encode());
            let _ = stream.write_all(&reply).await;
            return;
        }
    };
    let sample_bytes = grant.spec.input_bytes();
    let arena = match SlotArena::new(grant.slots, sample_bytes) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(%peer, "cannot allocate slots for a data connection: {e}");
            shared.registry.detach(&attach.token, attach.connection);
            return;
        }
    };
    reply.extend_from_slice(&AttachStatus::Accepted.encode());
    if let Err(e) = stream.write_all(&reply).await {
        tracing::warn!(%peer, "data connection lost during attach: {e}");
        shared.registry.detach(&attach.token, attach.connection);
        return;
    }
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, "cannot hand the data connection to an I/O thread: {e}");
            shared.registry.detach(&attach.token, attach.connection);
            return;
        }
    };
    drop(pending);
    let label = format!("s{}/c{}", grant.session, attach.connection);
    let metrics = transport_metrics();
    start_connection(&shared, label, attach.token, attach.connection, grant, Some(permit), move || {
        let stream = TcpStream::from_std(std_stream).expect("I/O arbiters run a tokio runtime with I/O enabled");
        Box::new(TcpTarget::new(stream, arena, sample_bytes as u32, metrics))
    });
}

/// Starts the `ConnectionActor` of an attached data connection on an I/O arbiter (round-robin);
/// the transport is built there, inside the arbiter's runtime.
fn start_connection(
    shared: &Arc<Shared>,
    label: String,
    token: SessionToken,
    index: u32,
    grant: AttachGrant,
    permit: Option<gate::ConnPermit>,
    transport: impl FnOnce() -> Box<dyn TargetTransport> + Send + 'static,
) {
    let arbiter = &shared.arbiters[shared.next_arbiter.fetch_add(1, Ordering::Relaxed) % shared.arbiters.len()];
    let parts_shared = shared.clone();
    ConnectionActor::start_in_arbiter(arbiter, move |_ctx| {
        ConnectionActor::new(ConnectionParts {
            label,
            token,
            index,
            transport: transport(),
            worker: parts_shared.pool.pick(),
            spec: grant.spec,
            slots: grant.slots,
            registry: parts_shared.registry.clone(),
            permit,
        })
    });
}
