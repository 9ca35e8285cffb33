//! LoadGen's test settings in layers, each overriding the ones below it:
//!
//! 1. LoadGen's defaults (a value-initialised `mlperf::TestSettings`);
//! 2. mlperf.conf (compiled into LoadGen) for the model and scenario;
//! 3. the TOML config's `[loadgen]` overrides;
//! 4. user.conf (`--user-conf` or `loadgen.user_conf`), read by LoadGen's own parser;
//! 5. command-line flags (`--min-duration-ms`, `--target-qps`, ...).
//!
//! A submitter's user.conf therefore wins over a shared TOML file, and a flag typed for one run
//! wins over both. Each setting remembers the layer that set it last ([`Resolved::source`]);
//! [`Resolved::differences`] lists every setting whose value is not mlperf.conf's, with its
//! source, and [`Resolved::shortened`] the ones that make the run shorter than an official one.
//! [`advice`] turns LoadGen's INVALID verdict into the setting that would fix it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use qdl_loadgen::{LoadgenError, Scenario, TestMode, TestSettings};
use qdl_shared::config::LoadgenConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::report::LoadgenResult;

/// Overrides of LoadGen settings from one layer (the TOML config or the command line); `None`
/// keeps the value of the layers below. Units as in `[loadgen]`: ms for durations and latencies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Minimum duration, ms.
    pub min_duration_ms: Option<u64>,
    /// Maximum duration, ms (0 = unbounded).
    pub max_duration_ms: Option<u64>,
    /// Minimum query count.
    pub min_query_count: Option<u64>,
    /// Maximum query count (0 = unbounded).
    pub max_query_count: Option<u64>,
    /// Server target QPS.
    pub server_target_qps: Option<f64>,
    /// Server latency bound, ms.
    pub server_target_latency_ms: Option<f64>,
    /// Offline expected QPS.
    pub offline_expected_qps: Option<f64>,
    /// SingleStream expected latency, ms.
    pub single_stream_expected_latency_ms: Option<f64>,
    /// MultiStream expected latency, ms.
    pub multi_stream_expected_latency_ms: Option<f64>,
    /// MultiStream samples per query.
    pub multi_stream_samples_per_query: Option<u64>,
    /// Accuracy mode: only this many samples (0 = all).
    pub accuracy_sample_count: Option<u64>,
    /// Performance sample count override.
    pub performance_sample_count: Option<u64>,
}

impl Overrides {
    /// The overrides a `[loadgen]` section holds.
    pub fn from_config(l: &LoadgenConfig) -> Overrides {
        Overrides {
            min_duration_ms: l.min_duration_ms,
            max_duration_ms: l.max_duration_ms,
            min_query_count: l.min_query_count,
            max_query_count: l.max_query_count,
            server_target_qps: l.server_target_qps,
            server_target_latency_ms: l.server_target_latency_ms,
            offline_expected_qps: l.offline_expected_qps,
            single_stream_expected_latency_ms: l.single_stream_expected_latency_ms,
            multi_stream_expected_latency_ms: l.multi_stream_expected_latency_ms,
            multi_stream_samples_per_query: l.multi_stream_samples_per_query,
            accuracy_sample_count: l.accuracy_sample_count,
            performance_sample_count: l.performance_sample_count,
        }
    }

    /// Applies the overrides to `s`; returns the names of the settings they set.
    fn apply(&self, s: &mut TestSettings) -> Vec<&'static str> {
        let mut set = Vec::new();
        let ns = |ms: f64| ms * 1e6;
        macro_rules! put {
            ($src:ident => $dst:ident) => {
                put!($src => $dst, |v| v)
            };
            ($src:ident => $dst:ident, $conv:expr) => {
                if let Some(v) = self.$src {
                    s.$dst = ($conv)(v);
                    set.push(stringify!($dst));
                }
            };
        }
        put!(min_duration_ms => min_duration_ms);
        put!(max_duration_ms => max_duration_ms);
        put!(min_query_count => min_query_count);
        put!(max_query_count => max_query_count);
        put!(server_target_qps => server_target_qps);
        put!(server_target_latency_ms => server_target_latency_ns, |ms: f64| ns(ms) as u64);
        put!(offline_expected_qps => offline_expected_qps);
        put!(single_stream_expected_latency_ms => single_stream_expected_latency_ns, ns);
        put!(multi_stream_expected_latency_ms => multi_stream_expected_latency_ns, ns);
        put!(multi_stream_samples_per_query => multi_stream_samples_per_query);
        put!(accuracy_sample_count => accuracy_sample_count_override);
        put!(performance_sample_count => performance_sample_count_override);
        set
    }
}

