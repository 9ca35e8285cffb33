//! The onnx backend on its own, against ONNX Runtime's outputs computed in Python one sample at a
//! time (`scripts/models`): every input path (one tensor handed over as is, one tensor copied
//! because its buffer is misaligned, several tensors split per tensor, a fixed batch padded with
//! zero samples) and batch sizes from 1 up.
//!
//! Models come from `QDL_MODELS` (default `target/models`); without them the tests say "skipped"
//! and pass, unless `QDL_REQUIRE_ONNX=1`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use qdl_engine::backend::onnx::{OnnxBackend, Placement};
use qdl_engine::backend::{Backend, Batch};
use qdl_shared::config::{ExecutionProviderName, OnnxConfig};
use qdl_shared::workload::{DType, OutputKind, TensorSpec, WorkloadSpec};

fn models() -> Option<PathBuf> {
    let dir = std::env::var_os("QDL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models"));
    if dir.join("fixed-batch/model.onnx").is_file() && dir.join("onet/model.onnx").is_file() {
        return Some(dir);
    }
    assert!(std::env::var("QDL_REQUIRE_ONNX").as_deref() != Ok("1"), "QDL_REQUIRE_ONNX=1 but no models");
    eprintln!("skipped: no models in {} (run scripts/models)", dir.display());
    None
}

/// The data of a little-endian .npy file (header skipped).
fn npy(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
    };
    bytes[start + len..].to_vec()
}

fn t(name: &str, dtype: DType, shape: &[u32]) -> TensorSpec {
    TensorSpec { name: name.into(), dtype, shape: shape.to_vec() }
}

fn spec(name: &str, inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> WorkloadSpec {
    let s = WorkloadSpec {
        name: name.into(),
        inputs,
        output_kind: OutputKind::Tensors,
        output_bytes: 0,
        outputs,
        generation: None,
    }
    .complete();
    s.validate().unwrap();
    s
}

/// The ONNX Runtime library of `$QDL_PYTHON` or the project's environment (target/python), if
/// any; otherwise the backend's own search.
fn library() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("QDL_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(root.join("target/python/bin/python3")).filter(|p| p.is_file()))?;
    let out = std::process::Command::new(python)
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()
        .ok()?;
    let capi = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
    std::fs::read_dir(capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.1")))
}

fn load(dir: &Path, model: &str) -> OnnxBackend {
    let config = OnnxConfig {
        model: Some(dir.join(model).join("model.onnx")),
        library: library(),
        execution_providers: vec![ExecutionProviderName::Cpu],
        ..Default::default()
    };
    OnnxBackend::load(&config, Placement::Cpu).unwrap()
}

/// The samples `first..first+n`, each its tensors concatenated, placed `shift` bytes into a
/// u64-aligned buffer; and their reference outputs likewise.
fn batch_of(dir: &Path, model: &str, spec: &WorkloadSpec, first: usize, n: usize) -> (Vec<u8>, Vec<u8>) {
    let d = dir.join(model);
    let columns: Vec<Vec<u8>> =
        spec.inputs.iter().map(|t| npy(&d.join("dataset").join(format!("{}.npy", t.name)))).collect();
    let refs: Vec<Vec<u8>> =
        spec.outputs.iter().map(|t| npy(&d.join("reference").join(format!("{}.npy", t.name)))).collect();
    let (mut input, mut want) = (Vec::new(), Vec::new());
    for i in first..first + n {
        for (t, c) in spec.inputs.iter().zip(&columns) {
            input.extend_from_slice(&c[i * t.bytes()..(i + 1) * t.bytes()]);
        }
        for (t, r) in spec.outputs.iter().zip(&refs) {
            want.extend_from_slice(&r[i * t.bytes()..(i + 1) * t.bytes()]);
        }
    }
    (input, want)
}

/// Runs `n` samples from byte `shift` of an aligned buffer; returns the largest absolute error
/// against the reference (all outputs are f32).
fn run(backend: &mut OnnxBackend, dir: &Path, model: &str, spec: &WorkloadSpec, n: usize, shift: usize) -> f64 {
    let (input, want) = batch_of(dir, model, spec, 3, n);
    let mut words = vec![0u64; (input.len() + shift).div_ceil(8) + 1];
    // SAFETY: viewing u64 words as bytes: any byte pattern is valid, the length is exact.
    let buf = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) };
    buf[shift..shift + input.len()].copy_from_slice(&input);
    let mut out = vec![0u8; want.len()];
    let batch = Batch { spec, n, input: &buf[shift..shift + input.len()], formed: Instant::now() };
    backend.infer(&batch, &mut out).unwrap();
    let mut worst = 0.0f64;
    for (g, w) in out.chunks_exact(4).zip(want.chunks_exact(4)) {
        let (g, w) =
            (f32::from_le_bytes(g.try_into().unwrap()) as f64, f32::from_le_bytes(w.try_into().unwrap()) as f64);
        assert!((g - w).abs() <= 1e-4 + 1e-3 * w.abs(), "{model} n={n} shift={shift}: got {g}, want {w}");
        worst = worst.max((g - w).abs());
    }
    worst
}

