//! The rules on the files of one result (docs/submission.md §4, §5): LoadGen's detail logs as the
//! checker reads them (by key, the first occurrence winning) and `accuracy.txt`.
//!
//! Each rule yields `(Rule, message)` for what it finds wrong; [`super::check`] adds the path and
//! the severity.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::SubmissionError;
use super::check::{Rule, Scenario};

/// The v6.1 seeds (LoadGen 6.0.17's mlperf.conf): qsl, sample index, schedule.
pub const V6_1_SEEDS: [(&str, u64); 3] = [
    ("qsl_rng_seed", 2085463073848966840),
    ("sample_index_rng_seed", 2747215439041700203),
    ("schedule_rng_seed", 16159082839903944936),
];

/// The least `min_duration` of a submission run, ms.
pub const MIN_DURATION_MS: u64 = 600_000;

/// llama3.1-8b's dataset size: the performance sample count, the accuracy run's sample count
/// and (old checker) Offline's samples per query.
pub const LLAMA3_1_SAMPLES: u64 = 13368;

/// The TTFT and TPOT bounds the checker applies to Server and Interactive (both are LoadGen
/// Server runs), ns; the 99th percentiles must be strictly below.
pub const SERVER_TTFT_TPOT_NS: (f64, f64) = (2e9, 1e8);

/// The TTFT and TPOT an Interactive run must have requested (`llama3_1-8b-interactive`), ns.
pub const INTERACTIVE_TTFT_TPOT_NS: (f64, f64) = (5e8, 3e7);

/// The Server latency bound, ns.
pub const SERVER_LATENCY_NS: f64 = 20e9;

/// llama3.1-8b's accuracy targets: (accuracy.txt key, least value, greatest value).
pub const LLAMA3_1_TARGETS: [(&str, f64, f64); 5] = [
    ("rouge1", 38.7792 * 0.99, f64::INFINITY),
    ("rouge2", 15.9075 * 0.99, f64::INFINITY),
    ("rougeL", 24.4957 * 0.99, f64::INFINITY),
    ("rougeLsum", 35.793 * 0.99, f64::INFINITY),
    ("gen_len", 8167644.0 * 0.9, 8167644.0 * 1.1),
];

/// The text of the audit warning LoadGen logs when it applies an audit.config.
const AUDIT_WARNING: &str = "Found Audit Config file";

/// A LoadGen `mlperf_log_detail.txt` as the checker reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DetailLog {
    /// Each key's first value.
    pub keys: BTreeMap<String, Value>,
    /// The entries marked `is_error` ("key: value").
    pub errors: Vec<String>,
    /// Whether LoadGen said it applied an audit.config.
    pub audit_warning: bool,
}

impl DetailLog {
    /// Parses the text of a detail log; its first line must start with `:::MLLOG`.
    pub fn parse(text: &str, path: &Path) -> Result<DetailLog, SubmissionError> {
        if !text.starts_with(":::MLLOG") {
            return Err(SubmissionError::NotDetailLog { path: path.to_path_buf() });
        }
        let mut log = DetailLog::default();
        for line in text.lines() {
            let Some(json) = line.strip_prefix(":::MLLOG") else { continue };
            let Ok(v) = serde_json::from_str::<Value>(json.trim()) else { continue };
            let Some(key) = v.get("key").and_then(Value::as_str) else { continue };
            let value = v.get("value").cloned().unwrap_or_default();
            if v.pointer("/metadata/is_error").and_then(Value::as_bool) == Some(true) {
                log.errors.push(format!("{key}: {value}"));
            }
            if value.as_str().is_some_and(|s| s.contains(AUDIT_WARNING)) {
                log.audit_warning = true;
            }
            log.keys.entry(key.to_string()).or_insert(value);
        }
        Ok(log)
    }

    /// Reads and parses the detail log at `path`.
    pub fn read(path: &Path) -> Result<DetailLog, SubmissionError> {
        let text = std::fs::read_to_string(path).map_err(|e| SubmissionError::io(path, e))?;
        DetailLog::parse(&text, path)
    }

    fn u64(&self, key: &str) -> Option<u64> {
        self.keys.get(key).and_then(Value::as_u64)
    }

