//! Data frames: a fixed 24-byte header followed by `len` raw payload bytes.
//!
//! ```text
//! offset size field
//! 0      4    slot       u32  slot index in the receiver's ring (what an RDMA immediate carries)
//! 4      1    kind       u8   1 request, 2 response, 3 error, 4 first token
//! 5      1    flags      u8   reserved, 0
//! 6      2    reserved   u16  0
//! 8      8    sample_id  u64  the frontend's correlation tag, echoed in the response
//! 16     4    len        u32  payload bytes that follow
//! 20     4    aux        u32  request: QSL index (informational); response and first token: the
//!                             accelerator's residence time in µs (request read → frame queued);
//!                             error: ErrorCode
//! ```
//! A request is "write these bytes into slot N of your ring"; the response travels back into slot
//! N of the sender's ring, exactly like NVIDIA's RDMA write-with-immediate design. A slot is busy
//! from its request until its response: a second request into a busy slot is a protocol error.
//!
//! Generative (LLM) workloads: a request carries the prompt's token ids at their true length (no
//! padding: `len` ≤ the slot, a multiple of 4); the accelerator answers twice into the same slot:
//! a first-token frame (kind 4, the first output token's int32) as soon as that token exists, then
//! the response (every output token id, int32 LE; their count is `len / 4`) when the sequence
//! ends. The slot stays busy until the response.

use super::{WireError, need, u16_at, u32_at, u64_at};

/// Length of a data frame header.
pub const DATA_HEADER_LEN: usize = 24;

/// What a data frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Frontend → accelerator: a sample's input tensor bytes.
    Request = 1,
    /// Accelerator → frontend: the sample's output bytes.
    Response = 2,
    /// Accelerator → frontend: the sample failed; `aux` is a [`DataErrorCode`], the payload a
    /// UTF-8 message.
    Error = 3,
    /// Accelerator → frontend: a generative sample's first output token (int32 LE), sent as soon
    /// as it exists; the response follows into the same slot.
    FirstToken = 4,
}

/// Why an accelerator failed a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DataErrorCode {
    /// The accelerator's queues are full.
    Overloaded = 1,
    /// The inference backend failed on the batch.
    BackendFailed = 2,
    /// The accelerator is shutting down.
    ShuttingDown = 3,
    /// Any other code (from a newer peer).
    Unknown = 0xffff_ffff,
}

impl DataErrorCode {
    /// Decodes `aux` of an error frame.
    pub fn from_u32(v: u32) -> DataErrorCode {
        match v {
            1 => DataErrorCode::Overloaded,
            2 => DataErrorCode::BackendFailed,
            3 => DataErrorCode::ShuttingDown,
            _ => DataErrorCode::Unknown,
        }
    }
}

/// A decoded data frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Slot index in the receiver's ring.
    pub slot: u32,
    /// Frame kind.
    pub kind: FrameKind,
    /// The frontend's correlation tag.
    pub sample_id: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// Kind-specific word (see the module docs).
    pub aux: u32,
}

impl DataHeader {
    /// A request header.
    pub fn request(slot: u32, sample_id: u64, len: u32, qsl_index: u32) -> DataHeader {
        DataHeader { slot, kind: FrameKind::Request, sample_id, len, aux: qsl_index }
    }

    /// A response header; `residence_us` is how long the sample spent in the accelerator
    /// (saturating at u32::MAX µs), which lets the frontend split a round trip into stages.
    pub fn response(slot: u32, sample_id: u64, len: u32, residence_us: u32) -> DataHeader {
        DataHeader { slot, kind: FrameKind::Response, sample_id, len, aux: residence_us }
    }

    /// A first-token header (generative workloads): `len` bytes of the first token(s);
    /// `residence_us` is the accelerator's time to first token.
    pub fn first_token(slot: u32, sample_id: u64, len: u32, residence_us: u32) -> DataHeader {
        DataHeader { slot, kind: FrameKind::FirstToken, sample_id, len, aux: residence_us }
    }

    /// An error header.
    pub fn error(slot: u32, sample_id: u64, code: DataErrorCode, len: u32) -> DataHeader {
        DataHeader { slot, kind: FrameKind::Error, sample_id, len, aux: code as u32 }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; DATA_HEADER_LEN] {
        let mut b = [0u8; DATA_HEADER_LEN];
        b[0..4].copy_from_slice(&self.slot.to_le_bytes());
        b[4] = self.kind as u8;
        b[8..16].copy_from_slice(&self.sample_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.aux.to_le_bytes());
        b
    }

