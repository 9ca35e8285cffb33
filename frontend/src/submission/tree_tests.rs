//! Tests of [`super::SubmissionTree`]: a tree written from fake LoadGen runs (with submission
//! settings) passes [`check_tree`], the accuracy logs are hashed whole and truncated to what the
//! checker allows, and missing or bad inputs are refused before anything is written.

use std::path::{Path, PathBuf};

use super::*;
use crate::submission::check::{Rule, check_tree};
use crate::submission::fixtures::{
    ACCURACY_TXT, RES, VALID_SUMMARY, accuracy_detail, accuracy_log, perf_detail, system_description, write,
};
use crate::submission::rules;
use crate::submission::test06::{FirstToken, LLAMA3_1_EOS};

/// Finished runs of one scenario, as qdl leaves them (with files the tree must not take).
struct Runs {
    _dir: tempfile::TempDir,
    perf: PathBuf,
    acc: PathBuf,
    test06: PathBuf,
}

fn runs(s: Scenario) -> Runs {
    let dir = tempfile::tempdir().unwrap();
    let (perf, acc, test06) = (dir.path().join("perf"), dir.path().join("acc"), dir.path().join("test06"));
    write(&perf.join(SUMMARY_LOG), VALID_SUMMARY);
    write(&perf.join(DETAIL_LOG), &perf_detail(s));
    write(&perf.join("report.json"), "{}");
    write(&perf.join("latency.svg"), "<svg/>");
    write(&perf.join("mlperf_log_trace.json"), "[]");
    write(&perf.join(ACCURACY_LOG), "[]");
    write(&acc.join(SUMMARY_LOG), "accuracy run\n");
    write(&acc.join(DETAIL_LOG), &accuracy_detail());
    write(&acc.join(ACCURACY_LOG), &accuracy_log(120, 24, LLAMA3_1_EOS, s != Scenario::Offline));
    write(&acc.join("report.json"), "{}");
    write(&test06.join(ACCURACY_LOG), &accuracy_log(100, 16, LLAMA3_1_EOS, s != Scenario::Offline));
    write(&test06.join(DETAIL_LOG), &accuracy_detail());
    Runs { _dir: dir, perf, acc, test06 }
}

fn measurements() -> Measurements {
    Measurements {
        input_data_types: "int32".into(),
        retraining: "No".into(),
        starting_weights_filename: "Llama-3.1-8B-Instruct".into(),
        weight_data_types: "bf16".into(),
        weight_transformations: "none".into(),
    }
}

const USER_CONF: &str = "llama3_1-8b.Offline.target_qps = 10\nllama3_1-8b.Server.target_qps = 8\n";
const README: &str = "# llama3.1-8b\n\nqdl-frontend run, two accelerator nodes over TCP.\n";

fn accuracy_text() -> &'static str {
    ACCURACY_TXT.split("hash=").next().unwrap()
}

fn inputs<'a>(r: &'a Runs, m: &'a Measurements, accuracy_txt: &'a str) -> ScenarioInputs<'a> {
    ScenarioInputs {
        performance_dir: &r.perf,
        accuracy_dir: &r.acc,
        accuracy_txt,
        test06: Some(Test06Run { dir: &r.test06, eos: LLAMA3_1_EOS }),
        measurements: m,
        user_conf: USER_CONF,
        readme: README,
    }
}

