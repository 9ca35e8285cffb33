//! The run's time series for report.json and the plots: completed samples per second and latency
//! percentiles per interval.
//!
//! Connections record each sample's end-to-end latency into a shared [`LatencyBuckets`] (one
//! relaxed atomic add, log-spaced buckets with 8 per power of two, so percentiles are within
//! 12.5 %); a sampler thread takes and clears the buckets every interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const SUB: usize = 8;
const MAX_EXP: usize = 42; // 2^42 ns ≈ 73 minutes: anything longer lands in the last bucket
const BUCKETS: usize = SUB + (MAX_EXP - 2) * SUB;

/// The bucket of a latency of `ns` nanoseconds.
pub fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let e = (63 - ns.leading_zeros()) as usize; // floor(log2 ns) >= 3
    let e = e.min(MAX_EXP);
    let sub = ((ns >> (e - 3)) as usize).saturating_sub(SUB).min(SUB - 1);
    (SUB + (e - 3) * SUB + sub).min(BUCKETS - 1)
}

/// The largest latency (ns) that falls in bucket `i`.
pub fn bucket_upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = (i - SUB) / SUB + 3;
    let sub = (i - SUB) % SUB;
    (((SUB + sub + 1) as u64) << (e - 3)) - 1
}

/// Latency counts by bucket; see the module docs.
pub struct LatencyBuckets {
    counts: Box<[AtomicU64]>,
}

impl Default for LatencyBuckets {
    fn default() -> Self {
        LatencyBuckets { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl LatencyBuckets {
    /// Counts one latency.
    pub fn record(&self, ns: u64) {
        self.counts[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counts so far and starts afresh.
    pub fn take(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect()
    }
}

/// The `q` quantile (0..1) of bucket counts, as the upper bound of its bucket, ns.
pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bucket_upper(i));
        }
    }
    None
}

/// One interval of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// End of the interval, seconds since the test started.
    pub t_s: f64,
    /// Samples completed per second during the interval.
    pub completed_per_s: f64,
    /// Latency percentiles of the samples completed in the interval, ms.
    pub p50_ms: Option<f64>,
    /// 90th percentile, ms.
    pub p90_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
}

/// A sampler thread building the timeline; stop it with [`Timeline::finish`].
pub struct Timeline {
    stop: Arc<AtomicBool>,
    points: Arc<Mutex<Vec<TimelinePoint>>>,
    thread: Option<JoinHandle<()>>,
}

impl Timeline {
    /// Samples `completed()` and `latencies` every `interval`.
    pub fn start(
        interval: Duration,
        latencies: Arc<LatencyBuckets>,
        completed: impl Fn() -> u64 + Send + 'static,
    ) -> Timeline {
        let stop = Arc::new(AtomicBool::new(false));
        let points = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), points.clone());
        // The timeline starts now, not when the thread gets to run.
        let started = Instant::now();
        let initial = completed();
        latencies.take();
        let thread = std::thread::Builder::new()
            .name("qdl-timeline".into())
            .spawn(move || {
                let mut last = (started, initial);
                let mut sample = |now: Instant| {
                    let done = completed();
                    let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
                    let counts = latencies.take();
                    let ms = |q| quantile(&counts, q).map(|ns| ns as f64 / 1e6);
                    p.lock().unwrap_or_else(|e| e.into_inner()).push(TimelinePoint {
                        t_s: now.duration_since(started).as_secs_f64(),
                        completed_per_s: (done - last.1) as f64 / secs,
                        p50_ms: ms(0.5),
                        p90_ms: ms(0.9),
                        p99_ms: ms(0.99),
                    });
                    last = (now, done);
                };
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    sample(Instant::now());
                }
            })
            .ok();
        Timeline { stop, points, thread }
    }

    /// Stops sampling and returns the timeline.
    pub fn finish(mut self) -> Vec<TimelinePoint> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.points.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut prev = 0;
        for ns in 0..5000u64 {
            let b = bucket_of(ns);
            assert!(b >= prev, "buckets never go down");
            prev = b;
        }
        for ns in (0..5000u64).chain((1..40).map(|e| (1u64 << e) + 7)).chain([u64::MAX / 3]) {
            let b = bucket_of(ns);
            assert!(ns <= bucket_upper(b) || b == BUCKETS - 1, "{ns} in bucket {b} ≤ {}", bucket_upper(b));
            if ns >= 8 && b < BUCKETS - 1 {
                assert!(bucket_upper(b) as f64 <= ns as f64 * 1.125 + 1.0, "{ns}: upper {}", bucket_upper(b));
            }
            if b > 0 && ns >= 8 {
                assert!(bucket_upper(b - 1) < ns, "{ns} is not in a lower bucket");
            }
        }
    }

    #[test]
    fn quantiles_of_known_distributions() {
        let l = LatencyBuckets::default();
        for i in 1..=1000u64 {
            l.record(i * 1000); // 1 µs .. 1 ms
        }
        let c = l.take();
        let p50 = quantile(&c, 0.5).unwrap() as f64;
        let p99 = quantile(&c, 0.99).unwrap() as f64;
        assert!((500_000.0..=562_500.0).contains(&p50), "{p50}");
        assert!((990_000.0..=1_113_750.0).contains(&p99), "{p99}");
        assert!(l.take().iter().all(|&x| x == 0), "take clears");
        assert_eq!(quantile(&vec![0; BUCKETS], 0.5), None);
    }

    #[test]
    fn sampler_reports_rates() {
        let l = Arc::new(LatencyBuckets::default());
        let n = Arc::new(AtomicU64::new(0));
        let (n2, l2) = (n.clone(), l.clone());
        let t = Timeline::start(Duration::from_millis(20), l, move || n2.load(Ordering::Relaxed));
        for _ in 0..10 {
            n.fetch_add(100, Ordering::Relaxed);
            l2.record(2_000_000);
            std::thread::sleep(Duration::from_millis(10));
        }
        let points = t.finish();
        assert!(points.len() >= 2, "{points:?}");
        assert!(points.iter().any(|p| p.completed_per_s > 0.0));
        let total: f64 = points.windows(2).map(|w| w[1].completed_per_s * (w[1].t_s - w[0].t_s)).sum::<f64>()
            + points[0].completed_per_s * points[0].t_s;
        assert!((total - 1000.0).abs() < 1.0, "the rates integrate to the samples completed: {total}");
        assert!(points.iter().filter_map(|p| p.p50_ms).all(|v| (2.0..=2.25).contains(&v)));
    }
}