/// The command-line flag that sets a LoadGen setting, for the source of a flag layer.
fn flag_of(setting: &str) -> &'static str {
    match setting {
        "min_duration_ms" => "--min-duration-ms",
        "min_query_count" => "--min-query-count",
        "server_target_qps" => "--target-qps",
        "offline_expected_qps" => "--expected-qps",
        "accuracy_sample_count_override" => "--accuracy-samples",
        _ => "a command-line flag",
    }
}

/// One `TestSettings` field the layers track.
struct Field {
    /// The field's name (also its key in report.json).
    name: &'static str,
    /// Its user.conf key (`model.scenario.KEY`), if a user.conf may set it.
    key: Option<&'static str>,
    /// The scenario LoadGen looks the key up for (`None`: the run's own), which is also the only
    /// scenario the setting matters in.
    scenario: Option<Scenario>,
    get: fn(&TestSettings) -> Value,
    copy: fn(&mut TestSettings, &TestSettings),
}

macro_rules! fields {
    ($( $name:ident : $key:expr, $sc:expr; )*) => {
        &[ $( Field {
            name: stringify!($name),
            key: $key,
            scenario: $sc,
            get: |s| json!(s.$name),
            copy: |d, s| d.$name = s.$name,
        }, )* ]
    };
}

use Scenario::{MultiStream as Ms, Offline as Off, Server as Srv, SingleStream as Ss};

/// The fields mlperf.conf, user.conf, the TOML config or flags may set, with LoadGen's user.conf
/// keys as `TestSettings::FromConfig` (LoadGen 6.0.17) reads them.
const FIELDS: &[Field] = fields! {
    min_duration_ms: Some("min_duration"), None;
    max_duration_ms: Some("max_duration"), None;
    min_query_count: Some("min_query_count"), None;
    max_query_count: Some("max_query_count"), None;
    offline_expected_qps: Some("target_qps"), Some(Off);
    server_target_qps: Some("target_qps"), Some(Srv);
    server_target_latency_ns: Some("target_latency"), Some(Srv);
    server_target_latency_percentile: Some("target_latency_percentile"), Some(Srv);
    server_coalesce_queries: Some("coalesce_queries"), Some(Srv);
    server_max_async_queries: Some("max_async_queries"), Some(Srv);
    single_stream_expected_latency_ns: Some("target_latency"), Some(Ss);
    single_stream_target_latency_percentile: Some("target_latency_percentile"), Some(Ss);
    multi_stream_expected_latency_ns: Some("target_latency"), Some(Ms);
    multi_stream_target_latency_percentile: Some("target_latency_percentile"), Some(Ms);
    multi_stream_samples_per_query: Some("samples_per_query"), Some(Ms);
    performance_sample_count_override: Some("performance_sample_count_override"), None;
    accuracy_sample_count_override: Some("accuracy_sample_count_override"), None;
    performance_issue_unique: Some("performance_issue_unique"), None;
    performance_issue_same: Some("performance_issue_same"), None;
    performance_issue_same_index: Some("performance_issue_same_index"), None;
    sample_concatenate_permutation: Some("sample_concatenate_permutation"), None;
    print_timestamps: Some("print_timestamps"), None;
    accuracy_log_rng_seed: Some("accuracy_log_rng_seed"), None;
    accuracy_log_sampling_target: Some("accuracy_log_sampling_target"), None;
    use_token_latencies: Some("use_token_latencies"), None;
    infer_token_latencies: Some("infer_token_latencies"), None;
    server_ttft_latency: None, Some(Srv);
    server_tpot_latency: None, Some(Srv);
    token_latency_scaling_factor: None, None;
    qsl_rng_seed: None, None;
    sample_index_rng_seed: None, None;
    schedule_rng_seed: None, None;
    accuracy_log_probability: None, None;
    test05: None, None;
};

