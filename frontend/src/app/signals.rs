//! Ctrl-C / SIGTERM for the frontend's commands: [`qdl_shared::signals::exit_on_signal`] under the
//! frontend's name. LoadGen cannot be stopped cleanly in the middle of a test, so the first signal
//! drains what can be drained (a run waits, 10 s at most, for the samples in flight to be
//! answered; accelerator sessions get their goodbye, child processes get SIGTERM), says that
//! LoadGen's logs are incomplete, and exits 130 after a SIGINT or 143 after a SIGTERM; a second
//! signal exits at once with the status of that signal.

pub use qdl_shared::signals::{interrupted, track_child, untrack_child};

/// Installs the handler for the frontend's `what` ("run", "lab", "bench"); see the module docs.
pub fn install(what: &'static str, cleanup: impl FnOnce() + Send + 'static) {
    qdl_shared::signals::exit_on_signal("qdl-frontend", what, cleanup);
}
