//! The accelerator's `ControlActor`: one per frontend session (control connection). It owns the
//! sans-IO control [`Endpoint`] (through a [`ControlLink`]), opens the session in the
//! [`Registry`] when asked, answers run-state changes (warming the workers up on `Warmup`), and
//! when the session ends (goodbye, error, silence, shutdown) closes the session's data
//! connections.

use std::sync::Arc;
use std::task::Poll;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use qdl_shared::control::{ControlError, Event};
use qdl_shared::control_link::ControlLink;
use qdl_shared::slots::SlotArena;
use qdl_shared::transport::TransportError;
use qdl_shared::transport::rdma::{RdmaMetrics, RdmaTarget};
use qdl_shared::wire::attach::{Attach, SessionToken};
use qdl_shared::wire::message::{DataTransport, ErrorCode, NodeStats, RdmaEndpoint, RunState, SessionRequest};

use super::Node;
use super::gate::Ended;
use super::refusals::Reason;
use super::registry::{Close, Registry};
use qdl_engine::worker::WorkerPool;
use qdl_shared::pump::{Nudge, Pump, Pumped};

/// The node is shutting down: end the session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The actor; see the module docs.
pub struct ControlActor {
    link: ControlLink,
    peer: String,
    frontend: String,
    node: Arc<Node>,
    registry: Arc<Registry>,
    pool: Arc<WorkerPool>,
    session: Option<(u64, SessionToken)>,
    nudge: Nudge,
    /// The connection's place among the node's open connections.
    _permit: super::gate::ConnPermit,
    /// Its place among the connections in their handshake, until the frontend authenticates.
    pending: Option<super::gate::PendingPermit>,
}

impl ControlActor {
    /// A control actor for an accepted connection whose preamble was already read.
    pub(super) fn new(
        link: ControlLink,
        node: Arc<Node>,
        permit: super::gate::ConnPermit,
        pending: super::gate::PendingPermit,
    ) -> ControlActor {
        let peer = link.peer().map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        ControlActor {
            link,
            peer,
            frontend: String::new(),
            registry: node.registry.clone(),
            pool: node.pool.clone(),
            node,
            session: None,
            nudge: Nudge::default(),
            _permit: permit,
            pending: Some(pending),
        }
    }

    /// Sets up RDMA data connection `connection` of this session for the frontend's `endpoint`
    /// and answers with this side's; a failure ends the session with the reason.
    fn connect_rdma(&mut self, request: u32, connection: u32, endpoint: RdmaEndpoint) {
        let Some((id, token)) = self.session else { return };
        let Some(device) = self.node.rdma.clone() else {
            self.link.endpoint.refuse(ErrorCode::Unsupported, "this accelerator does not serve RDMA".into());
            return;
        };
        // Nothing is allocated for the connection before its index checks out.
        let grant = match self.registry.attach(&Attach { token, connection }) {
            Ok(g) => g,
            Err(status) => {
                let msg = format!("RDMA connection {connection}: {}", status.describe());
                tracing::warn!(peer = %self.peer, session = id, "{msg}");
                self.link.endpoint.refuse(ErrorCode::Protocol, msg);
                return;
            }
        };
        let setup =
            SlotArena::new(grant.slots, grant.spec.input_bytes()).map_err(|e| e.to_string()).and_then(|arena| {
                RdmaTarget::accept(
                    &device,
                    arena,
                    grant.spec.output_bytes,
                    &endpoint,
                    RdmaMetrics::registered("accelerator"),
                    qdl_shared::transport::TransportMetrics::for_accelerator(),
                )
                .map_err(|e| e.to_string())
            });
        match setup {
            Ok((target, ours)) => {
                let _ = self.link.endpoint.accept_rdma(request, ours);
                tracing::debug!(
                    session = id,
                    connection,
                    qp = ours.qp_num,
                    peer_qp = endpoint.qp_num,
                    "RDMA connection up"
                );
                super::start_connection(
                    &self.node,
                    format!("s{id}/c{connection}"),
                    token,
                    connection,
                    grant,
                    None,
                    move || Box::new(target),
                );
            }
            Err(e) => {
                self.registry.detach(&token, connection);
                let msg = format!("cannot set up RDMA connection {connection}: {e}");
                tracing::warn!(peer = %self.peer, session = id, "{msg}");
                self.link.endpoint.refuse(ErrorCode::Internal, msg);
            }
        }
        self.nudge.wake();
    }