    /// Checks and parses the header at the start of `buf`. `max_len` bounds the payload length
    /// this receiver accepts (its slot size), so no length is trusted before it is checked.
    /// `Incomplete` means read more.
    pub fn parse(buf: &[u8], max_len: u32) -> Result<DataHeader, WireError> {
        need(buf, DATA_HEADER_LEN)?;
        let kind = match buf[4] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            3 => FrameKind::Error,
            4 => FrameKind::FirstToken,
            other => return Err(WireError::UnknownKind(other)),
        };
        if buf[5] != 0 {
            return Err(WireError::Reserved { field: "data.flags", value: buf[5] as u64 });
        }
        let reserved = u16_at(buf, 6);
        if reserved != 0 {
            return Err(WireError::Reserved { field: "data.reserved", value: reserved as u64 });
        }
        let len = u32_at(buf, 16);
        if len > max_len {
            return Err(WireError::TooLarge { what: "data frame payload", len: len as u64, max: max_len as u64 });
        }
        Ok(DataHeader { slot: u32_at(buf, 0), kind, sample_id: u64_at(buf, 8), len, aux: u32_at(buf, 20) })
    }

    /// Checks that a whole frame (header and payload) is in `buf` and returns the header and the
    /// payload slice. `Incomplete` means read more.
    pub fn parse_frame(buf: &[u8], max_len: u32) -> Result<(DataHeader, &[u8]), WireError> {
        let h = DataHeader::parse(buf, max_len)?;
        let end = DATA_HEADER_LEN + h.len as usize;
        need(buf, end)?;
        Ok((h, &buf[DATA_HEADER_LEN..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_request() {
        let h = DataHeader::request(0x0102_0304, 0x1122_3344_5566_7788, 150_528, 42);
        assert_eq!(
            h.encode(),
            [
                0x04, 0x03, 0x02, 0x01, // slot
                0x01, 0x00, 0x00, 0x00, // kind, flags, reserved
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // sample id
                0x00, 0x4c, 0x02, 0x00, // len 150528
                0x2a, 0x00, 0x00, 0x00, // aux: QSL index 42
            ]
        );
    }

    #[test]
    fn golden_response_and_error() {
        assert_eq!(
            DataHeader::response(7, 9, 4, 0x0102).encode(),
            [7, 0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0x02, 0x01, 0, 0]
        );
        assert_eq!(
            DataHeader::error(1, 2, DataErrorCode::Overloaded, 0).encode(),
            [1, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            DataHeader::first_token(5, 6, 4, 0x0a0b).encode(),
            [5, 0, 0, 0, 4, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0x0b, 0x0a, 0, 0]
        );
    }

    #[test]
    fn rejects_malformed_headers() {
        let good = DataHeader::response(1, 2, 8, 0).encode();
        let mut bad_kind = good;
        bad_kind[4] = 9;
        assert_eq!(DataHeader::parse(&bad_kind, 64), Err(WireError::UnknownKind(9)));
        let mut bad_flags = good;
        bad_flags[5] = 1;
        assert!(matches!(DataHeader::parse(&bad_flags, 64), Err(WireError::Reserved { field: "data.flags", .. })));
        let mut bad_reserved = good;
        bad_reserved[7] = 1;
        assert!(matches!(
            DataHeader::parse(&bad_reserved, 64),
            Err(WireError::Reserved { field: "data.reserved", .. })
        ));
        assert!(matches!(DataHeader::parse(&good, 4), Err(WireError::TooLarge { len: 8, max: 4, .. })));
        assert_eq!(DataHeader::parse(&good[..10], 64), Err(WireError::Incomplete { needed: 14 }));
    }

    #[test]
    fn frame_needs_its_payload() {
        let mut buf = DataHeader::response(3, 4, 5, 0).encode().to_vec();
        buf.extend_from_slice(&[1, 2, 3]);
        assert_eq!(DataHeader::parse_frame(&buf, 64), Err(WireError::Incomplete { needed: 2 }));
        buf.extend_from_slice(&[4, 5, 99]);
        let (h, p) = DataHeader::parse_frame(&buf, 64).unwrap();
        assert_eq!((h.slot, h.sample_id, p), (3, 4, &[1u8, 2, 3, 4, 5][..]));
    }

    proptest! {
        #[test]
        fn round_trip(slot: u32, id: u64, len in 0u32..1_000_000, aux: u32, kind in 1u8..=4) {
            let kind = match kind {
                1 => FrameKind::Request,
                2 => FrameKind::Response,
                3 => FrameKind::Error,
                _ => FrameKind::FirstToken,
            };
            let h = DataHeader { slot, kind, sample_id: id, len, aux };
            prop_assert_eq!(DataHeader::parse(&h.encode(), u32::MAX), Ok(h));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), max: u32) {
            let _ = DataHeader::parse_frame(&bytes, max);
        }
    }
}
