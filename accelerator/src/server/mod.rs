//! The accelerator node: listener, sessions and connections.
//!
//! ```text
//! run() ── actix System (main thread) ───────────────────────────────────────────────
//!   ├─ listener task: accept → read preamble ─┬─ control → ControlActor (System arbiter)
//!   │                                          └─ data → check attach → ConnectionActor
//!   ├─ ControlActor × session        (owns the session; on end: Close → its connections)
//!   └─ io arbiters × accelerator.io_threads
//!        └─ ConnectionActor × data connection ──▶ WorkerPool (DeviceWorker threads)
//! ```
//! Shutdown (SIGTERM/SIGINT): the registry refuses new sessions, the listener stops, every
//! ControlActor ends its session (its connections stop reading, answer what is in flight and
//! close), `run` waits for that (at most [`DRAIN_TIMEOUT`]), stops the arbiters and the workers.
//! A second signal exits at once. With `WatchdogSec=`, the System's loop pings systemd's
//! watchdog while it and the io arbiters run (see [`watchdog`]).

pub mod connection;
pub mod control;
pub mod gate;
pub mod refusals;
pub mod registry;
pub mod watchdog;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Arbiter, WeakAddr};
use qdl_shared::config::AcceleratorConfig;
use qdl_shared::control::Endpoint;
use qdl_shared::control_link::ControlLink;
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
use qdl_engine::worker::WorkerPool;

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
    Workers(#[from] qdl_engine::worker::WorkerError),
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

/// What every connection of this accelerator reaches: its config, the session registry, the
/// worker pool, the I/O arbiters, the live control actors, the RDMA device, the secret, the TLS
/// acceptor and the admission gate.
struct Node {
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
    /// Places for answering refused connections (see [`MAX_REFUSAL_REPLIES`]).
    refusal_replies: Arc<tokio::sync::Semaphore>,
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
    let rdma = RdmaDevice::open_configured(&config.transport)?;
    let pool = Arc::new(WorkerPool::start(&config.workers, config.batcher, &config.generation, &config.backend)?);
    for note in pool.notes() {
        tracing::info!("{note}");
    }
    for (i, w) in pool.workers_described().iter().enumerate() {
        tracing::info!(worker = i, max_batch = pool.max_batch(), "worker {i}: {w}");
    }
    let registry = Registry::new(config.limits);
    let system = actix::System::new();
    let io: Vec<Arbiter> = (0..config.accelerator.io_threads).map(|_| Arbiter::new()).collect();
    let node = Arc::new(Node {
        registry: registry.clone(),
        pool: pool.clone(),
        arbiters: io.iter().map(|a| a.handle()).collect(),
        next_arbiter: AtomicUsize::new(0),
        controls: Mutex::new(Vec::new()),
        rdma,
        secret,
        tls,
        gate: gate::Gate::new(&config.limits),
        refusal_replies: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSAL_REPLIES)),
        config,
    });
    let result = system.block_on(serve(node.clone(), on_ready));
    for a in &io {
        a.stop();
    }
    for a in io {
        let _ = a.join();
    }
    drop(node);
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.shutdown(),
        Err(_) => tracing::debug!("workers still referenced at exit; leaving them to the process exit"),
    }
    result
}

