//! Writing a Network-division submission tree from finished runs (docs/submission.md §1, §7).
//!
//! [`SubmissionTree`] is the checker's `--input` folder and one submitter. It writes:
//! - `network/<submitter>/results/<system>/<benchmark>/<Scenario>/`, by
//!   [`SubmissionTree::write_scenario`], from a performance run, an accuracy run and
//!   (optionally) a TEST06 run (see [`ScenarioInputs`]). Only the files the old checker's exact
//!   lists allow are **copied** (the run folders are left as they are; qdl's `report.json`,
//!   plots and traces stay there).
//! - `systems/<system>.json`, by [`SubmissionTree::write_system`], refused while a meaningful
//!   field is empty.
//! - `src/<benchmark>/README.md`, pointing at the code, by [`SubmissionTree::write_src_readme`].
//! - `documentation/calibration.md`, by [`SubmissionTree::write_calibration`].
//!
//! **The untruncated accuracy logs** are kept outside `network/`, by default in
//! `<input>/full-accuracy-logs/<system>/<benchmark>/<Scenario>/mlperf_log_accuracy.json` (and
//! `.../<Scenario>/TEST06/mlperf_log_accuracy.json`): beside the division folder, where the
//! checker does not look (it skips top-level folders that are not divisions), and where they
//! travel with the tree in case MLCommons asks for them. [`SubmissionTree::with_full_logs`]
//! puts them elsewhere. [`WrittenScenario`] says where each went.
//!
//! Everything is validated before anything is written, so a refused scenario leaves no partial
//! folder; an existing non-empty scenario folder is refused rather than merged or deleted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SubmissionError;
use super::check::{BENCHMARK, MAX_ACCURACY_LOG_BYTES, MEASUREMENTS_FIELDS, Scenario};
use super::system::{SystemDescription, truthy};
use super::test06::{self, Test06};

/// The accuracy log's file name, in LoadGen's run folders and in the tree.
pub const ACCURACY_LOG: &str = "mlperf_log_accuracy.json";
/// LoadGen's summary file name.
pub const SUMMARY_LOG: &str = "mlperf_log_summary.txt";
/// LoadGen's detail log file name.
pub const DETAIL_LOG: &str = "mlperf_log_detail.txt";
/// The default folder (under the checker's input) of the untruncated accuracy logs.
pub const FULL_LOGS_DIR: &str = "full-accuracy-logs";
/// How many bytes of each end of an accuracy log the truncation keeps.
pub const TRUNCATE_KEEP: usize = 4096;
/// What the truncation puts between the two ends.
pub const TRUNCATE_SEPARATOR: &str = "\n\n...\n\n";
/// The project the `src/<benchmark>/README.md` points at by default (the workspace's repository).
pub const PROJECT_URL: &str = env!("CARGO_PKG_REPOSITORY");

/// `measurements.json`: the keys of [`MEASUREMENTS_FIELDS`], each of which must be non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    /// The input's data type, e.g. "int32" (token ids).
    pub input_data_types: String,
    /// Whether the weights were retrained, e.g. "No".
    pub retraining: String,
    /// The weights the run started from, e.g. "Llama-3.1-8B-Instruct".
    pub starting_weights_filename: String,
    /// The weights' data type as run, e.g. "bf16" or "fp8" (it goes into the checker's CSV).
    pub weight_data_types: String,
    /// What was done to the weights, e.g. "none" or "quantization".
    pub weight_transformations: String,
}

impl Measurements {
    /// The keys of [`MEASUREMENTS_FIELDS`] that are empty, in that order.
    pub fn missing(&self) -> Vec<&'static str> {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self) else { return Vec::new() };
        MEASUREMENTS_FIELDS.into_iter().filter(|k| !map.get(*k).is_some_and(truthy)).collect()
    }
}

