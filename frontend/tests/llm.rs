//! LLMs across the network, end to end: a real accelerator process with the synthetic
//! generative engine (continuous batching, first token streamed, then the whole answer), the real
//! frontend and the official LoadGen with token latencies, over TCP; and the same engine in the
//! box (the local baseline).

mod common;

use common::*;

/// A synthetic generative engine fast enough for short tests on two cores: a step takes
/// 500 µs + 0.2 µs per prompt token + 2 µs per sequence.
const TEST_LLM: &str = "[generation]\nmax_running = 128\n[backend]\nkind = \"synthetic\"\n[backend.synthetic.tokens]\nfixed_us = 500.0\nper_prefill_token_us = 0.2\nper_sequence_us = 2.0\n";

fn report(out: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// LoadGen's settings for a short run of `scenario` at `qps`.
fn args<'a>(workload: &'a str, scenario: &'a str, qps: &'a str) -> Vec<&'a str> {
    let mut v = vec!["-w", workload, "-s", scenario, "--total-samples", "1000", "--performance-samples", "1000"];
    if scenario == "offline" {
        v.extend(["--min-duration-ms", "1000", "--min-query-count", "300", "--expected-qps", qps]);
    } else {
        // Early stopping at the 99th percentile needs about 460 samples within the bounds.
        v.extend(["--min-duration-ms", "3000", "--min-query-count", "600", "--target-qps", qps]);
    }
    v
}

/// Checks a run: VALID, no LoadGen error (a missing first token or a bad token count would be
/// one), every sample answered, the token figures in report.json and the summary.
fn check_run(out: &std::path::Path, stdout: &str, scenario: &str) -> serde_json::Value {
    let summary = std::fs::read_to_string(out.join("mlperf_log_summary.txt")).unwrap();
    assert!(summary.contains("Result is : VALID"), "{scenario}:\n{summary}");
    assert!(summary.contains("No errors encountered during test."), "{scenario}:\n{summary}");
    let r = report(out);
    let l = &r["loadgen"];
    assert!(l["errors"].as_array().unwrap().is_empty(), "{scenario}: {l}");
    assert!(l["tokens_per_second"].as_f64().unwrap() > 0.0, "{scenario}: {l}");
    let f = &r["frontend"];
    assert_eq!(f["samples_issued"], f["samples_completed"], "{scenario}: {f}");
    assert_eq!(f["sample_errors"], 0, "{scenario}: {f}");
    assert!(stdout.contains("tokens/s"), "{stdout}");
    if scenario != "offline" {
        assert!(l["ttft_ns"]["99.00"].as_f64().unwrap() > 0.0, "{scenario}: {l}");
        assert!(l["tpot_ns"]["99.00"].as_f64().unwrap() > 0.0, "{scenario}: {l}");
        assert!(stdout.contains("TTFT p50/p99"), "{stdout}");
    }
    // The token plots, from a timeline with the token series (its tokens/s integrate to about
    // what LoadGen counted).
    for plot in ["tokens.svg", "ttft.svg", "tpot.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap_or_else(|e| panic!("{scenario}: {plot}: {e}"));
        assert!(svg.contains("<polyline"), "{scenario}: {plot} has no line");
    }
    let timeline = r["timeline"].as_array().unwrap();
    assert!(timeline.iter().any(|p| p["ttft_p99_ms"].as_f64().is_some_and(|v| v > 0.0)), "{scenario}: {timeline:?}");
    let mut t0 = 0.0;
    let tokens: f64 = timeline
        .iter()
        .map(|p| {
            let t = p["t_s"].as_f64().unwrap();
            let dt = t - std::mem::replace(&mut t0, t);
            p["tokens_per_s"].as_f64().unwrap() * dt
        })
        .sum();
    let samples = f["samples_completed"].as_f64().unwrap();
    let max_out = r["workload"]["generation"]["max_output_tokens"].as_f64().unwrap();
    assert!(tokens >= samples && tokens <= samples * max_out, "{scenario}: {tokens} tokens for {samples} samples");
    let rate = tokens / f["wall_seconds"].as_f64().unwrap();
    let loadgen = l["tokens_per_second"].as_f64().unwrap();
    assert!(rate > 0.5 * loadgen && rate < 2.0 * loadgen, "{scenario}: timeline {rate} tokens/s, LoadGen {loadgen}");
    // Every first token's time outside the accelerator: positive, below its whole TTFT.
    let outside = &f["ttft_outside_accelerator"];
    assert_eq!(outside["count"], f["samples_completed"], "{scenario}: {f}");
    let p99 = outside["p99_ms"].as_f64().unwrap();
    if scenario != "offline" {
        assert!(p99 > 0.0 && p99 * 1e6 < l["ttft_ns"]["99.00"].as_f64().unwrap(), "{scenario}: {outside} vs {l}");
    }
    r
}

