//! systemd's notification protocol (sd_notify(3)), without libsystemd: when `NOTIFY_SOCKET` is
//! set, state lines such as `READY=1` are sent as one datagram to that unix socket (a path, or an
//! abstract name written with a leading `@`). Without the variable it does nothing.
//!
//! The service watchdog (sd_watchdog_enabled(3)): with `WatchdogSec=` systemd sets
//! `WATCHDOG_USEC` (and `WATCHDOG_PID`) and restarts the service when no `WATCHDOG=1` arrives
//! within that time. [`Watchdog`] reads the variables (sans-IO: [`Watchdog::from_vars`] takes
//! them as arguments); [`run_watchdog`] is the ping task, to be spawned ON the event loop whose
//! liveness it vouches for (a thread of its own would keep pinging while the loop is wedged). It
//! pings every half timeout, and only while the other loops it probes ([`LoopProbes`]) answer.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Errors talking to systemd's notification socket or reading its watchdog settings.
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
    /// `WATCHDOG_USEC` or `WATCHDOG_PID` is not a positive integer.
    #[error("invalid {var}={value:?} from systemd: not a positive integer (the watchdog is off)")]
    BadWatchdogVar {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
}

/// Where notifications go: the socket named by `NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// The notifier of `NOTIFY_SOCKET`, or `None` when systemd does not supervise this process.
    pub fn from_env() -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET").map(|s| Notifier::new(s.to_string_lossy().into_owned()))
    }

    /// A notifier for `socket`: a path, or an abstract socket name after a leading `@`.
    pub fn new(socket: impl Into<String>) -> Notifier {
        Notifier { socket: socket.into() }
    }

    /// Sends `state` (e.g. "READY=1\nSTATUS=serving") as one datagram; waits while the
    /// socket's queue is full.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        self.send_datagram(state, false)
    }

    /// Sends `state` without waiting: fails (`WouldBlock`) when the socket's queue is full, as
    /// it may be when systemd is busy. For an event loop's periodic pings.
    pub fn try_send(&self, state: &str) -> Result<(), NotifyError> {
        self.send_datagram(state, true)
    }

    fn send_datagram(&self, state: &str, nonblocking: bool) -> Result<(), NotifyError> {
        let io = |source| NotifyError::Io { socket: self.socket.clone(), source };
        let sock = UnixDatagram::unbound().map_err(io)?;
        sock.set_nonblocking(nonblocking).map_err(io)?;
        if let Some(name) = self.socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
            sock.send_to_addr(state.as_bytes(), &addr).map_err(io)?;
        } else {
            sock.send_to(state.as_bytes(), &self.socket).map_err(io)?;
        }
        Ok(())
    }
}

/// Sends `state` (e.g. "READY=1\nSTATUS=serving") to systemd if it supervises this process.
/// Returns whether a notification was sent.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(n) = Notifier::from_env() else { return Ok(false) };
    n.send(state)?;
    Ok(true)
}

/// systemd's watchdog for this process, as sd_watchdog_enabled(3) decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    timeout: Duration,
}

impl Watchdog {
    /// The watchdog systemd asked for in this process's environment, if any.
    pub fn from_env() -> Result<Option<Watchdog>, NotifyError> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Watchdog::from_vars(usec.as_deref(), pid.as_deref(), std::process::id())
    }

    /// The watchdog for `WATCHDOG_USEC` = `usec` and `WATCHDOG_PID` = `pid` in the process
    /// `own_pid`: none without `usec`, or when `pid` names another process (the variables were
    /// inherited from a parent); `pid` absent means this process (as in libsystemd).
    pub fn from_vars(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Result<Option<Watchdog>, NotifyError> {
        let Some(usec) = usec else { return Ok(None) };
        let positive = |var, v: &str| match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(NotifyError::BadWatchdogVar { var, value: v.to_string() }),
        };
        let usec = positive("WATCHDOG_USEC", usec)?;
        if let Some(pid) = pid
            && positive("WATCHDOG_PID", pid)? != u64::from(own_pid)
        {
            return Ok(None);
        }
        Ok(Some(Watchdog { timeout: Duration::from_micros(usec) }))
    }

    /// The watchdog systemd asked for and the socket to ping, for a service's start-up: `None`
    /// when there is none, or when the variables are unusable (logged: the pings are then off).
    pub fn requested() -> Option<(Watchdog, Notifier)> {
        let wd = match Watchdog::from_env() {
            Ok(wd) => wd?,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        let Some(notifier) = Notifier::from_env() else {
            tracing::warn!("WATCHDOG_USEC is set but NOTIFY_SOCKET is not: the watchdog is off");
            return None;
        };
        tracing::info!(
            timeout_ms = wd.timeout().as_millis() as u64,
            interval_ms = wd.interval().as_millis() as u64,
            "systemd watchdog on"
        );
        Some((wd, notifier))
    }

    /// The timeout systemd enforces (`WatchdogSec=`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often to ping: half the timeout, as sd_watchdog_enabled(3) recommends.
    pub fn interval(&self) -> Duration {
        (self.timeout / 2).max(Duration::from_millis(1))
    }
}

