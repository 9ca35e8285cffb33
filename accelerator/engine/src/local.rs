//! The in-process transport of the local ("Closed division") baseline: the same QueryIssuer,
//! `ConnectionActor`, tracker, batcher, workers and backend as over the network, with the wire
//! replaced by direct hand-offs. Requests become [`WorkItem`]s that point straight into the loaded
//! sample buffer; the workers' replies come back through a bounded channel.

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::worker::{Answer, Input, ReplySink, WorkItem, WorkerSender, refuse, reply_channel};
use qdl_shared::time::Nanos;
use qdl_shared::transport::{InitiatorTransport, OnResponse, Payload, TransportError, TransportStats};
use qdl_shared::wire::data::{DataErrorCode, DataHeader};
use qdl_shared::workload::WorkloadSpec;
use tokio::sync::mpsc;

/// An in-process "connection" to one worker; see the module docs.
pub struct LocalTransport {
    worker: WorkerSender,
    spec: Arc<WorkloadSpec>,
    sink: Arc<dyn ReplySink>,
    replies: mpsc::Receiver<Answer>,
    stats: TransportStats,
}

impl LocalTransport {
    /// A transport to `worker` for a lane of `slots` slots.
    pub fn new(worker: WorkerSender, spec: Arc<WorkloadSpec>, slots: u32) -> LocalTransport {
        let (sink, replies) = reply_channel(slots);
        LocalTransport { worker, spec, sink, replies, stats: TransportStats::default() }
    }
}

impl InitiatorTransport for LocalTransport {
    fn push_request(&mut self, header: DataHeader, payload: Payload) {
        self.stats.frames_sent += 1;
        let item = WorkItem {
            len: payload.len() as u32,
            input: Input::Buffer(payload),
            sample_id: header.sample_id,
            slot: header.slot,
            reply: self.sink.clone(),
            spec: self.spec.clone(),
            received: Nanos::now(),
        };
        if let Err(item) = self.worker.try_submit(item) {
            refuse(item, DataErrorCode::Overloaded, "the worker's queue is full");
        }
    }

    fn queued(&self) -> usize {
        0
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_responses(
        &mut self,
        cx: &mut Context<'_>,
        on_response: &mut OnResponse<'_>,
    ) -> Poll<Result<usize, TransportError>> {
        let mut n = 0;
        loop {
            match self.replies.poll_recv(cx) {
                Poll::Ready(Some(Answer::FirstTokens(f))) => {
                    let now = Nanos::now();
                    for t in &f.entries {
                        let us = (now.since(t.received).0 / 1000).min(u32::MAX as u64) as u32;
                        on_response(&DataHeader::first_token(t.slot, t.sample_id, 4, us), &t.token.to_le_bytes())?;
                    }
                    self.stats.frames_received += f.entries.len() as u64;
                    // A first token completes nothing, but it is a frame delivered.
                    n += f.entries.len();
                }
                Poll::Ready(Some(Answer::Done(r))) => {
                    let now = Nanos::now();
                    for (i, e) in r.entries.iter().enumerate() {
                        let us = (now.since(e.received).0 / 1000).min(u32::MAX as u64) as u32;
                        match &r.error {
                            None => {
                                let out = r.output(i);
                                on_response(&DataHeader::response(e.slot, e.sample_id, out.len() as u32, us), out)?
                            }
                            Some((code, msg)) => on_response(
                                &DataHeader::error(e.slot, e.sample_id, *code, msg.len() as u32),
                                msg.as_bytes(),
                            )?,
                        }
                    }
                    n += r.entries.len();
                    self.stats.frames_received += r.entries.len() as u64;
                }
                Poll::Ready(None) => return Poll::Ready(Err(TransportError::Closed)),
                Poll::Pending => break,
            }
        }
        if n > 0 { Poll::Ready(Ok(n)) } else { Poll::Pending }
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }
}