#[test]
fn llama_workloads_are_valid_in_offline_server_and_interactive_over_tcp() {
    let a = Acc::start_with_config(Some(TEST_LLM), &["--name", "llm-a"]);
    let dir = tempfile::tempdir().unwrap();
    // llama2-70b answers up to 1024 tokens (about 8 times llama3.1-8b's 128): a lower rate.
    for (workload, qps) in [("llama3.1-8b", "150"), ("llama2-70b", "60")] {
        for scenario in ["offline", "server", "interactive"] {
            let out = dir.path().join(format!("{workload}-{scenario}"));
            let o = run(&[&a], &out, &args(workload, scenario, qps));
            let stdout = ok(&o);
            let r = check_run(&out, &stdout, scenario);
            if scenario == "offline" {
                continue;
            }
            let bounds = (r["loadgen"]["ttft_bound_ns"].as_f64(), r["loadgen"]["tpot_bound_ns"].as_f64());
            // mlperf.conf's bounds: Interactive is the Server scenario with `<model>-interactive`.
            let want = match (workload, scenario) {
                ("llama3.1-8b", "interactive") => (500e6, 30e6),
                ("llama3.1-8b", _) => (2000e6, 100e6),
                ("llama2-70b", "interactive") => (450e6, 40e6),
                _ => (2000e6, 200e6),
            };
            assert_eq!(bounds, (Some(want.0), Some(want.1)), "{workload} {scenario}");
        }
    }
    // The accelerator streamed first tokens and generated with continuous batching.
    let m = a.scrape();
    for series in [
        "qdl_accelerator_time_to_first_token_seconds_bucket",
        "qdl_accelerator_generated_tokens_total",
        "qdl_accelerator_running_sequences",
        "qdl_accelerator_step_seconds_bucket",
    ] {
        assert!(m.contains(series), "{series} is exported");
    }
}

#[test]
fn accuracy_runs_pass_check_accuracy_over_the_network_and_in_the_box() {
    let a = Acc::start_with_config(Some(TEST_LLM), &["--name", "llm-acc"]);
    let dir = tempfile::tempdir().unwrap();
    let acc_config = dir.path().join("acc.toml");
    std::fs::write(&acc_config, TEST_LLM).unwrap();
    let samples = ["--total-samples", "300", "--performance-samples", "300", "-m", "accuracy"];
    // Over the network in Server (LoadGen logs each first token), in the box in Offline.
    let net = dir.path().join("network");
    let mut args = vec!["-w", "llama3.1-8b", "-s", "server", "--target-qps", "200"];
    args.extend(samples);
    ok(&run(&[&a], &net, &args));
    let local = dir.path().join("local");
    let mut args = vec!["-w", "llama3.1-8b", "-s", "offline", "--expected-qps", "200", "--local"];
    args.extend(["--accelerator-config", acc_config.to_str().unwrap()]);
    args.extend(samples);
    ok(&run(&[], &local, &args));
    for out in [&net, &local] {
        let stdout = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
        assert!(stdout.contains("300/300 samples correct"), "{}: {stdout}", out.display());
    }
    let log = std::fs::read_to_string(net.join("mlperf_log_accuracy.json")).unwrap();
    assert!(log.contains("\"token_data\""), "LoadGen logged the first tokens");
    // The check can fail: one token changed in one answer.
    let at = log.find("\"data\" : \"").expect("an entry") + 12;
    let flipped = if &log[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &log[..at], &log[at + 1..]);
    std::fs::write(net.join("mlperf_log_accuracy.json"), tampered).unwrap();
    let o = frontend(&["check-accuracy", net.to_str().unwrap()]);
    assert!(!o.status.success(), "a changed token fails the check");
    assert!(text(&o).contains("299/300 samples correct"), "{}", text(&o));
}

