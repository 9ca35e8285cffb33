//! The frontend's `ConnectionActor`: one per data connection (or per in-process lane of the
//! local baseline). It is a thin driver of its sans-IO [`LaneCore`] (which owns the
//! connection's `TransactionTracker` — no lock, no message per sample): it polls the transport,
//! feeds the core, and hands the core's outputs to LoadGen, the issuer and the metrics.
//!
//! Each pump pass:
//! 1. takes every response that has arrived: the tracker validates (slot, sample id) and frees
//!    the slot; the output is written into the same slot of the response ring (as an RDMA write
//!    would place it) and all of them go to LoadGen in one `QuerySamplesComplete`;
//! 2. takes every submission the QueryIssuer queued on its lane: a slot from the tracker, a
//!    request frame pointing straight into the loaded sample buffer;
//! 3. flushes all queued frames with as few writes as possible.
//!
//! A lost connection, a protocol violation, or its accelerator declared dead ([`Abandon`]) ends
//! the connection; its samples (in flight and queued) are handed back to the QueryIssuer, which
//! places them on the connections left. A sample is owned by exactly one connection at a time,
//! so it completes exactly once. With no connection left the issuer tells the run's supervisor,
//! which ends the run with a clear error.

use std::sync::Arc;
use std::task::Poll;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, MessageResult};
use metrics::{Counter, Gauge, Histogram};
use qdl_loadgen::{CompletionBuffer, ResponseId};
use qdl_shared::metrics::{Sampler, frontend as m};
use qdl_shared::pump::{Nudge, Pump, Pumped};
use qdl_shared::time::Nanos;
use qdl_shared::transport::{InitiatorTransport, Payload, PayloadSource, TransportError, TransportStats};
use qdl_shared::wire::data::{DataErrorCode, DataHeader};
use serde::{Deserialize, Serialize};

use crate::issuer::{Lane, QueryIssuer, Submission};
use crate::lane_core::{FIRST_TOKEN_BYTES, LaneCore, Pending};
use crate::qsl::SampleStore;
use crate::timeline::RunLatencies;

/// Stops the connection (the run is over).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

/// How long a given-up connection is still read, its late answers dropped and counted.
pub const LATE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Gives the connection up (its accelerator was declared dead): its samples are re-dispatched.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abandon(pub String);

/// Asks for the connection's counters.
#[derive(Message)]
#[rtype(result = "ConnectionStats")]
pub struct GetStats;

/// A connection's counters, for report.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// The connection's label.
    pub label: String,
    /// Samples completed.
    pub completed: u64,
    /// Samples the accelerator answered with an error.
    pub errors: u64,
    /// Transport counters.
    pub bytes_sent: u64,
    /// Bytes read.
    pub bytes_received: u64,
    /// Write calls.
    pub write_calls: u64,
    /// Read calls.
    pub read_calls: u64,
    /// Responses that arrived after the connection was given up (its samples re-dispatched):
    /// dropped, never reported to LoadGen.
    #[serde(default)]
    pub late: u64,
}

/// Everything a connection actor is built from.
pub struct ConnectionParts {
    /// e.g. "acc-0/1".
    pub label: String,
    /// The metrics label of its accelerator.
    pub accelerator: String,
    /// Its index among the accelerator's data connections (the `connection` label).
    pub connection: u32,
    /// Its lane in the QueryIssuer.
    pub lane: Arc<Lane>,
    /// The attached transport.
    pub transport: Box<dyn InitiatorTransport>,
    /// Slots granted (the tracker's size; equals the lane's credits).
    pub slots: u32,
    /// Output bytes per sample.
    pub output_bytes: u32,
    /// The loaded samples.
    pub store: Arc<SampleStore>,
    /// The issuer: its gate is notified as credits free up, and it takes this connection's
    /// samples back if the connection is lost.
    pub issuer: Arc<QueryIssuer>,
    /// Where end-to-end latencies go for the run's timeline.
    pub latencies: Arc<RunLatencies>,
}

