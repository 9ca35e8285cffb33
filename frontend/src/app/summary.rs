//! What a finished `run` shows: its summary table on stdout and the SVG plots beside LoadGen's
//! logs.

use qdl_frontend::plot::{Series, bar_chart, line_chart};
use qdl_frontend::report::RunReport;
use qdl_frontend::timeline::TimelinePoint;
use qdl_shared::config::ModeName;

use super::progress::thousands;

/// The plot files written beside LoadGen's logs.
pub const PLOTS: [&str; 3] = ["throughput.svg", "latency.svg", "batch-sizes.svg"];

/// The plots generative (LLM) runs add: output tokens/s, TTFT and TPOT over time.
pub const TOKEN_PLOTS: [&str; 3] = ["tokens.svg", "ttft.svg", "tpot.svg"];

/// The plots a run of `r` writes.
pub fn plots_of(r: &RunReport) -> Vec<&'static str> {
    let mut all = PLOTS.to_vec();
    if r.workload.is_generative() {
        all.extend(TOKEN_PLOTS);
    }
    all
}

/// Writes the run's plots ([`plots_of`]) into `dir`: throughput and latency over time, batch
/// sizes formed, and for generative workloads output tokens/s, TTFT and TPOT over time.
pub fn write_plots(r: &RunReport, dir: &std::path::Path) -> std::io::Result<()> {
    let kind = if r.network { "network" } else { "local" };
    let title = |what: &str| format!("{what}: {} {} ({kind})", r.workload.name, r.scenario.as_str());
    let rate =
        Series { name: "completed".into(), points: r.timeline.iter().map(|p| (p.t_s, p.completed_per_s)).collect() };
    std::fs::write(dir.join(PLOTS[0]), line_chart(&title("Throughput"), "seconds", "samples/s", &[rate]))?;
    let pct = |name: &str, f: fn(&TimelinePoint) -> Option<f64>| Series {
        name: name.into(),
        points: r.timeline.iter().filter_map(|p| f(p).map(|v| (p.t_s, v))).collect(),
    };
    let lat = [pct("p50", |p| p.p50_ms), pct("p90", |p| p.p90_ms), pct("p99", |p| p.p99_ms)];
    std::fs::write(dir.join(PLOTS[1]), line_chart(&title("Latency"), "seconds", "ms (issue to response)", &lat))?;
    let mut sizes: std::collections::BTreeMap<u32, u64> = Default::default();
    for a in &r.accelerators {
        for (b, n) in &a.batch_sizes {
            *sizes.entry(*b).or_default() += n;
        }
    }
    // Every size from 1 to the largest formed, so gaps show as gaps.
    let largest = sizes.keys().next_back().copied().unwrap_or(0);
    let bars: Vec<(String, f64)> =
        (1..=largest).map(|b| (b.to_string(), sizes.get(&b).copied().unwrap_or(0) as f64)).collect();
    std::fs::write(dir.join(PLOTS[2]), bar_chart(&title("Batch sizes formed"), "batch size", "batches", &bars))?;
    if !r.workload.is_generative() {
        return Ok(());
    }
    let tokens = [pct("output tokens", |p| p.tokens_per_s)];
    std::fs::write(dir.join(TOKEN_PLOTS[0]), line_chart(&title("Output tokens"), "seconds", "tokens/s", &tokens))?;
    // LoadGen's bounds as flat lines where the scenario has them (Server, Interactive).
    let bound = |name: &str, ns: Option<f64>| {
        ns.filter(|_| r.scenario.is_server() && !r.timeline.is_empty()).map(|b| Series {
            name: name.into(),
            points: vec![(0.0, b / 1e6), (r.timeline.last().map_or(0.0, |p| p.t_s), b / 1e6)],
        })
    };
    let mut ttft = vec![pct("p50", |p| p.ttft_p50_ms), pct("p99", |p| p.ttft_p99_ms)];
    ttft.extend(bound("LoadGen's bound", r.loadgen.ttft_bound_ns));
    let y = "ms (issue to first token)";
    std::fs::write(dir.join(TOKEN_PLOTS[1]), line_chart(&title("Time to first token"), "seconds", y, &ttft))?;
    let mut tpot = vec![pct("p50", |p| p.tpot_p50_ms), pct("p99", |p| p.tpot_p99_ms)];
    tpot.extend(bound("LoadGen's bound", r.loadgen.tpot_bound_ns));
    let y = "ms per token after the first";
    std::fs::write(dir.join(TOKEN_PLOTS[2]), line_chart(&title("Time per output token"), "seconds", y, &tpot))
}

