//! `qdl-llama-check`: runs the llama backend's engine (llama.cpp) on a dozen short prompts and
//! checks its answers and where its weights went (`scripts/gpu-check`'s llama step; cargo feature
//! `llama`, built by `scripts/gpu-check --build` with `llama-dynamic` so that the llama.cpp
//! libraries it loads are the ones `LD_LIBRARY_PATH` names).
//!
//! - `--write-references FILE`: runs the built-in prompts (SmolLM2's chat template around short
//!   questions) greedily at batch 1, each alone, to EOS or `--max-tokens`, and writes the prompts'
//!   token ids and the answers as JSON. `scripts/gpu-check --build` runs it on the CPU.
//! - `--references FILE`: runs the file's prompts the same way and checks, in one table row
//!   `llama | GPU | PASS/FAIL | tokens/s, exact x/y, ... | ms` (qdl-gpu-check's table):
//!   - **where the weights went**, from llama.cpp's own load log: with `--expect cuda` every
//!     layer in a CUDA device's memory, a GPU among ggml's devices and `libggml-cuda` loaded, so a
//!     silent fall-back to the CPU fails; with `--expect cpu` no layer on a GPU;
//!   - **which libraries**, with `--library-dir DIR`: every `libllama*`/`libggml*` the process
//!     mapped comes from DIR (and there is one: the binary links llama.cpp dynamically);
//!   - **the answers** against the reference: free-running, the bounds `check-accuracy` sets for a
//!     real model against its batch-1 reference (`frontend/src/app/accuracy_tokens.rs`): first
//!     token equal for ≥ 60 % of the prompts and mean ROUGE-L ≥ 0.25; and, stricter, teacher-forced
//!     (each reference token fed back, each prediction compared with the next one): ≥ 90 % of the
//!     predictions equal (`--min-teacher-forced`), the bound `tests/llama.rs` sets for batching.
//!     Not exact match (it is reported, not required): a GPU's kernels sum in other orders and
//!     in other precisions than the CPU's, which flips greedy choices where the top two logits are
//!     nearly tied, and greedy decoding then follows another path for the rest of the answer (on
//!     one CPU, batching alone flips 2–5 % of the predictions). Teacher forcing counts the flips
//!     without that amplification; a wrong kernel or a misrouted answer changes far more (a
//!     misrouted prompt: first token 0 of 12, ROUGE-L 0.005).
//!
//! Exit status: 0 when the row passes (or the references were written), 1 otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use qdl_engine::backend::BackendError;
use qdl_engine::backend::llama::LlamaBackend;
use qdl_engine::checktable;
use qdl_engine::generate::engine::TokenEngine;
use qdl_engine::generate::llama::{LoadedModel, gpu_devices};
use qdl_engine::generate::scheduler::{StepOutput, StepPlan, Work};
use qdl_shared::config::LlamaConfig;
use qdl_shared::workload::{Generation, WorkloadSpec, rouge_l};

/// The least share of prompts whose first token is the reference's (check-accuracy's bound).
const MIN_FIRST_TOKEN: f64 = 0.6;
/// The least mean ROUGE-L against the reference (check-accuracy's bound).
const MIN_ROUGE_L: f64 = 0.25;

