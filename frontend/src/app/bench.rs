//! `qdl-frontend bench`: the figures that decide the hot path, measured side by side in one run
//! (never in timed tests; these machines are shared and noisy):
//! 1. Offline Network/Local ratio for ResNet-50 and BERT (the lab's synthetic accelerators);
//! 2. ResNet-50 payload throughput over loopback TCP (echo backend) against `iperf3` on the same
//!    loopback, measured before and after qdl;
//! 3. the highest Server target QPS that stays VALID for BERT payloads with the echo backend;
//! 4. what metrics cost: BERT Offline with the echo backend (the most per-sample work per byte),
//!    metrics on against off on both nodes, alternated;
//! 5. LLMs on the synthetic generative engine (llama3.1-8b, the lab's engine): Network/Local
//!    tokens/s in Offline, Server and Interactive VALID both ways at the same rate, and what the
//!    network adds to TTFT, per sample (the first token's time outside the accelerator);
//! 6. with `--llama-model`, a real LLM on llama.cpp (SmolLM2-135M): Network/Local tokens/s in
//!    Offline and Server VALID both ways (minutes: Server validity needs about 460 samples).
//!
//! `--only` runs some of the parts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::cluster::{Accelerators, run_test};
use super::lab::{LabOptions, lab};

/// Bench options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where runs and bench-report.json go.
    pub output_dir: PathBuf,
    /// Duration of each test, ms.
    pub duration_ms: u64,
    /// Skip the iperf3 comparison.
    pub skip_iperf: bool,
    /// Upper end of the Server QPS search.
    pub max_qps: f64,
    /// The parts to run ([`PARTS`]); all when empty.
    pub only: Vec<String>,
    /// A .gguf LLM for part 6 (skipped without one).
    pub llama_model: Option<PathBuf>,
}

/// The bench's parts, in order (names for `--only`).
pub const PARTS: [&str; 6] = ["offline", "payload", "server", "metrics", "llm", "llama"];

impl BenchOptions {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// Offline throughput of one workload, network against local.
#[derive(Debug, Serialize)]
pub struct OfflineRatio {
    /// The workload.
    pub workload: String,
    /// Network samples/s.
    pub network: Option<f64>,
    /// Local samples/s.
    pub local: Option<f64>,
    /// Network / local.
    pub ratio: Option<f64>,
}

/// One LLM scenario, network against local (the synthetic generative engine).
#[derive(Debug, Serialize)]
pub struct LlmRow {
    /// The workload.
    pub workload: String,
    /// The scenario.
    pub scenario: String,
    /// Network output tokens/s.
    pub network_tokens_per_second: Option<f64>,
    /// Local output tokens/s.
    pub local_tokens_per_second: Option<f64>,
    /// Network / local tokens/s.
    pub ratio: Option<f64>,
    /// LoadGen's verdicts, network and local.
    pub valid: (Option<bool>, Option<bool>),
    /// p99 time to first token, ms, network and local (not in Offline).
    pub ttft_p99_ms: (Option<f64>, Option<f64>),
    /// The difference of those p99s, ms (noisy: two runs' tails).
    pub ttft_added_ms: Option<f64>,
    /// Per sample, the first token's time outside the accelerator, p99 over the run, ms, network
    /// and local: what the network adds to each TTFT, measured sample by sample (the target's
    /// figure).
    pub ttft_outside_p99_ms: (Option<f64>, Option<f64>),
}

/// bench-report.json.
#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    /// Offline network/local per workload.
    pub offline: Vec<OfflineRatio>,
    /// qdl's ResNet-50 payload rate over loopback, bytes/s.
    pub qdl_payload_bytes_per_second: Option<f64>,
    /// iperf3's rates on the same loopback (1 and 2 streams, before and after qdl), bytes/s.
    pub iperf3_bytes_per_second: Vec<(u32, f64)>,
    /// qdl / best iperf3.
    pub payload_ratio: Option<f64>,
    /// The Server QPS search: (target, valid).
    pub server_search: Vec<(f64, bool)>,
    /// Highest VALID Server target QPS found.
    pub server_max_valid_qps: Option<f64>,
    /// BERT Offline echo samples/s with metrics on, per round.
    pub metrics_on: Vec<f64>,
    /// The same with metrics off.
    pub metrics_off: Vec<f64>,
    /// Best with metrics on / best with metrics off.
    pub metrics_ratio: Option<f64>,
    /// LLMs on the synthetic generative engine.
    pub llm: Vec<LlmRow>,
    /// A real LLM on llama.cpp (part 6).
    pub llama: Vec<LlmRow>,
    /// The parts run ([`PARTS`]).
    pub parts: Vec<String>,
    /// Problems met (a missing iperf3, failed tests).
    pub notes: Vec<String>,
}

