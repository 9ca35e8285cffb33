//! Data transports: how sample frames move between a frontend connection and an accelerator
//! connection. The actors only see these two traits, so the RDMA transport slots in beside TCP
//! without touching them.
//!
//! Semantics (mirroring RDMA write-with-immediate): a request writes a sample's input into slot N
//! of the accelerator's ring; its response writes the output into slot N of the frontend's ring.
//! Transports batch: many frames are queued with `push_*` and written with one `poll_flush`
//! (drain, then flush once), and `poll_*` deliver every frame that has arrived.

pub mod rdma;
pub mod tcp;

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::slots::{SlotError, SlotLease};
use crate::wire::WireError;
use crate::wire::attach::AttachStatus;
use crate::wire::data::DataHeader;

/// Errors of a data transport. Each one ends the connection it happened on (and only that one).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer sent bytes that are not a valid frame.
    #[error("malformed frame from the peer: {0}")]
    Wire(#[from] WireError),
    /// The peer sent a request into a slot it may not use.
    #[error("protocol violation: {0}")]
    Slot(#[from] SlotError),
    /// The peer's response does not match what is in flight (stray, duplicate, wrong sample):
    /// the connection's tracker refused it.
    #[error("protocol violation: {0}")]
    Tracker(#[from] crate::tracker::TrackerError),
    /// The peer's response is larger than an output slot.
    #[error("protocol violation: a response of {got} bytes; outputs are {max} bytes")]
    OversizedResponse {
        /// The response's payload size.
        got: usize,
        /// The output slot size.
        max: usize,
    },
    /// The peer broke the protocol in another way (wrong frame kind or size, stray response).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The accelerator refused to attach the connection.
    #[error("the accelerator refused the data connection: {}", .0.describe())]
    Refused(AttachStatus),
    /// The RDMA layer failed (device, verbs, a work completion with an error status).
    #[error(transparent)]
    Rdma(#[from] rdma::RdmaError),
    /// Connecting or attaching took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
}

/// The request sizes a session accepts: exactly the sample size (fixed-shape workloads), or any
/// multiple of `multiple_of` bytes from one unit up to `max` (generative workloads send their
/// prompt's true length, no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSize {
    /// Every request carries exactly this many bytes.
    Exact(u32),
    /// A request carries `k × multiple_of` bytes, `1 ≤ k`, at most `max`.
    UpTo {
        /// The slot size, bytes.
        max: u32,
        /// The unit, bytes (4 for int32 token ids).
        multiple_of: u32,
    },
}

impl RequestSize {
    /// The sizes a session of `spec` accepts.
    pub fn for_workload(spec: &crate::workload::WorkloadSpec) -> RequestSize {
        let max = spec.input_bytes().min(u32::MAX as usize) as u32;
        if spec.is_generative() { RequestSize::UpTo { max, multiple_of: 4 } } else { RequestSize::Exact(max) }
    }

    /// The largest request, bytes (the slot size).
    pub fn max(self) -> u32 {
        match self {
            RequestSize::Exact(n) => n,
            RequestSize::UpTo { max, .. } => max,
        }
    }

    /// Whether a request of `len` bytes is acceptable.
    pub fn accepts(self, len: u32) -> bool {
        match self {
            RequestSize::Exact(n) => len == n,
            RequestSize::UpTo { max, multiple_of } => len > 0 && len <= max && len.is_multiple_of(multiple_of.max(1)),
        }
    }
}

/// Counters a transport keeps; the owning actor publishes them as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Bytes written (headers included).
    pub bytes_sent: u64,
    /// Bytes read (headers included).
    pub bytes_received: u64,
    /// Frames written.
    pub frames_sent: u64,
    /// Frames read.
    pub frames_received: u64,
    /// Write system calls (or work-request posts).
    pub write_calls: u64,
    /// Read system calls (or completion polls).
    pub read_calls: u64,
}

/// Histograms a transport records into (no-ops by default). Handles are created once per
/// connection; recording is lock-free.
#[derive(Clone)]
pub struct TransportMetrics {
    /// Frames completed per write system call (or per chained post).
    pub frames_per_write: metrics::Histogram,
    /// Frames delivered per read system call (or per completion poll).
    pub frames_per_read: metrics::Histogram,
    /// Frontend: per request, queued → last byte written, seconds.
    pub send_delay: metrics::Histogram,
}

impl Default for TransportMetrics {
    fn default() -> Self {
        TransportMetrics {
            frames_per_write: metrics::Histogram::noop(),
            frames_per_read: metrics::Histogram::noop(),
            send_delay: metrics::Histogram::noop(),
        }
    }
}

impl TransportMetrics {
    /// The frontend's histograms for its connections to `accelerator` (the `accelerator` label of
    /// [`crate::metrics::frontend::FRAMES_PER_WRITE`] and `FRAMES_PER_READ`; `send_delay` is the
    /// "send" stage of [`crate::metrics::frontend::STAGE`]).
    pub fn for_frontend(accelerator: &str) -> TransportMetrics {
        use crate::metrics::frontend as m;
        let a = accelerator.to_string();
        TransportMetrics {
            frames_per_write: metrics::histogram!(m::FRAMES_PER_WRITE, "accelerator" => a.clone()),
            frames_per_read: metrics::histogram!(m::FRAMES_PER_READ, "accelerator" => a),
            send_delay: metrics::histogram!(m::STAGE, "stage" => "send"),
        }
    }

    /// The accelerator's histograms ([`crate::metrics::accelerator::FRAMES_PER_WRITE`] and
    /// `FRAMES_PER_READ`); it sends no requests, so `send_delay` records nothing.
    pub fn for_accelerator() -> TransportMetrics {
        use crate::metrics::accelerator as m;
        TransportMetrics {
            frames_per_write: metrics::histogram!(m::FRAMES_PER_WRITE),
            frames_per_read: metrics::histogram!(m::FRAMES_PER_READ),
            send_delay: metrics::Histogram::noop(),
        }
    }
}

/// Memory a request payload is sent from, kept alive until the frame is written.
pub trait PayloadSource: Send + Sync + 'static {
    /// The whole buffer.
    fn bytes(&self) -> &[u8];
}

