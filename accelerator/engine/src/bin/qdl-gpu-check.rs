//! `qdl-gpu-check`: checks this machine's NVIDIA GPUs for qdl's accelerator.
//!
//! Discovers the GPUs, then for each (or `--gpu N`): allocates a worker's pinned and device
//! buffers, copies a batch of slots to the GPU and back byte for byte, compiles and runs a kernel
//! with NVRTC, and runs a worker's copy load for `--seconds`. With `--model-dir` (a directory
//! written by scripts/models) it also runs the accelerator's own worker (batcher + onnx backend)
//! on each GPU under load, every answer checked against the directory's references; the row
//! names the execution provider that served, so a fall-back to the CPU shows. Prints one row per check
//! (`check | gpu | result | detail | ms`) and exits 0 when all pass, 1 when one fails, and 2 when
//! there is no NVIDIA driver or GPU at all ("no NVIDIA GPU: nothing to check").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use qdl_engine::checktable::{Row, row, rows_json, table};
use qdl_engine::gpu::{self, GpuError, GpuStaging};

/// Bytes of one ResNet-50 sample, the unit of the buffer sizes checked.
const SAMPLE: usize = 150_528;

/// Checks this machine's NVIDIA GPUs for qdl: discovery, pinned and device buffers, batched
/// copies, NVRTC, and a worker's copy load.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Check only this GPU (CUDA ordinal); default: every GPU.
    #[arg(long)]
    gpu: Option<u32>,
    /// Duration of the worker-under-load check, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A model directory (scripts/models: model.onnx, frontend.toml, dataset, references): run a
    /// DeviceWorker with the onnx backend on it under load, answers checked.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Execution providers for the worker check, in order.
    #[arg(long, value_delimiter = ',', default_value = "tensorrt,cuda,cpu")]
    execution_providers: Vec<String>,
    /// Tolerance of the worker check's float outputs (absolute; the relative one is 10x).
    #[arg(long, default_value_t = 1e-3)]
    atol: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qdl-gpu-check: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    let started = Instant::now();
    let gpus = match gpu::discover() {
        Ok(gpus) if gpus.is_empty() => {
            return no_gpu(cli, "the NVIDIA driver reports no GPU");
        }
        Ok(gpus) => gpus,
        Err(GpuError::NoDriver { reason }) => return no_gpu(cli, &reason),
        Err(e) => {
            rows.push(row("discover", "-", Err(e), started));
            return finish(cli, &rows, &[]);
        }
    };
    let driver = match gpu::driver_version() {
        Ok((major, minor)) => format!("driver supports CUDA {major}.{minor}"),
        Err(e) => format!("driver version unknown: {e}"),
    };
    println!("{} NVIDIA GPU(s), {driver}", gpus.len());
    for g in &gpus {
        println!(
            "  GPU {}: {}, {:.1} GiB ({:.1} GiB free), compute capability {}.{}",
            g.ordinal,
            g.name,
            g.total_bytes as f64 / GIB,
            g.free_bytes as f64 / GIB,
            g.compute_capability.0,
            g.compute_capability.1
        );
    }
    rows.push(row::<GpuError>("discover", "-", Ok(format!("{} GPU(s), {driver}", gpus.len())), started));

    let model_dir = match &cli.model_dir {
        Some(d) => Some(qdl_engine::loadcheck::ModelDir::open(d)?),
        None => None,
    };
    let targets: Vec<u32> = match cli.gpu {
        None => gpus.iter().map(|g| g.ordinal).collect(),
        Some(n) if gpus.iter().any(|g| g.ordinal == n) => vec![n],
        Some(n) => {
            let e = GpuError::NoDevice { ordinal: n, count: gpus.len() };
            rows.push(row("select", &n.to_string(), Err(e), Instant::now()));
            vec![]
        }
    };
    for ordinal in targets {
        let g = ordinal.to_string();
        let t = Instant::now();
        rows.push(row("alloc", &g, alloc_check(ordinal), t));
        let t = Instant::now();
        rows.push(row("copy", &g, gpu::copy_check(ordinal), t));
        let t = Instant::now();
        rows.push(row("nvrtc", &g, gpu::nvrtc_smoke(ordinal), t));
        let t = Instant::now();
        rows.push(row("load", &g, gpu::load_check(ordinal, cli.seconds), t));
        if let Some(dir) = &model_dir {
            let t = Instant::now();
            rows.push(row("worker", &g, worker_check(cli, dir, ordinal), t));
        }
    }
    let infos: Vec<serde_json::Value> = gpus
        .iter()
        .map(|g| {
            serde_json::json!({
                "ordinal": g.ordinal,
                "name": g.name,
                "total_bytes": g.total_bytes,
                "free_bytes": g.free_bytes,
                "compute_capability": [g.compute_capability.0, g.compute_capability.1],
            })
        })
        .collect();
    finish(cli, &rows, &infos)
}

