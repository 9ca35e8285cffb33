//! `AcceleratorClient`: the frontend's actor for one accelerator's control connection. It owns
//! the sans-IO control [`Endpoint`] (through a [`ControlLink`]), establishes the session, answers
//! typed requests (the accelerator's name, run-state changes) and reports a dead or failed
//! accelerator to the run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, ResponseFuture};
use qdl_shared::control::{ControlError, Endpoint, Event, Heartbeat};
use qdl_shared::control_link::ControlLink;
use qdl_shared::metrics::frontend as m;
use qdl_shared::pump::{Nudge, Pump, Pumped};
use qdl_shared::time::Nanos;
use qdl_shared::transport::TransportError;
use qdl_shared::wire::message::{Limits, NodeStats, RdmaEndpoint, RunState, SessionGrant, SessionRequest};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::supervisor::{FailureSink, RunFailure};

/// Errors talking to an accelerator's control connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The address could not be resolved or connected.
    #[error("cannot connect to accelerator {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("accelerator {addr}: timed out {what}")]
    Timeout {
        /// The address.
        addr: String,
        /// What was awaited.
        what: &'static str,
    },
    /// The control session failed (version mismatch, refusal, protocol error, silence).
    #[error("accelerator {addr}: {error}")]
    Control {
        /// The address.
        addr: String,
        /// The failure.
        error: ControlError,
    },
    /// The connection closed.
    #[error("accelerator {addr}: the control connection closed")]
    Closed {
        /// The address.
        addr: String,
    },
}

/// What an established session gives the run.
#[derive(Debug, Clone)]
pub struct Established {
    /// The accelerator's name (from Welcome).
    pub name: String,
    /// Its limits.
    pub limits: Limits,
    /// The session granted.
    pub grant: SessionGrant,
    /// The resolved address.
    pub addr: SocketAddr,
}

/// Asks the accelerator for its name (a network round trip).
#[derive(Message)]
#[rtype(result = "Result<String, ClientError>")]
pub struct QueryName;

/// Moves the run to a state; resolves when the accelerator acknowledged it.
#[derive(Message)]
#[rtype(result = "Result<(), ClientError>")]
pub struct SetRunState(pub RunState);

/// Asks the accelerator for its statistics since the run started.
#[derive(Message)]
#[rtype(result = "Result<NodeStats, ClientError>")]
pub struct QueryStats;

/// Sets up RDMA data connection `connection` with the frontend's endpoint; resolves with the
/// accelerator's.
#[derive(Message)]
#[rtype(result = "Result<RdmaEndpoint, ClientError>")]
pub struct ConnectRdma {
    /// The connection index.
    pub connection: u32,
    /// The frontend's queue pair and response ring.
    pub endpoint: RdmaEndpoint,
}

/// Ends the session politely (the run is over).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

type EstablishedTx = oneshot::Sender<Result<(String, Limits, SessionGrant), ClientError>>;

/// Callers waiting for the answers to requests sent on the control connection, by request id.
struct Waiters<T>(HashMap<u32, oneshot::Sender<Result<T, ClientError>>>);

impl<T: Send + 'static> Waiters<T> {
    fn new() -> Self {
        Waiters(HashMap::new())
    }

    /// Registers the caller of a request the endpoint accepted (or fails it at once).
    fn register(&mut self, sent: Result<u32, ControlError>, addr: &str) -> ResponseFuture<Result<T, ClientError>> {
        let (tx, rx) = oneshot::channel();
        match sent {
            Ok(request) => {
                self.0.insert(request, tx);
            }
            Err(error) => {
                let _ = tx.send(Err(ClientError::Control { addr: addr.to_string(), error }));
            }
        }
        let addr = addr.to_string();
        Box::pin(async move { rx.await.unwrap_or(Err(ClientError::Closed { addr })) })
    }

    fn answer(&mut self, request: u32, value: T) {
        if let Some(tx) = self.0.remove(&request) {
            let _ = tx.send(Ok(value));
        }
    }

    fn fail_all(&mut self, err: &ClientError) {
        for (_, tx) in self.0.drain() {
            let _ = tx.send(Err(err.clone()));
        }
    }
}

/// The actor; see the module docs.
pub struct AcceleratorClient {
    link: ControlLink,
    addr: String,
    name: String,
    established: Option<EstablishedTx>,
    welcome: Option<(String, Limits)>,
    names: Waiters<String>,
    states: Waiters<()>,
    stats: Waiters<NodeStats>,
    rdma: Waiters<RdmaEndpoint>,
    failures: FailureSink,
    closing: bool,
    nudge: Nudge,
}

