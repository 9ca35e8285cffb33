//! The frontend's actor system: an actix System on its own thread ("qdl-io") plus the I/O
//! arbiters that run the connection actors, while the main thread runs LoadGen.
//!
//! With `WatchdogSec=` (qdl-frontend@.service), the system's loop pings systemd's watchdog,
//! each ping once every I/O arbiter has run a probe since the last: a wedged actor loop gets the
//! test killed (and reported failed) instead of hanging. LoadGen's own threads are not covered.

use std::future::Future;
use std::thread::JoinHandle;

use actix::{Arbiter, ArbiterHandle, System};
use anyhow::{Context as _, anyhow};

/// The running actor system.
pub struct Io {
    system: System,
    arbiter: ArbiterHandle,
    /// Arbiters running connection actors.
    pub io: Vec<ArbiterHandle>,
    thread: Option<JoinHandle<()>>,
    /// systemd's socket, when the loop pings its watchdog.
    watchdog: Option<qdl_shared::sdnotify::Notifier>,
}

impl Io {
    /// Starts the system thread and `io_threads` I/O arbiters.
    pub fn start(io_threads: usize) -> anyhow::Result<Io> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("qdl-io".into())
            .spawn(move || {
                let sys = System::new();
                let arbiters: Vec<Arbiter> = sys.block_on(async {
                    let arbiters: Vec<Arbiter> = (0..io_threads.max(1)).map(|_| Arbiter::new()).collect();
                    let handles = arbiters.iter().map(|a| a.handle()).collect::<Vec<_>>();
                    let watchdog = start_watchdog(&handles);
                    let _ = tx.send((System::current(), Arbiter::current(), handles, watchdog));
                    arbiters
                });
                let _ = sys.run();
                for a in arbiters {
                    a.stop();
                    let _ = a.join();
                }
            })
            .context("cannot start the qdl-io thread")?;
        let (system, arbiter, io, watchdog) = rx.recv().map_err(|_| anyhow!("the qdl-io thread failed to start"))?;
        Ok(Io { system, arbiter, io, thread: Some(thread), watchdog })
    }

    /// The system's own arbiter, where control sessions (and the rejoins) run.
    pub fn control(&self) -> ArbiterHandle {
        self.arbiter.clone()
    }

    /// Runs `fut` on the system's arbiter and waits for its result.
    pub fn block_on<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.arbiter.spawn(async move {
            let _ = tx.send(fut.await);
        }) {
            return Err(anyhow!("the actor system has stopped"));
        }
        rx.blocking_recv().map_err(|_| anyhow!("the actor system dropped a task"))
    }

    /// Stops every actor and joins the threads.
    pub fn stop(mut self) {
        for a in &self.io {
            a.stop();
        }
        self.system.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The pings ended with the loop; the report is still to be written: watchdog off.
        if let Some(n) = &self.watchdog
            && let Err(e) = n.send("WATCHDOG_USEC=0")
        {
            tracing::warn!("{e}");
        }
    }
}

/// Pings systemd's watchdog from the current loop (the system's), probing the I/O arbiters, if
/// systemd asked for a watchdog; returns its socket then.
fn start_watchdog(io: &[ArbiterHandle]) -> Option<qdl_shared::sdnotify::Notifier> {
    let (wd, notifier) = qdl_shared::sdnotify::Watchdog::requested()?;
    let io = io.to_vec();
    actix::spawn(qdl_shared::sdnotify::run_watchdog(wd, notifier.clone(), io.len(), move |answer| {
        // A stopped arbiter drops the answer: no more pings, which is right for a dead loop.
        let _ = io[answer.index()].spawn(async move { answer.answer() });
    }));
    Some(notifier)
}
