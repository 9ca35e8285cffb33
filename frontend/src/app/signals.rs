//! Ctrl-C / SIGTERM for the frontend's commands. LoadGen cannot be stopped cleanly in the middle
//! of a test, so the first signal drains what can be drained (a run waits, 10 s at most, for the
//! samples in flight to be answered; accelerator sessions get their goodbye, child processes get
//! SIGTERM), says that LoadGen's logs are incomplete, and exits 130 after a SIGINT or 143 after a
//! SIGTERM (an interrupted test is not a success); a second signal exits at once with the status
//! of that signal.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Installs the handler: on the first SIGINT or SIGTERM, runs `cleanup`, stops tracked children
/// and exits 130 (SIGINT) or 143 (SIGTERM); on a second signal, exits at once with its status.
pub fn install(what: &'static str, cleanup: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new().name("qdl-signals".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let mut signals = qdl_shared::signals::Signals::new();
            let first = signals.recv().await;
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\nqdl-frontend: interrupted: ending the {what} (press Ctrl-C again to exit at once)");
            tokio::spawn(async move {
                let second = signals.recv().await;
                // SAFETY: _exit ends the process at once; nothing is left to clean up.
                unsafe { libc::_exit(qdl_shared::exit::for_signal(second)) };
            });
            let _ = tokio::task::spawn_blocking(move || {
                cleanup();
                terminate_children();
            })
            .await;
            let code = qdl_shared::exit::for_signal(first);
            eprintln!("qdl-frontend: the {what} was interrupted (exit status {code})");
            // SAFETY: as above; C++ static destructors of a running LoadGen could block an exit().
            unsafe { libc::_exit(code) };
        });
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot install the signal handler: {e}");
    }
}