/// Runs the llama.cpp engine on a dozen prompts: writes reference answers, or checks answers,
/// weights' placement and libraries against them (see the crate docs of the binary).
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The model (.gguf; scripts/models' SmolLM2-135M-Instruct).
    #[arg(long)]
    model: PathBuf,
    /// Check against this references file (written by --write-references).
    #[arg(long, conflicts_with = "write_references", required_unless_present = "write_references")]
    references: Option<PathBuf>,
    /// Run the built-in prompts and write their answers to this file.
    #[arg(long)]
    write_references: Option<PathBuf>,
    /// Longest answer, tokens (EOS included), when writing references.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Where the weights must be: on a CUDA GPU, or on the CPU.
    #[arg(long, value_enum, default_value_t = Expect::Cuda)]
    expect: Expect,
    /// Layers on the GPU (backend.llama.gpu_layers); default all.
    #[arg(long)]
    gpu_layers: Option<u32>,
    /// Every libllama*/libggml* the process maps must come from this directory.
    #[arg(long)]
    library_dir: Option<PathBuf>,
    /// The GPU's name in the table (its ordinal; the process sees it as CUDA0).
    #[arg(long, default_value = "-")]
    gpu: String,
    /// CPU threads of the engine (backend.llama.threads).
    #[arg(long, default_value_t = 4)]
    threads: u32,
    /// The least share of teacher-forced predictions equal to the reference's.
    #[arg(long, default_value_t = 0.9)]
    min_teacher_forced: f64,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write llama.cpp's whole log to this file (its warnings and errors go to stderr anyway).
    #[arg(long)]
    log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Expect {
    Cuda,
    Cpu,
}

/// Short questions; SmolLM2 answers each in a sentence or a few.
const QUESTIONS: [&str; 12] = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "What is 2 + 2?",
    "Give me a short tip for learning a new language, in one sentence please.",
    "What do bees make?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue? Answer briefly.",
    "List two planets of the solar system.",
    "What is the boiling point of water at sea level?",
    "Describe a cat in five words.",
    "Who wrote Romeo and Juliet?",
];

/// SmolLM2's chat template around `question`.
fn chat(question: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = Log::install(cli.log.as_deref()) {
        eprintln!("qdl-llama-check: {e:#}");
        return ExitCode::from(1);
    }
    let result = match &cli.write_references {
        Some(path) => write_references(&cli, path),
        None => check(&cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qdl-llama-check: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The log: llama.cpp's (and the engine's) warnings and errors to stderr, everything to the
/// `--log` file when there is one.
struct Log {
    file: Option<std::sync::Mutex<std::fs::File>>,
}

impl Log {
    fn install(path: Option<&Path>) -> anyhow::Result<()> {
        let file = match path {
            Some(p) => Some(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?),
            None => None,
        };
        let log = Log { file: file.map(std::sync::Mutex::new) };
        tracing::subscriber::set_global_default(log).context("a second log")
    }
}

/// An event's `message` field.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Log {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        self.file.is_some() || *m.level() <= tracing::Level::WARN
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        let meta = event.metadata();
        let line = format!("{} {}: {}", meta.level(), meta.target(), m.0);
        if *meta.level() <= tracing::Level::WARN {
            eprintln!("{line}");
        }
        if let Some(f) = &self.file {
            use std::io::Write as _;
            let _ = writeln!(f.lock().unwrap_or_else(|e| e.into_inner()), "{line}");
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// The engine of one worker with a context for one sequence (batch 1).
struct Loaded {
    model: &'static LoadedModel,
    engine: Box<dyn TokenEngine>,
    generation: Generation,
}

fn load(cli: &Cli, max_tokens: u32) -> anyhow::Result<Loaded> {
    let config = LlamaConfig {
        model: Some(cli.model.clone()),
        threads: cli.threads,
        context_tokens: 4096,
        gpu_layers: cli.gpu_layers,
    };
    let backend = LlamaBackend::load(&config, 1)?;
    let model = backend.model();
    let engine = qdl_engine::backend::Backend::token_engine(&backend).context("the llama backend made no engine")?;
    let mut generation = WorkloadSpec::builtin("smollm2-135m")
        .and_then(|w| w.generation)
        .context("smollm2-135m is a built-in generative workload")?;
    generation.max_output_tokens = max_tokens.max(1);
    generation.eos_token = model.eos();
    Ok(Loaded { model, engine, generation })
}

/// The next token of the one sequence after `plan`.
fn step(engine: &mut dyn TokenEngine, plan: &StepPlan, out: &mut Vec<StepOutput>) -> Result<i32, BackendError> {
    out.clear();
    engine.step(plan, out)?;
    match out.as_slice() {
        [o] => Ok(o.token),
        other => Err(BackendError::Failed(format!("a step of one sequence answered {} tokens", other.len()))),
    }
}

fn prefill(prompt: &[i32]) -> StepPlan {
    StepPlan { work: vec![Work::Prefill { seq: 0, start: 0, len: prompt.len() as u32, logits: true }] }
}

/// Greedy generation of `prompt` alone, to EOS (kept) or `g.max_output_tokens`.
fn generate(engine: &mut dyn TokenEngine, prompt: &[i32], g: &Generation) -> Result<Vec<i32>, BackendError> {
    engine.begin(0, prompt, g)?;
    let mut out = Vec::new();
    let mut tokens = vec![step(engine, &prefill(prompt), &mut out)?];
    while tokens.len() < g.max_output_tokens as usize && tokens.last() != Some(&g.eos_token) {
        let (token, pos) = (tokens[tokens.len() - 1], (prompt.len() + tokens.len() - 1) as u32);
        tokens.push(step(engine, &StepPlan { work: vec![Work::Decode { seq: 0, token, pos }] }, &mut out)?);
    }
    engine.end(0);
    Ok(tokens)
}

/// Teacher forcing: `reference`'s tokens fed back after `prompt`; returns the predictions equal
/// to the reference's next token.
fn teacher_forced(
    engine: &mut dyn TokenEngine,
    prompt: &[i32],
    reference: &[i32],
    g: &Generation,
) -> Result<usize, BackendError> {
    if reference.is_empty() {
        return Ok(0);
    }
    engine.begin(0, prompt, g)?;
    let mut out = Vec::new();
    let mut agree = usize::from(step(engine, &prefill(prompt), &mut out)? == reference[0]);
    for (k, pair) in reference.windows(2).enumerate() {
        let plan = StepPlan { work: vec![Work::Decode { seq: 0, token: pair[0], pos: (prompt.len() + k) as u32 }] };
        agree += usize::from(step(engine, &plan, &mut out)? == pair[1]);
    }
    engine.end(0);
    Ok(agree)
}

/// The llama.cpp and ggml libraries this process has mapped (from /proc/self/maps).
fn mapped_libraries() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let libs: BTreeSet<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(PathBuf::from)
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("libllama") || name.starts_with("libggml")
        })
        .collect();
    libs.into_iter().collect()
}