/// A byte range of a [`PayloadSource`]: the frontend sends straight from its sample buffer.
#[derive(Clone)]
pub struct Payload {
    source: Arc<dyn PayloadSource>,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes at {})", self.len, self.offset)
    }
}

impl Payload {
    /// `len` bytes at `offset` of `source`; `None` if the range is outside it.
    pub fn new(source: Arc<dyn PayloadSource>, offset: usize, len: usize) -> Option<Payload> {
        let end = offset.checked_add(len)?;
        (end <= source.bytes().len()).then_some(Payload { source, offset, len })
    }

    /// The buffer the payload lies in.
    pub fn source(&self) -> &Arc<dyn PayloadSource> {
        &self.source
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.source.bytes()[self.offset..self.offset + self.len]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A request delivered to the accelerator: its header and its slot, holding the input bytes.
#[derive(Debug)]
pub struct Request {
    /// The request's header.
    pub header: DataHeader,
    /// The slot the input was written into (leased: busy until the response is queued).
    pub slot: SlotLease,
}

/// Receives each response's header and output bytes; an error ends the connection.
pub type OnResponse<'a> = dyn FnMut(&DataHeader, &[u8]) -> Result<(), TransportError> + 'a;

/// Receives each request; an error ends the connection.
pub type OnRequest<'a> = dyn FnMut(Request) -> Result<(), TransportError> + 'a;

/// The frontend's end of a data connection.
pub trait InitiatorTransport: Send + 'static {
    /// Queues a request; nothing is written until [`InitiatorTransport::poll_flush`].
    fn push_request(&mut self, header: DataHeader, payload: Payload);

    /// Requests queued but not yet completely written.
    fn queued(&self) -> usize;

    /// Writes queued requests, as many per system call as possible. `Ready(Ok)` once all are written.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>>;

    /// Delivers responses that have arrived to `on_response` (header, output bytes), and returns
    /// how many; `Pending` when none is available. An error returned by `on_response` ends the
    /// connection and is passed back.
    fn poll_responses(
        &mut self,
        cx: &mut Context<'_>,
        on_response: &mut OnResponse<'_>,
    ) -> Poll<Result<usize, TransportError>>;

    /// Counters so far.
    fn stats(&self) -> TransportStats;
}

/// The accelerator's end of a data connection.
pub trait TargetTransport: Send + 'static {
    /// Delivers requests that have arrived to `on_request`, and returns how many; `Pending` when
    /// none is available. An error returned by `on_request` ends the connection.
    fn poll_requests(
        &mut self,
        cx: &mut Context<'_>,
        on_request: &mut OnRequest<'_>,
    ) -> Poll<Result<usize, TransportError>>;

    /// Queues a response (or error) frame; the output bytes are copied.
    fn push_response(&mut self, header: DataHeader, output: &[u8]);

    /// Bytes queued but not yet written.
    fn queued_bytes(&self) -> usize;

    /// Writes queued responses. `Ready(Ok)` once all are written.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>>;

    /// Counters so far.
    fn stats(&self) -> TransportStats;
}