/// The actor; see the module docs.
pub struct ConnectionActor {
    label: String,
    lane: Arc<Lane>,
    transport: Box<dyn InitiatorTransport>,
    /// The protocol state: tracker, response ring, completions.
    core: LaneCore<ResponseId, Payload>,
    store: Arc<SampleStore>,
    issuer: Arc<QueryIssuer>,
    late: Counter,
    latencies: Arc<RunLatencies>,
    completions: CompletionBuffer,
    nudge: Nudge,
    stats: ConnectionStats,
    published: TransportStats,
    completed: Counter,
    errors: Counter,
    latency: Histogram,
    stage_issue: Histogram,
    stage_network: Histogram,
    stage_accelerator: Histogram,
    complete_call: Histogram,
    up: Gauge,
    sampler: Sampler,
    issue_sampler: Sampler,
    in_flight: Gauge,
    free_slots: Gauge,
    bytes_sent: Counter,
    bytes_received: Counter,
    write_calls: Counter,
    read_calls: Counter,
    tokens: TokenMetrics,
}

/// The metrics of generative samples (recorded only for them).
struct TokenMetrics {
    ttft: Histogram,
    ttft_outside: Histogram,
    tpot: Histogram,
    completed: Counter,
}

impl ConnectionActor {
    /// Builds the actor (start it inside the arbiter that will run it).
    pub fn new(p: ConnectionParts) -> ConnectionActor {
        let label = p.label.clone();
        let (acc, conn) = (p.accelerator.clone(), p.connection.to_string());
        let per_connection =
            |name: &'static str| metrics::gauge!(name, "accelerator" => acc.clone(), "connection" => conn.clone());
        ConnectionActor {
            lane: p.lane,
            transport: p.transport,
            core: if p.store.source().spec().is_generative() {
                LaneCore::generative(p.slots, p.output_bytes)
            } else {
                LaneCore::new(p.slots, p.output_bytes)
            },
            store: p.store,
            issuer: p.issuer,
            late: metrics::counter!(m::LATE_RESPONSES),
            latencies: p.latencies,
            completions: CompletionBuffer::with_capacity(1024),
            nudge: Nudge::default(),
            stats: ConnectionStats { label: label.clone(), ..Default::default() },
            published: TransportStats::default(),
            completed: metrics::counter!(m::SAMPLES_COMPLETED),
            errors: metrics::counter!(m::SAMPLE_ERRORS, "kind" => "accelerator"),
            latency: metrics::histogram!(m::LATENCY),
            stage_issue: metrics::histogram!(m::STAGE, "stage" => "issue"),
            stage_network: metrics::histogram!(m::STAGE, "stage" => "network"),
            stage_accelerator: metrics::histogram!(m::STAGE, "stage" => "accelerator"),
            complete_call: metrics::histogram!(m::COMPLETE),
            up: per_connection(m::CONNECTION_UP),
            sampler: Sampler::default(),
            issue_sampler: Sampler::default(),
            in_flight: per_connection(m::IN_FLIGHT),
            free_slots: per_connection(m::FREE_SLOTS),
            bytes_sent: metrics::counter!(m::BYTES_SENT, "accelerator" => p.accelerator.clone()),
            bytes_received: metrics::counter!(m::BYTES_RECEIVED, "accelerator" => p.accelerator.clone()),
            write_calls: metrics::counter!(m::WRITE_CALLS, "accelerator" => p.accelerator.clone()),
            read_calls: metrics::counter!(m::READ_CALLS, "accelerator" => p.accelerator.clone()),
            tokens: TokenMetrics {
                ttft: metrics::histogram!(m::TIME_TO_FIRST_TOKEN, "accelerator" => p.accelerator.clone()),
                ttft_outside: metrics::histogram!(m::FIRST_TOKEN_OUTSIDE, "accelerator" => p.accelerator.clone()),
                tpot: metrics::histogram!(m::TIME_PER_OUTPUT_TOKEN, "accelerator" => p.accelerator.clone()),
                completed: metrics::counter!(m::COMPLETED_TOKENS, "accelerator" => p.accelerator),
            },
            label,
        }
    }

    fn publish(&mut self) {
        let s = self.transport.stats();
        self.bytes_sent.increment(s.bytes_sent - self.published.bytes_sent);
        self.bytes_received.increment(s.bytes_received - self.published.bytes_received);
        self.write_calls.increment(s.write_calls - self.published.write_calls);
        self.read_calls.increment(s.read_calls - self.published.read_calls);
        self.published = s;
        self.in_flight.set(self.core.in_flight() as f64);
        self.free_slots.set(self.core.free_slots() as f64);
    }