#[test]
fn one_input_tensor_aligned_and_misaligned() {
    let Some(dir) = models() else { return };
    let mut b = load(&dir, "onet");
    let s = spec(
        "onet",
        vec![t("input_3", DType::F32, &[48, 48, 3])],
        vec![t("dense_5", DType::F32, &[4]), t("dense_6", DType::F32, &[10]), t("softmax_2", DType::F32, &[2])],
    );
    b.check(&s).unwrap();
    assert_eq!(b.max_batch(), None, "a dynamic batch dimension sets no limit");
    for n in [1, 2, 7, 16] {
        // Aligned: the batch buffer goes to ONNX Runtime as is; misaligned: it is copied first.
        run(&mut b, &dir, "onet", &s, n, 0);
        run(&mut b, &dir, "onet", &s, n, 2);
    }
}

#[test]
fn several_input_tensors_are_split_per_tensor() {
    let Some(dir) = models() else { return };
    let mut b = load(&dir, "bert-shaped");
    let s = spec(
        "bert-shaped",
        // Not the graph's order: the wire order is the workload's.
        vec![
            t("segment_ids", DType::I32, &[384]),
            t("input_ids", DType::I32, &[384]),
            t("input_mask", DType::I32, &[384]),
        ],
        vec![t("logits", DType::F32, &[384, 2])],
    );
    b.check(&s).unwrap();
    for n in [1, 5, 12] {
        run(&mut b, &dir, "bert-shaped", &s, n, 0);
    }
    let mut b = load(&dir, "minilm");
    let s = spec(
        "minilm",
        vec![t("input_ids", DType::I64, &[128]), t("attention_mask", DType::I64, &[128])],
        vec![t("461", DType::F32, &[384])],
    );
    let worst = (1..=8).map(|n| run(&mut b, &dir, "minilm", &s, n, 4)).fold(0.0, f64::max);
    eprintln!("minilm: largest absolute error over batches 1..8: {worst:.3e}");
}

#[test]
fn a_fixed_batch_caps_the_batch_and_pads_partial_ones() {
    let Some(dir) = models() else { return };
    let mut b = load(&dir, "fixed-batch");
    let s = spec("fixed-batch", vec![t("input", DType::I8, &[3, 224, 224])], vec![t("logits", DType::F32, &[1000])]);
    assert_eq!(b.max_batch(), Some(4));
    for n in 1..=4 {
        run(&mut b, &dir, "fixed-batch", &s, n, 0);
    }
    let (input, _) = batch_of(&dir, "fixed-batch", &s, 0, 5);
    let mut out = vec![0u8; 5 * 4000];
    let e = b.infer(&Batch { spec: &s, n: 5, input: &input, formed: Instant::now() }, &mut out).unwrap_err();
    assert!(e.to_string().contains("exceeds the model's batch of 4"), "{e}");
}

#[test]
fn a_worker_under_load_answers_every_sample_right() {
    use qdl_engine::loadcheck::{LoadCheckError, LoadOptions, Mismatch, ModelDir, worker_load};
    let Some(dir) = models() else { return };
    let opts = LoadOptions {
        gpu: None,
        providers: vec![ExecutionProviderName::Cpu],
        library: library(),
        duration: std::time::Duration::from_millis(300),
        max_batch: 16,
        atol: 1e-4,
        rtol: 1e-3,
    };
    let onet = ModelDir::open(&dir.join("onet")).unwrap();
    let r = worker_load(&onet, &opts).unwrap();
    assert_eq!(r.provider, "cpu");
    assert!(r.samples >= onet.samples as u64, "at least one pass over the samples: {r:?}");
    assert!(r.batch_sizes.iter().any(|&(b, _)| b > 1), "the worker batched: {:?}", r.batch_sizes);
    // MiniLM's batched outputs differ from the batch-1 reference in the 7th digit: with no
    // tolerance at all the check must catch that.
    let minilm = ModelDir::open(&dir.join("minilm")).unwrap();
    let exact = LoadOptions { atol: 0.0, rtol: 0.0, ..opts.clone() };
    let e = worker_load(&minilm, &exact).unwrap_err();
    assert!(
        matches!(&e, LoadCheckError::Wrong { mismatch: Mismatch::OutOfTolerance { output, .. }, .. } if output == "461"),
        "{e}"
    );
    worker_load(&minilm, &opts).unwrap();
}
