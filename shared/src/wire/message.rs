//! Control messages: `[len: u32 LE][postcard 1 encoding of Message]`, one per frame.
//!
//! postcard's wire format is specified (its "wire format" specification, stable across 1.x):
//! unsigned integers wider than a byte are LEB128 varints, signed ones zigzag varints, `u8` and
//! fixed arrays raw bytes, strings, byte strings and sequences a varint length then the items,
//! an enum a varint variant index then its fields, a struct its fields in order. The full table
//! is in `docs/protocol.md`; the golden byte tests below pin it.
//!
//! A frame's length is checked against [`MAX_CONTROL_FRAME`] before anything is allocated, and
//! decoding works on that slice only: a string or byte length longer than what is left is an
//! error before any copy, and a sequence whose declared length is longer than what is left gets
//! no pre-allocation (it grows only as items actually decode), so memory stays proportional to
//! the frame (tested with a counting allocator in `tests/hostile_lengths.rs`).

use serde::{Deserialize, Serialize};

use super::attach::SessionToken;
use super::{WireError, need, u32_at};
use crate::workload::WorkloadSpec;

/// Largest control frame body accepted, in bytes.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Every control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Frontend → accelerator, first message: who is calling, and the frontend's challenge.
    Hello {
        /// The frontend's node name (for logs).
        node: String,
        /// A fresh nonce the accelerator must prove the shared secret over.
        nonce: [u8; 32],
    },
    /// Accelerator → frontend: the accelerator's name, limits and heartbeat interval.
    Welcome {
        /// The accelerator's unique name.
        name: String,
        /// What the accelerator allows.
        limits: Limits,
        /// Its heartbeat interval, ms.
        heartbeat_interval_ms: u32,
    },
    /// Frontend → accelerator: the session it wants.
    Configure(SessionRequest),
    /// Accelerator → frontend: the session granted.
    Configured(SessionGrant),
    /// Frontend → accelerator: what is your name? (LoadGen's SUT::Name needs a round trip.)
    QueryName {
        /// Correlates the answer.
        request: u32,
    },
    /// Accelerator → frontend: the answer to `QueryName`.
    Name {
        /// The request answered.
        request: u32,
        /// The accelerator's name.
        name: String,
    },
    /// Frontend → accelerator: the run moves to `state`.
    RunState {
        /// Correlates the acknowledgement.
        request: u32,
        /// The new state.
        state: RunState,
    },
    /// Accelerator → frontend: the state change is done (e.g. warm-up finished).
    RunStateAck {
        /// The request acknowledged.
        request: u32,
        /// The state reached.
        state: RunState,
    },
    /// Either way, every heartbeat interval.
    Heartbeat {
        /// Sequence number.
        seq: u64,
        /// Sender's clock when sent, ns (echoed to measure the round trip).
        sent_ns: u64,
    },
    /// Answer to a heartbeat.
    HeartbeatAck {
        /// The heartbeat answered.
        seq: u64,
        /// The sender's `sent_ns`, echoed.
        sent_ns: u64,
    },
    /// Either way: something failed; the connection closes after it.
    Error {
        /// Machine-readable class.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Either way: orderly end of the session.
    Goodbye,
    /// Frontend → accelerator: send your statistics (batch sizes formed since the run started).
    QueryStats {
        /// Correlates the answer.
        request: u32,
    },
    /// Accelerator → frontend: the answer to `QueryStats`.
    Stats {
        /// The request answered.
        request: u32,
        /// The statistics.
        stats: NodeStats,
    },
    /// Frontend → accelerator, on an established RDMA session: set up data connection
    /// `connection`; `endpoint` is the frontend's queue pair and response ring.
    RdmaConnect {
        /// Correlates the answer.
        request: u32,
        /// The connection index (0..connections granted).
        connection: u32,
        /// The frontend's side.
        endpoint: RdmaEndpoint,
    },
    /// Accelerator → frontend: the connection is ready (its queue pair is ready to receive);
    /// `endpoint` is the accelerator's queue pair and request ring.
    RdmaAccept {
        /// The request answered.
        request: u32,
        /// The accelerator's side.
        endpoint: RdmaEndpoint,
    },
    /// Accelerator → frontend, answer to `Hello`: its proof of the shared secret over the
    /// frontend's nonce, and its own challenge (see [`crate::auth`]).
    Challenge {
        /// A fresh nonce the frontend must prove the secret over.
        nonce: [u8; 32],
        /// HMAC-SHA256(secret, "qdl server" ‖ frontend nonce ‖ this nonce).
        proof: [u8; 32],
    },
    /// Frontend → accelerator, answer to `Challenge`: the frontend's proof.
    Auth {
        /// HMAC-SHA256(secret, "qdl client" ‖ accelerator nonce ‖ frontend nonce).
        proof: [u8; 32],
    },
}

