//! What a run leaves beside LoadGen's logs: `report.json` ([`RunReport`]), and the parsing of
//! LoadGen's `mlperf_log_detail.txt` into a [`LoadgenResult`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qdl_shared::config::{ModeName, ScenarioName};
use qdl_shared::workload::WorkloadSpec;
use serde::{Deserialize, Serialize};

use crate::connection::ConnectionStats;
use crate::qsl::DatasetInfo;

/// The file name of the report.
pub const REPORT_FILE: &str = "report.json";

/// LoadGen's verdict and figures, from its detail log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadgenResult {
    /// "VALID" or "INVALID" (performance mode).
    pub validity: Option<String>,
    /// Offline/SingleStream/MultiStream throughput, samples/s.
    pub samples_per_second: Option<f64>,
    /// Server: the scheduled rate, samples/s.
    pub scheduled_samples_per_second: Option<f64>,
    /// Server: the completed rate, samples/s.
    pub completed_samples_per_second: Option<f64>,
    /// Sample latencies, ns: "min", "max", "mean", and percentiles such as "99.00".
    pub latency_ns: BTreeMap<String, f64>,
    /// Whether the minimum duration was met.
    pub min_duration_met: Option<bool>,
    /// Whether the minimum query count was met.
    pub min_queries_met: Option<bool>,
    /// Whether the latency constraints were met.
    pub perf_constraints_met: Option<bool>,
    /// Whether early stopping was satisfied (Server, SingleStream, MultiStream).
    #[serde(default)]
    pub early_stopping_met: Option<bool>,
    /// LoadGen's early-stopping statement.
    #[serde(default)]
    pub early_stopping_result: Option<String>,
    /// LoadGen's reasons for INVALID.
    pub invalid_reasons: Vec<String>,
    /// The settings LoadGen ran with, as it logged them (`effective_min_duration_ms` →
    /// "min_duration_ms", `effective_target_qps` → "target_qps", ...).
    #[serde(default)]
    pub effective: BTreeMap<String, serde_json::Value>,
    /// Errors LoadGen logged.
    pub errors: Vec<String>,
    /// Samples LoadGen counted in its result.
    pub sample_count: Option<u64>,
    /// LoadGen's QSL size as it reported it.
    pub qsl_total: Option<u64>,
    /// Samples an accuracy run issues (all of the QSL, or accuracy_sample_count_override).
    pub accuracy_sample_count: Option<u64>,
    /// LLM runs (`use_token_latencies`): output tokens/s (`result_tokens_per_second` in Offline,
    /// `result_completed_tokens_per_second` in Server).
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
    /// LLM runs: time to first token, ns: "min", "max", "mean", and percentiles such as "99.00".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ttft_ns: BTreeMap<String, f64>,
    /// LLM runs: time per output token, ns (keys as `ttft_ns`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tpot_ns: BTreeMap<String, f64>,
    /// LLM Server runs: the TTFT and TPOT bounds LoadGen judged, ns.
    #[serde(default)]
    pub ttft_bound_ns: Option<f64>,
    /// See `ttft_bound_ns`.
    #[serde(default)]
    pub tpot_bound_ns: Option<f64>,
}

impl LoadgenResult {
    /// The throughput figure for the scenario: completed samples/s where LoadGen reports it
    /// (Server), else samples/s.
    pub fn throughput(&self) -> Option<f64> {
        self.completed_samples_per_second.or(self.samples_per_second)
    }

    /// The 99th percentile latency, ns.
    pub fn p99_ns(&self) -> Option<f64> {
        self.latency_ns.get("99.00").copied()
    }

    /// LLM runs: the 99th percentile time to first token, ns.
    pub fn ttft_p99_ns(&self) -> Option<f64> {
        self.ttft_ns.get("99.00").copied()
    }

    /// LLM runs: the 99th percentile time per output token, ns.
    pub fn tpot_p99_ns(&self) -> Option<f64> {
        self.tpot_ns.get("99.00").copied()
    }

    /// Whether LoadGen judged the run VALID.
    pub fn is_valid(&self) -> bool {
        self.validity.as_deref() == Some("VALID")
    }
}

