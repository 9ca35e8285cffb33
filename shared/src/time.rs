//! Time as the sans-IO cores see it: plain nanoseconds passed in by the caller, so tests can run
//! them on a virtual clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A monotonic instant in nanoseconds since an arbitrary, process-local epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

static EPOCH: OnceLock<Instant> = OnceLock::new();

impl Nanos {
    /// Zero: the start of a virtual clock.
    pub const ZERO: Nanos = Nanos(0);

    /// The current monotonic time (real clock).
    pub fn now() -> Nanos {
        let epoch = *EPOCH.get_or_init(Instant::now);
        Nanos(epoch.elapsed().as_nanos() as u64)
    }

    /// Converts a real `Instant` to this clock.
    pub fn from_instant(at: Instant) -> Nanos {
        let epoch = *EPOCH.get_or_init(Instant::now);
        Nanos(at.saturating_duration_since(epoch).as_nanos() as u64)
    }

    /// The real `Instant` of this time (for timers).
    pub fn to_instant(self) -> Instant {
        *EPOCH.get_or_init(Instant::now) + Duration::from_nanos(self.0)
    }

    /// `micros` microseconds.
    pub const fn from_micros(micros: u64) -> Nanos {
        Nanos(micros * 1_000)
    }

    /// `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Nanos {
        Nanos(millis * 1_000_000)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(earlier.0))
    }

    /// As a `Duration`.
    pub fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// As seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
}

impl std::ops::Add for Nanos {
    type Output = Nanos;
    fn add(self, rhs: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(rhs.0))
    }
}

impl From<Duration> for Nanos {
    fn from(d: Duration) -> Nanos {
        Nanos(d.as_nanos().min(u64::MAX as u128) as u64)
    }
}
