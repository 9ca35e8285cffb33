//! Test fixtures shared by the submission tests: minimal but realistic LoadGen files (detail-log
//! lines, a VALID summary, accuracy logs of int32 tokens) and a complete system description, all
//! with the settings a submission needs, so a tree made of them checks clean.

use std::path::Path;

use serde_json::{Value, json};

use super::check::Scenario;
use super::rules::{LLAMA3_1_SAMPLES, MIN_DURATION_MS, V6_1_SEEDS};
use super::system::{KnownFacts, SystemDescription};

/// The submitter folder, relative to the checker's input.
pub(crate) const SUB: &str = "network/QDL";
/// The benchmark folder of the fixture system, relative to the checker's input.
pub(crate) const RES: &str = "network/QDL/results/qdl_sys/llama3.1-8b";

/// One `:::MLLOG` line of a detail log.
pub(crate) fn mllog(key: &str, value: Value) -> String {
    let line = json!({"key": key, "value": value, "time_ms": 1.0, "namespace": "mlperf::logging",
        "event_type": "POINT_IN_TIME", "metadata": {"is_error": false, "is_warning": false}});
    format!(":::MLLOG {line}\n")
}

/// Writes `text` at `path`, creating its folders.
pub(crate) fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A description of `QDL`'s `qdl_sys` with every meaningful field filled.
pub(crate) fn system_description() -> SystemDescription {
    let d = SystemDescription::network(&KnownFacts {
        submitter: "QDL".into(),
        system_name: "qdl_sys".into(),
        status: "available".into(),
        number_of_nodes: 2,
        accelerators_per_node: 1,
        number_connections: 4,
        network_protocol: "TCP".into(),
        ..KnownFacts::default()
    });
    let mut v = serde_json::to_value(&d).unwrap();
    for k in d.missing_meaningful() {
        v[k] = json!("filled");
    }
    serde_json::from_value(v).unwrap()
}

/// [`system_description`] as JSON.
pub(crate) fn system_json() -> String {
    system_description().to_json()
}

/// A performance run's detail log with submission settings for `s`.
pub(crate) fn perf_detail(s: Scenario) -> String {
    let mut keys = vec![
        ("sut_name", json!("qdl Network SUT (acc-0, acc-1)")),
        ("effective_scenario", json!(s.loadgen_name())),
        ("effective_performance_sample_count", json!(LLAMA3_1_SAMPLES)),
        ("effective_min_duration_ms", json!(MIN_DURATION_MS)),
        ("requested_use_token_latencies", json!(true)),
        ("effective_samples_per_query", json!(LLAMA3_1_SAMPLES)),
        ("early_stopping_met", json!(true)),
        ("effective_target_latency_ns", json!(0)),
        ("result_first_token_99.00_percentile_latency_ns", json!(3e8)),
        ("result_time_per_output_token_99.00_percentile_ns", json!(2e7)),
        ("result_validity", json!("VALID")),
    ];
    let (ttft, tpot) = if s == Scenario::Interactive { (5e8, 3e7) } else { (2e9, 1e8) };
    keys.push(("requested_server_ttft_latency", json!(ttft)));
    keys.push(("requested_server_tpot_latency", json!(tpot)));
    let mut text: String = keys.into_iter().map(|(k, v)| mllog(k, v)).collect();
    for (name, seed) in V6_1_SEEDS {
        text += &mllog(&format!("effective_{name}"), json!(seed));
    }
    text
}

/// An accuracy run's detail log covering the whole dataset.
pub(crate) fn accuracy_detail() -> String {
    mllog("effective_accuracy_sample_count", json!(LLAMA3_1_SAMPLES))
}

/// A performance summary LoadGen judged VALID.
pub(crate) const VALID_SUMMARY: &str = "================================================\n\
                                        MLPerf Results Summary\n\
                                        ================================================\n\
                                        SUT name : qdl Network SUT (acc-0, acc-1)\n\
                                        Scenario : Offline\n\
                                        Mode     : PerformanceOnly\n\
                                        Result is : VALID\n";

/// accuracy.txt with in-range llama3.1-8b values and a hash line.
pub(crate) const ACCURACY_TXT: &str = "\nResults\n\n{'rouge1': '38.8638', 'rouge2': '16.2134', 'rougeL': '24.5295', \
                                       'rougeLsum': '35.8712', 'gen_len': 8167644, 'gen_num': 13368}\nhash=234e91be\n";

/// measurements.json's text with every key filled.
pub(crate) fn measurements_json() -> String {
    json!({"input_data_types": "int32", "retraining": "No",
        "starting_weights_filename": "Llama-3.1-8B-Instruct", "weight_data_types": "bf16",
        "weight_transformations": "none"})
    .to_string()
}

/// Hex of int32 LE tokens, as LoadGen logs an LLM's output.
pub(crate) fn hex(tokens: &[i32]) -> String {
    tokens.iter().flat_map(|t| t.to_le_bytes()).map(|b| format!("{b:02X}")).collect()
}

/// A LoadGen accuracy log of `n` samples, each `len` tokens ending in one `eos`; with
/// `first_token` (outside Offline) each entry carries its first token as `token_data`.
pub(crate) fn accuracy_log(n: usize, len: usize, eos: i32, first_token: bool) -> String {
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            let mut tokens: Vec<i32> = (0..len.saturating_sub(1)).map(|t| (i * 31 + t) as i32 % 32000 + 100).collect();
            tokens.push(eos);
            let mut e = json!({"seq_id": i, "qsl_idx": (i * 7) % 13368, "data": hex(&tokens),
                "token_count": tokens.len()});
            if first_token {
                e["token_data"] = json!(hex(&tokens[..1]));
            }
            e
        })
        .collect();
    serde_json::to_string_pretty(&entries).unwrap()
}