/// Parses `mlperf_log_detail.txt` (lines `:::MLLOG {json}`).
pub fn parse_detail_log(path: &Path) -> std::io::Result<LoadgenResult> {
    let text = std::fs::read_to_string(path)?;
    let mut r = LoadgenResult::default();
    for line in text.lines() {
        let Some(json) = line.strip_prefix(":::MLLOG ") else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { continue };
        let key = v.get("key").and_then(|k| k.as_str()).unwrap_or_default();
        let value = v.get("value").cloned().unwrap_or_default();
        let f = value.as_f64();
        let b = value.as_bool();
        match key {
            "result_validity" => r.validity = value.as_str().map(str::to_string),
            "result_samples_per_second" => r.samples_per_second = f,
            "result_scheduled_samples_per_sec" => r.scheduled_samples_per_second = f,
            "result_completed_samples_per_sec" => r.completed_samples_per_second = f,
            "result_min_duration_met" => r.min_duration_met = b,
            "result_min_queries_met" => r.min_queries_met = b,
            "result_perf_constraints_met" => r.perf_constraints_met = b,
            "early_stopping_met" => r.early_stopping_met = b,
            "early_stopping_result" => r.early_stopping_result = value.as_str().map(str::to_string),
            "result_invalid_reason" => r.invalid_reasons.push(value.as_str().unwrap_or_default().to_string()),
            "result_query_count" => r.sample_count = value.as_u64(),
            "qsl_reported_total_count" => r.qsl_total = value.as_u64(),
            "effective_accuracy_sample_count" => r.accuracy_sample_count = value.as_u64(),
            "error_invalid_config" | "error_runtime" | "error_invalid_test_duration" => r
                .errors
                .push(format!("{key}: {}", value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string()))),
            "result_tokens_per_second" | "result_completed_tokens_per_second" => r.tokens_per_second = f,
            "requested_server_ttft_latency" => r.ttft_bound_ns = f,
            "requested_server_tpot_latency" => r.tpot_bound_ns = f,
            "result_first_token_min_latency_ns" => insert(&mut r.ttft_ns, "min", f),
            "result_first_token_max_latency_ns" => insert(&mut r.ttft_ns, "max", f),
            "result_first_token_mean_latency_ns" => insert(&mut r.ttft_ns, "mean", f),
            "result_time_to_output_token_min" => insert(&mut r.tpot_ns, "min", f),
            "result_time_to_output_token_max" => insert(&mut r.tpot_ns, "max", f),
            "result_time_to_output_token_mean" => insert(&mut r.tpot_ns, "mean", f),
            "result_min_latency_ns" => insert(&mut r.latency_ns, "min", f),
            "result_max_latency_ns" => insert(&mut r.latency_ns, "max", f),
            "result_mean_latency_ns" => insert(&mut r.latency_ns, "mean", f),
            k => {
                // "result_99.00_percentile_latency_ns" (not the per-query or token variants).
                if let Some(name) = k.strip_prefix("effective_") {
                    r.effective.insert(name.to_string(), value);
                } else if let Some(p) =
                    k.strip_prefix("result_first_token_").and_then(|s| s.strip_suffix("_percentile_latency_ns"))
                {
                    insert(&mut r.ttft_ns, p, f);
                } else if let Some(p) =
                    k.strip_prefix("result_time_per_output_token_").and_then(|s| s.strip_suffix("_percentile_ns"))
                {
                    insert(&mut r.tpot_ns, p, f);
                } else if let Some(p) = k.strip_prefix("result_").and_then(|s| s.strip_suffix("_percentile_latency_ns"))
                {
                    insert(&mut r.latency_ns, p, f);
                } else if v.get("metadata").and_then(|m| m.get("is_error")).and_then(|e| e.as_bool()) == Some(true) {
                    r.errors.push(format!("{k}: {value}"));
                }
            }
        }
    }
    Ok(r)
}

fn insert(map: &mut BTreeMap<String, f64>, k: &str, v: Option<f64>) {
    if let Some(v) = v {
        map.insert(k.to_string(), v);
    }
}

/// One accelerator of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AcceleratorReport {
    /// Its address ("in-process" for the baseline).
    pub address: String,
    /// Its name.
    pub name: String,
    /// Data connections.
    pub connections: u32,
    /// Slots per connection.
    pub slots_per_connection: u32,
    /// Backend.
    pub backend: String,
    /// Workers.
    pub workers: u32,
    /// Largest batch.
    pub max_batch: u32,
    /// Batches formed during the run: (size, count).
    #[serde(default)]
    pub batch_sizes: Vec<(u32, u64)>,
}

/// The frontend's own figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FrontendReport {
    /// Wall time of the LoadGen test, s.
    pub wall_seconds: f64,
    /// Samples LoadGen issued.
    pub samples_issued: u64,
    /// Samples completed back to LoadGen.
    pub samples_completed: u64,
    /// Samples the accelerators failed.
    pub sample_errors: u64,
    /// Bytes written on data connections.
    pub bytes_sent: u64,
    /// Bytes read on data connections.
    pub bytes_received: u64,
    /// Write calls on data connections.
    pub write_calls: u64,
    /// The dispatch policy used.
    pub dispatch: String,
    /// Samples re-dispatched from lost connections to the ones left.
    #[serde(default)]
    pub redispatched: u64,
    /// Late answers to re-dispatched samples, dropped.
    #[serde(default)]
    pub late_responses: u64,
    /// Generative workloads: per sample, the part of the first token's round trip spent outside
    /// the accelerator (the network's share of TTFT), over the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_outside_accelerator: Option<crate::timeline::Percentiles>,
    /// Per connection.
    pub connections: Vec<ConnectionStats>,
}

