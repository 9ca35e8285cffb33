//! SIGTERM and SIGINT as a stream, for both nodes' shutdown paths. Create [`Signals`] early: the
//! handlers are installed at creation, so a signal that arrives before anyone awaits it (right
//! after a node printed "ready", say) is not lost to the default action.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM and SIGINT; see the module docs.
pub struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime with I/O enabled).
    pub fn new() -> Signals {
        Signals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => {}
            _ = next(&mut self.int) => {}
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}