    fn configure(&mut self, req: SessionRequest) {
        if req.transport == DataTransport::Rdma && self.node.rdma.is_none() {
            let msg =
                "this accelerator serves TCP only: start it with --transport rdma (or transport.kind = \"rdma\") \
                       to serve RDMA sessions"
                    .to_string();
            tracing::warn!(peer = %self.peer, "refusing session: {msg}");
            self.link.endpoint.refuse(ErrorCode::Unsupported, msg);
            return;
        }
        if let Err(e) = self.pool.check(&req.workload) {
            tracing::warn!(peer = %self.peer, "refusing session: {e}");
            self.link.endpoint.refuse(ErrorCode::Unsupported, e.to_string());
            return;
        }
        let workers = self.pool.len() as u32;
        match self.registry.open(&req, self.pool.max_batch() as u32, self.pool.backend(), workers) {
            Ok((id, grant)) => {
                tracing::info!(
                    peer = %self.peer,
                    frontend = %self.frontend,
                    session = id,
                    workload = %req.workload.name,
                    connections = grant.connections,
                    slots = grant.slots_per_connection,
                    "session opened"
                );
                self.session = Some((id, grant.token));
                if let Err(e) = self.link.endpoint.grant(grant) {
                    tracing::error!(peer = %self.peer, "cannot grant session: {e}");
                }
            }
            Err((code, msg)) => {
                tracing::warn!(peer = %self.peer, "refusing session: {msg}");
                self.link.endpoint.refuse(code, msg);
            }
        }
    }

    fn run_state(&mut self, request: u32, state: RunState, ctx: &mut Context<Self>) {
        let session = self.session.map(|s| s.0).unwrap_or(0);
        tracing::info!(session, ?state, "run state");
        if state == RunState::Start {
            self.pool.reset_stats();
        }
        if state != RunState::Warmup {
            let _ = self.link.endpoint.ack_run_state(request, state);
            return;
        }
        let Some(spec) = self.session.and_then(|(_, t)| self.registry.spec(&t)) else { return };
        let pool = self.pool.clone();
        let warm = async move { pool.warmup(spec).await };
        ctx.spawn(warm.into_actor(self).map(move |res, act, _ctx| {
            match res {
                Ok(()) => {
                    let _ = act.link.endpoint.ack_run_state(request, state);
                }
                Err(e) => {
                    tracing::error!(session, "warm-up failed: {e}");
                    act.link.endpoint.refuse(ErrorCode::Internal, format!("warm-up failed: {e}"));
                }
            }
            act.nudge.wake();
        }));
    }

    fn on_event(&mut self, ev: Event, ctx: &mut Context<Self>) {
        match ev {
            Event::Hello { node } => {
                // Reported only once the frontend has proved the secret: its handshake is over.
                tracing::debug!(peer = %self.peer, frontend = %node, "hello (authenticated)");
                self.pending = None;
                self.frontend = node;
            }
            Event::ConfigureRequested(req) => self.configure(req),
            Event::RunState { request, state } => self.run_state(request, state, ctx),
            Event::RdmaConnectRequested { request, connection, endpoint } => {
                self.connect_rdma(request, connection, endpoint)
            }
            Event::StatsRequested { request } => {
                let stats = NodeStats { batch_sizes: self.pool.batch_sizes() };
                let _ = self.link.endpoint.send_stats(request, stats);
            }
            Event::HeartbeatRtt(rtt) => tracing::trace!(peer = %self.peer, rtt_us = rtt.0 / 1000, "heartbeat"),
            Event::Closed => tracing::info!(peer = %self.peer, frontend = %self.frontend, "frontend said goodbye"),
            Event::Failed(ControlError::Refused { .. }) => {}
            Event::Failed(e @ ControlError::Unauthorized(_)) => self.refused(Reason::Unauthorized, &e),
            Event::Failed(e @ ControlError::HandshakeTimeout { .. }) => self.refused(Reason::HandshakeTimeout, &e),
            // Before authentication a failure is one more refused connection (counted, not logged
            // one by one); after it, a session that failed.
            Event::Failed(e) if self.pending.is_some() => self.refused(Reason::Handshake, &e),
            Event::Failed(e) => {
                tracing::warn!(peer = %self.peer, frontend = %self.frontend, "control session failed: {e}")
            }
            // Client-side events never reach a server endpoint.
            Event::Welcomed { .. }
            | Event::Established(_)
            | Event::Name { .. }
            | Event::RunStateAck { .. }
            | Event::RdmaAccepted { .. }
            | Event::Stats { .. } => {}
        }
    }
}

