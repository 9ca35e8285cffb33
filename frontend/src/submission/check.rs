//! qdl's own check of a Network-division submission tree (docs/submission.md §1–§4, §7): the
//! layout, the system descriptions, each result's files and the rules of [`super::rules`] on
//! them. It is a superset of the official checker's rules for llama3.1-8b (it also applies the
//! old checker's exact file lists and demands VALID, no LoadGen errors and no audit warning in
//! the main runs), so a tree it finds clean should pass both.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::rules::{self, DetailLog};
use super::system::{MEANINGFUL_FIELDS, NETWORK_FIELDS, REQUIRED_FIELDS, VALID_STATUS, truthy};
use super::test06;

/// The benchmark folder qdl submits.
pub const BENCHMARK: &str = "llama3.1-8b";

/// The keys measurements.json must hold, each non-empty.
pub const MEASUREMENTS_FIELDS: [&str; 5] =
    ["input_data_types", "retraining", "starting_weights_filename", "weight_data_types", "weight_transformations"];

/// The largest (truncated) accuracy log the checker accepts, bytes.
pub const MAX_ACCURACY_LOG_BYTES: u64 = 10240;

/// Files `performance/run_1` may hold besides the summary and the detail log (old checker).
const PERFORMANCE_OPTIONAL: [&str; 4] =
    ["mlperf_log_accuracy.json", "mlperf_log_trace.json", "results.json", ".gitkeep"];

/// Exactly what `accuracy/` holds (old checker).
const ACCURACY_FILES: [&str; 4] =
    ["mlperf_log_summary.txt", "mlperf_log_detail.txt", "accuracy.txt", "mlperf_log_accuracy.json"];

/// A scenario folder of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// `Offline`.
    Offline,
    /// `Server`.
    Server,
    /// `Interactive` (a LoadGen Server run with the interactive latency targets).
    Interactive,
}

impl Scenario {
    /// The scenario of a folder name, spelled exactly.
    pub fn from_folder(name: &str) -> Option<Scenario> {
        match name {
            "Offline" => Some(Scenario::Offline),
            "Server" => Some(Scenario::Server),
            "Interactive" => Some(Scenario::Interactive),
            _ => None,
        }
    }

    /// LoadGen's `effective_scenario` for the folder (Interactive runs as Server).
    pub fn loadgen_name(self) -> &'static str {
        match self {
            Scenario::Offline => "Offline",
            Scenario::Server | Scenario::Interactive => "Server",
        }
    }
}

/// Which rule a finding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// Folders: division, submitter, systems, src, results, benchmarks, scenarios.
    Layout,
    /// `systems/<system>.json`.
    System,
    /// `measurements.json`, `user.conf`, `README.md`.
    Measurements,
    /// The file lists of `performance/run_1` and `accuracy/`.
    Files,
    /// Network mode: `is_network`, the SUT name.
    Network,
    /// The v6.1 seeds.
    Seeds,
    /// LoadGen settings: durations, sample counts, token latencies, the scenario.
    Settings,
    /// Server/Interactive: early stopping, TTFT and TPOT.
    Latency,
    /// LoadGen errors, or an audit.config applied to a main run.
    LoadgenErrors,
    /// LoadGen's verdict (VALID) in the performance summary.
    Validity,
    /// The accuracy run's files: hash line, truncation, dataset coverage.
    Accuracy,
    /// The accuracy targets in accuracy.txt (ROUGE, gen_len).
    AccuracyTarget,
    /// `TEST06/verify_accuracy.txt`.
    Test06,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The official checker (new or old) would fail the tree, or qdl's stricter rules do.
    Error,
    /// Worth fixing; no checker fails on it.
    Warning,
}

/// One thing wrong in the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The rule.
    pub rule: Rule,
    /// The file or folder concerned.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level} [{:?}] {}: {}", self.rule, self.path.display(), self.message)
    }
}

/// What [`check_tree`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Every finding, in the order found.
    pub findings: Vec<Finding>,
    /// Scenario folders checked.
    pub results: usize,
}

