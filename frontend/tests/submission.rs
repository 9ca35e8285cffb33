//! `qdl-frontend submission --test-mode`: the producing command end to end on the lab's synthetic
//! accelerators (two real `qdl-accelerator` processes on loopback, six LoadGen runs), then its
//! resumption and `submission --check` on the tree it wrote.

mod common;

use std::path::Path;

use common::*;

/// The system-description keys qdl cannot know of the host (docs/submission.md §2).
const FACTS: &str = r#"{
  "status": "rdi",
  "host_memory_capacity": "8 GB",
  "host_memory_configuration": "unknown",
  "host_storage_capacity": "100 GB",
  "host_storage_type": "SSD",
  "host_networking": "loopback",
  "host_network_card_count": "1",
  "host_networking_topology": "loopback",
  "accelerator_memory_capacity": "1 GB",
  "accelerator_host_interconnect": "TCP loopback",
  "accelerator_memory_configuration": "host memory",
  "accelerator_interconnect": "TCP loopback",
  "cooling": "air",
  "other_software_stack": "Linux",
  "network_type": "loopback",
  "network_media": "none",
  "network_rate": "n/a"
}"#;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn produce(out: &Path, facts: Option<&Path>) -> std::process::Output {
    let mut args = vec!["submission", "--benchmark", "llama3.1-8b", "--submitter", "QDL", "--system", "lab"];
    args.extend(["--out", out.to_str().unwrap(), "--test-mode"]);
    if let Some(f) = facts {
        args.extend(["--system-facts", f.to_str().unwrap()]);
    }
    frontend(&args)
}

#[test]
fn submission_test_mode_writes_a_tree_that_resumes_and_checks_with_only_the_expected_errors() {
    accelerator_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub");

    // Without the facts qdl cannot know, it refuses before any run, naming each field.
    let o = produce(&out, None);
    assert!(!o.status.success(), "{}", text(&o));
    for field in ["status", "cooling", "host_memory_capacity", "accelerator_interconnect"] {
        assert!(text(&o).contains(field), "{field}: {}", text(&o));
    }
    assert!(!out.join("runs/Offline").exists(), "no run before the description is complete");

    let facts = dir.path().join("facts.json");
    std::fs::write(&facts, FACTS).unwrap();
    let o = produce(&out, Some(&facts));
    let stdout = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(stderr.contains("submission: [5/6] llama3.1-8b Server accuracy ..."), "{stderr}");
    assert!(stdout.contains("only errors are the expected ones"), "{stdout}");

    let sub = out.join("network/QDL");
    let res = sub.join("results/lab/llama3.1-8b");
    for sc in ["Offline", "Server"] {
        let d = res.join(sc);
        for f in ["performance/run_1/mlperf_log_detail.txt", "performance/run_1/mlperf_log_summary.txt"] {
            assert!(d.join(f).is_file(), "{sc}/{f}");
        }
        let acc = read(&d.join("accuracy/accuracy.txt"));
        assert!(acc.starts_with("qdl check-accuracy (synthetic engine"), "{acc}");
        assert!(acc.lines().any(|l| l.starts_with("hash=")) && !acc.contains("'rouge1'"), "{acc}");
        let verify = read(&d.join("TEST06/verify_accuracy.txt"));
        let first = if sc == "Offline" { "Skipped" } else { "True" };
        for line in [format!("First token check pass: {first}"), "EOS check pass: True".into()] {
            assert!(verify.lines().any(|l| l.trim() == line), "{sc}: {line}: {verify}");
        }
        assert!(verify.lines().any(|l| l.trim() == "Sample length check pass: True"), "{verify}");
        assert!(read(&d.join("README.md")).contains("TEST MODE: shortened settings, not a submission"));
        assert!(read(&d.join("README.md")).contains("qdl-frontend run --workload llama3.1-8b"));
        assert!(!read(&d.join("user.conf")).trim().is_empty());

        // LoadGen read TEST06's audit.config (its working directory), and only there.
        let audit = "Found Audit Config file";
        assert!(read(&out.join(format!("runs/{sc}/TEST06/mlperf_log_detail.txt"))).contains(audit), "{sc}");
        for kind in ["performance", "accuracy"] {
            let log = read(&out.join(format!("runs/{sc}/{kind}/mlperf_log_detail.txt")));
            assert!(!log.contains(audit), "{sc} {kind} saw an audit.config");
            assert!(!out.join(format!("runs/{sc}/{kind}/audit.config")).exists());
        }
    }
    let system: serde_json::Value = serde_json::from_str(&read(&sub.join("systems/lab.json"))).unwrap();
    assert_eq!(system["is_network"], "True");
    assert_eq!(system["division"], "network");
    assert_eq!(system["network_protocol"], "TCP");
    assert_eq!(system["cooling"], "air", "the facts file is merged in");
    assert!(read(&sub.join("src/llama3.1-8b/README.md")).contains("commit: "));
    assert!(read(&sub.join("documentation/calibration.md")).contains("No calibration"));

    // A second run resumes: every run is skipped, no accelerator starts, the tree is rewritten.
    let o = produce(&out, Some(&facts));
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(stderr.matches("already done").count(), 6, "{stderr}");
    assert!(!stderr.contains("synthetic accelerators on"), "{stderr}");
    assert!(res.join("Server/TEST06/verify_accuracy.txt").is_file());

    // The check finds only the accuracy targets and the shortened settings.
    let o = frontend(&["submission", "--check", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    let errors: Vec<&str> = stdout.lines().filter(|l| l.starts_with("error ")).collect();
    assert!(errors.iter().any(|l| l.contains("[AccuracyTarget]")), "{stdout}");
    for e in &errors {
        let expected = e.contains("[AccuracyTarget]")
            || e.contains("[Settings]")
            || e.contains("[Latency]")
            || e.contains("[Validity]")
            || (e.contains("[Accuracy]") && e.contains("does not cover all dataset"));
        assert!(expected, "unexpected finding: {e}\n{stdout}");
    }
}
