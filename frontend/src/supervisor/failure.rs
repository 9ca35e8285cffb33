//! What can go wrong in a run beyond one connection, as typed values, and the bounded channel
//! that carries them to the supervisor.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use crate::client::ClientError;
use crate::qsl::QslError;

/// How many reports the inbox holds before a reporter waits for the supervisor (which only
/// decides and sends messages, so it drains fast). Each accelerator session reports its loss at
/// most once, and the issuer says "no accelerator left" once.
pub const INBOX_DEPTH: usize = 16;

/// A failure reported to the run's supervisor. Some are survived (an accelerator lost once its
/// data connections exist); the others end the run.
#[derive(Debug, thiserror::Error)]
pub enum RunFailure {
    /// An accelerator's control session ended without the run asking for it (it closed, failed
    /// the protocol, or fell silent past the heartbeat limit).
    #[error("lost accelerator {name} ({given}): {error}")]
    AcceleratorLost {
        /// The address it was given as (the key of its data connections and its rejoin).
        given: String,
        /// Its name (from Welcome), or the address before it said one.
        name: String,
        /// What ended the session.
        error: ClientError,
    },
    /// Every data connection is closed: the samples still to run have nowhere to go.
    #[error("no accelerator connection is left")]
    NoAcceleratorLeft,
    /// The thread that re-places a lost connection's samples could not start.
    #[error("cannot start a re-dispatch thread: {0}")]
    RedispatchThread(#[source] std::io::Error),
    /// LoadGen asked for samples that could not be loaded.
    #[error("cannot load samples: {0}")]
    SampleLoad(#[source] QslError),
}

/// Where failures are reported from (client actors, the issuer, the QSL); clone freely.
#[derive(Clone, Debug)]
pub struct FailureSink(SyncSender<RunFailure>);

/// The supervisor's end of the channel.
#[derive(Debug)]
pub struct FailureInbox(pub(crate) Receiver<RunFailure>);

/// A new channel of [`INBOX_DEPTH`] reports.
pub fn channel() -> (FailureSink, FailureInbox) {
    let (tx, rx) = std::sync::mpsc::sync_channel(INBOX_DEPTH);
    (FailureSink(tx), FailureInbox(rx))
}

impl FailureSink {
    /// Reports `failure`. When the inbox is full the caller waits for room (the supervisor
    /// drains without blocking); once the supervisor is gone (the run is over) the report has
    /// no one to act on it and is dropped.
    pub fn report(&self, failure: RunFailure) {
        match self.0.try_send(failure) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(failure)) => {
                let _ = self.0.send(failure);
            }
        }
    }
}

impl FailureInbox {
    /// The next report; `None` once every sink is dropped.
    pub fn recv(&self) -> Option<RunFailure> {
        self.0.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_arrive_in_order_and_a_full_inbox_waits_instead_of_dropping() {
        let (sink, inbox) = channel();
        let writer = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for _ in 0..INBOX_DEPTH + 4 {
                    sink.report(RunFailure::NoAcceleratorLeft);
                }
            })
        };
        let mut n = 0;
        while n < INBOX_DEPTH + 4 {
            assert!(matches!(inbox.recv(), Some(RunFailure::NoAcceleratorLeft)));
            n += 1;
        }
        writer.join().unwrap();
        drop(sink);
        assert!(inbox.recv().is_none(), "the inbox ends when every sink is gone");
    }

    #[test]
    fn a_report_after_the_supervisor_left_is_dropped_not_a_panic() {
        let (sink, inbox) = channel();
        drop(inbox);
        sink.report(RunFailure::NoAcceleratorLeft);
    }
}
