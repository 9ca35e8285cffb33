//! Tests of [`super::check_tree`]: a good tree built in a tempdir is clean, and each rule fails
//! when the tree breaks it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;
use crate::submission::fixtures::{
    ACCURACY_TXT, RES, SUB, accuracy_detail, measurements_json, mllog, perf_detail, system_json, write,
};
use crate::submission::test06::{FirstToken, Test06};

fn scenario(root: &Path, s: Scenario, name: &str) {
    let d = root.join(RES).join(name);
    write(&d.join("measurements.json"), &measurements_json());
    write(&d.join("user.conf"), "llama3_1-8b.Offline.target_qps = 10\n");
    write(&d.join("README.md"), "qdl\n");
    write(&d.join("performance/run_1/mlperf_log_summary.txt"), "Result is : VALID\n");
    write(&d.join("performance/run_1/mlperf_log_detail.txt"), &perf_detail(s));
    write(&d.join("accuracy/mlperf_log_summary.txt"), "accuracy\n");
    write(&d.join("accuracy/mlperf_log_detail.txt"), &accuracy_detail());
    write(&d.join("accuracy/accuracy.txt"), ACCURACY_TXT);
    write(&d.join("accuracy/mlperf_log_accuracy.json"), "[]");
    let first = if s == Scenario::Offline { FirstToken::Skipped } else { FirstToken::Pass };
    write(&d.join("TEST06/verify_accuracy.txt"), &Test06 { first_token: first, eos: true, length: true }.render());
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join(SUB).join("systems/qdl_sys.json"), &system_json());
    write(&root.join(SUB).join("src/llama3.1-8b/README.md"), "qdl\n");
    write(&root.join(SUB).join("documentation/calibration.md"), "none\n");
    scenario(root, Scenario::Offline, "Offline");
    scenario(root, Scenario::Server, "Server");
    scenario(root, Scenario::Interactive, "Interactive");
    dir
}

/// The errors of a good tree changed by `change` (given the tree's root).
fn errors_after(change: impl FnOnce(&Path)) -> Vec<Finding> {
    let dir = tree();
    change(dir.path());
    check_tree(dir.path()).errors().cloned().collect()
}

#[track_caller]
fn assert_found(found: &[Finding], rule: Rule, text: &str) {
    assert!(found.iter().any(|f| f.rule == rule && f.message.contains(text)), "no {rule:?} {text:?} in {found:#?}");
}

fn path(root: &Path, rel: &str) -> PathBuf {
    root.join(RES).join(rel)
}

/// Makes `key` read `value` in a detail log (the first occurrence wins).
fn set_key(root: &Path, rel: &str, key: &str, value: Value) {
    let p = path(root, rel);
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, mllog(key, value) + &text).unwrap();
}