fn human_bytes(b: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

fn ms(ns: Option<f64>) -> String {
    ns.map(|v| format!("{:.2} ms", v / 1e6)).unwrap_or_else(|| "-".into())
}

/// Prints the run's summary table.
pub fn print_summary(r: &RunReport, out_dir: &std::path::Path) {
    let l = &r.loadgen;
    let f = &r.frontend;
    let where_ = if r.network {
        format!("over the network ({} accelerators)", r.accelerators.len())
    } else {
        "in-process (local baseline)".into()
    };
    println!("qdl run: {} {} {} {where_}", r.workload.name, r.scenario.as_str(), r.mode.as_str());
    let row = |k: &str, v: String| println!("  {k:<22} {v}");
    row("SUT", r.sut_name.clone());
    if r.mode == ModeName::Performance {
        let mut verdict = l.validity.clone().unwrap_or_else(|| "-".into());
        if !l.invalid_reasons.is_empty() {
            verdict = format!("{verdict} ({})", l.invalid_reasons.join("; "));
        }
        row("result", verdict);
        row("samples/s", l.throughput().map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()));
        if let Some(s) = l.scheduled_samples_per_second {
            row("scheduled samples/s", format!("{s:.1}"));
        }
        row(
            "latency p50/p99/max",
            format!(
                "{} / {} / {}",
                ms(l.latency_ns.get("50.00").copied()),
                ms(l.p99_ns()),
                ms(l.latency_ns.get("max").copied())
            ),
        );
        if let Some(t) = l.tokens_per_second {
            row("tokens/s", format!("{t:.1}"));
        }
        if !l.ttft_ns.is_empty() {
            let bound = |b: Option<f64>| b.map(|b| format!(" (bound {})", ms(Some(b)))).unwrap_or_default();
            let server = r.scenario.is_server();
            row(
                "TTFT p50/p99",
                format!(
                    "{} / {}{}",
                    ms(l.ttft_ns.get("50.00").copied()),
                    ms(l.ttft_p99_ns()),
                    if server { bound(l.ttft_bound_ns) } else { String::new() }
                ),
            );
            if let Some(o) = &f.ttft_outside_accelerator {
                let what = if r.network { "outside accelerator" } else { "outside workers" };
                row(
                    &format!("TTFT {what}"),
                    format!("p50 {:.3} ms, p99 {:.3} ms ({} samples)", o.p50_ms, o.p99_ms, thousands(o.count)),
                );
            }
            row(
                "TPOT p50/p99",
                format!(
                    "{} / {}{}",
                    ms(l.tpot_ns.get("50.00").copied()),
                    ms(l.tpot_p99_ns()),
                    if server { bound(l.tpot_bound_ns) } else { String::new() }
                ),
            );
        }
    }
    row("samples", format!("{} completed, {} failed", thousands(f.samples_completed), thousands(f.sample_errors)));
    if r.network {
        let secs = f.wall_seconds.max(1e-9);
        row(
            "bytes sent / received",
            format!(
                "{} ({}/s) / {}",
                human_bytes(f.bytes_sent as f64),
                human_bytes(f.bytes_sent as f64 / secs),
                human_bytes(f.bytes_received as f64)
            ),
        );
        row("writes per sample", format!("{:.3}", f.write_calls as f64 / f.samples_completed.max(1) as f64));
    }
    for a in &r.advice {
        row("fix", a.clone());
    }
    for e in &l.errors {
        row("LoadGen error", e.clone());
    }
    if !r.shortened.is_empty() {
        row("NOT A SUBMISSION", format!("settings shorten the official run: {}", r.shortened.join("; ")));
    }
    row("logs", out_dir.display().to_string());
    row("plots", plots_of(r).join(", "));
}
