//! The accelerator's `ConnectionActor`: one per data connection.
//!
//! Its pump reads every request that has arrived (each lands in its slot, leased), hands each to
//! the connection's worker as a [`WorkItem`], takes the worker's answers from a bounded channel,
//! queues one response frame per sample into the slot it came from (generative samples: a
//! first-token frame first, as soon as the engine has it), and flushes once per pass.
//! The channel's capacity is the slot count, and every message in it holds at least one lease of
//! this connection, so a worker never blocks on it.
//!
//! On [`Close`] (its session ended, or the node is shutting down) it stops reading requests,
//! answers those in flight, flushes and stops. A protocol error closes this connection only.

use std::sync::Arc;
use std::task::Poll;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use metrics::{Counter, Histogram};
use qdl_shared::metrics::{Sampler, accelerator as m};
use qdl_shared::time::Nanos;
use qdl_shared::transport::{TargetTransport, TransportError, TransportStats};
use qdl_shared::wire::attach::SessionToken;
use qdl_shared::wire::data::{DataErrorCode, DataHeader};
use qdl_shared::workload::WorkloadSpec;
use tokio::sync::mpsc;

use super::registry::{Close, Registry};
use qdl_engine::worker::{
    Answer, FirstTokens, Input, Replies, ReplySink, WorkItem, WorkerSender, refuse, reply_channel,
};
use qdl_shared::pump::{Nudge, Pump, Pumped};

/// Everything a connection actor is built from.
pub struct ConnectionParts {
    /// "s<session>/c<index>", for logs.
    pub label: String,
    /// The session's token (to detach on close).
    pub token: SessionToken,
    /// The connection's index in its session.
    pub index: u32,
    /// The attached transport.
    pub transport: Box<dyn TargetTransport>,
    /// The worker serving this connection.
    pub worker: WorkerSender,
    /// The session's workload.
    pub spec: Arc<WorkloadSpec>,
    /// Slots in the ring (bounds the reply channel).
    pub slots: u32,
    /// The node's registry.
    pub registry: Arc<Registry>,
    /// The TCP connection's place among the node's open connections (none for RDMA).
    pub permit: Option<super::gate::ConnPermit>,
}

/// The actor; see the module docs.
pub struct ConnectionActor {
    label: String,
    token: SessionToken,
    index: u32,
    transport: Box<dyn TargetTransport>,
    worker: WorkerSender,
    spec: Arc<WorkloadSpec>,
    sink: Arc<dyn ReplySink>,
    replies: mpsc::Receiver<Answer>,
    registry: Arc<Registry>,
    /// Held for the connection's life (gives its place back when the actor stops).
    _permit: Option<super::gate::ConnPermit>,
    draining: Option<&'static str>,
    in_flight: usize,
    refused: Vec<WorkItem>,
    nudge: Nudge,
    published: TransportStats,
    received: Counter,
    completed: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    residence: Histogram,
    sampler: Sampler,
}

impl ConnectionActor {
    /// Builds the actor (start it inside the arbiter that will run it).
    pub fn new(p: ConnectionParts) -> ConnectionActor {
        let (sink, replies) = reply_channel(p.slots);
        ConnectionActor {
            label: p.label,
            token: p.token,
            index: p.index,
            transport: p.transport,
            worker: p.worker,
            spec: p.spec,
            sink,
            replies,
            registry: p.registry,
            _permit: p.permit,
            draining: None,
            in_flight: 0,
            refused: Vec::new(),
            nudge: Nudge::default(),
            published: TransportStats::default(),
            received: metrics::counter!(m::SAMPLES_RECEIVED),
            completed: metrics::counter!(m::SAMPLES_COMPLETED),
            bytes_in: metrics::counter!(m::BYTES_RECEIVED),
            bytes_out: metrics::counter!(m::BYTES_SENT),
            residence: metrics::histogram!(m::RESIDENCE),
            sampler: Sampler::default(),
        }
    }

    fn publish(&mut self) {
        let s = self.transport.stats();
        self.bytes_in.increment(s.bytes_received - self.published.bytes_received);
        self.bytes_out.increment(s.bytes_sent - self.published.bytes_sent);
        self.published = s;
    }