/// Writes the whole tree (Offline and Server) under `root` with `accuracy_txt`.
fn write_tree(root: &Path, accuracy_txt: &str) -> Vec<WrittenScenario> {
    let tree = SubmissionTree::new(root, "QDL").unwrap();
    tree.write_system(&system_description()).unwrap();
    tree.write_src_readme(BENCHMARK, PROJECT_URL, "0dd906d").unwrap();
    tree.write_calibration("The synthetic engine has no calibration.\n").unwrap();
    let m = measurements();
    [(Scenario::Offline, "Offline"), (Scenario::Server, "Server")]
        .into_iter()
        .map(|(s, name)| {
            let r = runs(s);
            tree.write_scenario("qdl_sys", BENCHMARK, name, &inputs(&r, &m, accuracy_txt)).unwrap()
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    n.sort();
    n
}

#[test]
fn a_tree_written_from_runs_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_tree(dir.path(), accuracy_text());
    let report = check_tree(dir.path());
    assert_eq!(report.findings, vec![], "{}", report.summary());
    assert_eq!(report.results, 2);
    assert!(report.is_clean());

    let offline = dir.path().join(RES).join("Offline");
    assert_eq!(written[0].dir, offline);
    assert_eq!(names(&offline.join("performance/run_1")), [DETAIL_LOG, SUMMARY_LOG]);
    assert_eq!(names(&offline.join("accuracy")), ["accuracy.txt", ACCURACY_LOG, DETAIL_LOG, SUMMARY_LOG]);
    assert_eq!(names(&offline.join("TEST06")), ["accuracy", "verify_accuracy.txt"]);
    assert_eq!(names(&offline), ["README.md", "TEST06", "accuracy", "measurements.json", "performance", "user.conf"]);
    assert_eq!(std::fs::read_to_string(offline.join("user.conf")).unwrap(), USER_CONF);
    let verify = |s: &str| std::fs::read_to_string(dir.path().join(RES).join(s).join("TEST06/verify_accuracy.txt"));
    assert!(verify("Offline").unwrap().starts_with("First token check pass: Skipped\n"));
    assert!(verify("Server").unwrap().starts_with("First token check pass: True\n"));
    assert_eq!(written[1].test06.map(|t| t.first_token), Some(FirstToken::Pass));
    let readme = std::fs::read_to_string(dir.path().join("network/QDL/src/llama3.1-8b/README.md")).unwrap();
    assert!(readme.contains(PROJECT_URL) && readme.contains("0dd906d"), "{readme}");
    for w in &written {
        assert!(!w.full_accuracy_log.starts_with(dir.path().join("network")), "kept outside network/");
        assert!(w.full_accuracy_log.starts_with(dir.path().join(FULL_LOGS_DIR)));
        assert!(w.full_test06_log.as_ref().is_some_and(|p| p.is_file()));
    }
}

#[test]
fn the_originals_stay_and_the_full_log_is_kept_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SubmissionTree::new(dir.path(), "QDL").unwrap();
    let (r, m) = (runs(Scenario::Server), measurements());
    let full = std::fs::read(r.acc.join(ACCURACY_LOG)).unwrap();
    assert!(full.len() as u64 > MAX_ACCURACY_LOG_BYTES, "the fixture log needs truncating");
    let w = tree.write_scenario("qdl_sys", BENCHMARK, "Server", &inputs(&r, &m, ACCURACY_TXT)).unwrap();

    for f in [SUMMARY_LOG, DETAIL_LOG, "report.json", "latency.svg", "mlperf_log_trace.json"] {
        assert!(r.perf.join(f).is_file(), "{f} was copied, not moved");
    }
    assert_eq!(std::fs::read(&w.full_accuracy_log).unwrap(), full);
    assert_eq!(w.accuracy_hash, sha256_hex(&full));
    let txt = std::fs::read_to_string(w.dir.join("accuracy/accuracy.txt")).unwrap();
    assert!(txt.ends_with(&format!("}}\nhash={}\n", w.accuracy_hash)), "{txt}");
    assert_eq!(txt.matches("hash=").count(), 1, "the given hash line is replaced");
    assert!(rules::has_hash_line(&txt));
    let cut = std::fs::read(w.dir.join("accuracy").join(ACCURACY_LOG)).unwrap();
    assert_eq!(cut.len(), 2 * TRUNCATE_KEEP + TRUNCATE_SEPARATOR.len());
    assert!(cut.len() as u64 <= MAX_ACCURACY_LOG_BYTES);
    assert_eq!(cut[..TRUNCATE_KEEP], full[..TRUNCATE_KEEP]);
    assert_eq!(cut[cut.len() - TRUNCATE_KEEP..], full[full.len() - TRUNCATE_KEEP..]);
    assert_ne!(sha256_hex(&cut), w.accuracy_hash, "the hash is the full log's");
    let t06 = std::fs::read(w.dir.join("TEST06/accuracy").join(ACCURACY_LOG)).unwrap();
    assert!(t06.len() as u64 <= MAX_ACCURACY_LOG_BYTES);
    let t06_full = std::fs::read(r.test06.join(ACCURACY_LOG)).unwrap();
    assert_eq!(std::fs::read(w.full_test06_log.unwrap()).unwrap(), t06_full);
}