    /// Takes every response available; returns how many samples completed.
    fn receive(&mut self, cx: &mut std::task::Context<'_>) -> Result<usize, TransportError> {
        let mut total = 0;
        loop {
            let now = Nanos::now();
            let Self {
                transport,
                core,
                latency,
                latencies,
                stage_network,
                stage_accelerator,
                sampler,
                label,
                tokens,
                ..
            } = self;
            let late_before = core.late();
            // LoadGen's FirstTokenComplete, at once and from this thread (the sample completes
            // from it too, as LoadGen's per-thread logging needs).
            let mut first_token = |id: &ResponseId, token: &[u8]| qdl_loadgen::first_token_complete(id, token);
            let mut on_response = |h: &DataHeader, payload: &[u8]| {
                // A protocol violation ends the connection: the transport reports it as its error.
                let answered = core.handle_response(h, payload, now, &mut first_token).map_err(TransportError::from)?;
                let Some(a) = answered else {
                    // Its sample was handed to another connection: this answer is not LoadGen's.
                    return Ok(());
                };
                latency.record(a.end_to_end.as_secs_f64());
                latencies.end_to_end.record(a.end_to_end.0);
                if let Some(ttft) = a.first_token
                    && !a.error
                {
                    // TTFT when the first token came, TPOT over the tokens after it.
                    tokens.ttft.record(ttft.as_secs_f64());
                    latencies.ttft.record(ttft.0);
                    let n = (payload.len() / FIRST_TOKEN_BYTES) as u64;
                    tokens.completed.increment(n);
                    latencies.add_tokens(n);
                    if n > 1 {
                        let tpot = a.end_to_end.since(ttft).0 / (n - 1);
                        tokens.tpot.record(tpot as f64 / 1e9);
                        latencies.tpot.record(tpot);
                    }
                    if let Some(outside) = a.first_token_outside {
                        tokens.ttft_outside.record(outside.as_secs_f64());
                        latencies.ttft_outside.record(outside.0);
                    }
                }
                if a.error {
                    tracing::warn!(conn = %label, code = ?DataErrorCode::from_u32(h.aux), "sample failed on the accelerator: {}", String::from_utf8_lossy(payload));
                } else if sampler.hit() {
                    // The round trip from the request being queued, split at the accelerator's residence.
                    stage_accelerator.record(a.residence.as_secs_f64());
                    stage_network.record(a.round_trip.since(a.residence).as_secs_f64());
                }
                Ok(())
            };
            let polled = transport.poll_responses(cx, &mut on_response);
            let late = self.core.late() - late_before;
            if late > 0 {
                self.late.increment(late);
                self.stats.late += late;
                self.issuer.note_late(late);
            }
            let n = match polled {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => {
                    self.complete();
                    return Err(e);
                }
                Poll::Pending => 0,
            };
            total += self.complete();
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Hands the core's completions to LoadGen in one call and frees their credits.
    fn complete(&mut self) -> usize {
        if !self.core.has_completions() {
            return 0;
        }
        let (mut n, mut errors) = (0, 0);
        let started = std::time::Instant::now();
        {
            let mut batch = self.completions.batch();
            let generative = self.core.is_generative();
            for (id, output, error) in self.core.completions() {
                n += 1;
                errors += error as u64;
                if generative && !error {
                    batch.push_tokens(id, output, (output.len() / FIRST_TOKEN_BYTES) as i64);
                } else {
                    batch.push(id, output);
                }
            }
        }
        self.complete_call.record(started.elapsed().as_secs_f64());
        self.lane.release(n as u32);
        self.issuer.gate().notify();
        self.completed.increment(n as u64);
        self.stats.completed += n as u64;
        if errors > 0 {
            self.errors.increment(errors);
            self.stats.errors += errors;
        }
        n
    }

    /// Turns queued submissions into request frames; returns how many.
    fn submit(&mut self) -> usize {
        if !self.lane.has_work() {
            return 0;
        }
        let set = self.store.current();
        let now = Nanos::now();
        let mut n = 0;
        while let Some(Submission { sample: sub, issued, first_reported }) = self.lane.pop() {
            if self.issue_sampler.hit() {
                self.stage_issue.record(now.since(issued).as_secs_f64());
            }
            let Some((set, offset)) = set.as_ref().and_then(|s| s.offset(sub.index).map(|o| (s, o))) else {
                // LoadGen only issues loaded samples; answering keeps LoadGen whole if it ever did not.
                tracing::error!(conn = %self.label, index = sub.index, "LoadGen issued a sample that is not loaded; failing it");
                self.core.fail_sample(sub.id);
                continue;
            };
            let len = set.range(sub.index).map_or(set.sample_bytes(), |(_, len)| len);
            let source: Arc<dyn PayloadSource> = set.clone();
            let payload = Payload::new(source, offset, len).expect("offset comes from the set itself");
            let pending = Pending { token: sub.id, index: sub.index, issued, first_reported };
            if let Err(e) = self.core.handle_submission(pending, payload, len as u32, now) {
                // Credits equal slots, so this is a bug; the core failed the sample, never lost it.
                tracing::error!(conn = %self.label, "{e}; failing the sample");
            }
            while let Some((header, payload)) = self.core.poll_transmit() {
                self.transport.push_request(header, payload);
                n += 1;
            }
        }
        n
    }

    fn fail(&mut self, err: TransportError, ctx: &mut Context<Self>) -> Poll<()> {
        if self.core.is_given_up() {
            ctx.stop();
            return Poll::Ready(());
        }
        let kind = match &err {
            TransportError::Closed => "closed",
            TransportError::Io { .. } => "io",
            _ => "protocol",
        };
        metrics::counter!(m::CONNECTION_ERRORS, "kind" => kind).increment(1);
        self.give_up(&err.to_string());
        ctx.stop();
        Poll::Ready(())
    }

    /// Ends this connection's part in the run: no more samples come to it, and those it holds
    /// (in flight or queued) go back to the issuer for the other connections.
    fn give_up(&mut self, why: &str) {
        self.lane.close();
        // Answers already read are LoadGen's; hand them over first.
        self.complete();
        let mut subs: Vec<Submission> = self
            .core
            .give_up()
            .into_iter()
            .map(|p| Submission {
                sample: qdl_loadgen::QuerySample { id: p.token, index: p.index },
                issued: p.issued,
                first_reported: p.first_reported,
            })
            .collect();
        while let Some(s) = self.lane.pop() {
            subs.push(s);
        }
        self.lane.abandon(subs.len() as u32);
        self.issuer.gate().notify();
        if subs.is_empty() {
            tracing::info!(conn = %self.label, "data connection closed: {why}");
            return;
        }
        tracing::warn!(conn = %self.label, samples = subs.len(), "data connection lost ({why}); re-dispatching its samples");
        // With no lane left the issuer reports it to the supervisor, which ends the run.
        self.issuer.redispatch(&self.label, subs);
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.up.set(1.0);
        ctx.spawn(Pump);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.up.set(0.0);
        self.publish();
        self.lane.close();
    }
}

impl Handler<Close> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        self.lane.close();
        ctx.stop();
    }
}

