//! Control-channel authentication: both nodes prove they know a shared secret before anything
//! else is said (no name, limits or session is given to a peer that has not).
//!
//! ```text
//! frontend                                          accelerator
//!   Hello {node, Nc}                     ───────▶
//!                                        ◀───────   Challenge {Ns, HMAC(K, "qdl server" ‖ Nc ‖ Ns)}
//!   checks the accelerator's proof
//!   Auth {HMAC(K, "qdl client" ‖ Ns ‖ Nc)} ─────▶   checks the frontend's proof
//!                                        ◀───────   Welcome {name, limits}
//! ```
//!
//! `Nc` and `Ns` are fresh 32-byte nonces from the OS, so a recorded exchange is worth nothing:
//! replayed to a new accelerator, the old proof answers the wrong `Ns`; an impostor accelerator
//! cannot answer a new `Nc`. The role labels keep one side's proof from serving as the other's.
//! HMAC-SHA256; proofs are compared in constant time.
//!
//! The secret (at least 16 bytes) comes from a file (`[auth] secret_file`, or `QDL_SECRET_FILE`)
//! or the environment (`QDL_SECRET`), never from the command line (it would show in `ps`). With
//! `[auth] required = false` and no secret, the key is empty: such nodes talk only to each other,
//! never to nodes that have a secret.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Nonce length, bytes.
pub const NONCE_LEN: usize = 32;
/// Proof length (HMAC-SHA256), bytes.
pub const PROOF_LEN: usize = 32;
/// The shortest secret accepted, bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// The environment variable that holds the secret itself.
pub const SECRET_ENV: &str = "QDL_SECRET";
/// The environment variable that names the secret file (overrides `[auth] secret_file`).
pub const SECRET_FILE_ENV: &str = "QDL_SECRET_FILE";

/// Errors getting the secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No secret is configured and authentication is required.
    #[error(
        "no shared secret for the control channel: set [auth] secret_file (or {SECRET_FILE_ENV}) to a file \
         holding at least {MIN_SECRET_LEN} bytes, or {SECRET_ENV}; the same on every node \
         (for a closed lab only: [auth] required = false)"
    )]
    NoSecret,
    /// `QDL_SECRET` is set but empty and nothing else names a secret (e.g. compose's
    /// `${QDL_SECRET:-}` on a host where it was never exported).
    #[error(
        "{SECRET_ENV} is set but empty: export the shared secret (at least {MIN_SECRET_LEN} bytes, the same on \
         every node) in {SECRET_ENV}, or name a file holding it in {SECRET_FILE_ENV}"
    )]
    EmptyEnv,
    /// The secret is shorter than [`MIN_SECRET_LEN`].
    #[error("the shared secret from {from} is {len} bytes; at least {MIN_SECRET_LEN} are needed")]
    TooShort {
        /// Where it came from.
        from: String,
        /// Its length.
        len: usize,
    },
    /// The secret file could not be read.
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A shared secret (its bytes are never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret of these bytes (surrounding whitespace, e.g. a file's final newline, removed).
    pub fn new(bytes: &[u8], from: &str) -> Result<Secret, AuthError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_LEN {
            return Err(AuthError::TooShort { from: from.to_string(), len: trimmed.len() });
        }
        Ok(Secret(trimmed.to_vec()))
    }

    /// The empty key of nodes without a secret (`[auth] required = false`).
    pub fn none() -> Secret {
        Secret(Vec::new())
    }

    /// Whether this is the empty key.
    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads the secret: `QDL_SECRET`, else `QDL_SECRET_FILE`, else `file`; none of them is an
    /// error when `required` (a `QDL_SECRET` that is set but empty even when not), else the
    /// empty key.
    pub fn load(file: Option<&Path>, required: bool) -> Result<Secret, AuthError> {
        let env = std::env::var_os(SECRET_ENV);
        if let Some(v) = env.as_ref().filter(|v| !v.is_empty()) {
            return Secret::new(v.as_encoded_bytes(), SECRET_ENV);
        }
        let env_file = std::env::var_os(SECRET_FILE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        match env_file.as_deref().or(file) {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| AuthError::Read { path: path.into(), source })?;
                Secret::new(&bytes, &path.display().to_string())
            }
            // Set but empty: someone meant to give a secret and did not (never the empty key).
            None if env.is_some() => Err(AuthError::EmptyEnv),
            None if required => Err(AuthError::NoSecret),
            None => Ok(Secret::none()),
        }
    }

    /// The proof of `role` ("qdl server" or "qdl client") over two nonces.
    pub fn proof(&self, role: &str, first: &[u8; NONCE_LEN], second: &[u8; NONCE_LEN]) -> [u8; PROOF_LEN] {
        let mut mac = self.mac();
        mac.update(role.as_bytes());
        mac.update(first);
        mac.update(second);
        mac.finalize().into_bytes().into()
    }

    /// Whether `proof` is `role`'s proof over the nonces (constant-time comparison).
    pub fn verify(&self, role: &str, first: &[u8; NONCE_LEN], second: &[u8; NONCE_LEN], proof: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(role.as_bytes());
        mac.update(first);
        mac.update(second);
        mac.verify_slice(proof).is_ok()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, the empty one included.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

/// The server's role label.
pub const SERVER: &str = "qdl server";
/// The client's role label.
pub const CLIENT: &str = "qdl client";

/// A fresh nonce from the OS's random source. Should that ever fail (getrandom(2) does not on
/// the kernels qdl supports), the nonce is a hash of the time, the process and a counter:
/// unique, if predictable.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    if getrandom::fill(&mut n).is_ok() {
        return n;
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(crate::time::Nanos::now().0.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_key_role_and_nonces() {
        let k = Secret::new(b"0123456789abcdef\n", "test").unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let p = k.proof(SERVER, &a, &b);
        assert!(k.verify(SERVER, &a, &b, &p));
        assert!(!k.verify(CLIENT, &a, &b, &p), "a server proof is not a client proof");
        assert!(!k.verify(SERVER, &b, &a, &p), "nonce order matters");
        assert!(!k.verify(SERVER, &a, &[3; 32], &p), "a new nonce needs a new proof");
        let other = Secret::new(b"0123456789abcdeF", "test").unwrap();
        assert!(!other.verify(SERVER, &a, &b, &p));
        assert!(!Secret::none().verify(SERVER, &a, &b, &p));
        assert!(!k.verify(SERVER, &a, &b, &p[..31]), "a short proof fails");
        assert_ne!(nonce(), nonce());
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(matches!(Secret::new(b"short", "x"), Err(AuthError::TooShort { len: 5, .. })));
        let s = Secret::new(b"  a secret of 22 bytes  ", "x").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(20 bytes)");
        if std::env::var_os(SECRET_ENV).is_some() || std::env::var_os(SECRET_FILE_ENV).is_some() {
            return; // the environment's secret would win
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "a secret of 22 bytes\n").unwrap();
        assert_eq!(Secret::load(Some(&f), true).unwrap(), s);
        let e = Secret::load(Some(&dir.path().join("missing")), true).unwrap_err();
        assert!(e.to_string().contains("cannot read the secret file"), "{e}");
        assert!(matches!(Secret::load(None, true), Err(AuthError::NoSecret)));
        assert!(Secret::load(None, false).unwrap().is_none());
    }
}