impl Report {
    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Warning)
    }

    /// No errors, and at least one result.
    pub fn is_clean(&self) -> bool {
        self.results > 0 && self.errors().next().is_none()
    }

    /// Errors only on accuracy targets (the expected outcome with a synthetic engine).
    pub fn is_clean_but_accuracy(&self) -> bool {
        self.results > 0 && self.errors().all(|f| f.rule == Rule::AccuracyTarget)
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let (e, w) = (self.errors().count(), self.warnings().count());
        let verdict = if self.is_clean() {
            "submission looks OK"
        } else if self.is_clean_but_accuracy() {
            "submission looks OK but for its accuracy targets"
        } else {
            "submission has errors"
        };
        format!("{verdict}: {} results, {e} errors, {w} warnings", self.results)
    }

    fn push(&mut self, severity: Severity, rule: Rule, path: &Path, message: impl Into<String>) {
        self.findings.push(Finding { severity, rule, path: path.to_path_buf(), message: message.into() });
    }

    fn error(&mut self, rule: Rule, path: &Path, message: impl Into<String>) {
        self.push(Severity::Error, rule, path, message);
    }

    fn extend(&mut self, path: &Path, found: Vec<(Rule, String)>) {
        for (rule, message) in found {
            self.error(rule, path, message);
        }
    }
}

/// The names in `dir` (files and folders); empty if it cannot be read.
fn names(dir: &Path) -> BTreeSet<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return BTreeSet::new() };
    rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// The sub-folders of `dir`, sorted.
fn folders(dir: &Path) -> Vec<(String, PathBuf)> {
    names(dir).into_iter().map(|n| (n.clone(), dir.join(n))).filter(|(_, p)| p.is_dir()).collect()
}

/// Checks the tree under `root`, the directory that holds `network/` (the checker's `--input`).
pub fn check_tree(root: &Path) -> Report {
    let mut r = Report::default();
    let division = root.join("network");
    if !division.is_dir() {
        r.error(Rule::Layout, &division, "no network/ division folder");
        return r;
    }
    let submitters = folders(&division);
    if submitters.is_empty() {
        r.error(Rule::Layout, &division, "no submitter folder");
    }
    for (submitter, dir) in submitters {
        check_submitter(&mut r, &submitter, &dir);
    }
    if r.results == 0 {
        r.error(Rule::Layout, root, "no results");
    }
    r
}

fn check_submitter(r: &mut Report, submitter: &str, dir: &Path) {
    if !dir.join("src").is_dir() {
        r.error(Rule::Layout, &dir.join("src"), "src directory does not exist");
    }
    let calibration = ["calibration.md", "documentation/calibration.md"];
    if !calibration.iter().any(|c| dir.join(c).is_file()) {
        r.push(Severity::Warning, Rule::Layout, dir, "no documentation/calibration.md (the old checker requires it)");
    }
    let results = dir.join("results");
    let systems: Vec<(String, PathBuf)> = folders(&results);
    if systems.is_empty() {
        r.error(Rule::Layout, &results, "no results/<system>/ folder");
    }
    for name in names(&dir.join("systems")) {
        if let Some(system) = name.strip_suffix(".json")
            && !systems.iter().any(|(s, _)| s == system)
        {
            let path = dir.join("systems").join(&name);
            r.push(Severity::Warning, Rule::Layout, &path, "a system without results (the old checker fails it)");
        }
    }
    for (system, sdir) in systems {
        let json = dir.join("systems").join(format!("{system}.json"));
        if !json.is_file() {
            r.error(Rule::System, &json, "missing: every results/<system> needs systems/<system>.json");
        } else {
            check_system(r, &json, submitter);
        }
        for (bench, bdir) in folders(&sdir) {
            if bench != BENCHMARK {
                r.error(Rule::Layout, &bdir, format!("unknown benchmark {bench:?}: qdl submits {BENCHMARK} only"));
                continue;
            }
            check_benchmark(r, &bdir);
        }
    }
}