impl Handler<Abandon> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, Abandon(why): Abandon, ctx: &mut Context<Self>) {
        metrics::counter!(m::CONNECTION_ERRORS, "kind" => "accelerator-lost").increment(1);
        // The accelerator may only be slow: read on for a while; the core drops (and counts) its
        // answers, whose samples now belong to other connections.
        self.give_up(&why);
        ctx.run_later(LATE_GRACE, |act, ctx| {
            if act.stats.late > 0 {
                tracing::warn!(conn = %act.label, late = act.stats.late, "dropped late responses of re-dispatched samples");
            }
            ctx.stop();
        });
    }
}

impl Handler<GetStats> for ConnectionActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _ctx: &mut Context<Self>) -> MessageResult<GetStats> {
        let s = self.transport.stats();
        let mut stats = self.stats.clone();
        stats.bytes_sent = s.bytes_sent;
        stats.bytes_received = s.bytes_received;
        stats.write_calls = s.write_calls;
        stats.read_calls = s.read_calls;
        MessageResult(stats)
    }
}

impl Pumped for ConnectionActor {
    fn poll_pump(&mut self, ctx: &mut Context<Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.nudge.register(cx);
        loop {
            let received = match self.receive(cx) {
                Ok(n) => n,
                Err(e) => return self.fail(e, ctx),
            };
            let sent = self.submit();
            // Samples failed while submitting are completed right away.
            self.complete();
            if let Poll::Ready(Err(e)) = self.transport.poll_flush(cx) {
                return self.fail(e, ctx);
            }
            if received == 0 && sent == 0 {
                self.lane.register(cx.waker());
                // A submission may have arrived between the last pop and the registration.
                if self.lane.has_work() {
                    continue;
                }
                self.publish();
                return Poll::Pending;
            }
        }
    }
}
