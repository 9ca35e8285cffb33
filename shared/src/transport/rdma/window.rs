//! The send queue's bookkeeping, sans-IO: which work request is signalled, how many send-queue
//! entries are free, and what a completion frees.
//!
//! Unsignalled work requests produce no completion, so their send-queue entries are freed only
//! when a later signalled one completes ("everything up to sequence N has left the queue"). The
//! window signals every `signal_every`-th request and, whatever the count, the one that fills the
//! queue: so whenever the queue is full a signalled request is outstanding and a completion is
//! coming — the connection can never wait forever for an entry.

/// A completion that does not match what the window posted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The completion names a work request that was never posted or was already reaped.
    #[error("completion for work request {seq}, but {reaped} are reaped and {posted} posted")]
    Stale {
        /// The work request id completed.
        seq: u64,
        /// Posted so far.
        posted: u64,
        /// Reaped so far.
        reaped: u64,
    },
}

/// One send queue's bookkeeping; see the module docs.
#[derive(Debug, Clone)]
pub struct SendWindow {
    depth: u32,
    signal_every: u32,
    posted: u64,
    reaped: u64,
    since_signal: u32,
    last_signalled: u64,
}

impl SendWindow {
    /// A window over a send queue of `depth` entries that signals every `signal_every`-th request
    /// (`1 <= signal_every <= depth`).
    pub fn new(depth: u32, signal_every: u32) -> SendWindow {
        let depth = depth.max(1);
        SendWindow {
            depth,
            signal_every: signal_every.clamp(1, depth),
            posted: 0,
            reaped: 0,
            since_signal: 0,
            last_signalled: 0,
        }
    }

    /// Entries in use (posted, not yet known to have left the queue).
    pub fn outstanding(&self) -> u32 {
        (self.posted - self.reaped) as u32
    }

    /// Free entries.
    pub fn free(&self) -> u32 {
        self.depth - self.outstanding()
    }

    /// Whether a signalled request is outstanding (so a completion will free entries).
    pub fn completion_pending(&self) -> bool {
        self.last_signalled > self.reaped
    }

    /// Takes the next entry: its work-request id (a sequence number from 1) and whether it must be
    /// signalled. `None` when the queue is full.
    pub fn take(&mut self) -> Option<(u64, bool)> {
        if self.free() == 0 {
            return None;
        }
        self.posted += 1;
        self.since_signal += 1;
        let signalled = self.since_signal >= self.signal_every || self.free() == 0;
        if signalled {
            self.since_signal = 0;
            self.last_signalled = self.posted;
        }
        Some((self.posted, signalled))
    }

    /// Gives back the last `n` entries taken (a post that failed before reaching the NIC).
    pub fn untake(&mut self, n: u32) {
        self.posted -= (n as u64).min(self.posted - self.reaped);
        self.last_signalled = self.last_signalled.min(self.posted).max(self.reaped);
    }

    /// The signalled request `seq` completed: it and everything posted before it have left the
    /// queue.
    pub fn handle_completion(&mut self, seq: u64) -> Result<(), WindowError> {
        if seq <= self.reaped || seq > self.posted {
            return Err(WindowError::Stale { seq, posted: self.posted, reaped: self.reaped });
        }
        self.reaped = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signals_every_nth_and_the_one_that_fills_the_queue() {
        let mut w = SendWindow::new(8, 3);
        let flags: Vec<bool> = (0..8).map(|_| w.take().unwrap().1).collect();
        assert_eq!(flags, [false, false, true, false, false, true, false, true]);
        assert_eq!(w.take(), None);
        assert!(w.completion_pending());
        w.handle_completion(6).unwrap();
        assert_eq!((w.outstanding(), w.free()), (2, 6));
        w.handle_completion(8).unwrap();
        assert_eq!(w.free(), 8);
        assert!(!w.completion_pending());
    }

    #[test]
    fn stale_and_future_completions_are_errors() {
        let mut w = SendWindow::new(4, 1);
        w.take();
        w.take();
        w.handle_completion(2).unwrap();
        assert!(w.handle_completion(2).is_err());
        assert!(w.handle_completion(1).is_err());
        assert!(w.handle_completion(3).is_err());
    }

    #[test]
    fn untake_returns_entries() {
        let mut w = SendWindow::new(4, 4);
        w.take();
        w.take();
        w.untake(2);
        assert_eq!(w.free(), 4);
        assert_eq!(w.take(), Some((1, false)));
    }

    proptest! {
        /// Whatever the depth, signalling interval and completion timing, a full queue always has
        /// a signalled request outstanding, and ids are consecutive.
        #[test]
        fn a_full_queue_always_awaits_a_completion(
            depth in 1u32..64,
            every in 1u32..64,
            ops in proptest::collection::vec(any::<bool>(), 1..400),
        ) {
            let mut w = SendWindow::new(depth, every);
            let mut signalled = std::collections::VecDeque::new();
            let mut next = 1;
            for take in ops {
                if take {
                    match w.take() {
                        Some((seq, sig)) => {
                            prop_assert_eq!(seq, next);
                            next += 1;
                            if sig { signalled.push_back(seq); }
                        }
                        None => prop_assert!(w.completion_pending() && !signalled.is_empty()),
                    }
                } else if let Some(seq) = signalled.pop_front() {
                    w.handle_completion(seq).unwrap();
                }
                if w.free() == 0 {
                    prop_assert!(w.completion_pending());
                }
            }
        }
    }
}