    fn f64(&self, key: &str) -> Option<f64> {
        self.keys.get(key).and_then(Value::as_f64)
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.keys.get(key).and_then(Value::as_str)
    }

    fn shown(&self, key: &str) -> String {
        self.keys.get(key).map_or_else(|| "nothing".into(), Value::to_string)
    }

    /// The errors and audit warning, which a main (non-TEST) run must not have.
    fn hygiene(&self, out: &mut Vec<(Rule, String)>) {
        if !self.errors.is_empty() {
            out.push((
                Rule::LoadgenErrors,
                format!("has loadgen errors, number of errors: {}: {}", self.errors.len(), self.errors.join("; ")),
            ));
        }
        if self.audit_warning {
            out.push((Rule::LoadgenErrors, "LoadGen applied an audit.config in a main run".into()));
        }
    }
}

/// The rules on a performance run's detail log (`performance/run_1`) of llama3.1-8b.
pub fn performance_rules(log: &DetailLog, scenario: Scenario) -> Vec<(Rule, String)> {
    let mut out = Vec::new();
    match log.str("sut_name") {
        Some(name) if name.contains("Network SUT") => {}
        _ => out.push((
            Rule::Network,
            format!(
                "invalid sut name for network mode. expecting the substring 'Network SUT' got {}",
                log.shown("sut_name")
            ),
        )),
    }
    for (name, want) in V6_1_SEEDS {
        let key = format!("effective_{name}");
        if log.u64(&key) != Some(want) {
            out.push((Rule::Seeds, format!("{name} is wrong, expected={want}, found={}", log.shown(&key))));
        }
    }
    let at_least = |key: &str, min: u64| log.u64(key).is_some_and(|v| v >= min);
    if !at_least("effective_performance_sample_count", LLAMA3_1_SAMPLES) {
        let found = log.shown("effective_performance_sample_count");
        out.push((
            Rule::Settings,
            format!("performance_sample_count, found {found}, needs to be >= {LLAMA3_1_SAMPLES}"),
        ));
    }
    if !at_least("effective_min_duration_ms", MIN_DURATION_MS) {
        let found = log.shown("effective_min_duration_ms");
        out.push((Rule::Settings, format!("Test duration less than 600s. expected={MIN_DURATION_MS}, found={found}")));
    }
    if log.keys.get("requested_use_token_latencies").and_then(Value::as_bool) != Some(true) {
        out.push((Rule::Settings, "use_token_latencies flag needs to be enabled for LLM benchmark".into()));
    }
    if log.str("effective_scenario") != Some(scenario.loadgen_name()) {
        let found = log.shown("effective_scenario");
        out.push((
            Rule::Settings,
            format!("effective_scenario is {found}, the folder needs {}", scenario.loadgen_name()),
        ));
    }
    match scenario {
        Scenario::Offline => {
            if !at_least("effective_samples_per_query", LLAMA3_1_SAMPLES) {
                let found = log.shown("effective_samples_per_query");
                out.push((
                    Rule::Settings,
                    format!("Required minimum samples per query not met, expected={LLAMA3_1_SAMPLES}, found={found}"),
                ));
            }
        }
        Scenario::Server | Scenario::Interactive => latency_rules(log, scenario, &mut out),
    }
    log.hygiene(&mut out);
    out
}

