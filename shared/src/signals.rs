//! SIGTERM and SIGINT as a stream, for both nodes' shutdown paths. Create [`Signals`] early: the
//! handlers are installed at creation, so a signal that arrives before anyone awaits it (right
//! after a node printed "ready", say) is not lost to the default action.

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
