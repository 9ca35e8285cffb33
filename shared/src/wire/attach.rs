//! How a data connection joins a session: after the preambles, the frontend sends a fixed 24-byte
//! attach block and the accelerator answers with an 8-byte status. The accelerator allocates
//! nothing for the connection before the token and index check out.
//!
//! ```text
//! attach (frontend → accelerator)        reply (accelerator → frontend)
//! 0   16  session token                  0  4  status (u32, 0 = accepted, see AttachStatus)
//! 16  4   connection index (u32)         4  4  reserved, 0
//! 20  4   reserved, 0
//! ```

use super::{WireError, need, u32_at};

/// Length of the attach block.
pub const ATTACH_LEN: usize = 24;
/// Length of the attach reply.
pub const ATTACH_REPLY_LEN: usize = 8;

/// A session token: 16 random bytes granted over the control connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SessionToken(pub [u8; 16]);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the whole token into logs.
        write!(f, "SessionToken({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl SessionToken {
    /// A fresh unpredictable token (from the OS's random source, with a time-seeded hash as a
    /// fallback where /dev/urandom is unavailable).
    pub fn random() -> SessionToken {
        let mut b = [0u8; 16];
        let ok =
            std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_ok();
        if !ok {
            let t = crate::time::Nanos::now().0;
            let lo = xxhash_rust::xxh3::xxh3_64_with_seed(&t.to_le_bytes(), std::process::id() as u64);
            let hi = xxhash_rust::xxh3::xxh3_64_with_seed(&lo.to_le_bytes(), t);
            b[..8].copy_from_slice(&lo.to_le_bytes());
            b[8..].copy_from_slice(&hi.to_le_bytes());
        }
        SessionToken(b)
    }
}

/// The attach block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attach {
    /// The session's token.
    pub token: SessionToken,
    /// Which of the session's connections this is (0-based).
    pub connection: u32,
}

impl Attach {
    /// Encodes the block.
    pub fn encode(&self) -> [u8; ATTACH_LEN] {
        let mut b = [0u8; ATTACH_LEN];
        b[..16].copy_from_slice(&self.token.0);
        b[16..20].copy_from_slice(&self.connection.to_le_bytes());
        b
    }

    /// Checks and parses the block.
    pub fn parse(buf: &[u8]) -> Result<Attach, WireError> {
        need(buf, ATTACH_LEN)?;
        let reserved = u32_at(buf, 20);
        if reserved != 0 {
            return Err(WireError::Reserved { field: "attach.reserved", value: reserved as u64 });
        }
        Ok(Attach { token: SessionToken(buf[..16].try_into().expect("16 bytes")), connection: u32_at(buf, 16) })
    }
}

/// The accelerator's answer to an attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachStatus {
    /// The connection joined the session.
    Accepted = 0,
    /// No live session has this token.
    UnknownSession = 1,
    /// The connection index is outside the session's granted range.
    BadConnectionIndex = 2,
    /// That connection index is already attached.
    AlreadyAttached = 3,
    /// The accelerator is shutting down.
    ShuttingDown = 4,
    /// The accelerator's connection limits (`[limits]`) are reached (protocol version 5).
    LimitReached = 5,
    /// A status this build does not know.
    Unknown = 0xffff,
}

impl AttachStatus {
    /// Encodes the reply.
    pub fn encode(self) -> [u8; ATTACH_REPLY_LEN] {
        let mut b = [0u8; ATTACH_REPLY_LEN];
        b[..4].copy_from_slice(&(self as u32).to_le_bytes());
        b
    }

    /// Checks and parses the reply.
    pub fn parse(buf: &[u8]) -> Result<AttachStatus, WireError> {
        need(buf, ATTACH_REPLY_LEN)?;
        Ok(match u32_at(buf, 0) {
            0 => AttachStatus::Accepted,
            1 => AttachStatus::UnknownSession,
            2 => AttachStatus::BadConnectionIndex,
            3 => AttachStatus::AlreadyAttached,
            4 => AttachStatus::ShuttingDown,
            5 => AttachStatus::LimitReached,
            _ => AttachStatus::Unknown,
        })
    }

    /// A sentence for logs and errors.
    pub fn describe(self) -> &'static str {
        match self {
            AttachStatus::Accepted => "accepted",
            AttachStatus::UnknownSession => "no live session has this token",
            AttachStatus::BadConnectionIndex => "connection index outside the granted range",
            AttachStatus::AlreadyAttached => "connection index already attached",
            AttachStatus::ShuttingDown => "accelerator is shutting down",
            AttachStatus::LimitReached => "accelerator's connection limits are reached (see its [limits])",
            AttachStatus::Unknown => "unknown status",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_attach_and_reply() {
        let a = Attach { token: SessionToken([0xab; 16]), connection: 3 };
        let mut expected = vec![0xab; 16];
        expected.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(a.encode().to_vec(), expected);
        assert_eq!(Attach::parse(&a.encode()), Ok(a));
        assert_eq!(AttachStatus::AlreadyAttached.encode(), [3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(AttachStatus::parse(&[0; 8]), Ok(AttachStatus::Accepted));
        assert_eq!(AttachStatus::LimitReached.encode(), [5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(AttachStatus::parse(&[5, 0, 0, 0, 0, 0, 0, 0]), Ok(AttachStatus::LimitReached));
        assert_eq!(Attach::parse(&[0; 23]), Err(WireError::Incomplete { needed: 1 }));
    }

    #[test]
    fn tokens_differ_and_do_not_leak_into_logs() {
        let (a, b) = (SessionToken::random(), SessionToken::random());
        assert_ne!(a, b);
        assert!(format!("{a:?}").len() < 24);
    }
}