/// `report.json`: everything about a run that LoadGen's logs do not hold, including what
/// `check-accuracy` needs to rebuild every sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// qdl's version.
    pub qdl_version: String,
    /// LoadGen's version.
    pub loadgen_version: String,
    /// Over the network (true) or the in-process baseline.
    pub network: bool,
    /// LoadGen's SUT name.
    pub sut_name: String,
    /// The workload's tensors.
    pub workload: WorkloadSpec,
    /// Where samples came from.
    pub dataset: DatasetInfo,
    /// Reference outputs for check-accuracy (`workload.reference_dir`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_dir: Option<std::path::PathBuf>,
    /// QSL size.
    pub total_samples: usize,
    /// Samples loaded at once.
    pub performance_samples: usize,
    /// Scenario.
    pub scenario: ScenarioName,
    /// Mode.
    pub mode: ModeName,
    /// The LoadGen settings whose values are not mlperf.conf's: name → value, the layer that set
    /// it (a config file's `[loadgen]`, a user.conf, a flag) and mlperf.conf's value.
    #[serde(default)]
    pub loadgen_settings: BTreeMap<String, crate::settings::SettingReport>,
    /// Why this run is not an official one: the settings that shorten it (empty: none does).
    #[serde(default)]
    pub shortened: Vec<String>,
    /// For an INVALID run: each failed check and the setting that would fix it.
    #[serde(default)]
    pub advice: Vec<String>,
    /// The accelerators.
    pub accelerators: Vec<AcceleratorReport>,
    /// LoadGen's verdict and figures.
    pub loadgen: LoadgenResult,
    /// The frontend's figures.
    pub frontend: FrontendReport,
    /// Throughput and latency percentiles over time.
    #[serde(default)]
    pub timeline: Vec<crate::timeline::TimelinePoint>,
}

/// Errors reading a `report.json` ([`RunReport::read`]).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a report this version understands.
    #[error("{} is not a qdl report: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl RunReport {
    /// Reads `dir/report.json`.
    pub fn read(dir: &Path) -> Result<RunReport, ReportError> {
        let path = dir.join(REPORT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(ReportError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| ReportError::Parse { path, source })
    }

    /// Writes `dir/report.json`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(REPORT_FILE), text + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loadgen_detail_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mlperf_log_detail.txt");
        std::fs::write(
            &p,
            [
                r#":::MLLOG {"key": "result_validity", "value": "INVALID", "time_ms": 1.0, "namespace": "mlperf::logging", "event_type": "POINT_IN_TIME", "metadata": {"is_error": false, "is_warning": false, "file": "x", "line_no": 1, "pid": 1, "tid": 1}}"#,
                r#":::MLLOG {"key": "result_samples_per_second", "value": 1234.5, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "result_99.00_percentile_latency_ns", "value": 4000000, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "result_99.00_percentile_per_query_latency_ns", "value": 9, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "result_min_duration_met", "value": false, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "early_stopping_met", "value": true, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "effective_min_duration_ms", "value": 2000, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "result_invalid_reason", "value": "Reduce target QPS", "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "error_invalid_config", "value": "can't open file x", "time_ms": 1.0}"#,
                "garbage line",
                r#":::MLLOG {"key": "result_first_token_99.00_percentile_latency_ns", "value": 20582034, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "result_first_token_mean_latency_ns", "value": 6848906, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "result_time_per_output_token_99.00_percentile_ns", "value": 1407028, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "result_time_to_output_token_mean", "value": 1257303, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "result_completed_tokens_per_second", "value": 12208.76, "time_ms": 1.0}"#,
                r#":::MLLOG {"key": "requested_server_ttft_latency", "value": 2000000000, "time_ms": 1.0}"#,
                ":::MLLOG {not json",
            ]
            .join("\n"),
        )
        .unwrap();
        let r = parse_detail_log(&p).unwrap();
        assert!(!r.is_valid());
        assert_eq!(r.throughput(), Some(1234.5));
        assert_eq!(r.p99_ns(), Some(4e6));
        assert_eq!(r.latency_ns.len(), 1, "per-query and token percentiles are not sample latencies");
        assert_eq!((r.ttft_p99_ns(), r.ttft_ns.get("mean").copied()), (Some(20582034.0), Some(6848906.0)));
        assert_eq!((r.tpot_p99_ns(), r.tpot_ns.get("mean").copied()), (Some(1407028.0), Some(1257303.0)));
        assert_eq!((r.tokens_per_second, r.ttft_bound_ns), (Some(12208.76), Some(2e9)));
        assert_eq!(r.min_duration_met, Some(false));
        assert_eq!(r.early_stopping_met, Some(true));
        assert_eq!(r.effective.get("min_duration_ms"), Some(&serde_json::json!(2000)));
        assert_eq!(r.invalid_reasons, vec!["Reduce target QPS"]);
        assert_eq!(r.errors.len(), 1);
    }
}