fn set_json(root: &Path, rel: &str, key: &str, value: Option<Value>) {
    let p = root.join(rel);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    match value {
        Some(x) => v[key] = x,
        None => drop(v.as_object_mut().unwrap().remove(key)),
    }
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn a_good_tree_is_clean() {
    let dir = tree();
    let r = check_tree(dir.path());
    assert_eq!(r.findings, vec![], "{}", r.summary());
    assert_eq!(r.results, 3);
    assert!(r.is_clean() && r.is_clean_but_accuracy());
    assert!(r.summary().starts_with("submission looks OK: 3 results"), "{}", r.summary());
}

#[test]
fn layout_rules_fail() {
    assert_found(&check_tree(tempfile::tempdir().unwrap().path()).findings, Rule::Layout, "no network/");
    let e = errors_after(|r| std::fs::remove_dir_all(r.join(SUB).join("src")).unwrap());
    assert_found(&e, Rule::Layout, "src directory does not exist");
    let e = errors_after(|r| {
        std::fs::remove_dir_all(path(r, "Server")).unwrap();
        std::fs::remove_dir_all(path(r, "Interactive")).unwrap();
    });
    assert_found(&e, Rule::Layout, "(one of) Interactive or Server");
    let e = errors_after(|r| std::fs::remove_dir_all(path(r, "Offline")).unwrap());
    assert_found(&e, Rule::Layout, "missing ['offline']");
    assert_found(
        &errors_after(|r| std::fs::create_dir(path(r, "SingleStream")).unwrap()),
        Rule::Layout,
        "unknown scenario",
    );
    let e = errors_after(|r| std::fs::create_dir(r.join(SUB).join("results/qdl_sys/llama3.1-8b-99")).unwrap());
    assert_found(&e, Rule::Layout, "unknown benchmark");
    let e = errors_after(|r| std::fs::remove_file(r.join(SUB).join("systems/qdl_sys.json")).unwrap());
    assert_found(&e, Rule::System, "needs systems/<system>.json");
    let dir = tree();
    std::fs::remove_dir_all(dir.path().join(SUB).join("documentation")).unwrap();
    let r = check_tree(dir.path());
    assert!(r.is_clean(), "calibration.md is only a warning");
    assert_eq!(r.warnings().count(), 1);
}

#[test]
fn system_rules_fail() {
    let sys = format!("{SUB}/systems/qdl_sys.json");
    let e = errors_after(|r| set_json(r, &sys, "is_network", Some(json!(true))));
    assert_found(&e, Rule::Network, "the string \"True\"");
    assert_found(
        &errors_after(|r| set_json(r, &sys, "is_network", Some(json!("False")))),
        Rule::Network,
        "network mode",
    );
    assert_found(&errors_after(|r| set_json(r, &sys, "nic_sut", None)), Rule::System, "field nic_sut is missing");
    let e = errors_after(|r| set_json(r, &sys, "cooling", Some(json!(""))));
    assert_found(&e, Rule::System, "field cooling requires a meaningful response");
    assert_found(&errors_after(|r| set_json(r, &sys, "division", Some(json!("closed")))), Rule::System, "has division");
    assert_found(
        &errors_after(|r| set_json(r, &sys, "submitter", Some(json!("Other")))),
        Rule::System,
        "has submitter",
    );
    assert_found(
        &errors_after(|r| set_json(r, &sys, "status", Some(json!("released")))),
        Rule::System,
        "invalid status",
    );
    assert_found(&errors_after(|r| set_json(r, &sys, "system_type", Some(json!("edge")))), Rule::System, "datacenter");
    let e = errors_after(|r| set_json(r, &sys, "number_of_nodes", Some(json!("N/A"))));
    assert_found(&e, Rule::System, "number_of_nodes must be an integer");
    assert!(errors_after(|r| set_json(r, &sys, "number_of_nodes", Some(json!("2")))).is_empty(), "a numeric string");
    assert_found(&errors_after(|r| write(&r.join(&sys), "[1]")), Rule::System, "not a JSON object");
}

#[test]
fn scenario_file_rules_fail() {
    let m = format!("{RES}/Offline/measurements.json");
    assert_found(
        &errors_after(|r| set_json(r, &m, "retraining", None)),
        Rule::Measurements,
        "field retraining is missing",
    );
    let e = errors_after(|r| set_json(r, &m, "retraining", Some(json!(""))));
    assert_found(&e, Rule::Measurements, "missing meaningful value");
    let e = errors_after(|r| std::fs::remove_file(r.join(&m)).unwrap());
    assert_found(&e, Rule::Measurements, "measurements json file not found");
    assert_found(&errors_after(|r| write(&path(r, "Server/user.conf"), "")), Rule::Measurements, "empty user.conf");
    let e = errors_after(|r| std::fs::remove_file(path(r, "Server/README.md")).unwrap());
    assert_found(&e, Rule::Measurements, "missing README.md");
    let e = errors_after(|r| write(&path(r, "Offline/performance/run_1/report.json"), "{}"));
    assert_found(&e, Rule::Files, "report.json");
    assert!(errors_after(|r| write(&path(r, "Offline/performance/run_1/mlperf_log_trace.json"), "")).is_empty());
    let e =
        errors_after(|r| std::fs::remove_file(path(r, "Offline/performance/run_1/mlperf_log_summary.txt")).unwrap());
    assert_found(&e, Rule::Files, "missing");
    assert_found(&errors_after(|r| write(&path(r, "Offline/accuracy/report.json"), "{}")), Rule::Files, "report.json");
    let e = errors_after(|r| std::fs::remove_file(path(r, "Offline/accuracy/mlperf_log_summary.txt")).unwrap());
    assert_found(&e, Rule::Files, "missing");
    let e = errors_after(|r| std::fs::remove_dir_all(path(r, "Offline/accuracy")).unwrap());
    assert_found(&e, Rule::Files, "crashes without it");
    let big = "x".repeat(10241);
    let e = errors_after(|r| write(&path(r, "Offline/accuracy/mlperf_log_accuracy.json"), &big));
    assert_found(&e, Rule::Accuracy, "is not truncated");
    let e =
        errors_after(|r| write(&path(r, "Offline/accuracy/accuracy.txt"), ACCURACY_TXT.split("hash=").next().unwrap()));
    assert_found(&e, Rule::Accuracy, "not hash value");
    let e =
        errors_after(|r| write(&path(r, "Offline/performance/run_1/mlperf_log_summary.txt"), "Result is : INVALID\n"));
    assert_found(&e, Rule::Validity, "VALID");
    let e = errors_after(|r| write(&path(r, "Offline/performance/run_1/mlperf_log_detail.txt"), "hello\n"));
    assert_found(&e, Rule::Files, "not a LoadGen detail log");
}

#[test]
fn test06_rule_fails() {
    let failed = Test06 { first_token: FirstToken::Pass, eos: false, length: true }.render();
    let e = errors_after(|r| write(&path(r, "Server/TEST06/verify_accuracy.txt"), &failed));
    assert_found(&e, Rule::Test06, "first_token_check: true eos_check: false length_check: true");
    let e = errors_after(|r| std::fs::remove_dir_all(path(r, "Interactive/TEST06")).unwrap());
    assert_found(&e, Rule::Test06, "Missing TEST06");
}

#[test]
fn performance_log_rules_fail() {
    let off = "Offline/performance/run_1/mlperf_log_detail.txt";
    let srv = "Server/performance/run_1/mlperf_log_detail.txt";
    let int = "Interactive/performance/run_1/mlperf_log_detail.txt";
    let cases: [(&str, &str, Value, Rule, &str); 13] = [
        (off, "sut_name", json!("qdl_SUT"), Rule::Network, "'Network SUT' got \"qdl_SUT\""),
        (off, "effective_qsl_rng_seed", json!(2465351861681999779u64), Rule::Seeds, "qsl_rng_seed is wrong"),
        (srv, "effective_schedule_rng_seed", json!(1), Rule::Seeds, "schedule_rng_seed is wrong"),
        (off, "effective_min_duration_ms", json!(5000), Rule::Settings, "found=5000"),
        (off, "effective_performance_sample_count", json!(600), Rule::Settings, "found 600, needs to be >= 13368"),
        (srv, "requested_use_token_latencies", json!(false), Rule::Settings, "use_token_latencies"),
        (int, "effective_scenario", json!("Offline"), Rule::Settings, "effective_scenario is \"Offline\""),
        (off, "effective_samples_per_query", json!(1034), Rule::Settings, "samples per query"),
        (srv, "early_stopping_met", json!(false), Rule::Latency, "Early stopping"),
        (srv, "result_first_token_99.00_percentile_latency_ns", json!(2e9), Rule::Latency, "TTFT and TPOT"),
        (int, "result_time_per_output_token_99.00_percentile_ns", json!(1.5e8), Rule::Latency, "TTFT and TPOT"),
        (int, "requested_server_ttft_latency", json!(2e9), Rule::Latency, "must request TTFT"),
        (srv, "effective_target_latency_ns", json!(3e10), Rule::Latency, "Latency constraint"),
    ];
    for (file, key, value, rule, text) in cases {
        let e = errors_after(|r| set_key(r, file, key, value));
        assert_found(&e, rule, text);
        assert!(e.iter().all(|f| f.path.ends_with(file)), "{key}: only {file} fails: {e:#?}");
    }
    assert!(errors_after(|r| set_key(r, off, "early_stopping_met", json!(false))).is_empty(), "Offline has none");
    let e = errors_after(|r| {
        let p = path(r, srv);
        let mut t = std::fs::read_to_string(&p).unwrap();
        t += &mllog("warning_generic_message", json!("Found Audit Config file (audit.config). Overriding"));
        t += &mllog("error_invalid_config", json!("bad")).replace("\"is_error\":false", "\"is_error\":true");
        std::fs::write(p, t).unwrap();
    });
    assert_found(&e, Rule::LoadgenErrors, "number of errors: 1");
    assert_found(&e, Rule::LoadgenErrors, "audit.config");
}

#[test]
fn accuracy_log_and_target_rules_fail() {
    let acc = "Offline/accuracy/mlperf_log_detail.txt";
    let e = errors_after(|r| set_key(r, acc, "effective_accuracy_sample_count", json!(600)));
    assert_found(&e, Rule::Accuracy, "does not cover all dataset, accuracy samples: 600, dataset size: 13368");
    let dir = tree();
    let low = ACCURACY_TXT.replace("'rouge1': '38.8638'", "'rouge1': '0.5012'").replace("8167644,", "123456,");
    write(&path(dir.path(), "Server/accuracy/accuracy.txt"), &low);
    let r = check_tree(dir.path());
    let e: Vec<Finding> = r.errors().cloned().collect();
    assert_found(&e, Rule::AccuracyTarget, "rouge1 accuracy not met: expected=38.391408, found=0.5012");
    assert_found(&e, Rule::AccuracyTarget, "gen_len accuracy not met: expected=7350879.600000, found=123456");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(!r.is_clean() && r.is_clean_but_accuracy());
    assert!(r.summary().contains("but for its accuracy targets"), "{}", r.summary());
    let high = ACCURACY_TXT.replace("8167644,", "9999999,");
    let e = errors_after(|r| write(&path(r, "Offline/accuracy/accuracy.txt"), &high));
    assert_found(&e, Rule::AccuracyTarget, "upper limit=8984408.400000, found=9999999");
    let two_spaces =
        ACCURACY_TXT.replace("'gen_len': 8167644", "'gen_len':  8167644").replace("'rougeL': ", "'rougeL':");
    let e = errors_after(|r| write(&path(r, "Offline/accuracy/accuracy.txt"), &two_spaces));
    assert_found(&e, Rule::AccuracyTarget, "no gen_len");
    assert_found(&e, Rule::AccuracyTarget, "no rougeL");
    assert_eq!(e.len(), 2, "rougeLsum is still found: {e:#?}");
}
