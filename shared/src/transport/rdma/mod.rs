//! The RDMA transport: reliable-connection queue pairs through libibverbs (via `sideway`, which
//! loads the library at run time: the project builds and runs without rdma-core until RDMA is
//! selected).
//!
//! ```text
//! frontend                                              accelerator
//!  sample buffer (registered once per loaded set)        request ring = the connection's slot
//!   │ WRITE_WITH_IMM(imm = slot N) ──────────────────▶    arena (registered, remote-writable)
//!   │                                                      │ recv completion: slot N, length
//!   │                                                      ▼ batcher → worker → response
//!  response ring slot N  ◀──────────────────── WRITE_WITH_IMM(imm = slot N) from response
//!   [24-byte data header | output | first-token area]      buffer N (registered, local)
//!                         ◀──────────────────── WRITE_WITH_IMM(imm = slot N | 1 << 31): a
//!                                                           first token, from and into the
//!                                                           slot's first-token area
//! ```
//! - Set-up: after the control session is established (the frontend accepted), each data
//!   connection's parameters {QP number, PSN, GID, LID, MTU, ring address, rkey, slots, slot
//!   size} are exchanged with `RdmaConnect` / `RdmaAccept` control messages; the accelerator's
//!   queue pair is ready to receive before it answers. No rkey is sent before the session exists.
//! - The immediate is the slot index (big-endian on the wire); a request carries no header (the
//!   receive completion gives slot and length); a response starts with the usual data header, so
//!   its kind, length and the accelerator's residence time arrive as over TCP.
//! - Generative workloads answer a request twice into the same slot: a first-token frame, then
//!   the response. The first token travels in a separate area of the slot, the last
//!   [`FIRST_TOKEN_AREA`] bytes of every response slot (on both sides), with the immediate's bit
//!   31 set ([`FIRST_TOKEN_IMM`]), so the two answers of one request never share memory: the
//!   response may be written (and land) while the first token's write is still queued or unread.
//!   RC queue pairs deliver in order, so the frontend reads the first token before the response.
//! - Freeing: the next request into slot N acknowledges the previous response (and first token)
//!   on N (see [`target`]): the frontend reuses a slot only after its response arrived.
//! - Efficiency knobs (`[transport.rdma]`): inline writes below `inline_threshold`; every
//!   `signal_every`-th write signalled ([`window::SendWindow`]); up to `max_chain` writes per
//!   doorbell, the last one solicited; completions by events (completion channel registered with
//!   tokio, armed for solicited completions) or busy polling. Each is counted in `qdl_rdma_*`.
//! - Failures end only their connection with a clear error: a completion with an error status
//!   (remote access error, retry exceeded when the peer's queue pair died, ...), a write-with-
//!   immediate naming a slot outside the ring or a busy slot, a response whose header does not
//!   match its write, a first-token write that does not hold one first token of its slot.

pub mod device;
mod initiator;
mod link;
mod target;
pub mod window;

pub use device::{RdmaDevice, SourceRegion, libibverbs_loaded};
pub use initiator::{InitiatorSetup, RdmaInitiator, response_slot_bytes};
pub use target::RdmaTarget;

/// Room for an error message in a response slot, bytes (responses carry at least this much).
pub const RESPONSE_ROOM: u32 = 256;

/// The first-token area at the end of every response slot, bytes: a data header (kind 4, `len`
/// 4), the token (int32 LE), 4 bytes of padding. A first-token write fills its first 28 bytes.
pub const FIRST_TOKEN_AREA: u32 = 32;

/// Payload of a first-token frame, bytes (one int32 token id).
pub const FIRST_TOKEN_BYTES: u32 = 4;

/// The immediate's flag of a first-token write: `imm = slot | FIRST_TOKEN_IMM` (slots are below
/// 2^20 by the accelerator's limits, below 2^31 by [`InitiatorSetup::new`] and
/// [`RdmaTarget::accept`]); a response or error carries `imm = slot`.
pub const FIRST_TOKEN_IMM: u32 = 0x8000_0000;