async fn serve(node: Arc<Node>, on_ready: impl FnOnce(&Ready)) -> Result<(), NodeError> {
    let addr = node.config.accelerator.listen.clone();
    let listener = TcpListener::bind(&addr).await.map_err(|source| NodeError::Bind { addr: addr.clone(), source })?;
    let local = listener.local_addr().map_err(|source| NodeError::Bind { addr, source })?;
    qdl_shared::metrics::describe_accelerator(&node.config.accelerator.name);
    let mut signals = qdl_shared::signals::Signals::new();
    on_ready(&Ready {
        name: node.config.accelerator.name.clone(),
        listen: local,
        workers: node.pool.len(),
        backend: node.pool.backend(),
        provider: node.pool.providers().join(","),
        transport: match &node.rdma {
            Some(d) => format!("tcp+rdma({})", d.name()),
            None => "tcp".into(),
        },
    });
    let sweep = {
        let gate = node.gate.clone();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(gate::SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                gate.sweep(Nanos::now());
            }
        })
    };
    // After READY=1: systemd's watchdog counts from the end of the start-up.
    watchdog::start(&node.arbiters);
    #[cfg(debug_assertions)]
    watchdog::debug_wedge_hook();
    let accept = {
        let node = node.clone();
        actix::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let node = node.clone();
                        actix::spawn(async move { accept(stream, peer, node).await });
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
        let second = signals.recv().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(qdl_shared::exit::for_signal(second));
    });
    node.registry.begin_shutdown();
    accept.abort();
    sweep.abort();
    let controls = std::mem::take(&mut *node.controls.lock().unwrap_or_else(|p| p.into_inner()));
    for c in controls.into_iter().filter_map(|w| w.upgrade()) {
        c.do_send(Shutdown);
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while node.registry.sessions() > 0 || node.registry.live_connections() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                sessions = node.registry.sessions(),
                connections = node.registry.live_connections(),
                "drain timed out; stopping anyway"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Most refused connections answered at once: each waits up to the preamble deadline for a qdl
/// preamble to answer with the reason; beyond this many, refused connections are closed at once.
const MAX_REFUSAL_REPLIES: usize = 64;

/// Handles one accepted connection up to the point where an actor owns it.
async fn accept(stream: TcpStream, peer: SocketAddr, node: Arc<Node>) {
    let (permit, pending) = match node.gate.admit(peer.ip()) {
        Ok(p) => p,
        Err(why) => return refuse(stream, peer, why, &node).await,
    };
    if let Err(e) = tune(&stream) {
        tracing::debug!(%peer, "{e}");
    }
    handshake(stream, peer, node, permit, pending).await;
}

/// Closes a refused connection; a qdl peer (one that sends a valid preamble within the preamble
/// deadline) is first told why, in its own terms: a control `Error` or a data `LimitReached`.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, why: gate::Refusal, node: &Node) {
    let message = why.describe(peer.ip());
    node.gate.refused(why.reason(), peer, || format!("refusing connection: {message}"));
    let Ok(_slot) = node.refusal_replies.clone().try_acquire_owned() else { return };
    let mut pre = [0u8; PREAMBLE_LEN];
    let wait = Duration::from_millis(node.config.limits.preamble_timeout_ms);
    if !matches!(tokio::time::timeout(wait, read_exact_or_closed(&mut stream, &mut pre)).await, Ok(Ok(()))) {
        return;
    }
    let reply = match Preamble::parse(&pre) {
        // Inside TLS the frontend could not read a clear-text answer: it is closed like others.
        Ok(p) if p.role == Role::Control && !p.tls => {
            control_error(qdl_shared::wire::message::ErrorCode::LimitExceeded, &message)
        }
        Ok(p) if p.role == Role::Data => {
            let mut r = Preamble::ours(Role::Data).encode().to_vec();
            r.extend_from_slice(&AttachStatus::LimitReached.encode());
            r
        }
        _ => return,
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), say_and_close(&mut stream, &reply)).await;
}

/// Our control preamble and one `Error` message, as bytes.
fn control_error(code: qdl_shared::wire::message::ErrorCode, message: &str) -> Vec<u8> {
    let mut reply = Preamble::ours(Role::Control).encode().to_vec();
    let err = qdl_shared::wire::message::Message::Error { code, message: message.into() };
    let _ = qdl_shared::wire::message::encode(&err, &mut reply);
    reply
}