/// Where a setting's value came from.
pub const MLPERF_CONF: &str = "mlperf.conf";
/// The source of a setting no layer set.
pub const LOADGEN_DEFAULT: &str = "LoadGen default";

/// The source of `use_token_latencies` for a generative workload mlperf.conf does not know.
pub const GENERATIVE: &str = "qdl: a generative workload mlperf.conf has no entry for";

/// The layers of one run.
#[derive(Debug, Clone)]
pub struct Layers {
    /// The model's name in mlperf.conf ("resnet50", "bert", ...).
    pub model: String,
    /// The scenario.
    pub scenario: Scenario,
    /// The test mode.
    pub mode: TestMode,
    /// The workload is generative (an LLM): measured by token latencies even where mlperf.conf
    /// does not know it (`use_token_latencies` on, below the config file, user.conf and flags).
    pub generative: bool,
    /// The TOML config's overrides and the file they came from (`None`: no file was given).
    pub toml: Option<(PathBuf, Overrides)>,
    /// The user.conf to apply.
    pub user_conf: Option<PathBuf>,
    /// The command line's overrides.
    pub flags: Overrides,
}

/// One setting that differs from mlperf.conf, as report.json lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingReport {
    /// The value LoadGen runs with (LoadGen's units: ns, ms, fractions).
    pub value: Value,
    /// The layer that set it: a config file's `[loadgen]`, a user.conf, a flag.
    pub source: String,
    /// mlperf.conf's value (LoadGen's default where mlperf.conf has none).
    pub mlperf_conf: Value,
}

/// The settings a run uses, with where each came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What LoadGen runs with.
    pub settings: TestSettings,
    /// LoadGen's defaults with mlperf.conf applied, and nothing else: the official values.
    pub mlperf: TestSettings,
    /// Setting name → the layer that set it last (absent: mlperf.conf or LoadGen's default).
    sources: BTreeMap<&'static str, String>,
}

/// The keys of a user.conf that apply to `model` and the scenario LoadGen looks each up for:
/// `model.scenario.key`, `*.scenario.key`, `model.*.key` or `*.*.key` (LoadGen's own rules; a
/// `#` word starts a comment).
fn user_conf_keys(text: &str, model: &str) -> BTreeSet<(String, String)> {
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let Some(word) = line.split_whitespace().next() else { continue };
        if word == "#" || word.starts_with('#') {
            continue;
        }
        let key = word.split('=').next().unwrap_or_default();
        let mut parts = key.splitn(3, '.');
        let (Some(m), Some(s), Some(k)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if m == model || m == "*" {
            keys.insert((s.to_string(), k.to_string()));
        }
    }
    keys
}

impl Resolved {
    /// Applies the layers in order (see the module docs). LoadGen parses mlperf.conf and the
    /// user.conf itself; a user.conf LoadGen cannot read is an error.
    pub fn resolve(layers: &Layers) -> Result<Resolved, LoadgenError> {
        let mut mlperf = TestSettings { scenario: layers.scenario, mode: layers.mode, ..Default::default() };
        mlperf.apply_mlperf_conf(&layers.model, layers.scenario)?;
        let mut s = mlperf.clone();
        let mut sources = BTreeMap::new();
        if layers.generative && !s.use_token_latencies {
            s.use_token_latencies = true;
            sources.insert("use_token_latencies", GENERATIVE.to_string());
        }
        if let Some((path, o)) = &layers.toml {
            for name in o.apply(&mut s) {
                sources.insert(name, format!("{} [loadgen]", path.display()));
            }
        }
        if let Some(path) = &layers.user_conf {
            // LoadGen applies mlperf.conf before the first user.conf of a process; starting from
            // mlperf.conf's values gives the same result on any call.
            let mut base = mlperf.clone();
            // LoadGen reads a user.conf's ttft_latency and tpot_latency only while token
            // latencies are on: for a generative workload they are, whatever mlperf.conf says.
            base.use_token_latencies |= layers.generative;
            let mut u = base.clone();
            u.apply_user_conf(path, &layers.model, layers.scenario)?;
            let keys = std::fs::read_to_string(path).map(|t| user_conf_keys(&t, &layers.model)).unwrap_or_default();
            let run_scenario = layers.scenario.config_name();
            for f in FIELDS {
                let named = f.key.is_some_and(|k| {
                    let sc = f.scenario.map(Scenario::config_name).unwrap_or(run_scenario);
                    [sc, "*"].iter().any(|sc| keys.contains(&(sc.to_string(), k.to_string())))
                });
                if named || (f.get)(&u) != (f.get)(&base) {
                    (f.copy)(&mut s, &u);
                    sources.insert(f.name, path.display().to_string());
                }
            }
        }
        for name in layers.flags.apply(&mut s) {
            sources.insert(name, flag_of(name).to_string());
        }
        s.scenario = layers.scenario;
        s.mode = layers.mode;
        Ok(Resolved { settings: s, mlperf, sources })
    }