/// Errors of the RDMA transport.
#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    /// libibverbs could not be loaded.
    #[error(
        "RDMA transport unavailable: libibverbs cannot be loaded ({0}); install rdma-core (libibverbs1 and \
         ibverbs-providers) or use transport = \"tcp\""
    )]
    Unavailable(String),
    /// libibverbs is there but lists no device.
    #[error(
        "RDMA transport unavailable: no RDMA device found (`ibv_devices` lists none; for Soft-RoCE: `rdma link add \
         rxe0 type rxe netdev IFACE`); use transport = \"tcp\" otherwise"
    )]
    NoDevice,
    /// The configured device does not exist.
    #[error("RDMA device {name:?} not found; available: {available}")]
    DeviceNotFound {
        /// The name asked for.
        name: String,
        /// The devices there are.
        available: String,
    },
    /// The port cannot be used.
    #[error("RDMA device {device} port {port}: {reason}")]
    Port {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// Why.
        reason: String,
    },
    /// A verbs call failed.
    #[error("{op}: {reason}")]
    Verbs {
        /// What was being done.
        op: &'static str,
        /// The library's error.
        reason: String,
    },
    /// Memory could not be registered.
    #[error(
        "cannot register {bytes} bytes with the RDMA device: {reason} (is the locked-memory limit high enough? \
         `ulimit -l unlimited`, or LimitMEMLOCK=infinity under systemd)"
    )]
    Register {
        /// Bytes asked for.
        bytes: u64,
        /// The library's error.
        reason: String,
    },
    /// A queue-pair state transition failed.
    #[error("queue pair transition to {state} failed: {reason}")]
    Transition {
        /// The state asked for.
        state: &'static str,
        /// The library's error.
        reason: String,
    },
    /// A work request completed with an error: the queue pair is dead.
    #[error("RDMA {what} failed: {status} (status {code}, vendor error {vendor_err:#x}){hint}")]
    Completion {
        /// "write" or "receive".
        what: &'static str,
        /// The status' name.
        status: String,
        /// Its number.
        code: u32,
        /// The device's own error code.
        vendor_err: u32,
        /// What it usually means.
        hint: &'static str,
    },
    /// The peer's parameters or behaviour do not fit the session.
    #[error("RDMA peer: {0}")]
    Peer(String),
}

impl RdmaError {
    pub(crate) fn verbs(op: &'static str, e: impl std::fmt::Display) -> RdmaError {
        RdmaError::Verbs { op, reason: e.to_string() }
    }

    pub(crate) fn completion(code: u32, _opcode: u32, vendor_err: u32, receive: bool) -> RdmaError {
        let (status, hint) = match code {
            1 => ("local length error", ""),
            2 => ("local QP operation error", ""),
            4 => ("local protection error", " (a buffer outside its registered region)"),
            5 => ("work request flushed", " (the queue pair had already failed)"),
            9 => ("remote invalid request", ""),
            10 => ("remote access error", " (the peer's rkey or ring bounds refused the write)"),
            11 => ("remote operation error", ""),
            12 => ("transport retry counter exceeded", " (the peer stopped answering: its process or link is gone)"),
            13 => ("RNR retry counter exceeded", " (the peer posted no receive)"),
            _ => ("error", ""),
        };
        RdmaError::Completion {
            what: if receive { "receive" } else { "write" },
            status: status.to_string(),
            code,
            vendor_err,
            hint,
        }
    }
}

/// The RDMA counters and histograms of one connection (handles made once; recording is
/// lock-free).
#[derive(Clone)]
pub struct RdmaMetrics {
    /// Completion-queue polls.
    pub cq_polls: metrics::Counter,
    /// Completions per non-empty poll.
    pub completions_per_poll: metrics::Histogram,
    /// Completion-channel events.
    pub cq_events: metrics::Counter,
    /// Signalled writes.
    pub signalled: metrics::Counter,
    /// Unsignalled writes.
    pub unsignalled: metrics::Counter,
    /// Inline writes.
    pub inline: metrics::Counter,
    /// Doorbells (chains posted).
    pub doorbells: metrics::Counter,
    /// Payloads copied into a staging slot (their memory was not registered).
    pub staged: metrics::Counter,
}

impl Default for RdmaMetrics {
    fn default() -> Self {
        RdmaMetrics {
            cq_polls: metrics::Counter::noop(),
            completions_per_poll: metrics::Histogram::noop(),
            cq_events: metrics::Counter::noop(),
            signalled: metrics::Counter::noop(),
            unsignalled: metrics::Counter::noop(),
            inline: metrics::Counter::noop(),
            doorbells: metrics::Counter::noop(),
            staged: metrics::Counter::noop(),
        }
    }
}

impl RdmaMetrics {
    /// Handles labelled with the node's `role` ("frontend" or "accelerator").
    pub fn registered(role: &'static str) -> RdmaMetrics {
        use crate::metrics::rdma as m;
        RdmaMetrics {
            cq_polls: metrics::counter!(m::CQ_POLLS, "role" => role),
            completions_per_poll: metrics::histogram!(m::COMPLETIONS_PER_POLL, "role" => role),
            cq_events: metrics::counter!(m::CQ_EVENTS, "role" => role),
            signalled: metrics::counter!(m::POSTS, "role" => role, "kind" => "signalled"),
            unsignalled: metrics::counter!(m::POSTS, "role" => role, "kind" => "unsignalled"),
            inline: metrics::counter!(m::INLINE_POSTS, "role" => role),
            doorbells: metrics::counter!(m::DOORBELLS, "role" => role),
            staged: metrics::counter!(m::STAGED, "role" => role),
        }
    }
}