/// Writes `reply`, ends the sending side and reads what the peer still sends (at most 64 KiB)
/// until it closes: closing with unread bytes would reset the connection, and the peer's
/// kernel might then drop the reply before the peer reads it.
async fn say_and_close(stream: &mut TcpStream, reply: &[u8]) {
    use tokio::io::AsyncReadExt;
    if stream.write_all(reply).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// What ended a connection in its preamble or attach stage: its bytes, or the gate.
enum Step<T> {
    Done(T),
    Ended(gate::Ended),
}

/// Runs `work` until it completes or the gate ends the connection (evicted, or a deadline).
async fn or_ended<T>(pending: &mut gate::PendingPermit, work: impl std::future::Future<Output = T>) -> Step<T> {
    tokio::select! {
        done = work => Step::Done(done),
        why = pending.ended() => Step::Ended(why),
    }
}

/// An accepted connection's preamble, then its control or data handshake.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    node: Arc<Node>,
    permit: gate::ConnPermit,
    mut pending: gate::PendingPermit,
) {
    let mut pre = [0u8; PREAMBLE_LEN];
    match or_ended(&mut pending, read_exact_or_closed(&mut stream, &mut pre)).await {
        Step::Done(Ok(())) => {}
        Step::Done(Err(e)) => {
            tracing::debug!(%peer, "connection ended before its preamble: {e}");
            return;
        }
        // Not (yet) a qdl peer: closed without a word.
        Step::Ended(why) => {
            return node.gate.refused(why.reason(), peer, || format!("closing connection: {}", why.describe()));
        }
    }
    let preamble = match Preamble::parse(&pre) {
        Ok(p) => p,
        Err(e) => {
            node.gate.refused(refusals::Reason::BadPreamble, peer, || format!("refusing connection: {e}"));
            // Our preamble tells a peer of another version which version we speak.
            let _ = stream.write_all(&Preamble::ours(Role::Control).encode()).await;
            return;
        }
    };
    pending.preamble_read();
    match preamble.role {
        Role::Control => control(stream, peer, node, permit, pending, preamble.tls).await,
        Role::Data => attach_data(stream, peer, node, permit, pending).await,
    }
}

/// A control connection after its preamble: TLS if asked, then a `ControlActor` that
/// authenticates the frontend.
async fn control(
    mut stream: TcpStream,
    peer: SocketAddr,
    node: Arc<Node>,
    permit: gate::ConnPermit,
    mut pending: gate::PendingPermit,
    tls: bool,
) {
    let a = &node.config.accelerator;
    let hb = node.config.heartbeat.to_heartbeat();
    let deadline = Nanos::from_millis(node.config.limits.handshake_timeout_ms);
    let link = match (&node.tls, tls) {
        (None, false) => {
            let endpoint = Endpoint::server_after_preamble(
                &a.name,
                node.registry.limits(),
                hb,
                Nanos::now(),
                qdl_shared::auth::nonce(),
            )
            .with_handshake_timeout(deadline)
            .with_secret(node.secret.clone());
            ControlLink::new(stream, endpoint)
        }
        (Some(acceptor), true) => {
            let tls = match or_ended(&mut pending, acceptor.accept(stream)).await {
                Step::Done(Ok(tls)) => tls,
                Step::Done(Err(e)) => {
                    return node.gate.refused(refusals::Reason::Tls, peer, || format!("TLS handshake failed: {e}"));
                }
                Step::Ended(why) => {
                    return node
                        .gate
                        .refused(why.reason(), peer, || format!("closing connection in TLS: {}", why.describe()));
                }
            };
            // Inside TLS the frontend sends its preamble again: the endpoint reads it.
            let endpoint =
                Endpoint::server(&a.name, node.registry.limits(), hb, Nanos::now(), qdl_shared::auth::nonce())
                    .with_handshake_timeout(deadline)
                    .with_secret(node.secret.clone());
            ControlLink::over(Box::new(tls), Some(peer), endpoint)
        }
        (ours, _) => {
            let msg = if ours.is_some() {
                "this accelerator requires TLS on the control channel: set [tls] enabled = true and ca_file on the \
                 frontend"
            } else {
                "this accelerator does not use TLS on the control channel: set [tls] enabled = false on the frontend \
                 (or enable it on the accelerator)"
            };
            node.gate.refused(refusals::Reason::Tls, peer, || format!("refusing control connection: {msg}"));
            let reply = control_error(qdl_shared::wire::message::ErrorCode::Unsupported, msg);
            let _ = tokio::time::timeout(Duration::from_secs(1), say_and_close(&mut stream, &reply)).await;
            return;
        }
    };
    // The pending place is given back once the frontend has authenticated.
    let actor = ControlActor::new(link, node.clone(), permit, pending);
    let addr = actor.start();
    let mut controls = node.controls.lock().unwrap_or_else(|p| p.into_inner());
    controls.retain(|w| w.upgrade().is_some());
    controls.push(addr.downgrade());
}

