//! The wire protocol. Every connection starts with a fixed-layout [`preamble`]; a control
//! connection then carries length-prefixed postcard [`message`]s, a data connection a fixed
//! [`attach`] block followed by fixed-header [`data`] frames. All integers are little-endian.
//! The full byte layout is in `docs/protocol.md`; golden byte tests pin it.

pub mod attach;
pub mod data;
pub mod message;
pub mod preamble;

/// The protocol version this build speaks. Peers with another version are refused at the preamble.
pub const PROTOCOL_VERSION: u16 = 6;

/// The magic bytes that open every qdl connection.
pub const MAGIC: [u8; 4] = *b"QDLN";

/// Errors decoding or encoding wire data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// More bytes are needed; not an error of the peer: read more and try again.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// At least this many more bytes are needed.
        needed: usize,
    },
    /// The connection does not start with qdl's magic bytes.
    #[error("not a qdl peer: bad magic {found:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: the peer speaks v{peer}, this node speaks v{ours}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        peer: u16,
    },
    /// The preamble names a role this node does not know.
    #[error("unknown connection role {0}")]
    UnknownRole(u8),
    /// A data frame names an unknown kind.
    #[error("unknown data frame kind {0}")]
    UnknownKind(u8),
    /// A field that must be zero is not (a corrupt stream, or a newer peer misbehaving).
    #[error("field {field} is {value:#x}; it must be 0")]
    Reserved {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A frame's declared length exceeds what this connection allows.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A control message could not be decoded.
    #[error("malformed control message: {0}")]
    Decode(String),
    /// A control message could not be encoded (e.g. larger than the frame limit).
    #[error("cannot encode control message: {0}")]
    Encode(String),
}

impl WireError {
    /// Whether this only means "read more".
    pub fn is_incomplete(&self) -> bool {
        matches!(self, WireError::Incomplete { .. })
    }
}

/// `check` helper: errors with `Incomplete` unless `buf` holds at least `len` bytes.
pub(crate) fn need(buf: &[u8], len: usize) -> Result<(), WireError> {
    if buf.len() < len { Err(WireError::Incomplete { needed: len - buf.len() }) } else { Ok(()) }
}

pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}
