//! The command line end to end: LoadGen settings in layers (checked in LoadGen's own detail log),
//! exit statuses, environment variables, `--help`. Real accelerators on loopback; each LoadGen
//! test lasts well under a few seconds.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use qdl_shared::config::{FrontendConfig, hostname};

/// `qdl-frontend run` against `accs` writing into `out`, with `env` set.
fn run_env(accs: &[&Acc], out: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(frontend_bin());
    cmd.env("QDL_SECRET", TEST_SECRET).env("RUST_LOG", "warn").env_remove("QDL_CONFIG").env_remove("QDL_ACCELERATORS");
    cmd.args(["run", "--output-dir", out.to_str().unwrap(), "--metrics-listen", "", "--progress", "off"]);
    for a in accs {
        cmd.args(["-a", &a.addr]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().unwrap()
}

/// LoadGen's `effective_*` settings from its detail log.
fn effective(out: &Path) -> qdl_frontend::report::LoadgenResult {
    qdl_frontend::report::parse_detail_log(&out.join("mlperf_log_detail.txt")).unwrap()
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

#[test]
fn user_conf_beats_the_toml_as_in_the_issue_and_every_source_is_reported() {
    // The issue: a user.conf with *.Offline.min_duration = 2000 and *.Offline.target_qps = 3000,
    // run with a config whose [loadgen] says 10 s and 5000. LoadGen must run 2000 ms at 3000.
    let acc = Acc::start(&["--backend", "echo"]);
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("frontend.toml");
    std::fs::write(&toml, "[loadgen]\nmin_duration_ms = 10000\noffline_expected_qps = 5000.0\n").unwrap();
    let user = dir.path().join("user.conf");
    std::fs::write(&user, "*.Offline.min_duration = 2000\n*.Offline.target_qps = 3000\n").unwrap();
    let out = dir.path().join("run");
    // The config comes from QDL_CONFIG; the scenario in MLPerf's spelling.
    let o = run_env(
        &[&acc],
        &out,
        &["-w", "bert", "-s", "Offline", "--user-conf", user.to_str().unwrap(), "--total-samples", "500"],
        &[("QDL_CONFIG", toml.to_str().unwrap())],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "INVALID or not, without --require-valid the test finished: {t}");
    let e = effective(&out).effective;
    assert_eq!(e["min_duration_ms"], 2000, "LoadGen's own log: {e:?}");
    assert_eq!(e["target_qps"], 3000.0, "{e:?}");
    assert_eq!(e["scenario"], "Offline");

    let r = report(&out);
    assert_eq!(r["scenario"], "offline");
    let s = &r["loadgen_settings"];
    let uc = user.display().to_string();
    assert_eq!(s["min_duration_ms"], serde_json::json!({"value": 2000, "source": uc, "mlperf_conf": 600000}), "{s}");
    assert_eq!(s["offline_expected_qps"]["source"], uc.as_str(), "{s}");
    assert!(t.contains(&format!("loadgen: min_duration_ms = 2000 ({uc}; mlperf.conf: 600000)")), "{t}");
    assert!(t.contains("NOT A SUBMISSION"), "a 2 s run says it is not an official one: {t}");
    assert!(r["shortened"][0].as_str().unwrap().contains("min_duration_ms 2000"), "{}", r["shortened"]);

    // A flag beats the user.conf, and says so.
    let out = dir.path().join("flag");
    let o2 = run_env(
        &[&acc],
        &out,
        &["-w", "bert", "--user-conf", user.to_str().unwrap(), "--total-samples", "500", "--min-duration-ms", "1000"],
        &[("QDL_CONFIG", toml.to_str().unwrap())],
    );
    assert_eq!(o2.status.code(), Some(0), "{}", text(&o2));
    assert_eq!(effective(&out).effective["min_duration_ms"], 1000);
    assert_eq!(report(&out)["loadgen_settings"]["min_duration_ms"]["source"], "--min-duration-ms");
}

#[test]
fn an_invalid_run_names_the_fix_and_require_valid_exits_4() {
    // 110 samples (1.1 x 1 s x 100/s) are answered in far less than the 1 s minimum: INVALID.
    let acc = Acc::start(&["--backend", "echo"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = [
        "-w",
        "bert",
        "-s",
        "offline",
        "--min-duration-ms",
        "1000",
        "--min-query-count",
        "1",
        "--expected-qps",
        "100",
        "--total-samples",
        "200",
        "--require-valid",
    ];
    let o = run_env(&[&acc], &out, &args, &[]);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(std::fs::read_to_string(out.join("mlperf_log_summary.txt")).unwrap().contains("Result is : INVALID"));
    let fix = stdout.lines().find(|l| l.trim_start().starts_with("fix")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(fix.contains("outran offline_expected_qps 100") && fix.contains("--expected-qps"), "{fix}");
    // The suggestion is the measured rate x 1.1, from the same run's figures.
    let r = report(&out);
    let measured = r["loadgen"]["samples_per_second"].as_f64().unwrap();
    assert!(fix.contains(&format!("at least {:.0}", (measured * 1.1).round())), "{fix} (measured {measured})");
    assert_eq!(r["advice"].as_array().unwrap().len(), 1, "{}", r["advice"]);
    assert!(text(&o).contains("--require-valid"), "says why it exits 4: {}", text(&o));
}

#[test]
fn usage_config_and_user_conf_errors_have_their_own_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let o = run_env(&[], &out, &["--no-such-flag"], &[]);
    assert_eq!(o.status.code(), Some(2), "usage: {}", text(&o));
    let o = run_env(&[], &out, &["-s", "sideways"], &[]);
    assert_eq!(o.status.code(), Some(2), "an unknown scenario is a usage error: {}", text(&o));
    let o = Command::new(accelerator_bin()).arg("--no-such-flag").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // MLPerf's spellings parse (and get as far as the missing config file: 78, not 2).
    for sc in ["Offline", "Server", "SingleStream", "MultiStream", "singlestream"] {
        let o = run_env(&[], &out, &["-s", sc, "--config", "/nonexistent/frontend.toml"], &[]);
        assert_eq!(o.status.code(), Some(78), "{sc}: {}", text(&o));
        assert!(text(&o).contains("cannot read config file"), "{}", text(&o));
    }
    let o = Command::new(accelerator_bin()).env("QDL_CONFIG", "/nonexistent/acc.toml").output().unwrap();
    assert_eq!(o.status.code(), Some(78), "QDL_CONFIG is the accelerator's --config: {}", text(&o));
    assert!(text(&o).contains("/nonexistent/acc.toml"), "{}", text(&o));

    // A user.conf LoadGen cannot parse, and a run without accelerators, are configuration errors.
    let user = dir.path().join("user.conf");
    std::fs::write(&user, "*.Offline.target_qps = many\n").unwrap();
    let o = run_env(&[], &out, &["-a", "127.0.0.1:9", "--user-conf", user.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("user.conf"), "{}", text(&o));
    // Set but empty (`Environment=QDL_CONFIG=` in a unit) is unset, not an empty value.
    let o =
        run_env(&[], &out, &["-w", "bert", "--total-samples", "10"], &[("QDL_CONFIG", ""), ("QDL_ACCELERATORS", "")]);
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("no accelerator given") && text(&o).contains("QDL_ACCELERATORS"), "{}", text(&o));
}

#[test]
fn help_shows_defaults_environment_variables_and_exit_statuses() {
    let o = frontend(&["run", "--help"]);
    let help = ok(&o);
    let d = FrontendConfig::default();
    for want in [
        "[env: QDL_CONFIG=".to_string(),
        "[env: QDL_ACCELERATORS=".to_string(),
        format!("[default: {}]", d.frontend.connections_per_accelerator),
        format!("[default: {}]", d.frontend.slots_per_connection),
        format!("[default: {}]", d.frontend.metrics_listen),
        format!("[default: {}]", d.workload.seed),
        "each layer overriding the ones above it".to_string(),
        "143".to_string(),
        "--require-valid".to_string(),
    ] {
        assert!(help.contains(&want), "{want}:\n{help}");
    }
    let top = ok(&frontend(&["--help"]));
    for code in ["78", "130", "143", "  3 ", "  4 ", "  5 "] {
        assert!(top.contains(code), "{code}:\n{top}");
    }
    let o = Command::new(accelerator_bin()).arg("--help").output().unwrap();
    let help = ok(&o);
    assert!(help.contains("[env: QDL_CONFIG="), "{help}");
    assert!(help.contains(&format!("[default: the host name, {}]", hostname())), "{help}");
    assert!(help.contains("78") && help.contains("Exit status"), "{help}");
}

#[test]
fn the_accelerators_name_defaults_to_the_host_name_and_qdl_accelerators_lists_them() {
    let acc = Acc::start(&["--backend", "echo"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run_env(
        &[],
        &out,
        &["-w", "bert", "-m", "accuracy", "--total-samples", "20", "--expected-qps", "1000"],
        &[("QDL_ACCELERATORS", &acc.addr)],
    );
    ok(&o);
    let r = report(&out);
    assert_eq!(r["accelerators"][0]["name"], hostname().as_str(), "{}", r["accelerators"]);
    assert_eq!(r["sut_name"], format!("qdl Network SUT ({})", hostname()).as_str());
}