/// A finished TEST06 run (LoadGen with TEST06's `audit.config`) of the same scenario.
#[derive(Debug, Clone, Copy)]
pub struct Test06Run<'a> {
    /// The run's folder, holding its `mlperf_log_accuracy.json`.
    pub dir: &'a Path,
    /// The workload's EOS token id (llama3.1-8b: [`test06::LLAMA3_1_EOS`]).
    pub eos: i32,
}

/// What one scenario folder is made of.
#[derive(Debug, Clone, Copy)]
pub struct ScenarioInputs<'a> {
    /// The finished performance run's folder (its summary and detail log are copied).
    pub performance_dir: &'a Path,
    /// The finished accuracy run's folder (summary, detail log and accuracy log).
    pub accuracy_dir: &'a Path,
    /// accuracy.txt as the accuracy script printed it, without a `hash=` line (one given is
    /// replaced by the hash of the accuracy log actually copied).
    pub accuracy_txt: &'a str,
    /// The TEST06 run; without it no `TEST06/` is written (and the checker fails the result).
    /// Its first-token check is skipped when the scenario is Offline.
    pub test06: Option<Test06Run<'a>>,
    /// measurements.json.
    pub measurements: &'a Measurements,
    /// The user.conf the runs used.
    pub user_conf: &'a str,
    /// README.md: how the result was produced.
    pub readme: &'a str,
}

/// What [`SubmissionTree::write_scenario`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenScenario {
    /// The scenario folder.
    pub dir: PathBuf,
    /// SHA-256 (hex) of the untruncated accuracy log, as written into accuracy.txt.
    pub accuracy_hash: String,
    /// Where the untruncated accuracy log was kept.
    pub full_accuracy_log: PathBuf,
    /// TEST06's verdicts, when a TEST06 run was given.
    pub test06: Option<Test06>,
    /// Where the untruncated TEST06 accuracy log was kept.
    pub full_test06_log: Option<PathBuf>,
}

/// A submission tree being written: the checker's `--input` folder and one submitter.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmissionTree {
    root: PathBuf,
    submitter: String,
    full_logs: PathBuf,
}

impl SubmissionTree {
    /// The tree under `root` (the folder that holds `network/`) for `submitter`; the
    /// untruncated logs go to `root/`[`FULL_LOGS_DIR`].
    pub fn new(root: &Path, submitter: &str) -> Result<SubmissionTree, SubmissionError> {
        component("submitter", submitter)?;
        Ok(SubmissionTree {
            root: root.to_path_buf(),
            submitter: submitter.to_string(),
            full_logs: root.join(FULL_LOGS_DIR),
        })
    }

    /// Keeps the untruncated accuracy logs under `dir` instead (it should be outside `network/`).
    pub fn with_full_logs(mut self, dir: &Path) -> SubmissionTree {
        self.full_logs = dir.to_path_buf();
        self
    }

    /// `<root>/network/<submitter>`.
    pub fn submitter_dir(&self) -> PathBuf {
        self.root.join("network").join(&self.submitter)
    }

    /// `results/<system>/<benchmark>/<scenario>` under [`Self::submitter_dir`].
    pub fn scenario_dir(&self, system: &str, benchmark: &str, scenario: &str) -> PathBuf {
        self.submitter_dir().join("results").join(system).join(benchmark).join(scenario)
    }

    /// Writes `systems/<system_name>.json`; refused while [`SystemDescription::missing_meaningful`]
    /// names any field, or when the description's submitter is not this tree's.
    pub fn write_system(&self, system: &SystemDescription) -> Result<PathBuf, SubmissionError> {
        component("system", &system.system_name)?;
        let missing = system.missing_meaningful();
        if !missing.is_empty() {
            return Err(SubmissionError::MissingMeaningful { what: "system description", fields: missing });
        }
        if !system.submitter.eq_ignore_ascii_case(&self.submitter) {
            return Err(SubmissionError::Mismatch {
                what: "submitter",
                found: system.submitter.clone(),
                expected: self.submitter.clone(),
            });
        }
        let path = self.submitter_dir().join("systems").join(format!("{}.json", system.system_name));
        write_file(&path, system.to_json().as_bytes())?;
        Ok(path)
    }