/// TLS for the control channel (`[tls] enabled`).
#[derive(Clone)]
pub struct ClientTls {
    /// Trusted CAs and protocol settings.
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// The name to verify certificates against instead of the address's host.
    pub server_name: Option<String>,
}

/// How the frontend opens a control session: the same for every accelerator of a run, and kept
/// for those that rejoin.
#[derive(Clone)]
pub struct SessionParams {
    /// The frontend's node name (said in Hello).
    pub node: String,
    /// The session asked for (workload, connections, slots, transport).
    pub request: SessionRequest,
    /// Heartbeat interval and how many may be missed.
    pub heartbeat: Heartbeat,
    /// The shared secret that authenticates the handshake, if any.
    pub secret: qdl_shared::auth::Secret,
    /// TLS for the control channel, if enabled.
    pub tls: Option<ClientTls>,
    /// How long connecting and each step of the handshake may take.
    pub timeout: Duration,
}

impl AcceleratorClient {
    /// Connects to `addr`, says hello and asks for `params.request`; resolves once the session
    /// is granted. A session lost later (without [`Close`]) is reported to `failures` as
    /// [`RunFailure::AcceleratorLost`].
    pub async fn connect(
        addr: &str,
        params: &SessionParams,
        failures: FailureSink,
    ) -> Result<(Addr<AcceleratorClient>, Established), ClientError> {
        let SessionParams { node, request, heartbeat, secret, tls, timeout } = params.clone();
        let connect_err = |reason: String| ClientError::Connect { addr: addr.to_string(), reason };
        let sock = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?
            .next()
            .ok_or_else(|| connect_err("the name resolves to no address".into()))?;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(sock))
            .await
            .map_err(|_| ClientError::Timeout { addr: addr.to_string(), what: "connecting" })?
            .map_err(|e| connect_err(e.to_string()))?;
        qdl_shared::transport::tcp::tune(&stream).map_err(|e| connect_err(e.to_string()))?;
        let endpoint =
            Endpoint::client(&node, request, heartbeat, Nanos::now(), qdl_shared::auth::nonce()).with_secret(secret);
        let link = match tls {
            None => ControlLink::new(stream, endpoint),
            Some(tls) => {
                use tokio::io::AsyncWriteExt as _;
                let mut stream = stream;
                // The preamble in the clear says "TLS follows"; the endpoint's own goes inside.
                stream
                    .write_all(&qdl_shared::wire::preamble::Preamble::ours_tls().encode())
                    .await
                    .map_err(|e| connect_err(e.to_string()))?;
                let name = qdl_shared::tls::server_name(addr, tls.server_name.as_deref())
                    .map_err(|e| connect_err(e.to_string()))?;
                let connector = tokio_rustls::TlsConnector::from(tls.config);
                let tls_stream = tokio::time::timeout(timeout, connector.connect(name, stream))
                    .await
                    .map_err(|_| ClientError::Timeout { addr: addr.to_string(), what: "the TLS handshake" })?
                    .map_err(|e| {
                        connect_err(format!(
                            "TLS handshake failed: {e} (is [tls] enabled on the accelerator, and its certificate \
                             issued by the CA in tls.ca_file for this name?)"
                        ))
                    })?;
                ControlLink::over(Box::new(tls_stream), Some(sock), endpoint)
            }
        };
        let (tx, rx) = oneshot::channel();
        let actor = AcceleratorClient {
            link,
            addr: addr.to_string(),
            name: addr.to_string(),
            established: Some(tx),
            welcome: None,
            names: Waiters::new(),
            states: Waiters::new(),
            stats: Waiters::new(),
            rdma: Waiters::new(),
            failures,
            closing: false,
            nudge: Nudge::default(),
        }
        .start();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok((name, limits, grant)))) => Ok((actor, Established { name, limits, grant, addr: sock })),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ClientError::Closed { addr: addr.to_string() }),
            Err(_) => {
                actor.do_send(Close);
                Err(ClientError::Timeout { addr: addr.to_string(), what: "waiting for the session to be granted" })
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Welcomed { name, limits } => {
                self.name = name.clone();
                self.welcome = Some((name, limits));
            }
            Event::Established(grant) => {
                metrics::gauge!(m::ACCELERATOR_UP, "accelerator" => self.name.clone()).set(1.0);
                if let (Some(tx), Some((name, limits))) = (self.established.take(), self.welcome.clone()) {
                    let _ = tx.send(Ok((name, limits, grant)));
                }
            }
            Event::Name { request, name } => self.names.answer(request, name),
            Event::RunStateAck { request, .. } => self.states.answer(request, ()),
            Event::Stats { request, stats } => self.stats.answer(request, stats),
            Event::RdmaAccepted { request, endpoint } => self.rdma.answer(request, endpoint),
            Event::HeartbeatRtt(rtt) => {
                metrics::gauge!(m::HEARTBEAT_RTT, "accelerator" => self.name.clone()).set(rtt.as_secs_f64());
            }
            Event::Closed => self.fail(ClientError::Closed { addr: self.addr.clone() }),
            Event::Failed(error) => self.fail(ClientError::Control { addr: self.addr.clone(), error }),
            // Server-side events never reach a client endpoint.
            Event::Hello { .. }
            | Event::ConfigureRequested(_)
            | Event::RunState { .. }
            | Event::RdmaConnectRequested { .. }
            | Event::StatsRequested { .. } => {}
        }
    }

    /// The session is over: answer every waiter, and report it if the run did not ask for it.
    fn fail(&mut self, err: ClientError) {
        metrics::gauge!(m::ACCELERATOR_UP, "accelerator" => self.name.clone()).set(0.0);
        if let Some(tx) = self.established.take() {
            let _ = tx.send(Err(err.clone()));
        } else if !self.closing {
            self.failures.report(RunFailure::AcceleratorLost {
                given: self.addr.clone(),
                name: self.name.clone(),
                error: err.clone(),
            });
        }
        self.names.fail_all(&err);
        self.states.fail_all(&err);
        self.stats.fail_all(&err);
        self.rdma.fail_all(&err);
    }
}