/// Liveness of other event loops (e.g. a node's I/O arbiters), probed from the watchdog's loop:
/// each round asks every loop to run a [`ProbeAnswer`]; a new round starts only once all
/// answered, and the watchdog pings only then. A wedged loop thus stops the pings.
#[derive(Debug)]
pub struct LoopProbes {
    answered: Arc<[AtomicU64]>,
    round: u64,
}

/// One loop's answer to a probe round; [`ProbeAnswer::answer`] it on that loop.
#[derive(Debug)]
pub struct ProbeAnswer {
    answered: Arc<[AtomicU64]>,
    index: usize,
    round: u64,
}

impl ProbeAnswer {
    /// The loop this answer is for (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Records that the loop ran it.
    pub fn answer(self) {
        self.answered[self.index].fetch_max(self.round, Ordering::AcqRel);
    }
}

impl LoopProbes {
    /// Probes for `loops` loops (0: the watchdog vouches for its own loop only).
    pub fn new(loops: usize) -> LoopProbes {
        LoopProbes { answered: (0..loops).map(|_| AtomicU64::new(0)).collect(), round: 0 }
    }

    /// Whether every loop answered the current round (true before the first).
    pub fn all_answered(&self) -> bool {
        self.answered.iter().all(|a| a.load(Ordering::Acquire) >= self.round)
    }

    /// The loops that have not answered the current round.
    pub fn silent(&self) -> Vec<usize> {
        (0..self.answered.len()).filter(|&i| self.answered[i].load(Ordering::Acquire) < self.round).collect()
    }

    /// Starts the next round: one answer per loop, to be run on that loop.
    pub fn next_round(&mut self) -> Vec<ProbeAnswer> {
        self.round += 1;
        (0..self.answered.len())
            .map(|index| ProbeAnswer { answered: self.answered.clone(), index, round: self.round })
            .collect()
    }
}