#[test]
fn losing_an_accelerator_mid_run_restarts_its_sequences_elsewhere_and_reports_no_first_token_twice() {
    let a = Acc::start_with_config(Some(TEST_LLM), &["--name", "llm-fault-a"]);
    let mut b = Acc::start_with_config(Some(TEST_LLM), &["--name", "llm-fault-b"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // Server: LoadGen logs every first token, so a second one for a sample would show.
    let args = [
        "-w",
        "llama3.1-8b",
        "-s",
        "server",
        "--target-qps",
        "150",
        "-m",
        "accuracy",
        "--total-samples",
        "800",
        "--performance-samples",
        "800",
    ];
    let child = spawn_run(&[&a, &b], &out, &args);
    // Once b holds sequences (some past their first token), kill it outright.
    wait_busy(&b, 60.0);
    kill_now(&mut b);
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "the run survives the loss: {t}");
    let r = report(&out);
    assert!(r["frontend"]["redispatched"].as_u64().unwrap() > 0, "b's sequences restarted on a: {}", r["frontend"]);
    assert!(r["loadgen"]["errors"].as_array().unwrap().is_empty(), "no LoadGen error: {}", r["loadgen"]);
    let detail = std::fs::read_to_string(out.join("mlperf_log_detail.txt")).unwrap();
    assert!(!detail.contains("\"is_error\": true"), "LoadGen logged an error (a first token twice?)");
    let v = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
    assert!(v.contains("800/800 samples correct"), "every sample once, its first token its first output token: {v}");
}

#[test]
fn smollm2_through_llama_cpp_passes_check_accuracy_over_the_network_and_in_the_box() {
    let Some(model) = smollm2() else { return };
    let config = format!(
        "[generation]\nmax_running = 8\nkv_tokens = 8192\n[backend]\nkind = \"llama\"\n[backend.llama]\nmodel = \"{}\"\ncontext_tokens = 8192\n",
        model.display()
    );
    let a = Acc::start_with_config(Some(&config), &["--name", "llm-smol"]);
    let dir = tempfile::tempdir().unwrap();
    let acc_config = dir.path().join("acc.toml");
    std::fs::write(&acc_config, &config).unwrap();
    let samples = ["-w", "smollm2-135m", "-s", "offline", "-m", "accuracy", "--expected-qps", "1"];
    let samples = [&samples[..], &["--total-samples", "12", "--performance-samples", "12"]].concat();
    let net = dir.path().join("network");
    ok(&run(&[&a], &net, &samples));
    let local = dir.path().join("local");
    let local_args = [&samples[..], &["--local", "--accelerator-config", acc_config.to_str().unwrap()]].concat();
    ok(&run(&[], &local, &local_args));
    // The reference: the same model alone, one sequence at a time (greedy at batch 1).
    let ref_config = dir.path().join("ref.toml");
    std::fs::write(&ref_config, config.replace("max_running = 8", "max_running = 1")).unwrap();
    let reference = dir.path().join("reference");
    let ref_args = [&samples[..], &["--local", "--accelerator-config", ref_config.to_str().unwrap()]].concat();
    ok(&run(&[], &reference, &ref_args));
    for out in [&net, &local] {
        let stdout = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
        assert!(stdout.contains("12/12 samples correct"), "{}: {stdout}", out.display());
        assert!(stdout.contains("TEST06's checks only"), "the verdict says what it checked: {stdout}");
        assert_eq!(report(out)["accelerators"][0]["backend"], "llama");
        let stdout =
            ok(&frontend(&["check-accuracy", out.to_str().unwrap(), "--reference", reference.to_str().unwrap()]));
        assert!(stdout.contains("within bounds"), "{}: {stdout}", out.display());
    }
    // The comparison can fail: a reference whose answers belong to other samples (a misrouting).
    let misrouted = dir.path().join("misrouted");
    std::fs::create_dir_all(&misrouted).unwrap();
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("mlperf_log_accuracy.json")).unwrap()).unwrap();
    let mut entries = log.as_array().unwrap().clone();
    let n = entries.len() as u64;
    for e in &mut entries {
        e["qsl_idx"] = serde_json::json!((e["qsl_idx"].as_u64().unwrap() + 1) % n);
    }
    std::fs::write(misrouted.join("mlperf_log_accuracy.json"), serde_json::to_string(&entries).unwrap()).unwrap();
    let o = frontend(&["check-accuracy", net.to_str().unwrap(), "--reference", misrouted.to_str().unwrap()]);
    assert!(!o.status.success(), "answers of other samples fail: {}", text(&o));
    assert!(text(&o).contains("OUT OF BOUNDS"), "{}", text(&o));
}

/// The lab's generative rows: llama3.1-8b on the synthetic engine, and (when scripts/models has
/// fetched it) SmolLM2 on llama.cpp with the lab's own chat prompts, network against local.
#[test]
fn the_lab_prints_generative_rows_on_the_synthetic_engine_and_on_smollm2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lab");
    let o =
        frontend(&["lab", "-w", "llama3.1-8b", "-s", "offline", "--duration-ms", "1000", "-o", out.to_str().unwrap()]);
    let stdout = ok(&o);
    let row = stdout.lines().find(|l| l.starts_with("llama3.1-8b")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains(" tok") && row.contains("VALID/VALID"), "tokens/s both ways: {row}");
    let Some(model) = smollm2() else { return };
    let out = dir.path().join("lab-smollm2");
    let args = ["lab", "--model", model.to_str().unwrap(), "-s", "offline", "--duration-ms", "2000"];
    let o = frontend(&[&args[..], &["-o", out.to_str().unwrap()]].concat());
    let stdout = ok(&o);
    let row = stdout.lines().find(|l| l.starts_with("smollm2-135m")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains(" tok") && row.contains("VALID/VALID"), "{row}\n{}", text(&o));
    let lab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lab-report.json")).unwrap()).unwrap();
    let row = &lab["rows"][0];
    assert!(row["network_tokens_per_second"].as_f64().unwrap() > 0.0, "{row}");
    assert!((0.5..2.0).contains(&row["ratio"].as_f64().unwrap()), "{row}");
    assert!(lab["accelerator_config"].as_str().unwrap().contains("kind = \"llama\""), "{lab}");
    for kind in ["network", "local"] {
        let r = report(&out.join(format!("smollm2-135m-offline-{kind}")));
        assert_eq!(r["dataset"]["kind"], "prompts", "the lab's chat prompts, tokenized by the model: {}", r["dataset"]);
        assert_eq!(r["dataset"]["prompts"], 64);
        assert_eq!(r["accelerators"][0]["backend"], "llama");
    }
}