/// Where the model ran, as one line, and what is wrong with it for `cli.expect`.
fn placement_problems(cli: &Cli, model: &LoadedModel, libs: &[PathBuf]) -> anyhow::Result<(String, Vec<String>)> {
    let placement = model.placement();
    let gpus = gpu_devices()?;
    let cuda_lib = libs.iter().any(|l| l.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libggml-cuda")));
    let mut problems = Vec::new();
    match cli.expect {
        Expect::Cuda => {
            if gpus.is_empty() {
                problems.push("llama.cpp's ggml backends found no GPU (libraries without CUDA?)".to_string());
            }
            if !cuda_lib {
                problems.push("no libggml-cuda is loaded".to_string());
            }
            let all = cli.gpu_layers.is_none();
            if !placement.on_gpu() || (all && !placement.all_on_gpu()) {
                problems.push(format!("weights not {}on the GPU", if all { "all " } else { "" }));
            }
        }
        Expect::Cpu if placement.on_gpu() => problems.push("weights on a GPU, expected on the CPU".to_string()),
        Expect::Cpu => {}
    }
    if let Some(dir) = &cli.library_dir {
        let dir = dir.canonicalize().with_context(|| format!("--library-dir {}", dir.display()))?;
        if !libs.iter().any(|l| l.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libllama"))) {
            problems.push(
                "no libllama.so is mapped: this binary links llama.cpp statically (--features llama-dynamic)".into(),
            );
        }
        for l in libs {
            if l.parent().and_then(|p| p.canonicalize().ok()).as_deref() != Some(dir.as_path()) {
                problems.push(format!("{} is not from {}", l.display(), dir.display()));
            }
        }
    }
    let on = if gpus.is_empty() { "no GPU".to_string() } else { gpus.join(", ") };
    Ok((format!("{} on {} [{on}]: {}", model.file_name(), model.device(), placement.describe()), problems))
}

/// One prompt of a references file.
struct Reference {
    prompt: Vec<i32>,
    answer: Vec<i32>,
}

fn ids(v: &serde_json::Value) -> Option<Vec<i32>> {
    v.as_array()?.iter().map(|t| t.as_i64().and_then(|t| i32::try_from(t).ok())).collect()
}

fn read_references(path: &Path) -> anyhow::Result<(u32, Vec<Reference>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let max_tokens = doc["max_tokens"].as_u64().and_then(|m| u32::try_from(m).ok()).unwrap_or(64);
    let Some(prompts) = doc["prompts"].as_array() else { bail!("{} has no \"prompts\" array", path.display()) };
    let refs = prompts
        .iter()
        .map(|p| Some(Reference { prompt: ids(&p["prompt"])?, answer: ids(&p["answer"])? }))
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("{}: every prompt needs \"prompt\" and \"answer\" token ids", path.display()))?;
    if refs.is_empty() || refs.iter().any(|r| r.prompt.is_empty()) {
        bail!("{}: no prompts, or an empty one", path.display());
    }
    Ok((max_tokens, refs))
}