/// Pings `notifier` with `WATCHDOG=1` every [`Watchdog::interval`], forever, from the loop it
/// runs on, while the `loops` other loops answer the probes `probe(answer)` hands them (`probe`
/// must run `answer.answer()` on loop `answer.index()`). Spawn it on the event loop that serves
/// connections: if that loop is wedged, the pings stop and systemd restarts the service.
/// A failed ping is logged once (then at debug level); a silent loop is logged when it falls
/// silent.
pub async fn run_watchdog(wd: Watchdog, notifier: Notifier, loops: usize, mut probe: impl FnMut(ProbeAnswer)) {
    let mut probes = LoopProbes::new(loops);
    let mut tick = tokio::time::interval(wd.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut send_failed, mut stalled) = (false, false);
    loop {
        tick.tick().await;
        if !probes.all_answered() {
            if !stalled {
                stalled = true;
                tracing::warn!(loops = ?probes.silent(), "event loop(s) not answering: watchdog pings withheld");
            }
            continue;
        }
        if stalled {
            stalled = false;
            tracing::info!("event loops answer again: watchdog pings resumed");
        }
        match notifier.try_send("WATCHDOG=1") {
            Err(e) if !send_failed => {
                send_failed = true;
                tracing::warn!("{e}");
            }
            Err(e) => tracing::debug!("{e}"),
            Ok(()) => send_failed = false,
        }
        for answer in probes.next_round() {
            probe(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn socket() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = Notifier::new(path.to_string_lossy().into_owned());
        (dir, listener, n)
    }

    fn recv(sock: &UnixDatagram) -> std::io::Result<String> {
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Empties the socket; then waits `quiet` and returns what arrived meanwhile.
    fn drain_then_listen(sock: &UnixDatagram, quiet: Duration) -> Vec<String> {
        sock.set_nonblocking(true).unwrap();
        while recv(sock).is_ok() {}
        sock.set_nonblocking(false).unwrap();
        let end = std::time::Instant::now() + quiet;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
            sock.set_read_timeout(Some(left)).unwrap();
            got.extend(recv(sock).ok());
        }
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        got
    }

    #[test]
    fn sends_the_state_to_the_socket_named_by_notify_socket() {
        let (_dir, listener, n) = socket();
        // SAFETY (env): this test is the only one in the crate that touches NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &n.socket) };
        assert!(notify("READY=1\nSTATUS=serving").unwrap());
        assert_eq!(recv(&listener).unwrap(), "READY=1\nSTATUS=serving");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        assert!(!notify("READY=1").unwrap(), "without NOTIFY_SOCKET nothing is sent");
    }

    #[test]
    fn watchdog_follows_sd_watchdog_enabled() {
        let wd = Watchdog::from_vars(Some("200000"), None, 42).unwrap().expect("no WATCHDOG_PID: ours");
        assert_eq!(wd.timeout(), Duration::from_millis(200));
        assert_eq!(wd.interval(), Duration::from_millis(100));
        assert_eq!(
            Watchdog::from_vars(Some("10000000"), Some("42"), 42).unwrap().unwrap().interval(),
            Duration::from_secs(5)
        );
        assert_eq!(Watchdog::from_vars(Some("200000"), Some("41"), 42).unwrap(), None, "another process's");
        assert_eq!(Watchdog::from_vars(None, Some("42"), 42).unwrap(), None);
        for (usec, pid, var) in [
            ("0", None, "WATCHDOG_USEC"),
            ("x", None, "WATCHDOG_USEC"),
            ("-5", None, "WATCHDOG_USEC"),
            ("5", Some("0"), "WATCHDOG_PID"),
            ("5", Some("p"), "WATCHDOG_PID"),
        ] {
            match Watchdog::from_vars(Some(usec), pid, 42) {
                Err(NotifyError::BadWatchdogVar { var: v, .. }) => assert_eq!(v, var, "{usec} {pid:?}"),
                other => panic!("{usec} {pid:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_round_is_answered_only_when_every_loop_ran_its_probe() {
        let mut p = LoopProbes::new(2);
        assert!(p.all_answered(), "nothing asked yet");
        let mut first = p.next_round();
        assert!(!p.all_answered());
        assert_eq!(p.silent(), vec![0, 1]);
        first.remove(0).answer();
        assert_eq!(p.silent(), vec![1]);
        let late = first.remove(0);
        let mut second = p.next_round();
        late.answer();
        second.remove(0).answer();
        assert_eq!(p.silent(), vec![1], "an answer to an earlier round does not count");
        second.remove(0).answer();
        assert!(p.all_answered());
        assert!(LoopProbes::new(0).all_answered());
    }

    /// The pings come from the loop the task runs on: while that loop is blocked, none arrive;
    /// once it runs again, they do.
    #[test]
    fn pings_stop_while_their_loop_is_blocked() {
        let (_dir, sock, n) = socket();
        let wd = Watchdog::from_vars(Some("20000"), None, 0).unwrap().unwrap();
        let (block_tx, block_rx) = tokio::sync::oneshot::channel::<()>();
        let (blocked_tx, blocked_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let lp = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                tokio::spawn(run_watchdog(wd, n, 0, |_| {}));
                let _ = block_rx.await;
                blocked_tx.send(()).unwrap();
                // Wedges the loop (a blocking call in async code).
                let _ = release_rx.recv();
                let _ = done_rx.await;
            });
        });
        for _ in 0..3 {
            assert_eq!(recv(&sock).unwrap(), "WATCHDOG=1");
        }
        block_tx.send(()).unwrap();
        blocked_rx.recv().unwrap();
        let during = drain_then_listen(&sock, Duration::from_millis(300));
        assert!(during.is_empty(), "pings from a blocked loop: {during:?}");
        release_tx.send(()).unwrap();
        assert_eq!(recv(&sock).unwrap(), "WATCHDOG=1", "pings resume with the loop");
        done_tx.send(()).unwrap();
        lp.join().unwrap();
    }

    /// A probed loop that stops answering withholds the pings; they resume when it answers.
    #[test]
    fn pings_stop_while_a_probed_loop_is_silent() {
        let (_dir, sock, n) = socket();
        let wd = Watchdog::from_vars(Some("20000"), None, 0).unwrap().unwrap();
        let (probe_tx, probe_rx) = mpsc::sync_channel::<ProbeAnswer>(4);
        let (wedge_tx, wedge_rx) = mpsc::channel::<mpsc::Receiver<()>>();
        let (wedged_tx, wedged_rx) = mpsc::channel();
        // The other loop: answers probes, unless told to wedge until released.
        let other = std::thread::spawn(move || {
            while let Ok(a) = probe_rx.recv() {
                assert_eq!(a.index(), 0);
                if let Ok(release) = wedge_rx.try_recv() {
                    wedged_tx.send(()).unwrap();
                    let _ = release.recv();
                }
                a.answer();
            }
        });
        let rt = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let probe = move |a| {
                    probe_tx.try_send(a).expect("one probe at a time");
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), run_watchdog(wd, n, 1, probe)).await;
            });
        });
        for _ in 0..3 {
            assert_eq!(recv(&sock).unwrap(), "WATCHDOG=1");
        }
        let (release_tx, release_rx) = mpsc::channel();
        wedge_tx.send(release_rx).unwrap();
        wedged_rx.recv().unwrap();
        // The ping before the probe it holds is already in the socket: drained here.
        let during = drain_then_listen(&sock, Duration::from_millis(300));
        assert!(during.is_empty(), "pings while a probed loop is wedged: {during:?}");
        release_tx.send(()).unwrap();
        assert_eq!(recv(&sock).unwrap(), "WATCHDOG=1", "pings resume with the loop");
        drop(rt);
        drop(other);
    }
}