    /// The layer that set `name` last: a file's `[loadgen]`, a user.conf path, a flag, else
    /// "mlperf.conf" or "LoadGen default".
    pub fn source(&self, name: &str) -> String {
        if let Some(s) = self.sources.get(name) {
            return s.clone();
        }
        let default = TestSettings::default();
        match FIELDS.iter().find(|f| f.name == name) {
            Some(f) if (f.get)(&self.mlperf) != (f.get)(&default) => MLPERF_CONF.into(),
            _ => LOADGEN_DEFAULT.into(),
        }
    }

    /// Every setting that matters in this run's scenario and whose value is not mlperf.conf's.
    pub fn differences(&self) -> BTreeMap<String, SettingReport> {
        let sc = self.settings.scenario;
        FIELDS
            .iter()
            .filter(|f| f.scenario.is_none_or(|s| s == sc))
            .filter(|f| (f.get)(&self.settings) != (f.get)(&self.mlperf))
            .map(|f| {
                let r = SettingReport {
                    value: (f.get)(&self.settings),
                    source: self.source(f.name),
                    mlperf_conf: (f.get)(&self.mlperf),
                };
                (f.name.to_string(), r)
            })
            .collect()
    }

    /// One line per setting of [`Resolved::differences`]:
    /// "min_duration_ms = 10000 (config/frontend.toml [loadgen]; mlperf.conf: 600000)".
    pub fn describe(&self) -> Vec<String> {
        self.differences()
            .iter()
            .map(|(k, r)| format!("{k} = {} ({}; mlperf.conf: {})", r.value, r.source, r.mlperf_conf))
            .collect()
    }

    /// The settings that make this run shorter (or smaller) than an official one, each as
    /// "min_duration_ms 10000 < mlperf.conf's 600000 (from SOURCE)"; empty when none does.
    pub fn shortened(&self) -> Vec<String> {
        let (s, m) = (&self.settings, &self.mlperf);
        let mut out = Vec::new();
        let mut note = |name: &str, what: String| out.push(format!("{what} (from {})", self.source(name)));
        if s.mode == TestMode::AccuracyOnly {
            if s.accuracy_sample_count_override != 0
                && s.accuracy_sample_count_override != m.accuracy_sample_count_override
            {
                note(
                    "accuracy_sample_count_override",
                    format!(
                        "accuracy_sample_count_override {}: not every sample is checked",
                        s.accuracy_sample_count_override
                    ),
                );
            }
            return out;
        }
        if s.min_duration_ms < m.min_duration_ms {
            note(
                "min_duration_ms",
                format!("min_duration_ms {} < mlperf.conf's {}", s.min_duration_ms, m.min_duration_ms),
            );
        }
        if s.min_query_count < m.min_query_count {
            note(
                "min_query_count",
                format!("min_query_count {} < mlperf.conf's {}", s.min_query_count, m.min_query_count),
            );
        }
        if s.max_duration_ms != 0 && s.max_duration_ms < m.min_duration_ms {
            note(
                "max_duration_ms",
                format!(
                    "max_duration_ms {} caps the run below mlperf.conf's minimum {}",
                    s.max_duration_ms, m.min_duration_ms
                ),
            );
        }
        if s.max_query_count != 0 && s.max_query_count != m.max_query_count {
            note("max_query_count", format!("max_query_count {} caps the query count", s.max_query_count));
        }
        out
    }
}

