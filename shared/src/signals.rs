//! SIGTERM and SIGINT, for both nodes' shutdown paths.
//!
//! - [`Signals`]: the signals as a stream, for a node that drains in its own event loop (the
//!   accelerator). Create it early: the handlers are installed at creation, so a signal that
//!   arrives before anyone awaits it (right after a node printed "ready", say) is not lost to the
//!   default action.
//! - [`exit_on_signal`]: for a command that cannot be stopped cleanly in the middle (a LoadGen
//!   test): the first signal drains what can be drained (the caller's cleanup, then SIGTERM to the
//!   children registered with [`track_child`]) and exits 130 after a SIGINT or 143 after a SIGTERM
//!   (an interrupted test is not a success); a second signal exits at once with the status of
//!   that signal. [`interrupted`] says whether that is under way.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (`systemctl stop`, `docker stop`, `kill`).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

/// SIGTERM and SIGINT; see the module docs.
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime with I/O enabled).
    pub fn new() -> Signals {
        Signals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
    }

    /// Waits for the next SIGTERM or SIGINT and says which it was.
    pub async fn recv(&mut self) -> Signal {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => Signal::Terminate,
            _ = next(&mut self.int) => Signal::Interrupt,
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a signal is ending this process (failures that follow are its consequences).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Child processes to stop on a signal (the lab's accelerators and its current test).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Registers a child process to receive SIGTERM if this process is interrupted.
pub fn track_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

/// Forgets a child that has exited.
pub fn untrack_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).retain(|&p| p != pid);
}

fn terminate_children() {
    for &pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        // SAFETY: kill(2) with a pid this process spawned and still tracks (not yet reaped).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
}

/// Installs the handler of a command that cannot be stopped cleanly mid-way (a LoadGen test): on
/// the first SIGINT or SIGTERM, says so on stderr (as `program`, about its `what`), runs `cleanup`,
/// stops tracked children and exits 130 (SIGINT) or 143 (SIGTERM); on a second signal, exits at
/// once with its status. It runs on a thread of its own, so it works from any thread.
pub fn exit_on_signal(program: &'static str, what: &'static str, cleanup: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new().name("qdl-signals".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let mut signals = Signals::new();
            let first = signals.recv().await;
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\n{program}: interrupted: ending the {what} (press Ctrl-C again to exit at once)");
            tokio::spawn(async move {
                let second = signals.recv().await;
                // SAFETY: _exit ends the process at once; nothing is left to clean up.
                unsafe { libc::_exit(crate::exit::for_signal(second)) };
            });
            let _ = tokio::task::spawn_blocking(move || {
                cleanup();
                terminate_children();
            })
            .await;
            let code = crate::exit::for_signal(first);
            eprintln!("{program}: the {what} was interrupted (exit status {code})");
            // SAFETY: as above; C++ static destructors of a running LoadGen could block an exit().
            unsafe { libc::_exit(code) };
        });
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot install the signal handler: {e}");
    }
}