    /// Queues the response frames of one worker delivery.
    fn answer(&mut self, replies: Replies) {
        let n = replies.entries.len();
        let now = Nanos::now();
        for (i, e) in replies.entries.iter().enumerate() {
            let residence = now.since(e.received);
            if self.sampler.hit() {
                self.residence.record(residence.as_secs_f64());
            }
            match &replies.error {
                None => {
                    let out = replies.output(i);
                    let us = (residence.0 / 1000).min(u32::MAX as u64) as u32;
                    self.transport.push_response(DataHeader::response(e.slot, e.sample_id, out.len() as u32, us), out);
                }
                Some((code, msg)) => {
                    let msg = msg.as_bytes();
                    self.transport.push_response(DataHeader::error(e.slot, e.sample_id, *code, msg.len() as u32), msg);
                    metrics::counter!(m::SAMPLE_ERRORS, "kind" => error_kind(*code)).increment(1);
                }
            }
        }
        self.in_flight -= n;
        self.completed.increment(n as u64);
        // `replies` (and the slot leases in it) drop here: the slots are free again.
    }

    /// Queues the first-token frames of one engine step (generative workloads); the samples stay
    /// in flight, their slots busy, until their responses.
    fn first_tokens(&mut self, tokens: FirstTokens) {
        let now = Nanos::now();
        for t in &tokens.entries {
            let us = (now.since(t.received).0 / 1000).min(u32::MAX as u64) as u32;
            let token = t.token.to_le_bytes();
            self.transport.push_response(DataHeader::first_token(t.slot, t.sample_id, token.len() as u32, us), &token);
        }
    }

    fn fail(&mut self, err: TransportError, ctx: &mut Context<Self>) -> Poll<()> {
        let kind = match &err {
            TransportError::Closed => "closed",
            TransportError::Io { .. } => "io",
            _ => "protocol",
        };
        metrics::counter!(m::CONNECTION_ERRORS, "kind" => kind).increment(1);
        if matches!(err, TransportError::Closed) {
            tracing::info!(conn = %self.label, in_flight = self.in_flight, "data connection closed by the frontend");
        } else {
            tracing::warn!(conn = %self.label, in_flight = self.in_flight, "closing data connection: {err}");
        }
        ctx.stop();
        Poll::Ready(())
    }
}

fn error_kind(code: DataErrorCode) -> &'static str {
    match code {
        DataErrorCode::Overloaded => "overloaded",
        DataErrorCode::BackendFailed => "backend",
        DataErrorCode::ShuttingDown => "shutdown",
        DataErrorCode::Unknown => "unknown",
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.registry.connection_started();
        // Registered from the actor's own thread, before it touches its socket, so a connection
        // that fails at once is never left marked live.
        if !self.registry.set_live(&self.token, self.index, ctx.address().recipient()) {
            self.draining = Some("its session ended during attach");
        }
        tracing::debug!(conn = %self.label, "data connection attached");
        ctx.spawn(Pump);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.publish();
        self.registry.connection_stopped(&self.token, self.index);
    }
}

impl Handler<Close> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: Close, _ctx: &mut Context<Self>) {
        self.draining.get_or_insert(msg.reason);
        self.nudge.wake();
    }
}

impl Pumped for ConnectionActor {
    fn poll_pump(&mut self, ctx: &mut Context<Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.nudge.register(cx);
        loop {
            let mut progress = false;
            if self.draining.is_none() {
                let now = Nanos::now();
                let Self { transport, worker, spec, sink, in_flight, refused, .. } = self;
                let mut submit = |req: qdl_shared::transport::Request| {
                    let item = WorkItem {
                        len: req.header.len,
                        input: Input::Slot(req.slot),
                        sample_id: req.header.sample_id,
                        slot: req.header.slot,
                        reply: sink.clone(),
                        spec: spec.clone(),
                        received: now,
                    };
                    *in_flight += 1;
                    if let Err(item) = worker.try_submit(item) {
                        refused.push(item);
                    }
                    Ok(())
                };
                match transport.poll_requests(cx, &mut submit) {
                    Poll::Ready(Ok(n)) => {
                        self.received.increment(n as u64);
                        progress |= n > 0;
                    }
                    Poll::Ready(Err(e)) => return self.fail(e, ctx),
                    Poll::Pending => {}
                }
                for item in self.refused.drain(..) {
                    refuse(item, DataErrorCode::Overloaded, "the accelerator's queues are full");
                }
            }
            while let Poll::Ready(Some(answer)) = self.replies.poll_recv(cx) {
                match answer {
                    Answer::Done(replies) => self.answer(replies),
                    Answer::FirstTokens(tokens) => self.first_tokens(tokens),
                }
                progress = true;
            }
            match self.transport.poll_flush(cx) {
                Poll::Ready(Err(e)) => return self.fail(e, ctx),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
            if let Some(reason) = self.draining
                && self.in_flight == 0
                && self.transport.queued_bytes() == 0
            {
                tracing::info!(conn = %self.label, "data connection drained and closed: {reason}");
                ctx.stop();
                return Poll::Ready(());
            }
            if !progress {
                self.publish();
                return Poll::Pending;
            }
        }
    }
}