fn write_references(cli: &Cli, path: &Path) -> anyhow::Result<ExitCode> {
    let mut l = load(cli, cli.max_tokens)?;
    let (mut prompts, mut generated, mut took) = (Vec::new(), 0, Duration::ZERO);
    for q in QUESTIONS {
        let prompt = l.model.tokenize(&chat(q));
        let t = Instant::now();
        let answer = generate(l.engine.as_mut(), &prompt, &l.generation)?;
        took += t.elapsed();
        generated += answer.len();
        let text = l.model.detokenize(&answer);
        prompts.push(serde_json::json!({ "question": q, "prompt": prompt, "answer": answer, "text": text }));
    }
    let libs = mapped_libraries();
    let (placement, _) = placement_problems(cli, l.model, &libs)?;
    let doc = serde_json::json!({
        "what": "qdl-llama-check references: greedy answers at batch 1, each prompt alone",
        "model": l.model.file_name(),
        "model_bytes": std::fs::metadata(&cli.model).map(|m| m.len()).unwrap_or(0),
        "max_tokens": l.generation.max_output_tokens,
        "placement": placement,
        "libraries": libs.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>(),
        "prompts": prompts,
    });
    checktable::write_json(path, &doc)?;
    println!(
        "qdl-llama-check: wrote {} references ({generated} tokens at {:.0} tokens/s; {placement}) to {}",
        QUESTIONS.len(),
        generated as f64 / took.as_secs_f64().max(1e-9),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// How the answers agree with the references.
#[derive(Debug, Default)]
struct Agreement {
    prompts: usize,
    exact: usize,
    first: usize,
    rouge_l: f64,
    forced_equal: usize,
    forced: usize,
    generated: usize,
    took: Duration,
}

impl Agreement {
    fn problems(&self, min_forced: f64) -> Vec<String> {
        let mut p = Vec::new();
        let n = self.prompts.max(1) as f64;
        if (self.first as f64) < MIN_FIRST_TOKEN * n {
            p.push(format!("first token {}/{} below {:.0}%", self.first, self.prompts, MIN_FIRST_TOKEN * 100.0));
        }
        if self.rouge_l / n < MIN_ROUGE_L {
            p.push(format!("ROUGE-L {:.2} below {MIN_ROUGE_L}", self.rouge_l / n));
        }
        if (self.forced_equal as f64) < min_forced * self.forced as f64 {
            p.push(format!("teacher-forced {}/{} below {:.0}%", self.forced_equal, self.forced, min_forced * 100.0));
        }
        p
    }

    fn describe(&self) -> String {
        format!(
            "{:.0} tokens/s, exact {}/{}, first token {}/{}, ROUGE-L {:.2}, teacher-forced {:.1}% ({}/{})",
            self.generated as f64 / self.took.as_secs_f64().max(1e-9),
            self.exact,
            self.prompts,
            self.first,
            self.prompts,
            self.rouge_l / self.prompts.max(1) as f64,
            100.0 * self.forced_equal as f64 / self.forced.max(1) as f64,
            self.forced_equal,
            self.forced
        )
    }
}

fn agreement(l: &mut Loaded, refs: &[Reference]) -> Result<Agreement, BackendError> {
    let mut a = Agreement { prompts: refs.len(), ..Default::default() };
    for r in refs {
        let t = Instant::now();
        let got = generate(l.engine.as_mut(), &r.prompt, &l.generation)?;
        a.took += t.elapsed();
        a.generated += got.len();
        a.exact += usize::from(got == r.answer);
        a.first += usize::from(got.first() == r.answer.first());
        a.rouge_l += rouge_l(&r.answer, &got);
        a.forced_equal += teacher_forced(l.engine.as_mut(), &r.prompt, &r.answer, &l.generation)?;
        a.forced += r.answer.len();
    }
    Ok(a)
}

fn check(cli: &Cli) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let path = cli.references.as_deref().context("--references or --write-references")?;
    let result = (|| -> anyhow::Result<(String, Vec<String>)> {
        let (max_tokens, refs) = read_references(path)?;
        let mut l = load(cli, max_tokens)?;
        let libs = mapped_libraries();
        let (placed, mut problems) = placement_problems(cli, l.model, &libs)?;
        let a = agreement(&mut l, &refs)?;
        problems.extend(a.problems(cli.min_teacher_forced));
        Ok((format!("{}; {placed}", a.describe()), problems))
    })();
    let row = match result {
        Ok((detail, problems)) if problems.is_empty() => {
            checktable::row::<String>("llama", &cli.gpu, Ok(detail), started)
        }
        Ok((detail, problems)) => {
            checktable::row("llama", &cli.gpu, Err::<String, _>(format!("{}: {detail}", problems.join("; "))), started)
        }
        Err(e) => checktable::row("llama", &cli.gpu, Err::<String, _>(format!("{e:#}")), started),
    };
    print!("{}", checktable::table(std::slice::from_ref(&row)));
    if let Some(json) = &cli.json {
        let doc = serde_json::json!({ "ok": row.ok, "rows": checktable::rows_json(std::slice::from_ref(&row)) });
        checktable::write_json(json, &doc)?;
    }
    Ok(if row.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_fail_what_they_should() {
        let good = Agreement {
            prompts: 12,
            exact: 5,
            first: 10,
            rouge_l: 12.0 * 0.55,
            forced_equal: 700,
            forced: 740,
            ..Default::default()
        };
        assert!(good.problems(0.9).is_empty(), "{:?}", good.problems(0.9));
        let misrouted = Agreement { first: 0, rouge_l: 12.0 * 0.005, forced_equal: 100, ..good };
        assert_eq!(misrouted.problems(0.9).len(), 3, "{:?}", misrouted.problems(0.9));
        let flippy = Agreement { forced_equal: 600, ..good };
        assert_eq!(flippy.problems(0.9), vec!["teacher-forced 600/740 below 90%".to_string()]);
    }

    #[test]
    fn a_references_file_needs_prompts_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, r#"{"max_tokens": 8, "prompts": [{"prompt": [1, 2], "answer": [3, 2]}]}"#).unwrap();
        let (max, refs) = read_references(&path).unwrap();
        assert_eq!((max, refs.len(), refs[0].answer.clone()), (8, 1, vec![3, 2]));
        std::fs::write(&path, r#"{"prompts": [{"prompt": [1, 2]}]}"#).unwrap();
        assert!(read_references(&path).is_err());
        std::fs::write(&path, r#"{"prompts": []}"#).unwrap();
        assert!(read_references(&path).is_err());
    }
}
