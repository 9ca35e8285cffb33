//! systemd's readiness protocol (sd_notify), without libsystemd: when `NOTIFY_SOCKET` is set,
//! state lines such as `READY=1` are sent as one datagram to that unix socket (a path, or an
//! abstract name written with a leading `@`). Without the variable it does nothing.

use std::os::unix::net::UnixDatagram;

/// Errors talking to systemd's notification socket.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The socket could not be reached.
    #[error("cannot notify systemd at {socket}: {source}")]
    Io {
        /// The socket.
        socket: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Sends `state` (e.g. "READY=1\nSTATUS=serving") to systemd if it supervises this process.
/// Returns whether a notification was sent.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let socket = socket.to_string_lossy().into_owned();
    let io = |source| NotifyError::Io { socket: socket.clone(), source };
    let sock = UnixDatagram::unbound().map_err(io)?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
        sock.send_to_addr(state.as_bytes(), &addr).map_err(io)?;
    } else {
        sock.send_to(state.as_bytes(), &socket).map_err(io)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_the_state_to_the_socket_named_by_notify_socket() {
        let dir = std::env::temp_dir().join(format!("qdl-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY (env): this test is the only one in the crate that touches NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1\nSTATUS=serving").unwrap());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        assert!(!notify("READY=1").unwrap(), "without NOTIFY_SOCKET nothing is sent");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