fn iperf3(streams: u32, seconds: u64) -> anyhow::Result<f64> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 (apt install iperf3)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .output()
        .context("running iperf3")?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received in iperf3's JSON")?;
    Ok(bps / 8.0)
}

fn gbs(v: f64) -> String {
    format!("{:.2} GB/s", v / 1e9)
}

fn payload_bench(opts: &BenchOptions, r: &mut BenchReport) -> anyhow::Result<()> {
    let out = opts.output_dir.join("payload");
    std::fs::create_dir_all(&out)?;
    let secs = (opts.duration_ms / 1000).max(2);
    let iperf = |r: &mut BenchReport| {
        if opts.skip_iperf {
            return;
        }
        for streams in [1, 2] {
            match iperf3(streams, secs) {
                Ok(v) => r.iperf3_bytes_per_second.push((streams, v)),
                Err(e) => r.notes.push(format!("iperf3 -P {streams}: {e:#}")),
            }
        }
    };
    iperf(r);
    let cfg = out.join("accelerator.toml");
    std::fs::write(&cfg, "[backend]\nkind = \"echo\"\n[limits]\nmax_session_memory_bytes = 1073741824\n")?;
    let accs = Accelerators::start(1, &cfg, "bench-echo", &[String::new()], &out)?;
    // 2 connections of 256 slots: deep enough to fill the pipe, small enough to stay in cache.
    let rate_guess = 40_000.0;
    let args: Vec<String> = [
        "--workload",
        "resnet50",
        "--scenario",
        "offline",
        "--connections",
        "2",
        "--slots",
        "256",
        "--min-duration-ms",
        &opts.duration_ms.to_string(),
        "--expected-qps",
        &format!("{rate_guess}"),
        "--accelerator",
        &accs.addrs[0],
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    eprintln!("bench: ResNet-50 payload over loopback TCP (echo backend) ...");
    let report = run_test(&args, &out.join("run"), "", &|_| {});
    accs.stop()?;
    iperf(r);
    let report = report?;
    let sps = report.loadgen.throughput().context("no throughput in the payload run")?;
    let bytes = sps * report.workload.input_bytes() as f64;
    r.qdl_payload_bytes_per_second = Some(bytes);
    let best = r.iperf3_bytes_per_second.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    if best > 0.0 {
        r.payload_ratio = Some(bytes / best);
    }
    Ok(())
}

fn server_search(opts: &BenchOptions, r: &mut BenchReport) -> anyhow::Result<()> {
    let out = opts.output_dir.join("server");
    std::fs::create_dir_all(&out)?;
    let cfg = out.join("accelerator.toml");
    std::fs::write(&cfg, "[backend]\nkind = \"echo\"\n")?;
    let accs = Accelerators::start(1, &cfg, "bench-echo", &[String::new()], &out)?;
    let duration = (opts.duration_ms / 2).max(2000).to_string();
    let try_qps = |qps: f64, r: &mut BenchReport| -> bool {
        let args: Vec<String> = [
            "--workload",
            "bert",
            "--scenario",
            "server",
            "--target-qps",
            &format!("{qps:.0}"),
            "--min-duration-ms",
            &duration,
            "--min-query-count",
            "100",
            "--accelerator",
            &accs.addrs[0],
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let dir = out.join(format!("qps-{qps:.0}"));
        let valid = match run_test(&args, &dir, "", &|_| {}) {
            Ok(rep) => rep.loadgen.is_valid(),
            Err(e) => {
                r.notes.push(format!("server at {qps:.0} QPS: {e:#}"));
                false
            }
        };
        eprintln!("bench: BERT Server, echo, {qps:.0} QPS: {}", if valid { "VALID" } else { "INVALID" });
        r.server_search.push((qps, valid));
        valid
    };
    let (mut lo, mut hi) = (0.0f64, opts.max_qps);
    // Bisect between 0 and max_qps, starting at the 50,000 QPS target.
    let mut probe = 50_000.0f64.min(hi);
    for _ in 0..7 {
        if try_qps(probe, r) {
            lo = probe;
        } else {
            hi = probe;
        }
        if hi - lo <= hi * 0.05 {
            break;
        }
        probe = (lo + hi) / 2.0;
    }
    r.server_max_valid_qps = (lo > 0.0).then_some(lo);
    accs.stop()?;
    Ok(())
}

fn metrics_cost(opts: &BenchOptions, r: &mut BenchReport) -> anyhow::Result<()> {
    let out = opts.output_dir.join("metrics");
    std::fs::create_dir_all(&out)?;
    let cfg = out.join("accelerator.toml");
    std::fs::write(&cfg, "[backend]\nkind = \"echo\"\n")?;
    let duration = (opts.duration_ms / 2).max(2000).to_string();
    for round in 0..2 {
        for on in [true, false] {
            let metrics = if on { "127.0.0.1:0" } else { "" };
            let accs = Accelerators::start(1, &cfg, "bench-metrics", &[metrics.to_string()], &out)?;
            let args: Vec<String> = [
                "--workload",
                "bert",
                "--scenario",
                "offline",
                "--min-duration-ms",
                &duration,
                "--expected-qps",
                "800000",
                "--accelerator",
                &accs.addrs[0],
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let dir = out.join(format!("{}-{round}", if on { "on" } else { "off" }));
            let rep = run_test(&args, &dir, metrics, &|_| {});
            accs.stop()?;
            let sps = rep?.loadgen.throughput().context("no throughput")?;
            eprintln!("bench: BERT Offline, echo, metrics {}: {sps:.0} samples/s", if on { "on" } else { "off" });
            if on { r.metrics_on.push(sps) } else { r.metrics_off.push(sps) }
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    r.metrics_ratio = Some(best(&r.metrics_on) / best(&r.metrics_off));
    Ok(())
}

/// The lab's network and local rows for `workloads` × `scenarios` (two of its accelerators,
/// synthetic or running `model`), in `dir` under the bench's output.
fn lab_rows(
    opts: &BenchOptions,
    workloads: &[&str],
    scenarios: &[&str],
    dir: &str,
    model: Option<super::lab::LabModel>,
) -> anyhow::Result<Vec<super::lab::LabRow>> {
    let report = lab(LabOptions {
        workloads: workloads.iter().map(|w| w.to_string()).collect(),
        scenarios: scenarios.iter().map(|s| s.to_string()).collect(),
        output_dir: opts.output_dir.join(dir),
        duration_ms: opts.duration_ms,
        accelerator_config: None,
        accelerators: 2,
        frontend_config: None,
        model,
    })?;
    Ok(report.rows)
}

fn llm_rows(rows: Vec<super::lab::LabRow>) -> Vec<LlmRow> {
    rows.into_iter()
        .map(|row| {
            let ttft = (row.network_ttft_p99_ms, row.local_ttft_p99_ms);
            LlmRow {
                ttft_added_ms: ttft.0.zip(ttft.1).map(|(n, l)| n - l).filter(|_| row.scenario != "offline"),
                ttft_p99_ms: if row.scenario == "offline" { (None, None) } else { ttft },
                ttft_outside_p99_ms: (row.network_ttft_outside_p99_ms, row.local_ttft_outside_p99_ms),
                workload: row.workload,
                scenario: row.scenario,
                network_tokens_per_second: row.network_tokens_per_second,
                local_tokens_per_second: row.local_tokens_per_second,
                ratio: row.ratio,
                valid: (row.network_valid, row.local_valid),
            }
        })
        .collect()
}

fn llm_bench(opts: &BenchOptions, r: &mut BenchReport) -> anyhow::Result<()> {
    let rows = lab_rows(opts, &["llama3.1-8b"], &["offline", "server", "interactive"], "llm", None)?;
    r.llm = llm_rows(rows);
    Ok(())
}

fn llama_bench(opts: &BenchOptions, model: &Path, r: &mut BenchReport) -> anyhow::Result<()> {
    let model = Some(super::lab::LabModel::Llama(model.to_path_buf()));
    let rows = lab_rows(opts, &["smollm2-135m"], &["offline", "server"], "llama", model)?;
    r.llama = llm_rows(rows);
    Ok(())
}

/// Runs the bench; writes bench-report.json.
pub fn bench(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    std::fs::create_dir_all(&opts.output_dir)?;
    let parts = PARTS.iter().filter(|p| opts.runs(p)).map(|p| p.to_string()).collect();
    let mut r = BenchReport { parts, ..Default::default() };
    if opts.runs("offline") {
        eprintln!("bench: 1/6 Offline network vs local (synthetic accelerators) ...");
        for row in lab_rows(&opts, &["resnet50", "bert"], &["offline"], "offline", None)? {
            r.offline.push(OfflineRatio {
                workload: row.workload,
                network: row.network_samples_per_second,
                local: row.local_samples_per_second,
                ratio: row.ratio,
            });
        }
    }
    if opts.runs("payload") {
        eprintln!("bench: 2/6 ResNet-50 payload throughput vs iperf3 ...");
        if let Err(e) = payload_bench(&opts, &mut r) {
            r.notes.push(format!("payload bench: {e:#}"));
        }
    }
    if opts.runs("server") {
        eprintln!("bench: 3/6 highest VALID Server QPS, BERT, echo backend ...");
        if let Err(e) = server_search(&opts, &mut r) {
            r.notes.push(format!("server search: {e:#}"));
        }
    }
    if opts.runs("metrics") {
        eprintln!("bench: 4/6 metrics on vs off ...");
        if let Err(e) = metrics_cost(&opts, &mut r) {
            r.notes.push(format!("metrics cost: {e:#}"));
        }
    }
    if opts.runs("llm") {
        eprintln!("bench: 5/6 LLM, synthetic generative engine, network vs local ...");
        if let Err(e) = llm_bench(&opts, &mut r) {
            r.notes.push(format!("LLM bench: {e:#}"));
        }
    }
    match (&opts.llama_model, opts.runs("llama")) {
        (Some(model), true) => {
            eprintln!("bench: 6/6 a real LLM on llama.cpp ({}), network vs local ...", model.display());
            if let Err(e) = llama_bench(&opts, model, &mut r) {
                r.notes.push(format!("llama bench: {e:#}"));
            }
        }
        (None, true) if !opts.only.is_empty() => r.notes.push("part llama needs --llama-model FILE.gguf".into()),
        _ => {}
    }
    std::fs::write(opts.output_dir.join("bench-report.json"), serde_json::to_string_pretty(&r)? + "\n")?;
    if r.offline.iter().all(|o| o.ratio.is_none())
        && r.qdl_payload_bytes_per_second.is_none()
        && r.server_max_valid_qps.is_none()
        && r.metrics_ratio.is_none()
        && r.llm.iter().chain(&r.llama).all(|l| l.ratio.is_none())
    {
        bail!("every part of the bench failed: {}", r.notes.join("; "));
    }
    Ok(r)
}

/// Prints the bench's summary.
pub fn print(r: &BenchReport, out: &Path) {
    println!();
    println!("qdl bench (measured side by side in one run)");
    for OfflineRatio { workload: w, network: net, local: loc, ratio } in &r.offline {
        let f = |v: &Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        println!(
            "  Offline network/local, {w:<9} {:>7}   ({} vs {} samples/s)",
            ratio.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_else(|| "-".into()),
            f(net),
            f(loc)
        );
    }
    match (r.qdl_payload_bytes_per_second, r.payload_ratio) {
        (Some(q), Some(ratio)) => {
            let runs: Vec<String> =
                r.iperf3_bytes_per_second.iter().map(|(p, v)| format!("-P {p}: {}", gbs(*v))).collect();
            println!(
                "  ResNet-50 payload, loopback TCP  {:>7}   of iperf3's best (qdl {}; iperf3 {})",
                format!("{:.1}%", ratio * 100.0),
                gbs(q),
                runs.join(", ")
            );
        }
        (Some(q), None) => println!("  ResNet-50 payload, loopback TCP  {} (iperf3 not measured)", gbs(q)),
        _ if r.parts.iter().any(|p| p == "payload") => println!("  ResNet-50 payload, loopback TCP  -"),
        _ => {}
    }
    if r.parts.iter().any(|p| p == "server") {
        println!(
            "  BERT Server, echo backend: highest VALID target QPS {}",
            r.server_max_valid_qps.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
        );
    }
    if let Some(ratio) = r.metrics_ratio {
        let f = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        println!(
            "  Metrics on / off (BERT Offline, echo) {:>5.1}%   (on: {}; off: {} samples/s)",
            ratio * 100.0,
            f(&r.metrics_on),
            f(&r.metrics_off)
        );
    }
    for l in r.llm.iter().chain(&r.llama) {
        let verdict = |v: Option<bool>| match v {
            Some(true) => "VALID",
            Some(false) => "INVALID",
            None => "failed",
        };
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.2} ms")).unwrap_or_else(|| "-".into());
        let ms3 = |v: Option<f64>| v.map(|v| format!("{v:.3} ms")).unwrap_or_else(|| "-".into());
        println!(
            "  LLM {} {:<11} network/local tokens/s {:>7}   ({} vs {}), {}/{}{}",
            l.workload,
            l.scenario,
            l.ratio.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_else(|| "-".into()),
            l.network_tokens_per_second.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            l.local_tokens_per_second.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            verdict(l.valid.0),
            verdict(l.valid.1),
            match l.ttft_added_ms {
                Some(added) => format!(
                    "; TTFT p99 {} vs {} (difference {added:.2} ms); per sample outside the accelerator p99 {} \
                     (in-process {})",
                    ms(l.ttft_p99_ms.0),
                    ms(l.ttft_p99_ms.1),
                    ms3(l.ttft_outside_p99_ms.0),
                    ms3(l.ttft_outside_p99_ms.1)
                ),
                None => String::new(),
            }
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!("bench report: {}", out.join("bench-report.json").display());
}