    /// Writes `src/<benchmark>/README.md`, pointing at `project` (e.g. [`PROJECT_URL`]) at
    /// `commit`.
    pub fn write_src_readme(&self, benchmark: &str, project: &str, commit: &str) -> Result<PathBuf, SubmissionError> {
        known_benchmark(benchmark)?;
        nonempty("project", project)?;
        nonempty("commit", commit)?;
        let text = format!(
            "# {benchmark}: qdl (Network division)\n\n\
             The code that produced these results is qdl, the MLPerf Inference Network-division system:\n\n\
             - project: {project}\n- commit: {commit}\n\n\
             Build and run it as that commit's README describes; each result's README.md gives the \
             commands and settings of its runs.\n"
        );
        let path = self.submitter_dir().join("src").join(benchmark).join("README.md");
        write_file(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Writes `documentation/calibration.md` (the old checker requires it).
    pub fn write_calibration(&self, text: &str) -> Result<PathBuf, SubmissionError> {
        nonempty("calibration.md", text)?;
        let path = self.submitter_dir().join("documentation").join("calibration.md");
        write_file(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Writes the scenario folder `results/<system>/<benchmark>/<scenario>` from `inputs`.
    /// Refuses an unknown scenario or benchmark, a missing input file, empty texts or
    /// measurements, an unreadable TEST06 log and an existing non-empty scenario folder, all
    /// before writing anything.
    pub fn write_scenario(
        &self,
        system: &str,
        benchmark: &str,
        scenario: &str,
        inputs: &ScenarioInputs<'_>,
    ) -> Result<WrittenScenario, SubmissionError> {
        component("system", system)?;
        known_benchmark(benchmark)?;
        let kind = Scenario::from_folder(scenario).ok_or_else(|| SubmissionError::UnknownScenario(scenario.into()))?;
        let missing = inputs.measurements.missing();
        if !missing.is_empty() {
            return Err(SubmissionError::MissingMeaningful { what: "measurements.json", fields: missing });
        }
        nonempty("user.conf", inputs.user_conf)?;
        nonempty("README.md", inputs.readme)?;
        nonempty("accuracy.txt", inputs.accuracy_txt)?;
        let perf = [SUMMARY_LOG, DETAIL_LOG].map(|f| inputs.performance_dir.join(f));
        let acc = [SUMMARY_LOG, DETAIL_LOG, ACCURACY_LOG].map(|f| inputs.accuracy_dir.join(f));
        for path in perf.iter().chain(&acc) {
            input_file(path)?;
        }
        let test06 = match &inputs.test06 {
            Some(run) => {
                let log = run.dir.join(ACCURACY_LOG);
                input_file(&log)?;
                let text = read(&log)?;
                let entries = test06::parse_accuracy_log(&String::from_utf8_lossy(&text), &log)?;
                Some((test06::verify(&entries, run.eos, kind == Scenario::Offline), text))
            }
            None => None,
        };
        let dir = self.scenario_dir(system, benchmark, scenario);
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(SubmissionError::AlreadyExists { path: dir });
        }
        let full = self.full_logs.join(system).join(benchmark).join(scenario);

        for (src, name) in perf.iter().zip([SUMMARY_LOG, DETAIL_LOG]) {
            copy_file(src, &dir.join("performance/run_1").join(name))?;
        }
        for (src, name) in acc.iter().zip([SUMMARY_LOG, DETAIL_LOG]) {
            copy_file(src, &dir.join("accuracy").join(name))?;
        }
        let log = read(&acc[2])?;
        let accuracy_hash = sha256_hex(&log);
        write_file(&dir.join("accuracy").join(ACCURACY_LOG), &truncate_accuracy_log(&log))?;
        write_file(&dir.join("accuracy/accuracy.txt"), accuracy_txt(inputs.accuracy_txt, &accuracy_hash).as_bytes())?;
        let full_accuracy_log = full.join(ACCURACY_LOG);
        write_file(&full_accuracy_log, &log)?;

        let (verdict, full_test06_log) = match test06 {
            Some((verdict, text)) => {
                write_file(&dir.join("TEST06").join(test06::VERIFY_FILE), verdict.render().as_bytes())?;
                write_file(&dir.join("TEST06/accuracy").join(ACCURACY_LOG), &truncate_accuracy_log(&text))?;
                let kept = full.join("TEST06").join(ACCURACY_LOG);
                write_file(&kept, &text)?;
                (Some(verdict), Some(kept))
            }
            None => (None, None),
        };

        let measurements = serde_json::to_string_pretty(inputs.measurements).unwrap_or_default() + "\n";
        write_file(&dir.join("measurements.json"), measurements.as_bytes())?;
        write_file(&dir.join("user.conf"), inputs.user_conf.as_bytes())?;
        write_file(&dir.join("README.md"), inputs.readme.as_bytes())?;
        Ok(WrittenScenario { dir, accuracy_hash, full_accuracy_log, test06: verdict, full_test06_log })
    }
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The accuracy log as the tree holds it: unchanged when it is at most
/// [`MAX_ACCURACY_LOG_BYTES`], else its first [`TRUNCATE_KEEP`] bytes, [`TRUNCATE_SEPARATOR`] and
/// its last [`TRUNCATE_KEEP`] bytes (8199 bytes; LoadGen's log is ASCII, so bytes and the
/// official tool's characters agree).
pub fn truncate_accuracy_log(log: &[u8]) -> Vec<u8> {
    if log.len() as u64 <= MAX_ACCURACY_LOG_BYTES {
        return log.to_vec();
    }
    let mut out = Vec::with_capacity(2 * TRUNCATE_KEEP + TRUNCATE_SEPARATOR.len());
    out.extend_from_slice(&log[..TRUNCATE_KEEP]);
    out.extend_from_slice(TRUNCATE_SEPARATOR.as_bytes());
    out.extend_from_slice(&log[log.len() - TRUNCATE_KEEP..]);
    out
}

/// accuracy.txt: `text` without any `hash=` line, then `hash=<hash>`.
pub fn accuracy_txt(text: &str, hash: &str) -> String {
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("hash=")).collect();
    format!("{}\nhash={hash}\n", kept.join("\n").trim_end())
}

/// Refuses a name that is not one plain path component.
fn component(what: &'static str, name: &str) -> Result<(), SubmissionError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if plain { Ok(()) } else { Err(SubmissionError::BadName { what, name: name.into() }) }
}

fn known_benchmark(benchmark: &str) -> Result<(), SubmissionError> {
    if benchmark == BENCHMARK { Ok(()) } else { Err(SubmissionError::UnknownBenchmark(benchmark.into())) }
}

fn nonempty(what: &'static str, text: &str) -> Result<(), SubmissionError> {
    if text.trim().is_empty() { Err(SubmissionError::Empty { what }) } else { Ok(()) }
}

fn input_file(path: &Path) -> Result<(), SubmissionError> {
    if path.is_file() { Ok(()) } else { Err(SubmissionError::MissingInput { path: path.to_path_buf() }) }
}

fn read(path: &Path) -> Result<Vec<u8>, SubmissionError> {
    std::fs::read(path).map_err(|e| SubmissionError::io(path, e))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SubmissionError> {
    let write = |p: &Path| -> std::io::Result<()> {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, bytes)
    };
    write(path).map_err(|source| SubmissionError::Write { path: path.to_path_buf(), source })
}

/// Copies `from` to `to` (creating `to`'s folders); the original stays.
fn copy_file(from: &Path, to: &Path) -> Result<(), SubmissionError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SubmissionError::Write { path: parent.into(), source })?;
    }
    std::fs::copy(from, to).map(drop).map_err(|source| SubmissionError::Write { path: to.to_path_buf(), source })
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