/// How a session's data connections move samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum DataTransport {
    /// TCP data connections that attach with the session token.
    #[default]
    Tcp,
    /// RDMA reliable-connection queue pairs set up over the control connection.
    Rdma,
}

/// One side of an RDMA data connection: what the peer needs to connect its queue pair and to
/// write into this side's ring. Sent only on an established (accepted) control session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdmaEndpoint {
    /// Queue pair number.
    pub qp_num: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// The port's GID (RoCE: an IPv6 or IPv4-mapped address).
    pub gid: [u8; 16],
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Path MTU, bytes (256..=4096); the smaller of the two sides is used.
    pub mtu: u32,
    /// Address of the ring the peer writes into.
    pub addr: u64,
    /// Remote key of that ring.
    pub rkey: u32,
    /// Slots in the ring.
    pub slots: u32,
    /// Bytes per slot.
    pub slot_bytes: u32,
}

/// What an accelerator reports about its work since the run's `Start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// (batch size, batches of that size), sizes ascending, zero counts left out.
    pub batch_sizes: Vec<(u32, u64)>,
}

impl Message {
    /// The variant's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Configure(_) => "Configure",
            Message::Configured(_) => "Configured",
            Message::QueryName { .. } => "QueryName",
            Message::Name { .. } => "Name",
            Message::RunState { .. } => "RunState",
            Message::RunStateAck { .. } => "RunStateAck",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::HeartbeatAck { .. } => "HeartbeatAck",
            Message::Error { .. } => "Error",
            Message::Goodbye => "Goodbye",
            Message::QueryStats { .. } => "QueryStats",
            Message::Stats { .. } => "Stats",
            Message::RdmaConnect { .. } => "RdmaConnect",
            Message::RdmaAccept { .. } => "RdmaAccept",
            Message::Challenge { .. } => "Challenge",
            Message::Auth { .. } => "Auth",
        }
    }
}

/// What an accelerator allows a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Data connections per session.
    pub max_connections_per_session: u32,
    /// Slots per data connection.
    pub max_slots_per_connection: u32,
    /// Input bytes per sample.
    pub max_sample_bytes: u32,
    /// Output bytes per sample.
    pub max_output_bytes: u32,
}

/// The session a frontend asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The workload: input tensors and output size.
    pub workload: WorkloadSpec,
    /// Data connections wanted.
    pub connections: u32,
    /// Slots wanted per connection.
    pub slots_per_connection: u32,
    /// How data connections move samples.
    pub transport: DataTransport,
}

/// The session an accelerator grants (never more than asked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionGrant {
    /// Presented by each data connection in its attach block.
    pub token: SessionToken,
    /// Data connections granted (indices 0..connections).
    pub connections: u32,
    /// Slots per connection granted.
    pub slots_per_connection: u32,
    /// Input slot size, bytes (one sample's input tensors, concatenated).
    pub input_slot_bytes: u32,
    /// Output slot size, bytes.
    pub output_slot_bytes: u32,
    /// The accelerator's largest batch.
    pub max_batch: u32,
    /// The inference backend serving the session.
    pub backend: String,
    /// Workers (devices) serving the session.
    pub workers: u32,
}

/// Run states, as in NVIDIA's harness (WARMUP_START/END, ALL_DONE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunState {
    /// Warm the backend up (acknowledged when done).
    Warmup,
    /// The timed test starts.
    Start,
    /// LoadGen flushed its queries.
    Flush,
    /// The test is over.
    Done,
}

/// Classes of control errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A message arrived out of order or was malformed.
    Protocol,
    /// The request exceeds the accelerator's limits.
    LimitExceeded,
    /// The workload or feature is not supported by this accelerator.
    Unsupported,
    /// The node is shutting down.
    ShuttingDown,
    /// The peer was silent for too long.
    Timeout,
    /// Anything else.
    Internal,
    /// The peer did not prove that it knows the shared secret.
    Unauthorized,
}

