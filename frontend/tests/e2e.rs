//! End to end: real accelerator processes on loopback, the real frontend with the official
//! LoadGen, over TCP. Short durations via LoadGen settings; modest rates.

mod common;

use common::*;

fn summary(out: &std::path::Path) -> String {
    std::fs::read_to_string(out.join("mlperf_log_summary.txt")).unwrap()
}

#[test]
fn offline_and_server_are_valid_over_two_accelerators() {
    let a = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "e2e-a"]);
    let b = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "e2e-b"]);
    let dir = tempfile::tempdir().unwrap();

    let off = dir.path().join("offline");
    let o = run(
        &[&a, &b],
        &off,
        &[
            "-w",
            "resnet50",
            "-s",
            "offline",
            "--min-duration-ms",
            "1500",
            "--min-query-count",
            "100",
            "--expected-qps",
            "4000",
            "--slots",
            "256",
        ],
    );
    let stdout = ok(&o);
    let s = summary(&off);
    assert!(s.contains("Result is : VALID"), "{s}");
    assert!(s.contains("qdl Network SUT (e2e-a, e2e-b)"), "the SUT name lists both accelerators:\n{s}");
    assert!(stdout.contains("VALID"), "{stdout}");
    let detail = std::fs::read_to_string(off.join("mlperf_log_detail.txt")).unwrap();
    assert!(detail.contains("get_sut_name_duration_ns"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(off.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["network"], true);
    assert_eq!(report["accelerators"].as_array().unwrap().len(), 2);
    let f = &report["frontend"];
    assert_eq!(f["samples_issued"], f["samples_completed"]);
    assert!(f["samples_completed"].as_u64().unwrap() >= 6000);
    assert_eq!(f["sample_errors"], 0);
    // Both accelerators did work, through all four connections.
    assert!(f["connections"].as_array().unwrap().iter().all(|c| c["completed"].as_u64().unwrap() > 0), "{f}");

    let srv = dir.path().join("server");
    let o = run(
        &[&a, &b],
        &srv,
        &[
            "-w",
            "bert",
            "-s",
            "server",
            "--min-duration-ms",
            "1500",
            "--target-qps",
            "2000",
            "--min-query-count",
            "100",
        ],
    );
    ok(&o);
    let s = summary(&srv);
    assert!(s.contains("Result is : VALID"), "{s}");
    assert!(s.contains("Scenario : Server"), "{s}");

    // The accelerators counted the samples and batched them.
    let m = a.scrape();
    let received =
        m.lines().find(|l| l.starts_with("qdl_accelerator_samples_received_total ")).expect("counter exported");
    assert!(received.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() > 0.0, "{received}");
    assert!(m.contains("qdl_accelerator_batch_size_bucket"), "batch sizes are exported as a histogram");
    assert!(m.contains("qdl_accelerator_queue_delay_seconds_bucket"));
}

#[test]
fn accuracy_runs_pass_check_accuracy_for_both_workloads() {
    let a = Acc::start(&["--backend", "echo", "--name", "acc-x"]);
    let b = Acc::start(&["--backend", "echo", "--name", "acc-y"]);
    let dir = tempfile::tempdir().unwrap();
    for (w, total, perf) in [("resnet50", "300", "100"), ("bert", "500", "200")] {
        let out = dir.path().join(w);
        let o = run(
            &[&a, &b],
            &out,
            &[
                "-w",
                w,
                "-s",
                "offline",
                "-m",
                "accuracy",
                "--total-samples",
                total,
                "--performance-samples",
                perf,
                "--expected-qps",
                "1000",
            ],
        );
        ok(&o);
        let o = frontend(&["check-accuracy", out.to_str().unwrap()]);
        let stdout = ok(&o);
        assert!(stdout.contains(&format!("{total}/{total} samples correct")), "{w}: {stdout}");
    }
    // Server and SingleStream deliver samples one query at a time: still every sample exactly once.
    for sc in ["server", "singlestream"] {
        let out = dir.path().join(sc);
        let o = run(
            &[&a, &b],
            &out,
            &["-w", "bert", "-s", sc, "-m", "accuracy", "--total-samples", "200", "--target-qps", "2000"],
        );
        ok(&o);
        let stdout = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
        assert!(stdout.contains("200/200 samples correct"), "{sc}: {stdout}");
    }
}

#[test]
fn local_baseline_runs_the_same_workers_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("acc.toml");
    std::fs::write(&cfg, TEST_SYNTHETIC).unwrap();
    let out = dir.path().join("local");
    let o = run(
        &[],
        &out,
        &[
            "--local",
            "--accelerator-config",
            cfg.to_str().unwrap(),
            "--local-accelerators",
            "2",
            "-w",
            "resnet50",
            "-m",
            "accuracy",
            "--total-samples",
            "200",
            "--performance-samples",
            "64",
        ],
    );
    ok(&o);
    let stdout = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
    assert!(stdout.contains("200/200 samples correct"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["network"], false);
    assert!(!report["sut_name"].as_str().unwrap().contains("Network SUT"), "the baseline is not a Network SUT");

    let perf = dir.path().join("local-perf");
    let o = run(
        &[],
        &perf,
        &[
            "--local",
            "--accelerator-config",
            cfg.to_str().unwrap(),
            "-w",
            "bert",
            "--min-duration-ms",
            "1000",
            "--min-query-count",
            "100",
            "--expected-qps",
            "2000",
        ],
    );
    ok(&o);
    assert!(summary(&perf).contains("Result is : VALID"));
}

#[test]
fn check_accuracy_catches_wrong_missing_and_duplicated_responses() {
    let a = Acc::start(&["--backend", "echo"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("good");
    ok(&run(&[&a], &out, &["-w", "bert", "-m", "accuracy", "--total-samples", "50", "--expected-qps", "1000"]));
    let log = std::fs::read_to_string(out.join("mlperf_log_accuracy.json")).unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&log).unwrap();
    assert_eq!(entries.len(), 50);

    let tamper = |name: &str, f: &dyn Fn(&mut Vec<serde_json::Value>)| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(out.join("report.json"), d.join("report.json")).unwrap();
        let mut e = entries.clone();
        f(&mut e);
        std::fs::write(d.join("mlperf_log_accuracy.json"), serde_json::to_string(&e).unwrap()).unwrap();
        let o = frontend(&["check-accuracy", d.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(5), "{name}: {}", text(&o));
        text(&o)
    };
    let t = tamper("wrong", &|e| {
        let d = e[7]["data"].as_str().unwrap().to_string();
        let flipped = format!("{}{}", if d.starts_with('0') { '1' } else { '0' }, &d[1..]);
        e[7]["data"] = serde_json::Value::String(flipped);
    });
    assert!(t.contains("49/50 samples correct") && t.contains("expected"), "{t}");
    let t = tamper("missing", &|e| {
        e.remove(3);
    });
    assert!(t.contains("1 missing"), "{t}");
    let t = tamper("duplicated", &|e| {
        let x = e[5].clone();
        e.push(x);
    });
    assert!(t.contains("1 duplicated"), "{t}");
}

#[test]
fn the_lab_runs_network_and_local_and_reports_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lab");
    let o = frontend(&["lab", "-w", "bert", "-s", "offline", "--duration-ms", "1000", "-o", out.to_str().unwrap()]);
    let stdout = ok(&o);
    assert!(stdout.contains("Network division vs. accelerators in the box"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("bert") && l.contains("offline") && l.contains('%')), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lab-report.json")).unwrap()).unwrap();
    let row = &report["rows"][0];
    let ratio = row["ratio"].as_f64().unwrap();
    assert!((0.5..2.0).contains(&ratio), "network/local ratio {ratio}");
    assert_eq!(report["accelerators"].as_array().unwrap().len(), 2);
    for kind in ["network", "local"] {
        let run = out.join(format!("bert-offline-{kind}"));
        assert!(run.join("mlperf_log_summary.txt").is_file(), "{kind}");
        assert!(run.join("latency.svg").is_file() && run.join("batch-sizes.svg").is_file(), "{kind} plots");
    }
    assert!(text(&o).contains("NOT A SUBMISSION"), "the lab's short runs say so: {}", text(&o));
    let log = std::fs::read_to_string(out.join("bert-offline-network/frontend.log")).unwrap();
    assert!(log.contains("loadgen: min_duration_ms = 1000 (--min-duration-ms; mlperf.conf: 600000)"), "{log}");
    // The lab stopped its accelerators with SIGTERM and they exited 0 (it warns otherwise).
    assert!(!text(&o).contains("lab: warning"), "{}", text(&o));
    assert!(out.join("lab-acc-0.log").is_file() && out.join("lab-acc-1.log").is_file());
}

/// Under systemd (NOTIFY_SOCKET, WATCHDOG_USEC): the frontend pings the watchdog from its actor
/// loop, says READY=1 when the test starts, and turns the watchdog off (WATCHDOG_USEC=0) once the
/// test is over, before writing the report.
#[test]
fn a_run_pings_systemds_watchdog_and_turns_it_off_when_done() {
    let a = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "wd-a"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    let out = dir.path().join("out");
    let mut cmd = std::process::Command::new(frontend_bin());
    cmd.env("QDL_SECRET", TEST_SECRET).env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "200000");
    cmd.args(["run", "--output-dir", out.to_str().unwrap(), "--metrics-listen", "", "--progress", "off"]);
    cmd.args(["--accelerator", &a.addr, "-w", "resnet50", "-s", "offline", "--min-duration-ms", "500"]);
    cmd.args(["--min-query-count", "10", "--expected-qps", "1000"]);
    // Read while it runs, as systemd does (a full socket queue would block its READY=1).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut buf, mut got) = ([0u8; 512], Vec::new());
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(_) if done.load(std::sync::atomic::Ordering::Acquire) => return got,
                    Err(_) => {}
                }
            }
        })
    };
    let o = cmd.output().expect("run qdl-frontend");
    done.store(true, std::sync::atomic::Ordering::Release);
    let got = reader.join().unwrap();
    ok(&o);
    let ready = got.iter().position(|m| m.starts_with("READY=1")).unwrap_or_else(|| panic!("no READY=1: {got:?}"));
    assert!(got.iter().any(|m| m == "WATCHDOG=1"), "no watchdog ping: {got:?}");
    let off =
        got.iter().position(|m| m == "WATCHDOG_USEC=0").unwrap_or_else(|| panic!("watchdog not turned off: {got:?}"));
    assert!(ready < off, "{got:?}");
    assert!(got[off + 1..].iter().all(|m| m != "WATCHDOG=1"), "pings after the watchdog was turned off: {got:?}");
}