fn latency_rules(log: &DetailLog, scenario: Scenario, out: &mut Vec<(Rule, String)>) {
    if log.keys.get("early_stopping_met").and_then(Value::as_bool) != Some(true) {
        out.push((
            Rule::Latency,
            format!("Early stopping condition was not met, msg={}", log.shown("early_stopping_result")),
        ));
    }
    if !log.f64("effective_target_latency_ns").is_some_and(|v| v <= SERVER_LATENCY_NS) {
        let found = log.shown("effective_target_latency_ns");
        out.push((Rule::Latency, format!("Latency constraint not met, expected={SERVER_LATENCY_NS}, found={found}")));
    }
    let (ttft_key, tpot_key) =
        ("result_first_token_99.00_percentile_latency_ns", "result_time_per_output_token_99.00_percentile_ns");
    let (ttft, tpot) = (log.f64(ttft_key), log.f64(tpot_key));
    let (max_ttft, max_tpot) = SERVER_TTFT_TPOT_NS;
    if !(ttft.is_some_and(|t| t < max_ttft) && tpot.is_some_and(|t| t < max_tpot)) {
        out.push((
            Rule::Latency,
            format!(
                "Failed extra check for TTFT and TPOT. Obtained: TTFT 99-tile: {}, TPOT 99-tile: {}. \
                 Required: TTFT {max_ttft}, TPOT {max_tpot}",
                log.shown(ttft_key),
                log.shown(tpot_key)
            ),
        ));
    }
    if scenario == Scenario::Interactive {
        let asked = (log.f64("requested_server_ttft_latency"), log.f64("requested_server_tpot_latency"));
        let (want_ttft, want_tpot) = INTERACTIVE_TTFT_TPOT_NS;
        if asked != (Some(want_ttft), Some(want_tpot)) {
            out.push((
                Rule::Latency,
                format!(
                    "an Interactive run must request TTFT {want_ttft} ns and TPOT {want_tpot} ns \
                     (llama3_1-8b-interactive), it requested {asked:?}"
                ),
            ));
        }
    }
}

/// The rules on the accuracy run's detail log (`accuracy/`).
pub fn accuracy_log_rules(log: &DetailLog) -> Vec<(Rule, String)> {
    let mut out = Vec::new();
    let key =
        ["effective_accuracy_sample_count", "qsl_reported_total_count"].into_iter().find(|k| log.keys.contains_key(*k));
    let count = key.and_then(|k| log.u64(k));
    if count != Some(LLAMA3_1_SAMPLES) {
        let count = key.map_or_else(|| "nothing".into(), |k| log.shown(k));
        out.push((
            Rule::Accuracy,
            format!(
                "accuracy run does not cover all dataset, accuracy samples: {count}, dataset size: {LLAMA3_1_SAMPLES}"
            ),
        ));
    }
    log.hygiene(&mut out);
    out
}

/// Whether `accuracy.txt` has a `hash=<word characters>` line.
pub fn has_hash_line(text: &str) -> bool {
    text.lines().any(|l| l.strip_prefix("hash=").is_some_and(|h| !h.is_empty() && h.chars().all(is_word)))
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The value of `'key':` in one line as the checker matches it: `'key':`, whitespace (exactly
/// one character of it when `one_space`), an optional `'`, then the number.
fn metric_in_line(line: &str, key: &str, one_space: bool) -> Option<f64> {
    let pat = format!("'{key}':");
    line.match_indices(&pat).find_map(|(at, _)| {
        let rest = &line[at + pat.len()..];
        let after = rest.trim_start();
        let spaces = rest.len() - after.len();
        if spaces == 0 || (one_space && spaces != 1) {
            return None;
        }
        let after = if one_space { after } else { after.strip_prefix('\'').unwrap_or(after) };
        let end = after.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(after.len());
        after[..end].parse().ok()
    })
}

/// The rules on `accuracy.txt`: the hash line, and llama3.1-8b's targets (each metric found and
/// within its bounds; [`Rule::AccuracyTarget`]).
pub fn accuracy_txt_rules(text: &str) -> Vec<(Rule, String)> {
    let mut out = Vec::new();
    if !has_hash_line(text) {
        out.push((Rule::Accuracy, "not hash value for accuracy.txt".into()));
    }
    for (key, min, max) in LLAMA3_1_TARGETS {
        let found = text.lines().find_map(|l| metric_in_line(l, key, key == "gen_len"));
        match found {
            None => out.push((Rule::AccuracyTarget, format!("accuracy.txt has no {key}"))),
            Some(v) if v < min => {
                out.push((Rule::AccuracyTarget, format!("{key} accuracy not met: expected={min:.6}, found={v}")))
            }
            Some(v) if v > max => {
                out.push((Rule::AccuracyTarget, format!("{key} accuracy not met: upper limit={max:.6}, found={v}")))
            }
            Some(_) => {}
        }
    }
    out
}