/// Appends one framed message to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), WireError> {
    let body = postcard::to_allocvec(msg).map_err(|e| WireError::Encode(e.to_string()))?;
    if body.len() > MAX_CONTROL_FRAME {
        return Err(WireError::TooLarge {
            what: "control message",
            len: body.len() as u64,
            max: MAX_CONTROL_FRAME as u64,
        });
    }
    out.reserve(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Checks that `buf` starts with a whole frame and returns its total length (prefix included).
/// `Incomplete` means read more; a length over the limit is an error before any allocation.
pub fn check(buf: &[u8]) -> Result<usize, WireError> {
    need(buf, 4)?;
    let len = u32_at(buf, 0) as usize;
    if len > MAX_CONTROL_FRAME {
        return Err(WireError::TooLarge { what: "control frame", len: len as u64, max: MAX_CONTROL_FRAME as u64 });
    }
    need(buf, 4 + len)?;
    Ok(4 + len)
}

/// Parses the frame at the start of `buf` (after [`check`]) and returns the message and the bytes
/// consumed. The message must fill its frame exactly.
pub fn parse(buf: &[u8]) -> Result<(Message, usize), WireError> {
    let total = check(buf)?;
    let body = &buf[4..total];
    let (msg, rest) = postcard::take_from_bytes::<Message>(body).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!("{} trailing bytes after a {}", rest.len(), msg.name())));
    }
    Ok((msg, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadSpec;
    use proptest::prelude::*;

    fn framed(msg: &Message) -> Vec<u8> {
        let mut v = Vec::new();
        encode(msg, &mut v).unwrap();
        v
    }

    #[test]
    fn golden_bytes() {
        // The encoding of these messages is the protocol; a change here is a protocol change and
        // must bump PROTOCOL_VERSION. Integers above 127 are LEB128 varints: 300 = ac 02.
        let mut hello = vec![36, 0, 0, 0, 0, 2, b'f', b'e'];
        hello.extend_from_slice(&[7; 32]);
        assert_eq!(framed(&Message::Hello { node: "fe".into(), nonce: [7; 32] }), hello);
        // Challenge = 16 (nonce, proof: raw 32 bytes each); Auth = 17; Unauthorized = 6.
        let mut challenge = vec![65, 0, 0, 0, 16];
        challenge.extend_from_slice(&[1; 32]);
        challenge.extend_from_slice(&[2; 32]);
        assert_eq!(framed(&Message::Challenge { nonce: [1; 32], proof: [2; 32] }), challenge);
        let mut auth = vec![33, 0, 0, 0, 17];
        auth.extend_from_slice(&[3; 32]);
        assert_eq!(framed(&Message::Auth { proof: [3; 32] }), auth);
        assert_eq!(
            framed(&Message::Error { code: ErrorCode::Unauthorized, message: "no".into() }),
            [5, 0, 0, 0, 10, 6, 2, b'n', b'o']
        );
        assert_eq!(framed(&Message::QueryName { request: 7 }), [2, 0, 0, 0, 4, 7]);
        assert_eq!(framed(&Message::RunState { request: 1, state: RunState::Flush }), [3, 0, 0, 0, 6, 1, 2]);
        assert_eq!(framed(&Message::Heartbeat { seq: 300, sent_ns: 1 }), [4, 0, 0, 0, 8, 0xac, 0x02, 1]);
        assert_eq!(
            framed(&Message::HeartbeatAck { seq: u64::MAX, sent_ns: 0 }),
            [12, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0],
            "a u64 takes at most 10 bytes"
        );
        assert_eq!(framed(&Message::Goodbye), [1, 0, 0, 0, 11]);
        assert_eq!(framed(&Message::QueryStats { request: 2 }), [2, 0, 0, 0, 12, 2]);
        assert_eq!(
            framed(&Message::Stats { request: 2, stats: NodeStats { batch_sizes: vec![(1, 3), (16, 300)] } }),
            [8, 0, 0, 0, 13, 2, 2, 1, 3, 16, 0xac, 0x02]
        );
        let grant = Message::Configured(SessionGrant {
            token: SessionToken([1; 16]),
            connections: 2,
            slots_per_connection: 8192,
            input_slot_bytes: 150_528,
            output_slot_bytes: 4,
            max_batch: 64,
            backend: "echo".into(),
            workers: 1,
        });
        let mut expected = vec![0, 0, 0, 0, 3];
        expected.extend_from_slice(&[1; 16]);
        // 8192 = 80 40; 150528 = 80 98 09.
        expected.extend_from_slice(&[2, 0x80, 0x40, 0x80, 0x98, 0x09, 4, 64, 4, b'e', b'c', b'h', b'o', 1]);
        expected[0] = (expected.len() - 4) as u8;
        assert_eq!(framed(&grant), expected);
        let welcome = Message::Welcome {
            name: "a".into(),
            limits: Limits {
                max_connections_per_session: 16,
                max_slots_per_connection: 128,
                max_sample_bytes: 1,
                max_output_bytes: 2,
            },
            heartbeat_interval_ms: 1000,
        };
        // Welcome = 1; "a"; 16, 128 = 80 01, 1, 2; 1000 = e8 07.
        assert_eq!(framed(&welcome), [10, 0, 0, 0, 1, 1, b'a', 16, 0x80, 0x01, 1, 2, 0xe8, 0x07]);
        assert_eq!(framed(&Message::Name { request: 3, name: "n".into() }), [4, 0, 0, 0, 5, 3, 1, b'n']);
        assert_eq!(framed(&Message::RunStateAck { request: 3, state: RunState::Done }), [3, 0, 0, 0, 7, 3, 3]);
    }

    #[test]
    fn a_tensors_workload_golden_bytes() {
        use crate::workload::{DType, OutputKind, TensorSpec};
        let t = |n: &str| TensorSpec { name: n.into(), dtype: DType::F32, shape: vec![2] };
        let req = Message::Configure(SessionRequest {
            workload: WorkloadSpec {
                name: "w".into(),
                inputs: vec![t("x")],
                output_kind: OutputKind::Tensors,
                output_bytes: 8,
                outputs: vec![t("y")],
                generation: None,
            },
            connections: 1,
            slots_per_connection: 4,
            transport: DataTransport::Tcp,
        });
        // Configure = 2; name; inputs [x f32 [2]]; Tensors = 3; 8 bytes; outputs [y f32 [2]];
        // no generation (None = 0; version 6 added it); 1 connection, 4 slots, TCP.
        let body = [2, 1, b'w', 1, 1, b'x', 5, 1, 2, 3, 8, 1, 1, b'y', 5, 1, 2, 0, 1, 4, 0];
        let mut expected = vec![body.len() as u8, 0, 0, 0];
        expected.extend_from_slice(&body);
        assert_eq!(framed(&req), expected);
        // A workload without output tensors still encodes the (empty) list.
        let bert = framed(&Message::Configure(SessionRequest {
            workload: WorkloadSpec::bert(),
            connections: 1,
            slots_per_connection: 4,
            transport: DataTransport::Tcp,
        }));
        assert_eq!(parse(&bert).unwrap().1, bert.len());
    }

    fn endpoint() -> RdmaEndpoint {
        RdmaEndpoint {
            qp_num: 0x11,
            psn: 0xabcdef,
            gid: [0xfe; 16],
            lid: 0,
            mtu: 4096,
            addr: 0x7f00_0000_1000,
            rkey: 0x1234,
            slots: 64,
            slot_bytes: 1560,
        }
    }

    #[test]
    fn rdma_endpoint_golden_bytes() {
        // RdmaConnect = 14; request 4, connection 1; qp 0x11; psn 0xabcdef = ef 9b af 05.
        let mut expected = vec![0, 0, 0, 0, 14, 4, 1, 0x11, 0xef, 0x9b, 0xaf, 0x05];
        expected.extend_from_slice(&[0xfe; 16]);
        // lid 0 (a u16 is a varint too); mtu 4096 = 80 20; addr 0x7f00_0000_1000 = 80 a0 80 80 80 e0 1f.
        expected.extend_from_slice(&[0, 0x80, 0x20, 0x80, 0xa0, 0x80, 0x80, 0x80, 0xe0, 0x1f]);
        // rkey 0x1234 = b4 24; 64 slots; 1560 bytes = 98 0c.
        expected.extend_from_slice(&[0xb4, 0x24, 64, 0x98, 0x0c]);
        expected[0] = (expected.len() - 4) as u8;
        assert_eq!(framed(&Message::RdmaConnect { request: 4, connection: 1, endpoint: endpoint() }), expected);
        let mut accept = vec![0, 0, 0, 0, 15, 4];
        accept.extend_from_slice(&expected[7..]);
        accept[0] = (accept.len() - 4) as u8;
        assert_eq!(framed(&Message::RdmaAccept { request: 4, endpoint: endpoint() }), accept);
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = vec![
            Message::Hello { node: "frontend-1".into(), nonce: [9; 32] },
            Message::Challenge { nonce: [1; 32], proof: [0xff; 32] },
            Message::Auth { proof: [0x80; 32] },
            Message::Welcome {
                name: "acc-0".into(),
                limits: Limits {
                    max_connections_per_session: 8,
                    max_slots_per_connection: 8192,
                    max_sample_bytes: 1 << 20,
                    max_output_bytes: 4096,
                },
                heartbeat_interval_ms: 1000,
            },
            Message::Configure(SessionRequest {
                workload: WorkloadSpec::bert(),
                connections: 2,
                slots_per_connection: 16,
                transport: DataTransport::Rdma,
            }),
            Message::RdmaConnect { request: 4, connection: 1, endpoint: endpoint() },
            Message::RdmaAccept { request: 4, endpoint: endpoint() },
            Message::Name { request: 3, name: "acc-0".into() },
            Message::RunStateAck { request: 3, state: RunState::Warmup },
            Message::HeartbeatAck { seq: u64::MAX, sent_ns: 5 },
            Message::Error { code: ErrorCode::LimitExceeded, message: "too many slots".into() },
            Message::Stats { request: 9, stats: NodeStats { batch_sizes: vec![(64, u64::MAX)] } },
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            encode(m, &mut stream).unwrap();
        }
        let mut at = 0;
        for m in &msgs {
            let (got, used) = parse(&stream[at..]).unwrap();
            assert_eq!(&got, m);
            at += used;
        }
        assert_eq!(at, stream.len());
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let buf = [0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(check(&buf), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn unknown_variant_and_trailing_bytes_are_errors() {
        assert!(matches!(parse(&[1, 0, 0, 0, 99]), Err(WireError::Decode(_))));
        assert!(matches!(parse(&[2, 0, 0, 0, 11, 0]), Err(WireError::Decode(_))));
        assert_eq!(parse(&[5, 0, 0, 0, 8]), Err(WireError::Incomplete { needed: 4 }));
    }

    #[test]
    fn a_string_length_larger_than_the_frame_does_not_allocate() {
        // Hello with a declared string length of 2^63 inside a small frame.
        let buf = [11, 0, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert!(matches!(parse(&buf), Err(WireError::Decode(_))));
        // A varint longer than its type allows (a u32 of six bytes) is refused, not wrapped.
        let buf = [7, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(parse(&buf), Err(WireError::Decode(_))));
    }

    #[test]
    fn an_old_peer_is_told_the_versions() {
        // A v5 peer (no generative workloads) never reaches the message decoder: its preamble is
        // refused first.
        use crate::wire::preamble::{Preamble, Role};
        let mut old = Preamble::ours(Role::Control).encode();
        old[4] = 5;
        let err = Preamble::parse(&old).unwrap_err();
        assert_eq!(err.to_string(), "protocol version mismatch: the peer speaks v5, this node speaks v6");
    }

    proptest! {
        #[test]
        fn messages_with_any_values_round_trip(
            seq in any::<u64>(),
            request in any::<u32>(),
            name in ".{0,40}",
            sizes in proptest::collection::vec((any::<u32>(), any::<u64>()), 0..20),
            qp in any::<(u32, u32, u16, u32, u64, u32)>(),
        ) {
            let (qp_num, psn, lid, mtu, addr, rkey) = qp;
            let endpoint = RdmaEndpoint { qp_num, psn, gid: [3; 16], lid, mtu, addr, rkey, slots: request, slot_bytes: mtu };
            let msgs = [
                Message::Heartbeat { seq, sent_ns: !seq },
                Message::Name { request, name: name.clone() },
                Message::Error { code: ErrorCode::Internal, message: name },
                Message::Stats { request, stats: NodeStats { batch_sizes: sizes } },
                Message::RdmaAccept { request, endpoint },
            ];
            for m in msgs {
                let f = framed(&m);
                prop_assert_eq!(parse(&f), Ok((m, f.len())));
            }
        }

        #[test]
        fn arbitrary_frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = (body.len() as u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&body);
            // Whatever decodes encodes into a frame that decodes to the same message (not always
            // the same bytes: a decoder accepts a varint with redundant continuation bytes).
            if let Ok((msg, used)) = parse(&buf) {
                prop_assert_eq!(used, buf.len());
                let again = framed(&msg);
                prop_assert!(again.len() <= buf.len(), "the encoder's varints are minimal");
                prop_assert_eq!(parse(&again), Ok((msg, again.len())));
            }
        }
    }
}
