#![cfg(feature = "local")]
//! LLM samples from a text file (`workload.prompts_file`), tokenized by SmolLM2-135M's own
//! tokenizer (its GGUF file, `scripts/models --only smollm2`) when the QSL loads: the ids
//! round-trip to the text; an accuracy run over the network with them passes `check-accuracy`
//! (the synthetic engine's answers are a function of the prompt, so the prompts reached the
//! accelerator intact) and refuses a changed file; `qdl-frontend tokenize` writes a dataset
//! directory that a `dataset_dir` run reads to the same samples.
//!
//! The model comes from `QDL_MODELS` (default `target/models`); without it the tests say
//! "skipped" and pass, unless `QDL_REQUIRE_LLAMA=1`.

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use qdl_engine::generate::llama::Tokenizer;
use qdl_frontend::qsl::prompts::{parse, tokenize_file};
use qdl_shared::workload::WorkloadSpec;

/// A synthetic generative engine for short runs on two cores.
const TEST_LLM: &str = "[generation]\nmax_running = 64\n[backend]\nkind = \"synthetic\"\n[backend.synthetic.tokens]\nfixed_us = 500.0\nper_prefill_token_us = 0.2\nper_sequence_us = 2.0\n";

/// Chat-formatted prompts as SmolLM2's template renders them (`\n` escapes a newline), a blank
/// line (no prompt), odd characters, a backslash, and one prompt without the template.
const PROMPTS: &str = "<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n<|im_start|>assistant\\n
<|im_start|>system\\nYou are terse.<|im_end|>\\n<|im_start|>user\\nName three primary colors.<|im_end|>\\n<|im_start|>assistant\\n

<|im_start|>user\\nA backslash \\\\ and a path C:\\temp, Ünïcödé 日本語 🚀<|im_end|>\\n<|im_start|>assistant\\n\r
<|im_start|>user\\n  two leading and trailing spaces  <|im_end|>\\n<|im_start|>assistant\\n
Plain text, no template.
";

/// The texts the file stands for, in sample order.
fn texts() -> Vec<String> {
    parse(PROMPTS.as_bytes(), Path::new("p.txt")).unwrap().into_iter().map(|p| p.text).collect()
}