const GIB: f64 = (1u64 << 30) as f64;

/// The engine's worker (batcher + onnx backend) on GPU `ordinal` under load.
fn worker_check(
    cli: &Cli,
    dir: &qdl_engine::loadcheck::ModelDir,
    ordinal: u32,
) -> Result<String, qdl_engine::loadcheck::LoadCheckError> {
    use qdl_shared::config::ExecutionProviderName as P;
    let providers = cli
        .execution_providers
        .iter()
        .map(|p| match p.as_str() {
            "tensorrt" => P::Tensorrt,
            "cuda" => P::Cuda,
            _ => P::Cpu,
        })
        .collect();
    let opts = qdl_engine::loadcheck::LoadOptions {
        gpu: Some(ordinal),
        providers,
        library: None,
        duration: std::time::Duration::from_secs_f64(cli.seconds),
        max_batch: 64,
        atol: cli.atol,
        rtol: cli.atol * 10.0,
    };
    let r = qdl_engine::loadcheck::worker_load(dir, &opts)?;
    let largest = r.batch_sizes.iter().map(|b| b.0).max().unwrap_or(0);
    Ok(format!(
        "{} on {}: {} samples in {:.1} s = {:.0}/s, batches up to {largest}, all within tolerance \
         (max abs error {:.1e})",
        dir.spec.name,
        r.provider,
        r.samples,
        r.seconds,
        r.rate(),
        r.max_abs_error
    ))
}

/// A worker's buffers for a batch of 64 ResNet samples, then grown for 128.
fn alloc_check(ordinal: u32) -> Result<String, GpuError> {
    let mut staging = GpuStaging::new(ordinal, 64 * SAMPLE, 64 * 4)?;
    let before = (staging.input_capacity(), staging.output_capacity());
    staging.grow(128 * SAMPLE, 128 * 4)?;
    staging.synchronize()?;
    Ok(format!(
        "pinned + device: in {} -> {} B, out {} -> {} B; device in {:#x}, out {:#x}, stream {:#x}",
        before.0,
        staging.input_capacity(),
        before.1,
        staging.output_capacity(),
        staging.device_input_ptr(),
        staging.device_output_ptr(),
        staging.stream_ptr()
    ))
}

/// No driver or no GPU: says so and exits 2.
fn no_gpu(cli: &Cli, reason: &str) -> anyhow::Result<ExitCode> {
    eprintln!("no NVIDIA GPU: nothing to check ({reason})");
    if let Some(path) = &cli.json {
        let doc = serde_json::json!({ "ok": false, "no_gpu": reason, "gpus": [], "rows": [] });
        write_json(path, &doc)?;
    }
    Ok(ExitCode::from(2))
}

/// Prints the table, writes the JSON, and answers the exit status.
fn finish(cli: &Cli, rows: &[Row], gpus: &[serde_json::Value]) -> anyhow::Result<ExitCode> {
    let ok = rows.iter().all(|r| r.ok);
    print!("{}", table(rows));
    if let Some(path) = &cli.json {
        write_json(path, &serde_json::json!({ "ok": ok, "gpus": gpus, "rows": rows_json(rows) }))?;
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    if ok {
        println!("all {} checks passed", rows.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{failed} of {} checks FAILED", rows.len());
        Ok(ExitCode::from(1))
    }
}

fn write_json(path: &std::path::Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    Ok(qdl_engine::checktable::write_json(path, doc)?)
}
