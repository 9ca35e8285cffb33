//! The run's time series for report.json and the plots: completed samples per second and latency
//! percentiles per interval, and for generative workloads output tokens per second, TTFT and
//! TPOT percentiles.
//!
//! Connections record each sample's end-to-end latency (and a generative sample's TTFT, TPOT and
//! tokens) into a shared [`RunLatencies`] (one relaxed atomic add each, log-spaced buckets with 8
//! per power of two, so percentiles are within 12.5 %); a sampler thread takes and clears the
//! buckets every interval. The part of each TTFT spent outside the accelerator is kept for the
//! whole run instead ([`RunLatencies::ttft_outside`]): report.json gives its percentiles.

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

/// What the connections of a run record per sample; see the module docs.
#[derive(Default)]
pub struct RunLatencies {
    /// LoadGen's issue to the final answer, every sample.
    pub end_to_end: LatencyBuckets,
    /// Generative samples: LoadGen's issue to the first token.
    pub ttft: LatencyBuckets,
    /// Generative samples of two or more tokens: the time after the first token per further token.
    pub tpot: LatencyBuckets,
    /// Generative samples: the part of the first token's round trip spent outside the accelerator
    /// (the frontend's queue, both transports and the network), for the whole run.
    pub ttft_outside: LatencyBuckets,
    /// Output tokens of the generative samples completed.
    pub tokens: AtomicU64,
}

impl RunLatencies {
    /// Counts a generative sample's `tokens` output tokens.
    pub fn add_tokens(&self, tokens: u64) {
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
    }
}

/// Percentiles of a latency over a whole run, ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples counted.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest bucket seen (its upper bound), ms.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of bucket counts (`None` when nothing was counted).
    pub fn of(counts: &[u64]) -> Option<Percentiles> {
        let ms = |q| quantile(counts, q).map(|ns| ns as f64 / 1e6);
        Some(Percentiles {
            count: counts.iter().sum(),
            p50_ms: ms(0.5)?,
            p90_ms: ms(0.9)?,
            p99_ms: ms(0.99)?,
            max_ms: ms(1.0)?,
        })
    }
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
    /// Generative workloads: output tokens completed per second during the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Generative workloads: TTFT percentiles of the first tokens of the interval, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p50_ms: Option<f64>,
    /// TTFT 99th percentile, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p99_ms: Option<f64>,
    /// Generative workloads: TPOT percentiles of the samples completed in the interval, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_p50_ms: Option<f64>,
    /// TPOT 99th percentile, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_p99_ms: Option<f64>,
}

/// A sampler thread building the timeline; stop it with [`Timeline::finish`].
pub struct Timeline {
    stop: Arc<AtomicBool>,
    points: Arc<Mutex<Vec<TimelinePoint>>>,
    thread: Option<JoinHandle<()>>,
}