impl Actor for AcceleratorClient {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(Pump);
    }
}

impl Handler<QueryName> for AcceleratorClient {
    type Result = ResponseFuture<Result<String, ClientError>>;

    fn handle(&mut self, _: QueryName, _ctx: &mut Context<Self>) -> Self::Result {
        let sent = self.link.endpoint.query_name();
        self.nudge.wake();
        self.names.register(sent, &self.addr)
    }
}

impl Handler<SetRunState> for AcceleratorClient {
    type Result = ResponseFuture<Result<(), ClientError>>;

    fn handle(&mut self, msg: SetRunState, _ctx: &mut Context<Self>) -> Self::Result {
        let sent = self.link.endpoint.set_run_state(msg.0);
        self.nudge.wake();
        self.states.register(sent, &self.addr)
    }
}

impl Handler<QueryStats> for AcceleratorClient {
    type Result = ResponseFuture<Result<NodeStats, ClientError>>;

    fn handle(&mut self, _: QueryStats, _ctx: &mut Context<Self>) -> Self::Result {
        let sent = self.link.endpoint.query_stats();
        self.nudge.wake();
        self.stats.register(sent, &self.addr)
    }
}

impl Handler<ConnectRdma> for AcceleratorClient {
    type Result = ResponseFuture<Result<RdmaEndpoint, ClientError>>;

    fn handle(&mut self, msg: ConnectRdma, _ctx: &mut Context<Self>) -> Self::Result {
        let sent = self.link.endpoint.connect_rdma(msg.connection, msg.endpoint);
        self.nudge.wake();
        self.rdma.register(sent, &self.addr)
    }
}

impl Handler<Close> for AcceleratorClient {
    type Result = ();

    fn handle(&mut self, _: Close, _ctx: &mut Context<Self>) {
        self.closing = true;
        self.link.endpoint.close();
        self.nudge.wake();
    }
}

impl Pumped for AcceleratorClient {
    fn poll_pump(&mut self, ctx: &mut Context<Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.nudge.register(cx);
        loop {
            let io = self.link.poll_io(cx);
            while let Some(ev) = self.link.endpoint.poll_event() {
                self.on_event(ev);
            }
            match io {
                Poll::Ready(Ok(())) => continue,
                Poll::Pending if self.link.endpoint.has_transmit() => continue,
                Poll::Pending if !self.link.finished() => return Poll::Pending,
                Poll::Pending => {}
                Poll::Ready(Err(TransportError::Closed)) if self.link.endpoint.is_done() => {}
                Poll::Ready(Err(TransportError::Closed)) => self.fail(ClientError::Closed { addr: self.addr.clone() }),
                Poll::Ready(Err(e)) => {
                    self.fail(ClientError::Connect { addr: self.addr.clone(), reason: e.to_string() })
                }
            }
            ctx.stop();
            return Poll::Ready(());
        }
    }
}
