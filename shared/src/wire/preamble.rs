//! The 8-byte preamble that opens every connection, in both directions.
//!
//! ```text
//! offset size field
//! 0      4    magic "QDLN"
//! 4      2    protocol version (u16 LE)
//! 6      1    role: 1 control, 2 data
//! 7      1    flags: bit 0 = a TLS handshake follows (control connections); other bits 0
//! ```
//! It has a fixed layout in every protocol version, so a peer of another version is told so
//! clearly instead of failing somewhere inside a message decoder.

use super::{MAGIC, PROTOCOL_VERSION, WireError, need, u16_at};

/// Length of the preamble in bytes.
pub const PREAMBLE_LEN: usize = 8;

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The control connection of a session (one per accelerator).
    Control = 1,
    /// A data connection carrying sample frames.
    Data = 2,
}

/// A decoded preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// The sender's protocol version.
    pub version: u16,
    /// The connection's role.
    pub role: Role,
    /// A TLS handshake follows the preamble (control connections with `[tls] enabled`).
    pub tls: bool,
}

impl Preamble {
    /// Our own preamble for `role`.
    pub fn ours(role: Role) -> Preamble {
        Preamble { version: PROTOCOL_VERSION, role, tls: false }
    }

    /// Our preamble for a control connection that continues in TLS.
    pub fn ours_tls() -> Preamble {
        Preamble { version: PROTOCOL_VERSION, role: Role::Control, tls: true }
    }

    /// Encodes into 8 bytes.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let v = self.version.to_le_bytes();
        [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], self.role as u8, self.tls as u8]
    }

    /// Checks and parses a preamble, including the version: a peer of another version is an
    /// error here. `Incomplete` means read more.
    pub fn parse(buf: &[u8]) -> Result<Preamble, WireError> {
        need(buf, PREAMBLE_LEN)?;
        let magic: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        let version = u16_at(buf, 4);
        if version != PROTOCOL_VERSION {
            return Err(WireError::VersionMismatch { ours: PROTOCOL_VERSION, peer: version });
        }
        let role = match buf[6] {
            1 => Role::Control,
            2 => Role::Data,
            other => return Err(WireError::UnknownRole(other)),
        };
        if buf[7] & !1 != 0 || (buf[7] != 0 && role != Role::Control) {
            return Err(WireError::Reserved { field: "preamble.flags", value: buf[7] as u64 });
        }
        Ok(Preamble { version, role, tls: buf[7] & 1 == 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes() {
        assert_eq!(Preamble::ours(Role::Control).encode(), [0x51, 0x44, 0x4c, 0x4e, 0x06, 0x00, 0x01, 0x00]);
        assert_eq!(Preamble::ours(Role::Data).encode(), [0x51, 0x44, 0x4c, 0x4e, 0x06, 0x00, 0x02, 0x00]);
    }

    #[test]
    fn version_mismatch_is_named() {
        let mut b = Preamble::ours(Role::Control).encode();
        b[4] = 7;
        let err = Preamble::parse(&b).unwrap_err();
        assert_eq!(err, WireError::VersionMismatch { ours: PROTOCOL_VERSION, peer: 7 });
        assert!(err.to_string().contains("v7"), "{err}");
    }

    #[test]
    fn incomplete_bad_magic_role_reserved() {
        let b = Preamble::ours(Role::Data).encode();
        assert_eq!(Preamble::parse(&b[..5]), Err(WireError::Incomplete { needed: 3 }));
        assert!(matches!(Preamble::parse(b"GET / HTTP/1.1"), Err(WireError::BadMagic { .. })));
        let mut r = b;
        r[6] = 9;
        assert_eq!(Preamble::parse(&r), Err(WireError::UnknownRole(9)));
        let mut z = b;
        z[7] = 1;
        assert!(matches!(Preamble::parse(&z), Err(WireError::Reserved { .. })));
        assert_eq!(Preamble::parse(&b), Ok(Preamble::ours(Role::Data)));
        // The TLS flag: control connections only, and no other flag bit.
        let t = Preamble::ours_tls().encode();
        assert_eq!(t[7], 1);
        assert_eq!(Preamble::parse(&t), Ok(Preamble::ours_tls()));
        let mut u = t;
        u[7] = 3;
        assert!(matches!(Preamble::parse(&u), Err(WireError::Reserved { .. })));
    }
}
