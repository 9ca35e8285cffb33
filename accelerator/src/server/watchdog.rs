//! systemd's watchdog for the node (`WatchdogSec=` in qdl-accelerator.service).
//!
//! The pings (`WATCHDOG=1`) are sent by a task on the actix System's loop, the one that accepts
//! connections and runs the sessions' ControlActors; each ping also waits for every I/O arbiter
//! (the data connections' loops) to have run a probe since the last one. So systemd restarts a
//! node whose main loop or any I/O loop is wedged (a blocking call, a deadlock, a livelock
//! inside a task). Not covered: the GPU worker threads (a batch may legitimately take long, e.g.
//! TensorRT building an engine at the first inference of a new shape), the metrics exporter's
//! thread, and a loop that still runs but makes no progress on its connections.

use actix::ArbiterHandle;
use qdl_shared::sdnotify::{Watchdog, run_watchdog};

/// Starts the pings on the current loop (call it from the System's), probing `io`, if systemd
/// asked for a watchdog.
pub fn start(io: &[ArbiterHandle]) {
    let Some((wd, notifier)) = Watchdog::requested() else { return };
    let io = io.to_vec();
    actix::spawn(run_watchdog(wd, notifier, io.len(), move |answer| {
        // A stopped arbiter drops the answer: no more pings, which is right for a dead loop.
        let _ = io[answer.index()].spawn(async move { answer.answer() });
    }));
}

/// Test hook, in debug builds only: with `QDL_DEBUG_WEDGE_FILE=PATH`, the loop this is spawned
/// on checks for PATH every 20 ms; while PATH exists it blocks the loop's thread (as a wedged
/// task would), after creating `PATH.wedged` to say so. Lets a test freeze the event loop alone,
/// the rest of the process running on.
#[cfg(debug_assertions)]
pub fn debug_wedge_hook() {
    let Some(path) = std::env::var_os("QDL_DEBUG_WEDGE_FILE").map(std::path::PathBuf::from) else { return };
    let mut marker = path.clone().into_os_string();
    marker.push(".wedged");
    actix::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if path.exists() {
                let _ = std::fs::write(&marker, b"");
                while path.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let _ = std::fs::remove_file(&marker);
            }
        }
    });
}
