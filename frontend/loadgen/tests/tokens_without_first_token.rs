//! The counterpart of tokens.rs: a Server run with token latencies whose SUT never calls
//! FirstTokenComplete. LoadGen must report it, so tokens.rs's checks can fail. One LoadGen test per
//! process, so this file holds exactly one test.
//!
//! LoadGen 6.0.17 itself then reads the missing first-token latency from reserved but unset
//! storage when it computes TPOT (as it does in every Offline LLM run, where no first token is
//! reported); the run is kept short and nothing here depends on those values.

mod common;

use common::{FirstToken, Qsl, TokenSut, detail_number, detail_value, error_entries, summary_number, summary_value};
use qdl_loadgen::{LogSettings, Scenario, TestMode, TestSettings};

#[test]
fn server_run_without_first_tokens_logs_errors() {
    let mut settings = TestSettings { scenario: Scenario::Server, ..Default::default() };
    settings.apply_mlperf_conf("llama3_1-8b-interactive", Scenario::Server).unwrap();
    settings.mode = TestMode::PerformanceOnly;
    settings.server_target_qps = 200.0;
    settings.min_duration_ms = 300;
    settings.min_query_count = 20;
    settings.performance_sample_count_override = 0;
    settings.server_ttft_latency = 2_000_000_000;
    settings.server_tpot_latency = 500_000_000;

    let dir = tempfile::tempdir().unwrap();
    let sut = TokenSut::new(4, FirstToken::Never);
    qdl_loadgen::start_test(&sut, &Qsl(16), &settings, &LogSettings::new(dir.path())).unwrap();
    sut.shutdown();

    let summary = std::fs::read_to_string(dir.path().join("mlperf_log_summary.txt")).unwrap();
    let detail = std::fs::read_to_string(dir.path().join("mlperf_log_detail.txt")).unwrap();
    let context = format!("--- summary ---\n{summary}");

    let errors = error_entries(&detail);
    let missing: Vec<_> = errors.iter().filter(|e| e.contains("before it's first token latency")).collect();
    let queries = detail_number(&detail, "result_query_count");
    assert!(missing.len() as f64 >= queries, "{} first-token errors for {queries} queries", missing.len());
    assert!(detail_number(&detail, "num_errors") >= queries);
    assert!(summary.contains("ERRORS encountered. See detailed log."), "{context}");
    // No first token was recorded at all. LoadGen does not fail the TTFT/TPOT constraints for it
    // (it has no TTFT to judge): the errors are its only report.
    assert_eq!(summary_number(&summary, "Max First Token latency (ns)"), 0.0, "{context}");
    assert_eq!(summary_value(&summary, "Performance constraints satisfied"), Some("Yes"), "{context}");
    // The run is too short for early stopping (a few hundred queries at the 99th percentile), so
    // its validity says nothing about the first tokens; it is only printed.
    println!(
        "Result is : {:?} (detail {:?}); {} errors for {queries} queries; first: {}",
        summary_value(&summary, "Result is"),
        detail_value(&detail, "result_validity"),
        errors.len(),
        missing[0]
    );
}