impl Timeline {
    /// Samples `completed()` and `latencies` every `interval`; `generative` adds the token
    /// series.
    pub fn start(
        interval: Duration,
        latencies: Arc<RunLatencies>,
        generative: bool,
        completed: impl Fn() -> u64 + Send + 'static,
    ) -> Timeline {
        let stop = Arc::new(AtomicBool::new(false));
        let points = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), points.clone());
        // The timeline starts now, not when the thread gets to run.
        let started = Instant::now();
        let initial = (completed(), latencies.tokens.load(Ordering::Relaxed));
        for b in [&latencies.end_to_end, &latencies.ttft, &latencies.tpot] {
            b.take();
        }
        let thread = std::thread::Builder::new()
            .name("qdl-timeline".into())
            .spawn(move || {
                let mut last = (started, initial);
                let mut sample = |now: Instant| {
                    let (done, tokens) = (completed(), latencies.tokens.load(Ordering::Relaxed));
                    let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
                    let ms = |counts: &[u64], q| quantile(counts, q).map(|ns| ns as f64 / 1e6);
                    let e2e = latencies.end_to_end.take();
                    let mut point = TimelinePoint {
                        t_s: now.duration_since(started).as_secs_f64(),
                        completed_per_s: done.saturating_sub(last.1.0) as f64 / secs,
                        p50_ms: ms(&e2e, 0.5),
                        p90_ms: ms(&e2e, 0.9),
                        p99_ms: ms(&e2e, 0.99),
                        tokens_per_s: None,
                        ttft_p50_ms: None,
                        ttft_p99_ms: None,
                        tpot_p50_ms: None,
                        tpot_p99_ms: None,
                    };
                    if generative {
                        let (ttft, tpot) = (latencies.ttft.take(), latencies.tpot.take());
                        point.tokens_per_s = Some(tokens.saturating_sub(last.1.1) as f64 / secs);
                        (point.ttft_p50_ms, point.ttft_p99_ms) = (ms(&ttft, 0.5), ms(&ttft, 0.99));
                        (point.tpot_p50_ms, point.tpot_p99_ms) = (ms(&tpot, 0.5), ms(&tpot, 0.99));
                    }
                    p.lock().unwrap_or_else(|e| e.into_inner()).push(point);
                    last = (now, (done, tokens));
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
        let l = Arc::new(RunLatencies::default());
        let n = Arc::new(AtomicU64::new(0));
        let (n2, l2) = (n.clone(), l.clone());
        let t = Timeline::start(Duration::from_millis(20), l, false, move || n2.load(Ordering::Relaxed));
        for _ in 0..10 {
            n.fetch_add(100, Ordering::Relaxed);
            l2.end_to_end.record(2_000_000);
            std::thread::sleep(Duration::from_millis(10));
        }
        let points = t.finish();
        assert!(points.len() >= 2, "{points:?}");
        assert!(points.iter().any(|p| p.completed_per_s > 0.0));
        let total: f64 = points.windows(2).map(|w| w[1].completed_per_s * (w[1].t_s - w[0].t_s)).sum::<f64>()
            + points[0].completed_per_s * points[0].t_s;
        assert!((total - 1000.0).abs() < 1.0, "the rates integrate to the samples completed: {total}");
        assert!(points.iter().filter_map(|p| p.p50_ms).all(|v| (2.0..=2.25).contains(&v)));
        assert!(points.iter().all(|p| p.tokens_per_s.is_none() && p.ttft_p99_ms.is_none()), "not generative");
    }

    #[test]
    fn generative_runs_add_tokens_ttft_and_tpot() {
        let l = Arc::new(RunLatencies::default());
        let l2 = l.clone();
        let t = Timeline::start(Duration::from_millis(20), l, true, || 0);
        for _ in 0..10 {
            l2.add_tokens(50);
            l2.ttft.record(30_000_000);
            l2.tpot.record(4_000_000);
            l2.ttft_outside.record(200_000);
            std::thread::sleep(Duration::from_millis(10));
        }
        let points = t.finish();
        let total: f64 = points.windows(2).map(|w| w[1].tokens_per_s.unwrap() * (w[1].t_s - w[0].t_s)).sum::<f64>()
            + points[0].tokens_per_s.unwrap() * points[0].t_s;
        assert!((total - 500.0).abs() < 1.0, "tokens/s integrates to the tokens: {total}");
        assert!(points.iter().filter_map(|p| p.ttft_p99_ms).all(|v| (30.0..=33.75).contains(&v)), "{points:?}");
        assert!(points.iter().filter_map(|p| p.tpot_p50_ms).all(|v| (4.0..=4.5).contains(&v)), "{points:?}");
        assert!(points.iter().any(|p| p.ttft_p50_ms.is_some()));
        // The whole run's share outside the accelerator is left for the report.
        let outside = Percentiles::of(&l2.ttft_outside.take()).unwrap();
        assert_eq!(outside.count, 10);
        assert!((0.2..=0.225).contains(&outside.p99_ms), "{outside:?}");
        assert_eq!(Percentiles::of(&l2.ttft_outside.take()), None);
    }
}