#[test]
fn truncation_keeps_small_logs_whole() {
    assert_eq!(truncate_accuracy_log(b"[]"), b"[]");
    let edge = vec![b'x'; MAX_ACCURACY_LOG_BYTES as usize];
    assert_eq!(truncate_accuracy_log(&edge), edge);
    let over: Vec<u8> = (0..=MAX_ACCURACY_LOG_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
    let cut = truncate_accuracy_log(&over);
    assert_eq!(cut.len(), 8199);
    assert_eq!(&cut[TRUNCATE_KEEP..TRUNCATE_KEEP + 7], b"\n\n...\n\n");
    assert_eq!(accuracy_txt("\nResults\n\n{}\nhash=old\n\n", "abc"), "\nResults\n\n{}\nhash=abc\n");
    assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

#[test]
fn synthetic_accuracy_values_fail_only_the_accuracy_targets() {
    let dir = tempfile::tempdir().unwrap();
    let low = accuracy_text().replace("'rouge1': '38.8638'", "'rouge1': '0.5012'");
    write_tree(dir.path(), &low);
    let r = check_tree(dir.path());
    assert!(!r.is_clean() && r.is_clean_but_accuracy(), "{:#?}", r.findings);
    assert_eq!(r.errors().count(), 2, "rouge1 in Offline and Server: {:#?}", r.findings);
}

#[test]
fn a_failing_test06_log_is_written_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SubmissionTree::new(dir.path(), "QDL").unwrap();
    let (r, m) = (runs(Scenario::Server), measurements());
    write(
        &r.test06.join(ACCURACY_LOG),
        &accuracy_log(3, 4, LLAMA3_1_EOS, true).replace("09F40100\"", "09F4010009F40100\""),
    );
    let w = tree.write_scenario("qdl_sys", BENCHMARK, "Server", &inputs(&r, &m, ACCURACY_TXT)).unwrap();
    let t = w.test06.unwrap();
    assert!(!t.eos && !t.length && !t.passed(), "{t:?}");
    let text = std::fs::read_to_string(w.dir.join("TEST06/verify_accuracy.txt")).unwrap();
    assert!(text.contains("EOS check pass: False\n") && text.ends_with("TEST06 verification failed\n"));
    let e: Vec<_> = check_tree(dir.path()).findings.into_iter().filter(|f| f.rule == Rule::Test06).collect();
    assert_eq!(e.len(), 1, "{e:#?}");
}

#[test]
fn missing_inputs_and_bad_names_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SubmissionTree::new(dir.path(), "QDL").unwrap();
    let m = measurements();
    let try_write = |r: &Runs, scenario: &str, change: &dyn Fn(&mut ScenarioInputs<'_>)| {
        let mut i = inputs(r, &m, ACCURACY_TXT);
        change(&mut i);
        tree.write_scenario("qdl_sys", BENCHMARK, scenario, &i)
    };
    let files = [("perf", SUMMARY_LOG), ("perf", DETAIL_LOG), ("acc", SUMMARY_LOG), ("acc", DETAIL_LOG)];
    for (run, file) in files.into_iter().chain([("acc", ACCURACY_LOG), ("test06", ACCURACY_LOG)]) {
        let r = runs(Scenario::Offline);
        let path = match run {
            "perf" => r.perf.join(file),
            "acc" => r.acc.join(file),
            _ => r.test06.join(file),
        };
        std::fs::remove_file(&path).unwrap();
        match try_write(&r, "Offline", &|_| {}) {
            Err(SubmissionError::MissingInput { path: p }) => assert_eq!(p, path),
            other => panic!("{run}/{file}: {other:?}"),
        }
    }
    assert!(!dir.path().join("network").exists(), "nothing written");

    let r = runs(Scenario::Offline);
    for bad in ["SingleStream", "offline", ""] {
        let e = try_write(&r, bad, &|_| {}).unwrap_err();
        assert!(matches!(&e, SubmissionError::UnknownScenario(s) if s == bad), "{e}");
    }
    let e = tree.write_scenario("qdl_sys", "llama3.1-8b-99", "Offline", &inputs(&r, &m, ACCURACY_TXT));
    assert!(matches!(e, Err(SubmissionError::UnknownBenchmark(_))));
    let e = tree.write_scenario("../x", BENCHMARK, "Offline", &inputs(&r, &m, ACCURACY_TXT)).unwrap_err();
    assert!(matches!(e, SubmissionError::BadName { what: "system", .. }), "{e}");
    assert!(SubmissionTree::new(dir.path(), "a/b").is_err());
    let e = try_write(&r, "Offline", &|i| i.user_conf = "  \n").unwrap_err();
    assert_eq!(e.to_string(), "user.conf is empty");
    let no_test06 = try_write(&r, "Offline", &|i| i.test06 = None);
    assert!(no_test06.is_ok_and(|w| w.test06.is_none() && !w.dir.join("TEST06").exists()));
    let e = try_write(&r, "Offline", &|_| {}).unwrap_err();
    assert!(matches!(e, SubmissionError::AlreadyExists { .. }), "{e}");

    let empty = Measurements { retraining: String::new(), weight_data_types: String::new(), ..measurements() };
    let e = tree.write_scenario(
        "qdl_sys",
        BENCHMARK,
        "Server",
        &ScenarioInputs { measurements: &empty, ..inputs(&r, &m, ACCURACY_TXT) },
    );
    let e = e.unwrap_err();
    assert!(
        matches!(&e, SubmissionError::MissingMeaningful { fields, .. } if fields == &["retraining", "weight_data_types"])
    );
    assert!(e.to_string().contains("retraining, weight_data_types"), "{e}");
    write(&r.test06.join(ACCURACY_LOG), "{not json");
    assert!(matches!(try_write(&r, "Server", &|_| {}), Err(SubmissionError::Json { .. })));
    assert!(!tree.scenario_dir("qdl_sys", BENCHMARK, "Server").exists(), "nothing written");
}

#[test]
fn a_system_with_missing_meaningful_fields_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SubmissionTree::new(dir.path(), "QDL").unwrap();
    let mut d = system_description();
    d.cooling.clear();
    d.host_memory_capacity.clear();
    let e = tree.write_system(&d).unwrap_err();
    assert!(
        matches!(&e, SubmissionError::MissingMeaningful { fields, .. }
        if fields == &["host_memory_capacity", "cooling"]),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("host_memory_capacity") && msg.contains("cooling"), "{msg}");
    assert!(!tree.submitter_dir().join("systems").exists(), "nothing written");
    let other = SubmissionTree::new(dir.path(), "Other").unwrap();
    assert!(matches!(other.write_system(&system_description()), Err(SubmissionError::Mismatch { .. })));
    let path = tree.write_system(&system_description()).unwrap();
    assert_eq!(path, tree.submitter_dir().join("systems/qdl_sys.json"));
    assert!(tree.write_calibration("").is_err());
    assert!(tree.write_src_readme("llama2-70b-99", PROJECT_URL, "abc").is_err());
}
