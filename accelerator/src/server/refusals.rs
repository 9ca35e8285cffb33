//! Refused connections, logged without a log flood: every refusal is counted in
//! `qdl_accelerator_connections_refused_total{reason}`; the log gets the first refusal of each
//! reason at once (with its peer and cause, so a misconfigured frontend shows up immediately),
//! then at most one summary line per [`SUMMARY_INTERVAL`] for the rest:
//! `refused 200 connections in the last 10 s: 150 bad-preamble, 50 preamble-timeout; last: ...`.
//! [`RefusalLog`] is sans-IO: time is passed in, lines are returned for the caller to log.

use qdl_shared::time::Nanos;

/// At most one summary line per this interval (and one line per reason).
pub const SUMMARY_INTERVAL: Nanos = Nanos::from_millis(10_000);

/// Why a connection was refused or closed before its handshake completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// `max_connections` open, all authenticated.
    MaxConnections,
    /// `max_connections_per_peer` open from the address.
    PeerLimit,
    /// `max_pending_per_peer` handshakes under way from the address.
    PeerPendingLimit,
    /// Evicted by a newer connection while the pending handshakes were full.
    Evicted,
    /// No preamble within `preamble_timeout_ms`.
    PreambleTimeout,
    /// No completed handshake within `handshake_timeout_ms`.
    HandshakeTimeout,
    /// Not a qdl preamble, or another protocol version.
    BadPreamble,
    /// TLS on one side only, or a failed TLS handshake.
    Tls,
    /// A data connection's attach block was malformed or refused.
    Attach,
    /// The peer did not prove the shared secret.
    Unauthorized,
    /// A malformed or out-of-order message during the control handshake.
    Handshake,
}

impl Reason {
    /// Every reason, in label order (metrics start at 0 for each).
    pub const ALL: [Reason; 11] = [
        Reason::MaxConnections,
        Reason::PeerLimit,
        Reason::PeerPendingLimit,
        Reason::Evicted,
        Reason::PreambleTimeout,
        Reason::HandshakeTimeout,
        Reason::BadPreamble,
        Reason::Tls,
        Reason::Attach,
        Reason::Unauthorized,
        Reason::Handshake,
    ];

    /// The metric label and the word in log lines.
    pub fn label(self) -> &'static str {
        match self {
            Reason::MaxConnections => "max-connections",
            Reason::PeerLimit => "peer-limit",
            Reason::PeerPendingLimit => "peer-pending-limit",
            Reason::Evicted => "evicted",
            Reason::PreambleTimeout => "preamble-timeout",
            Reason::HandshakeTimeout => "handshake-timeout",
            Reason::BadPreamble => "bad-preamble",
            Reason::Tls => "tls",
            Reason::Attach => "attach",
            Reason::Unauthorized => "unauthorized",
            Reason::Handshake => "handshake",
        }
    }
}

/// Counts refusals and decides which log lines are due; see the module docs.
pub struct RefusalLog {
    interval: Nanos,
    /// When each reason was last logged on its own.
    logged: [Option<Nanos>; Reason::ALL.len()],
    /// Refusals since the last summary: per reason, and those not logged on their own.
    counts: [u64; Reason::ALL.len()],
    unlogged: u64,
    window_start: Option<Nanos>,
    last_summary: Option<Nanos>,
    last_detail: Option<String>,
}

impl RefusalLog {
    /// A log that writes at most one summary per `interval`.
    pub fn new(interval: Nanos) -> RefusalLog {
        RefusalLog {
            interval,
            logged: [None; Reason::ALL.len()],
            counts: [0; Reason::ALL.len()],
            unlogged: 0,
            window_start: None,
            last_summary: None,
            last_detail: None,
        }
    }

    /// Records one refusal at `now`; returns a line to log when this reason was not logged in the
    /// last interval (`detail` is only called then, or kept as the summary's example).
    pub fn record(&mut self, reason: Reason, now: Nanos, detail: impl FnOnce() -> String) -> Option<String> {
        let i = reason as usize;
        self.counts[i] += 1;
        self.window_start.get_or_insert(now);
        let due = self.logged[i].is_none_or(|at| now.since(at) >= self.interval);
        if due {
            self.logged[i] = Some(now);
            return Some(format!(
                "{} [{}; further refusals are counted in qdl_accelerator_connections_refused_total and summed \
                 up every {} s]",
                detail(),
                reason.label(),
                self.interval.0 / 1_000_000_000
            ));
        }
        self.unlogged += 1;
        if self.unlogged == 1 || self.last_detail.is_none() {
            self.last_detail = Some(detail());
        }
        None
    }

    /// The summary line when one is due at `now`: some refusals were not logged on their own, and
    /// both the first refusal counted and the last summary are at least an interval old.
    pub fn poll(&mut self, now: Nanos) -> Option<String> {
        let old = |t: Option<Nanos>| t.is_none_or(|t| now.since(t) >= self.interval);
        if self.unlogged == 0 || !old(self.window_start) || !old(self.last_summary) {
            return None;
        }
        let total: u64 = self.counts.iter().sum();
        let by_reason: Vec<String> = Reason::ALL
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{n} {}", r.label()))
            .collect();
        let secs = now.since(self.window_start.unwrap_or(now)).0.div_ceil(1_000_000_000).max(1);
        let line = format!(
            "refused {total} connection{} in the last {secs} s: {}; e.g. {}",
            if total == 1 { "" } else { "s" },
            by_reason.join(", "),
            self.last_detail.take().unwrap_or_default()
        );
        self.counts = [0; Reason::ALL.len()];
        self.unlogged = 0;
        self.window_start = None;
        self.last_summary = Some(now);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Nanos {
        Nanos::from_millis(ms)
    }

    #[test]
    fn a_flood_gives_one_line_per_reason_then_one_summary_per_interval() {
        let mut log = RefusalLog::new(SUMMARY_INTERVAL);
        let mut lines = Vec::new();
        for i in 0..200u64 {
            let reason = if i % 4 == 0 { Reason::PreambleTimeout } else { Reason::BadPreamble };
            lines.extend(log.record(reason, at(20_000 + i), || format!("127.0.0.7:{i}: not a qdl peer")));
            lines.extend(log.poll(at(20_000 + i)));
        }
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("127.0.0.7:0: not a qdl peer [preamble-timeout;"), "{}", lines[0]);
        assert!(lines[1].starts_with("127.0.0.7:1: not a qdl peer [bad-preamble;"), "{}", lines[1]);
        // Nothing more until the interval is over; then one summary of all 200.
        assert_eq!(log.poll(at(29_999)), None);
        let summary = log.poll(at(30_000)).expect("a summary");
        assert!(
            summary
                .starts_with("refused 200 connections in the last 10 s: 50 preamble-timeout, 150 bad-preamble; e.g. "),
            "{summary}"
        );
        assert_eq!(log.poll(at(40_000)), None, "nothing new: no line");
        // A single refusal of a known kind after a quiet interval is logged at once again.
        assert!(log.record(Reason::BadPreamble, at(41_000), || "x".into()).is_some());
        assert_eq!(log.poll(at(60_000)), None, "it was logged on its own: no summary");
    }

    #[test]
    fn the_detail_is_only_built_when_used() {
        let mut log = RefusalLog::new(SUMMARY_INTERVAL);
        let mut built = 0;
        for _ in 0..1000 {
            let _ = log.record(Reason::Evicted, at(1), || {
                built += 1;
                "d".into()
            });
        }
        assert_eq!(built, 2, "the first line and the summary's example");
        assert!(log.poll(at(10_001)).unwrap().contains("1000 evicted"));
    }
}
