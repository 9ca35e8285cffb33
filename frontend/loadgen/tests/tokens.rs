//! A real LoadGen Server run with token latencies, the way MLPerf's LLM Interactive category runs
//! (`<model>-interactive` keys of mlperf.conf in the Server scenario): the SUT reports each first
//! token with FirstTokenComplete, then completes with `n_tokens`. One LoadGen test per process, so
//! this file holds exactly one test.

mod common;

use std::time::Duration;

use common::{
    FirstToken, Qsl, TOKENS, TokenSut, detail_number, detail_value, error_entries, summary_number, summary_value,
};
use qdl_loadgen::{LlmBounds, LogSettings, Scenario, TestMode, TestSettings};

#[test]
fn server_run_reports_ttft_and_tpot_and_is_valid() {
    let mut settings = TestSettings { scenario: Scenario::Server, ..Default::default() };
    settings.apply_mlperf_conf("llama3_1-8b-interactive", Scenario::Server).unwrap();
    assert_eq!(
        settings.llm_bounds(),
        Some(LlmBounds { ttft: Duration::from_millis(500), tpot: Duration::from_millis(30) })
    );
    // A short run of a tiny SUT: mlperf.conf's seeds and token settings, but a 1.5 s run of about
    // 1500 queries (early stopping at the 99th percentile needs a few hundred), the QSL's own
    // performance sample count, and bounds generous enough for a loaded test machine.
    settings.mode = TestMode::PerformanceOnly;
    settings.server_target_qps = 1000.0;
    settings.min_duration_ms = 1500;
    settings.min_query_count = 100;
    settings.performance_sample_count_override = 0;
    settings.server_ttft_latency = 2_000_000_000;
    settings.server_tpot_latency = 500_000_000;

    let dir = tempfile::tempdir().unwrap();
    let sut = TokenSut::new(8, FirstToken::Alternate);
    qdl_loadgen::start_test(&sut, &Qsl(16), &settings, &LogSettings::new(dir.path())).unwrap();
    sut.shutdown();

    let summary = std::fs::read_to_string(dir.path().join("mlperf_log_summary.txt")).unwrap();
    let detail = std::fs::read_to_string(dir.path().join("mlperf_log_detail.txt")).unwrap();
    let context = format!("--- summary ---\n{summary}");

    // LoadGen judged the run by TTFT and TPOT and found it valid, without errors.
    assert_eq!(summary_value(&summary, "Result is"), Some("VALID"), "{context}");
    assert_eq!(summary_value(&summary, "Performance constraints satisfied"), Some("Yes"), "{context}");
    assert_eq!(summary_value(&summary, "ttft_latency (ns)"), Some("2000000000"), "{context}");
    assert_eq!(summary_value(&summary, "tpot_latency (ns)"), Some("500000000"), "{context}");
    assert!(summary.contains("TTFT Early Stopping Result:"), "{context}");
    assert!(summary.contains("TPOT Early Stopping Result:"), "{context}");
    assert!(summary.contains("No errors encountered during test."), "{context}");
    assert_eq!(detail_value(&detail, "result_validity"), Some("\"VALID\""));
    assert_eq!(detail_number(&detail, "num_errors"), 0.0);
    let errors = error_entries(&detail);
    assert!(errors.is_empty(), "LoadGen logged errors:\n{}", errors.join("\n"));

    // TTFT: at least the SUT's delay to the first token, and below the whole sample latency.
    let step_ns = common::STEP.as_nanos() as f64;
    let ttft_min = summary_number(&summary, "Min First Token latency (ns)");
    let ttft_mean = summary_number(&summary, "Mean First Token latency (ns)");
    let latency_mean = summary_number(&summary, "Mean latency (ns)");
    assert!(ttft_min >= step_ns, "{context}");
    assert!(ttft_mean < latency_mean, "{context}");
    assert_eq!(detail_number(&detail, "result_first_token_mean_latency_ns"), ttft_mean);
    assert!(detail_number(&detail, "result_first_token_99.00_percentile_latency_ns") >= ttft_min);
    assert!(summary_number(&summary, "99.00 percentile first token latency (ns)") >= ttft_min, "{context}");

    // TPOT: LoadGen's (latency - TTFT) / (n_tokens - 1) per sample, so n_tokens reached it.
    let tpot_mean = summary_number(&summary, "Mean Time per Output Token (ns)");
    assert!(tpot_mean >= step_ns / (TOKENS - 1) as f64, "{context}");
    let from_means = (latency_mean - ttft_mean) / (TOKENS - 1) as f64;
    assert!((tpot_mean - from_means).abs() < 10.0, "TPOT {tpot_mean} vs {from_means} from the means\n{context}");
    assert_eq!(detail_number(&detail, "result_time_to_output_token_mean"), tpot_mean);
    assert!(detail_number(&detail, "result_time_per_output_token_99.00_percentile_ns") > 0.0);
    assert!(summary_number(&summary, "99.00 percentile time to output token (ns)") > 0.0, "{context}");

    // Tokens per second: TOKENS per sample (LoadGen counts samples - 1 for samples per second).
    let tokens_per_s = detail_number(&detail, "result_completed_tokens_per_second");
    let samples_per_s = detail_number(&detail, "result_completed_samples_per_sec");
    let ratio = tokens_per_s / samples_per_s;
    assert!((TOKENS as f64..TOKENS as f64 * 1.02).contains(&ratio), "tokens/samples per second = {ratio}");
    println!(
        "Result is : VALID; TTFT mean {ttft_mean} ns, TPOT mean {tpot_mean} ns, {} queries",
        detail_number(&detail, "result_query_count")
    );
}
