//! The frontend's actor system: an actix System on its own thread ("qdl-io") plus the I/O
//! arbiters that run the connection actors, while the main thread runs LoadGen.

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
                    let _ = tx.send((System::current(), Arbiter::current(), handles));
                    arbiters
                });
                let _ = sys.run();
                for a in arbiters {
                    a.stop();
                    let _ = a.join();
                }
            })
            .context("cannot start the qdl-io thread")?;
        let (system, arbiter, io) = rx.recv().map_err(|_| anyhow!("the qdl-io thread failed to start"))?;
        Ok(Io { system, arbiter, io, thread: Some(thread) })
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
    }
}