async fn attach_data(
    mut stream: TcpStream,
    peer: SocketAddr,
    node: Arc<Node>,
    permit: gate::ConnPermit,
    mut pending: gate::PendingPermit,
) {
    let mut block = [0u8; ATTACH_LEN];
    let mut reply = Preamble::ours(Role::Data).encode().to_vec();
    match or_ended(&mut pending, read_exact_or_closed(&mut stream, &mut block)).await {
        Step::Done(Ok(())) => {}
        Step::Done(Err(e)) => {
            tracing::debug!(%peer, "data connection ended before its attach block: {e}");
            return;
        }
        Step::Ended(why) => {
            node.gate.refused(why.reason(), peer, || format!("closing data connection: {}", why.describe()));
            reply.extend_from_slice(&AttachStatus::LimitReached.encode());
            let _ = tokio::time::timeout(Duration::from_secs(1), say_and_close(&mut stream, &reply)).await;
            return;
        }
    }
    let attach = match Attach::parse(&block) {
        Ok(a) => a,
        Err(e) => {
            return node.gate.refused(refusals::Reason::Attach, peer, || format!("refusing data connection: {e}"));
        }
    };
    // Nothing is allocated for the connection before its token and index check out.
    let grant = match node.registry.attach(&attach) {
        Ok(g) => g,
        Err(status) => {
            let index = attach.connection;
            node.gate.refused(refusals::Reason::Attach, peer, || {
                format!("refusing data connection {index}: {}", status.describe())
            });
            reply.extend_from_slice(&status.encode());
            let _ = stream.write_all(&reply).await;
            return;
        }
    };
    let sizes = qdl_shared::transport::RequestSize::for_workload(&grant.spec);
    let arena = match SlotArena::new(grant.slots, sizes.max() as usize) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(%peer, "cannot allocate slots for a data connection: {e}");
            node.registry.detach(&attach.token, attach.connection);
            return;
        }
    };
    reply.extend_from_slice(&AttachStatus::Accepted.encode());
    if let Err(e) = stream.write_all(&reply).await {
        tracing::warn!(%peer, "data connection lost during attach: {e}");
        node.registry.detach(&attach.token, attach.connection);
        return;
    }
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, "cannot hand the data connection to an I/O thread: {e}");
            node.registry.detach(&attach.token, attach.connection);
            return;
        }
    };
    drop(pending);
    let label = format!("s{}/c{}", grant.session, attach.connection);
    let metrics = TransportMetrics::for_accelerator();
    start_connection(&node, label, attach.token, attach.connection, grant, Some(permit), move || {
        let stream = TcpStream::from_std(std_stream).expect("I/O arbiters run a tokio runtime with I/O enabled");
        Box::new(TcpTarget::new(stream, arena, sizes, metrics))
    });
}

/// Starts the `ConnectionActor` of an attached data connection on an I/O arbiter (round-robin);
/// the transport is built there, inside the arbiter's runtime.
fn start_connection(
    node: &Arc<Node>,
    label: String,
    token: SessionToken,
    index: u32,
    grant: AttachGrant,
    permit: Option<gate::ConnPermit>,
    transport: impl FnOnce() -> Box<dyn TargetTransport> + Send + 'static,
) {
    let arbiter = &node.arbiters[node.next_arbiter.fetch_add(1, Ordering::Relaxed) % node.arbiters.len()];
    let parts_shared = node.clone();
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