impl ControlActor {
    fn refused(&self, reason: Reason, e: &ControlError) {
        let Some(addr) = self.link.peer() else { return };
        self.node.gate.refused(reason, addr, || format!("refusing control connection: {e}"));
    }

    /// The gate ended this connection before it authenticated: tell the frontend why and close.
    fn ended(&mut self, why: Ended) {
        if self.pending.is_none() || self.link.endpoint.is_done() {
            return;
        }
        let l = &self.node.config.limits;
        let (code, msg) = match why {
            Ended::Evicted => (
                ErrorCode::LimitExceeded,
                format!(
                    "closed unauthenticated: newer connections needed its place (limits.max_pending_handshakes = {})",
                    l.max_pending_handshakes
                ),
            ),
            Ended::PreambleTimeout | Ended::HandshakeTimeout => (
                ErrorCode::Timeout,
                format!("no authentication within {} ms (limits.handshake_timeout_ms)", l.handshake_timeout_ms),
            ),
        };
        if let Some(addr) = self.link.peer() {
            self.node.gate.refused(why.reason(), addr, || format!("closing control connection: {msg}"));
        }
        self.link.endpoint.refuse(code, msg);
        self.nudge.wake();
    }
}

impl Actor for ControlActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(Pump);
        if let Some(ended) = self.pending.as_mut().and_then(|p| p.take_ended()) {
            ctx.spawn(async move { ended.await.ok() }.into_actor(self).map(|why, act, _ctx| {
                if let Some(why) = why {
                    act.ended(why);
                }
            }));
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some((id, token)) = self.session.take() {
            let conns = self.registry.close(&token);
            tracing::info!(session = id, connections = conns.len(), "session closed");
            for c in conns {
                c.do_send(Close { reason: "its session ended" });
            }
        }
    }
}

impl Handler<Shutdown> for ControlActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _ctx: &mut Context<Self>) {
        self.link.endpoint.refuse(ErrorCode::ShuttingDown, "the accelerator is shutting down".into());
        self.nudge.wake();
    }
}

impl Pumped for ControlActor {
    fn poll_pump(&mut self, ctx: &mut Context<Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.nudge.register(cx);
        loop {
            let io = self.link.poll_io(cx);
            while let Some(ev) = self.link.endpoint.poll_event() {
                self.on_event(ev, ctx);
            }
            match io {
                Poll::Ready(Ok(())) => continue,
                // Before authentication these are not sessions: debug only (a flood is no log flood).
                Poll::Ready(Err(TransportError::Closed)) if self.pending.is_some() => {
                    tracing::debug!(peer = %self.peer, "unauthenticated control connection closed by the peer")
                }
                Poll::Ready(Err(e)) if self.pending.is_some() => {
                    tracing::debug!(peer = %self.peer, "unauthenticated control connection failed: {e}")
                }
                Poll::Ready(Err(TransportError::Closed)) => {
                    if !self.link.endpoint.is_done() {
                        tracing::info!(peer = %self.peer, frontend = %self.frontend, "control connection closed by the frontend");
                    }
                }
                Poll::Ready(Err(e)) => tracing::warn!(peer = %self.peer, "control connection failed: {e}"),
                Poll::Pending if self.link.endpoint.has_transmit() => continue,
                Poll::Pending if !self.link.finished() => return Poll::Pending,
                Poll::Pending => {}
            }
            ctx.stop();
            return Poll::Ready(());
        }
    }
}