/// The fixes for LoadGen's INVALID verdict, one line per failed check, each naming the setting
/// to change and by how much (empty for a VALID run or an accuracy run).
pub fn advice(r: &LoadgenResult, settings: &Resolved) -> Vec<String> {
    let s = &settings.settings;
    if r.validity.as_deref() != Some("INVALID") {
        return Vec::new();
    }
    let src = |name: &str| settings.source(name);
    let mut out = Vec::new();
    if r.min_duration_met == Some(false) {
        match s.scenario {
            Scenario::Offline => {
                let measured = r.samples_per_second.unwrap_or(0.0);
                out.push(format!(
                    "min duration not met: the system outran offline_expected_qps {} ({}), which sizes the Offline \
                     query; set it to at least {:.0} (measured {measured:.1} samples/s x 1.1)",
                    s.offline_expected_qps,
                    src("offline_expected_qps"),
                    (measured * 1.1).round()
                ));
            }
            Scenario::Server => out.push(format!(
                "min duration not met: LoadGen scheduled too few queries at server_target_qps {} ({}); raise it, or \
                 check min_duration_ms {} ({})",
                s.server_target_qps,
                src("server_target_qps"),
                s.min_duration_ms,
                src("min_duration_ms")
            )),
            Scenario::SingleStream | Scenario::MultiStream => {
                let (name, value) = if s.scenario == Scenario::SingleStream {
                    ("single_stream_expected_latency_ns", s.single_stream_expected_latency_ns)
                } else {
                    ("multi_stream_expected_latency_ns", s.multi_stream_expected_latency_ns)
                };
                let mean = r.latency_ns.get("mean").copied().unwrap_or(0.0);
                out.push(format!(
                    "min duration not met: the queries were faster than {name} {value:.0} ns ({}); set it to at most \
                     {:.0} ns (measured mean latency {mean:.0} ns x 0.9)",
                    src(name),
                    (mean * 0.9).floor()
                ));
            }
        }
    }
    let constraints_broken = r.perf_constraints_met == Some(false) || r.early_stopping_met == Some(false);
    if constraints_broken && s.scenario == Scenario::Server {
        let completed = r.completed_samples_per_second.unwrap_or(s.server_target_qps);
        let suggest = (s.server_target_qps.min(completed) * 0.9).floor().max(1.0);
        out.push(format!(
            "latency bound broken: the {:.0}th percentile exceeded server_target_latency_ns {} at server_target_qps {} \
             ({}); lower server_target_qps, e.g. to {suggest:.0} (90% of what the run sustained), and search upwards",
            s.server_target_latency_percentile * 100.0,
            s.server_target_latency_ns,
            s.server_target_qps,
            src("server_target_qps")
        ));
    } else if constraints_broken {
        out.push(format!(
            "performance constraints not met (early stopping): run longer (min_duration_ms {}, {}) or raise the \
             expected latency",
            s.min_duration_ms,
            src("min_duration_ms")
        ));
    }
    if r.min_queries_met == Some(false) {
        let mut why = format!(
            "min queries not met: fewer than min_query_count {} ({})",
            s.min_query_count,
            src("min_query_count")
        );
        if s.max_duration_ms != 0 {
            why += &format!(
                " were issued before max_duration_ms {} ({}) ended the test; raise or clear it",
                s.max_duration_ms,
                src("max_duration_ms")
            );
        } else if s.max_query_count != 0 {
            why +=
                &format!(" with max_query_count {} ({}); raise or clear it", s.max_query_count, src("max_query_count"));
        } else {
            why += " were issued; the test ended early (see mlperf_log_detail.txt)";
        }
        out.push(why);
    }
    if out.is_empty() {
        out.extend(r.invalid_reasons.iter().map(|reason| format!("LoadGen: {reason}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(scenario: Scenario) -> Layers {
        Layers {
            model: "bert".into(),
            scenario,
            mode: TestMode::PerformanceOnly,
            generative: false,
            toml: None,
            user_conf: None,
            flags: Overrides::default(),
        }
    }

    #[test]
    fn a_generative_workload_unknown_to_mlperf_conf_is_measured_by_token_latencies() {
        let mut l = layers(Scenario::Server);
        l.model = "smollm2-135m".into();
        assert!(!Resolved::resolve(&l).unwrap().settings.use_token_latencies, "not for a fixed-shape workload");
        l.generative = true;
        let r = Resolved::resolve(&l).unwrap();
        assert!(r.settings.use_token_latencies);
        assert_eq!(r.source("use_token_latencies"), GENERATIVE);
        // A later layer still decides.
        let dir = tempfile::tempdir().unwrap();
        let uc = dir.path().join("user.conf");
        std::fs::write(&uc, "smollm2-135m.*.use_token_latencies = 0\n").unwrap();
        l.user_conf = Some(uc.clone());
        let r = Resolved::resolve(&l).unwrap();
        assert!(!r.settings.use_token_latencies);
        assert_eq!(r.source("use_token_latencies"), uc.display().to_string());
        // Its TTFT and TPOT bounds from a user.conf apply (LoadGen reads them only while token
        // latencies are on, and mlperf.conf does not turn them on for this model).
        std::fs::write(&uc, "smollm2-135m.Server.ttft_latency = 1500\nsmollm2-135m.Server.tpot_latency = 90\n")
            .unwrap();
        let r = Resolved::resolve(&l).unwrap();
        assert!(r.settings.use_token_latencies);
        assert_eq!((r.settings.server_ttft_latency, r.settings.server_tpot_latency), (1_500_000_000, 90_000_000));
        assert_eq!(r.source("server_ttft_latency"), uc.display().to_string());
        assert_eq!(r.source("use_token_latencies"), GENERATIVE, "not the user.conf's");
    }

    fn toml(min_duration_ms: u64, qps: f64) -> Option<(PathBuf, Overrides)> {
        let o = Overrides {
            min_duration_ms: Some(min_duration_ms),
            offline_expected_qps: Some(qps),
            server_target_qps: Some(qps),
            ..Default::default()
        };
        Some((PathBuf::from("config/frontend.toml"), o))
    }

    fn user_conf(dir: &tempfile::TempDir, text: &str) -> Option<PathBuf> {
        let p = dir.path().join("user.conf");
        std::fs::write(&p, text).unwrap();
        Some(p)
    }

    #[test]
    fn each_layer_overrides_the_one_below_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = layers(Scenario::Offline);
        let r = Resolved::resolve(&l).unwrap();
        assert_eq!(r.settings.min_duration_ms, 600_000, "mlperf.conf");
        assert_eq!(r.source("min_duration_ms"), MLPERF_CONF);
        assert!(r.differences().is_empty(), "mlperf.conf alone differs from nothing: {:?}", r.differences());
        assert!(r.shortened().is_empty());

        l.toml = toml(10_000, 5000.0);
        let r = Resolved::resolve(&l).unwrap();
        assert_eq!(r.settings.min_duration_ms, 10_000, "the TOML over mlperf.conf");
        assert_eq!(r.source("min_duration_ms"), "config/frontend.toml [loadgen]");

        l.user_conf = user_conf(&dir, "*.Offline.min_duration = 20000\n");
        let r = Resolved::resolve(&l).unwrap();
        assert_eq!(r.settings.min_duration_ms, 20_000, "user.conf over the TOML");
        assert_eq!(r.source("min_duration_ms"), l.user_conf.as_ref().unwrap().display().to_string());
        assert_eq!(r.settings.offline_expected_qps, 5000.0, "what user.conf does not name stays the TOML's");

        l.flags.min_duration_ms = Some(3000);
        let r = Resolved::resolve(&l).unwrap();
        assert_eq!(r.settings.min_duration_ms, 3000, "a flag over user.conf");
        assert_eq!(r.source("min_duration_ms"), "--min-duration-ms");
        let d = r.differences();
        assert_eq!(d["min_duration_ms"].source, "--min-duration-ms");
        assert_eq!(d["min_duration_ms"].mlperf_conf, json!(600_000));
        assert_eq!(d["offline_expected_qps"].source, "config/frontend.toml [loadgen]");
        assert!(!d.contains_key("server_target_qps"), "a Server setting does not matter in Offline: {d:?}");
        assert!(
            r.describe()
                .iter()
                .any(|l| l.starts_with("min_duration_ms = 3000 (--min-duration-ms; mlperf.conf: 600000"))
        );
    }

    #[test]
    fn a_user_conf_value_equal_to_mlperf_conf_still_beats_the_toml() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = layers(Scenario::Offline);
        l.toml = toml(10_000, 5000.0);
        // Named for this model and every scenario; other models' keys and comments are ignored.
        l.user_conf =
            user_conf(&dir, "# min_duration = 1\nbert.*.min_duration = 600000\nresnet50.Offline.target_qps = 9\n");
        let r = Resolved::resolve(&l).unwrap();
        assert_eq!(r.settings.min_duration_ms, 600_000);
        assert!(r.source("min_duration_ms").ends_with("user.conf"), "{}", r.source("min_duration_ms"));
        assert_eq!(r.settings.offline_expected_qps, 5000.0, "resnet50's key is not bert's");
    }

    #[test]
    fn the_issue_reproduction_user_conf_wins_over_the_toml() {
        // user.conf: *.Offline.min_duration = 2000, *.Offline.target_qps = 3000; the TOML's
        // [loadgen] says 10 s and 5000: LoadGen must run 2000 ms at 3000.
        let dir = tempfile::tempdir().unwrap();
        let mut l = layers(Scenario::Offline);
        l.toml = toml(10_000, 5000.0);
        l.user_conf = user_conf(&dir, "*.Offline.min_duration = 2000\n*.Offline.target_qps = 3000\n");
        let r = Resolved::resolve(&l).unwrap();
        assert_eq!((r.settings.min_duration_ms, r.settings.offline_expected_qps), (2000, 3000.0));
        let d = r.differences();
        let uc = l.user_conf.as_ref().unwrap().display().to_string();
        assert_eq!(
            d["min_duration_ms"],
            SettingReport { value: json!(2000), source: uc.clone(), mlperf_conf: json!(600_000) }
        );
        assert_eq!(d["offline_expected_qps"].source, uc);
        let short = r.shortened();
        assert_eq!(short.len(), 1, "{short:?}");
        assert!(
            short[0].contains("min_duration_ms 2000 < mlperf.conf's 600000") && short[0].contains(&uc),
            "{short:?}"
        );
    }

    #[test]
    fn a_user_conf_loadgen_cannot_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = layers(Scenario::Server);
        l.user_conf = user_conf(&dir, "*.Server.target_qps = many\n");
        assert!(matches!(Resolved::resolve(&l), Err(LoadgenError::Config { .. })));
    }

    fn invalid(f: impl FnOnce(&mut LoadgenResult)) -> LoadgenResult {
        let mut r = LoadgenResult { validity: Some("INVALID".into()), ..Default::default() };
        f(&mut r);
        r
    }

    #[test]
    fn invalid_verdicts_come_with_the_setting_that_fixes_them() {
        let mut l = layers(Scenario::Offline);
        l.toml = toml(10_000, 5000.0);
        let r = Resolved::resolve(&l).unwrap();
        let a = advice(
            &invalid(|r| {
                r.min_duration_met = Some(false);
                r.samples_per_second = Some(7000.0);
            }),
            &r,
        );
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].contains("offline_expected_qps 5000") && a[0].contains("at least 7700"), "{a:?}");
        assert!(a[0].contains("config/frontend.toml [loadgen]"), "names the source: {a:?}");

        let mut l = layers(Scenario::Server);
        l.toml = toml(10_000, 2000.0);
        let r = Resolved::resolve(&l).unwrap();
        let a = advice(
            &invalid(|r| {
                r.perf_constraints_met = Some(false);
                r.completed_samples_per_second = Some(1000.0);
            }),
            &r,
        );
        assert!(a[0].contains("lower server_target_qps") && a[0].contains("900"), "{a:?}");

        let valid = LoadgenResult { validity: Some("VALID".into()), ..Default::default() };
        assert!(advice(&valid, &r).is_empty());
        let other = invalid(|r| r.invalid_reasons.push("Something new".into()));
        assert_eq!(advice(&other, &r), vec!["LoadGen: Something new"]);
    }

    #[test]
    fn user_conf_keys_follow_loadgens_rules() {
        let keys = user_conf_keys(
            "# a comment\n*.Offline.min_duration = 1\nbert.*.x = 2 # trailing\nresnet50.Server.y = 3\n  \n",
            "bert",
        );
        let want: BTreeSet<(String, String)> =
            [("Offline", "min_duration"), ("*", "x")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(keys, want);
    }
}