#[test]
fn prompts_tokenized_by_smollm2s_tokenizer_round_trip() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, PROMPTS).unwrap();
    let texts = texts();
    assert_eq!(texts.len(), 5);
    assert_eq!(
        texts[2],
        "<|im_start|>user\nA backslash \\ and a path C:\\temp, Ünïcödé 日本語 🚀<|im_end|>\n<|im_start|>assistant\n"
    );
    let g = WorkloadSpec::smollm2_135m().generation.unwrap();
    let started = Instant::now();
    let t = tokenize_file(&g, &file, &model).unwrap();
    eprintln!("{} ({:.3} s with the file read)", t.tokenized.stats, started.elapsed().as_secs_f64());
    assert!(t.tokenized.warnings.is_empty(), "{:?}", t.tokenized.warnings);
    let tok = Tokenizer::load(&model).unwrap();
    assert_eq!((tok.vocab(), tok.eos()), (49_152, 2), "the workload's vocabulary and EOS");
    assert_eq!(tok.bos(), None, "SmolLM2's GGUF says add_bos_token = false: nothing is put first");
    for (i, text) in texts.iter().enumerate() {
        let ids = t.tokenized.prompt(i).unwrap();
        eprintln!("prompt {i}: {} tokens, first {:?}", ids.len(), &ids[..ids.len().min(6)]);
        assert_eq!(&tok.detokenize(ids), text, "prompt {i} round-trips");
        assert_eq!(ids, tok.tokenize(text).unwrap(), "prompt {i}: the tokenizer's own ids");
        if text.starts_with("<|im_start|>") {
            assert_eq!(ids[0], 1, "prompt {i} starts with <|im_start|>, BOS 1 (parsed as one special token)");
            assert_eq!(ids.iter().filter(|&&id| id == 1).count(), text.matches("<|im_start|>").count());
        } else {
            assert_ne!(ids[0], 1, "no BOS added to a plain prompt");
        }
    }
    assert_eq!(t.tokenized.len(), 5);
    assert_eq!(t.sha256.len(), 64);

    // A prompt over max_input_tokens (512) is cut to its first 512 tokens, said once.
    let long = dir.path().join("long.txt");
    std::fs::write(&long, format!("{}\nshort\n{}\n", "word ".repeat(700), "many words ".repeat(400))).unwrap();
    let t = tokenize_file(&g, &long, &model).unwrap().tokenized;
    assert_eq!((t.stats.truncated, t.stats.max), (2, 512), "{}", t.stats);
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert_eq!(t.prompt(0).unwrap(), &tok.tokenize(&"word ".repeat(700)).unwrap()[..512]);

    // A workload whose vocabulary is smaller than the tokenizer's refuses the ids beyond it.
    let mut small = g;
    small.vocab_size = 1000;
    let e = tokenize_file(&small, &file, &model).unwrap_err().to_string();
    assert!(e.contains("line 1 tokenizes to id") && e.contains("outside the workload's vocabulary 0..1000"), "{e}");
    // An empty file, and a tokenizer that is no GGUF file, are refused.
    std::fs::write(dir.path().join("empty.txt"), "\n \n").unwrap();
    let e = tokenize_file(&g, &dir.path().join("empty.txt"), &model).unwrap_err().to_string();
    assert!(e.contains("holds no prompts"), "{e}");
    let e = tokenize_file(&g, &file, &file).unwrap_err().to_string();
    assert!(e.contains("tokenizer") && e.contains("cannot read the tokenizer"), "{e}");
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// Each sample's answer in an accuracy run's log.
fn answers(out: &Path) -> std::collections::BTreeMap<u64, String> {
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mlperf_log_accuracy.json")).unwrap()).unwrap();
    log.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["qsl_idx"].as_u64().unwrap(), e["data"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_prompts_file_run_passes_check_accuracy_and_tokenize_makes_the_same_dataset() {
    let Some(model) = smollm2() else { return };
    let a = Acc::start_with_config(Some(TEST_LLM), &["--name", "llm-prompts"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    // The test's prompts, a long one (truncated) and 30 numbered questions: 36 samples.
    let mut file_text = format!("{PROMPTS}{}\n", "tell me more ".repeat(300));
    for i in 0..30 {
        file_text.push_str(&format!("<|im_start|>user\\nWhat is {i} + {i}?<|im_end|>\\n<|im_start|>assistant\\n\n"));
    }
    std::fs::write(&file, &file_text).unwrap();
    let config = dir.path().join("frontend.toml");
    std::fs::write(
        &config,
        format!(
            "[workload]\nname = \"smollm2-135m\"\nprompts_file = \"prompts.txt\"\ntokenizer = \"{}\"\n",
            model.display()
        ),
    )
    .unwrap();
    let args = ["-s", "offline", "-m", "accuracy", "--expected-qps", "100"];

    // (b) Over the network, the prompts file named by the config (relative to it).
    let net = dir.path().join("prompts-run");
    let o = run_logged(&a, &net, &[&args[..], &["-c", config.to_str().unwrap()]].concat());
    ok(&o);
    let stderr = text_of_stderr(&o);
    eprintln!(
        "{}",
        stderr.lines().filter(|l| l.contains("prompts") || l.contains("cut to")).collect::<Vec<_>>().join("\n")
    );
    assert!(stderr.contains("prompts: 36 prompts, "), "the QSL said what it tokenized: {stderr}");
    assert!(stderr.contains("tokenized in"), "{stderr}");
    assert!(stderr.contains("1 of 36 prompts") && stderr.contains("cut to its first 512 tokens"), "{stderr}");
    assert_eq!(stderr.matches("max_input_tokens 512").count(), 1, "truncation is said once: {stderr}");
    let r = report(&net);
    let d = &r["dataset"];
    assert_eq!(d["kind"], "prompts", "{d}");
    assert_eq!(d["file"], file.to_str().unwrap(), "{d}");
    assert_eq!(d["tokenizer"], model.to_str().unwrap(), "{d}");
    assert_eq!((d["prompts"].as_u64(), d["truncated"].as_u64()), (Some(36), Some(1)), "{d}");
    assert_eq!(d["sha256"], qdl_frontend::qsl::prompts::sha256_hex(file_text.as_bytes()), "{d}");
    assert_eq!(r["total_samples"], 36);
    let stdout = ok(&frontend(&["check-accuracy", net.to_str().unwrap()]));
    assert!(stdout.contains("36/36 samples correct"), "{stdout}");

    // (c) `tokenize` writes a dataset directory; a dataset_dir run of it (flags this time) sends
    // the same samples: the synthetic answers, a function of each prompt, are the same.
    let data = dir.path().join("dataset");
    let o = frontend(&[
        "tokenize",
        "--tokenizer",
        model.to_str().unwrap(),
        "--prompts",
        file.to_str().unwrap(),
        "--workload",
        "smollm2-135m",
        "--out",
        data.to_str().unwrap(),
    ]);
    ok(&o);
    let summary = text_of_stderr(&o);
    eprintln!("{summary}");
    assert!(summary.contains("36 prompts, ") && summary.contains("input_ids.npy [36, 512]"), "{summary}");
    assert!(summary.contains("cut to its first 512 tokens"), "the truncation is said: {summary}");
    let npy = dir.path().join("dataset-run");
    ok(&run(&[&a], &npy, &[&args[..], &["-w", "smollm2-135m", "--dataset", data.to_str().unwrap()]].concat()));
    assert_eq!(report(&npy)["dataset"]["kind"], "npy");
    assert_eq!(report(&npy)["total_samples"], 36);
    let (from_text, from_npy) = (answers(&net), answers(&npy));
    assert_eq!(from_text.len(), 36);
    assert_eq!(from_text, from_npy, "the same prompts, so the same answers");
    let stdout = ok(&frontend(&["check-accuracy", npy.to_str().unwrap()]));
    assert!(stdout.contains("36/36 samples correct"), "{stdout}");

    // The check can fail: the prompts file changed after the run is not the run's samples.
    std::fs::write(&file, file_text.replace("What is 7 + 7?", "What is 7 + 8?")).unwrap();
    let o = frontend(&["check-accuracy", net.to_str().unwrap()]);
    assert!(!o.status.success(), "a changed prompts file fails the check: {}", text(&o));
    assert!(text(&o).contains("not the run's samples"), "{}", text(&o));
}

/// [`run`] with the frontend's info log on stderr (the tests' helpers keep warnings only).
fn run_logged(acc: &Acc, out: &Path, args: &[&str]) -> std::process::Output {
    let out = out.to_str().unwrap();
    std::process::Command::new(frontend_bin())
        .env("QDL_SECRET", TEST_SECRET)
        .env_remove("QDL_CONFIG")
        .env_remove("QDL_ACCELERATORS")
        .env("RUST_LOG", "info")
        .args(["run", "--output-dir", out, "--metrics-listen", "", "--progress", "off", "-a", &acc.addr])
        .args(args)
        .output()
        .expect("run qdl-frontend")
}

fn text_of_stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