fn check_system(r: &mut Report, path: &Path, submitter: &str) {
    let v = match std::fs::read_to_string(path).map(|t| serde_json::from_str::<Value>(&t)) {
        Ok(Ok(Value::Object(map))) => map,
        Ok(Ok(_)) => return r.error(Rule::System, path, "not a JSON object"),
        Ok(Err(e)) => return r.error(Rule::System, path, format!("not JSON: {e}")),
        Err(e) => return r.error(Rule::System, path, format!("cannot be read: {e}")),
    };
    for k in REQUIRED_FIELDS.iter().chain(&NETWORK_FIELDS) {
        if !v.contains_key(*k) {
            r.error(Rule::System, path, format!("field {k} is missing"));
        }
    }
    for k in MEANINGFUL_FIELDS {
        if v.get(k).is_some_and(|x| !truthy(x)) {
            r.error(Rule::System, path, format!("field {k} requires a meaningful response but is empty"));
        }
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_lowercase();
    if text("division") != "network" {
        r.error(Rule::System, path, format!("has division {:?}, directory has network", text("division")));
    }
    if text("submitter") != submitter.to_lowercase() {
        r.error(Rule::System, path, format!("has submitter {:?}, directory has {submitter}", text("submitter")));
    }
    if !VALID_STATUS.contains(&text("status").as_str()) {
        r.error(Rule::System, path, format!("has invalid status ({})", text("status")));
    }
    if text("system_type") != "datacenter" {
        r.error(Rule::System, path, "system_type must be \"datacenter\" (the Network rules allow only it)");
    }
    match v.get("is_network") {
        Some(Value::String(s)) if s.to_lowercase() == "true" => {}
        Some(Value::Bool(_)) => r.error(Rule::Network, path, "is_network must be the string \"True\", not a boolean"),
        _ => r.error(Rule::Network, path, "incorrect network mode(=False) for division 'network'"),
    }
    for k in ["number_of_nodes", "accelerators_per_node"] {
        let int = match v.get(k) {
            Some(Value::Number(n)) => n.is_i64() || n.is_u64(),
            Some(Value::String(s)) => s.trim().parse::<i64>().is_ok(),
            _ => false,
        };
        if !int {
            r.error(Rule::System, path, format!("{k} must be an integer"));
        }
    }
}

fn check_benchmark(r: &mut Report, dir: &Path) {
    let mut scenarios = BTreeSet::new();
    for (name, sdir) in folders(dir) {
        match Scenario::from_folder(&name) {
            Some(s) => {
                scenarios.insert(s);
                r.results += 1;
                check_scenario(r, &sdir, s);
            }
            None => r.error(Rule::Layout, &sdir, format!("unknown scenario {name:?} for this benchmark")),
        }
    }
    if !scenarios.contains(&Scenario::Offline) {
        r.error(Rule::Layout, dir, "does not have all required scenarios, missing ['offline']");
    }
    if !scenarios.contains(&Scenario::Server) && !scenarios.contains(&Scenario::Interactive) {
        r.error(Rule::Layout, dir, "does not have all required scenarios, missing ['(one of) Interactive or Server']");
    }
}

fn nonempty_file(r: &mut Report, dir: &Path, name: &str) {
    match std::fs::metadata(dir.join(name)) {
        Ok(m) if m.is_file() && m.len() > 0 => {}
        Ok(_) => r.error(Rule::Measurements, &dir.join(name), format!("is having empty {name}")),
        Err(_) => r.error(Rule::Measurements, &dir.join(name), format!("is missing {name}")),
    }
}

fn check_measurements(r: &mut Report, dir: &Path) {
    let path = dir.join("measurements.json");
    let map = match std::fs::read_to_string(&path).map(|t| serde_json::from_str::<Value>(&t)) {
        Ok(Ok(Value::Object(map))) => map,
        Ok(_) => return r.error(Rule::Measurements, &path, "not a JSON object"),
        Err(_) => return r.error(Rule::Measurements, &path, "measurements json file not found"),
    };
    for k in MEASUREMENTS_FIELDS {
        match map.get(k) {
            None => r.error(Rule::Measurements, &path, format!("field {k} is missing")),
            Some(v) if !truthy(v) => {
                r.error(Rule::Measurements, &path, format!("field {k} is missing meaningful value"))
            }
            Some(_) => {}
        }
    }
}

/// Reads a detail log and applies `rules` to it, reporting what cannot be read.
fn detail(r: &mut Report, path: &Path, rules: impl Fn(&DetailLog) -> Vec<(Rule, String)>) {
    match DetailLog::read(path) {
        Ok(log) => {
            let found = rules(&log);
            r.extend(path, found);
        }
        Err(e) => r.error(Rule::Files, path, e.to_string()),
    }
}

fn check_scenario(r: &mut Report, dir: &Path, scenario: Scenario) {
    check_measurements(r, dir);
    nonempty_file(r, dir, "user.conf");
    nonempty_file(r, dir, "README.md");

    let perf = dir.join("performance/run_1");
    let files = names(&perf);
    for need in ["mlperf_log_summary.txt", "mlperf_log_detail.txt"] {
        if !files.contains(need) {
            r.error(Rule::Files, &perf.join(need), "missing");
        }
    }
    let extra: Vec<&String> = files
        .iter()
        .filter(|f| f.as_str() != "mlperf_log_summary.txt" && f.as_str() != "mlperf_log_detail.txt")
        .filter(|f| !PERFORMANCE_OPTIONAL.contains(&f.as_str()))
        .collect();
    if !extra.is_empty() {
        r.error(Rule::Files, &perf, format!("has file list mismatch ({extra:?})"));
    }
    if files.contains("mlperf_log_detail.txt") {
        detail(r, &perf.join("mlperf_log_detail.txt"), |log| rules::performance_rules(log, scenario));
    }
    if let Ok(summary) = std::fs::read_to_string(perf.join("mlperf_log_summary.txt")) {
        let valid = summary
            .lines()
            .any(|l| l.split_once(':').is_some_and(|(k, v)| k.trim() == "Result is" && v.trim() == "VALID"));
        if !valid {
            r.error(Rule::Validity, &perf.join("mlperf_log_summary.txt"), "LoadGen did not judge the run VALID");
        }
    }
    check_accuracy_dir(r, &dir.join("accuracy"));

    let verify = dir.join("TEST06").join(test06::VERIFY_FILE);
    match std::fs::read_to_string(&verify) {
        Ok(text) => {
            let (first, eos, length) = test06::verify_file_passes(&text);
            if !(first && eos && length) {
                r.error(
                    Rule::Test06,
                    &verify,
                    format!("TEST06 accuracy check failed. first_token_check: {first} eos_check: {eos} length_check: {length}."),
                );
            }
        }
        Err(_) => r.error(Rule::Test06, &verify, "Missing TEST06 in compliance dir (no verify_accuracy.txt)"),
    }
}

fn check_accuracy_dir(r: &mut Report, acc: &Path) {
    if !acc.is_dir() {
        return r.error(Rule::Files, acc, "missing (the official checker crashes without it)");
    }
    let files = names(acc);
    let want: BTreeSet<String> = ACCURACY_FILES.iter().map(|s| s.to_string()).collect();
    for missing in want.difference(&files) {
        r.error(Rule::Files, &acc.join(missing), "missing");
    }
    let extra: Vec<&String> = files.difference(&want).collect();
    if !extra.is_empty() {
        r.error(Rule::Files, acc, format!("has file list mismatch ({extra:?})"));
    }
    if files.contains("mlperf_log_detail.txt") {
        detail(r, &acc.join("mlperf_log_detail.txt"), rules::accuracy_log_rules);
    }
    if let Ok(text) = std::fs::read_to_string(acc.join("accuracy.txt")) {
        r.extend(&acc.join("accuracy.txt"), rules::accuracy_txt_rules(&text));
    }
    let json = acc.join("mlperf_log_accuracy.json");
    if let Ok(m) = std::fs::metadata(&json)
        && m.len() > MAX_ACCURACY_LOG_BYTES
    {
        r.error(Rule::Accuracy, &json, format!("is not truncated ({} bytes > {MAX_ACCURACY_LOG_BYTES})", m.len()));
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
