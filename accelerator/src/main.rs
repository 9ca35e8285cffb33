//! `qdl-accelerator`: serves inference to qdl frontends across the network.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser};
use qdl_shared::config::{AcceleratorConfig, BackendKind, ExecutionProviderName};

/// Serves inference to qdl frontends across the network.
#[derive(Parser, Debug)]
#[command(version, about, after_help = qdl_shared::exit::ACCELERATOR_HELP)]
struct Cli {
    /// Config file (TOML, see config/accelerator.toml). Without one, every setting has its
    /// default (shown below).
    #[arg(long, short, env = "QDL_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on for control and data connections (overrides accelerator.listen).
    #[arg(long)]
    listen: Option<String>,
    /// This accelerator's unique name (overrides accelerator.name).
    #[arg(long)]
    name: Option<String>,
    /// Prometheus metrics address, "" to disable (overrides accelerator.metrics_listen).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Inference backend (overrides backend.kind). `--model` alone implies onnx (or llama for a
    /// .gguf model).
    #[arg(long, value_parser = ["synthetic", "echo", "onnx", "llama"])]
    backend: Option<String>,
    /// The model: .onnx for the onnx backend (overrides backend.onnx.model), .gguf for the llama
    /// backend (overrides backend.llama.model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// ONNX Runtime execution providers to try in order, comma-separated, e.g. "cuda,cpu"
    /// (overrides backend.onnx.execution_providers).
    #[arg(long, value_delimiter = ',', value_parser = ["tensorrt", "cuda", "cpu"])]
    execution_providers: Option<Vec<String>>,
    /// The ONNX Runtime library, libonnxruntime.so (overrides backend.onnx.library; default:
    /// ORT_DYLIB_PATH, then Python's onnxruntime package).
    #[arg(long)]
    onnx_library: Option<PathBuf>,
    /// Worker threads, one per device (overrides workers.count).
    #[arg(long)]
    workers: Option<u32>,
    /// `--transport`, `--rdma-device`, `--log-format`.
    #[command(flatten)]
    common: qdl_shared::config::cli::CommonFlags,
}

/// The flags whose defaults come from the config's defaults, shown in `--help` as clap shows
/// its own (`[default: ...]`), so the help cannot drift from the code.
fn with_defaults(cmd: clap::Command) -> clap::Command {
    let d = AcceleratorConfig::default();
    let defaults = [
        ("listen", d.accelerator.listen.clone()),
        ("name", format!("the host name, {}", d.accelerator.name)),
        ("metrics_listen", d.accelerator.metrics_listen.clone()),
        ("backend", d.backend.kind.name().to_string()),
        ("workers", d.workers.count.to_string()),
        ("transport", "tcp".into()),
        ("log_format", "text".into()),
    ];
    // QDL_CONFIG set but empty (`Environment=QDL_CONFIG=` in a unit) counts as unset.
    let cmd = if std::env::var_os("QDL_CONFIG").is_some_and(|v| v.is_empty()) {
        cmd.mut_arg("config", |a| a.env(None::<&str>))
    } else {
        cmd
    };
    defaults.into_iter().fold(cmd, |cmd, (id, value)| {
        cmd.mut_arg(id, |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [default: {value}]"))
        })
    })
}

fn main() {
    let matches = with_defaults(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = serve(cli) {
        use qdl_accelerator::server::NodeError;
        // NodeError wraps the secret's and TLS's errors transparently: they are not links of the chain.
        let node_config = |c: &(dyn std::error::Error + 'static)| {
            matches!(c.downcast_ref::<NodeError>(), Some(NodeError::Auth(_) | NodeError::Tls(_)))
        };
        let code = if e.chain().any(|c| node_config(c) || qdl_shared::exit::is_config_error(c)) {
            qdl_shared::exit::CONFIG
        } else {
            qdl_shared::exit::RUNTIME
        };
        eprintln!("Error: {e:?}");
        std::process::exit(code);
    }
}

/// Loads the config, applies the flags and serves until a signal's drain is over.
fn serve(cli: Cli) -> anyhow::Result<()> {
    let cli_backend_unset = cli.backend.is_none();
    let mut config = match &cli.config {
        Some(path) => AcceleratorConfig::load_unchecked(path)?,
        None => AcceleratorConfig::default(),
    };
    if let Some(v) = cli.listen {
        config.accelerator.listen = v;
    }
    if let Some(v) = cli.name {
        config.accelerator.name = v;
    }
    if let Some(v) = cli.metrics_listen {
        config.accelerator.metrics_listen = v;
    }
    if let Some(v) = cli.backend {
        config.backend.kind = match v.as_str() {
            "echo" => BackendKind::Echo,
            "onnx" => BackendKind::Onnx,
            "llama" => BackendKind::Llama,
            _ => BackendKind::Synthetic,
        };
    }
    if let Some(v) = cli.model {
        let gguf = v.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if cli_backend_unset {
            config.backend.kind = if gguf { BackendKind::Llama } else { BackendKind::Onnx };
        }
        if config.backend.kind == BackendKind::Llama {
            config.backend.llama.model = Some(v);
        } else {
            config.backend.onnx.model = Some(v);
        }
    }
    if let Some(v) = cli.execution_providers {
        config.backend.onnx.execution_providers = v
            .iter()
            .map(|p| match p.as_str() {
                "tensorrt" => ExecutionProviderName::Tensorrt,
                "cuda" => ExecutionProviderName::Cuda,
                _ => ExecutionProviderName::Cpu,
            })
            .collect();
    }
    if let Some(v) = cli.onnx_library {
        config.backend.onnx.library = Some(v);
    }
    if let Some(v) = cli.workers {
        config.workers.count = v;
    }
    cli.common.apply(&mut config.transport, &mut config.log);
    config.validate()?;
    qdl_shared::telemetry::init_logging(&config.log)?;
    let metrics = qdl_shared::telemetry::install_metrics(&config.accelerator.metrics_listen)?;
    let metrics = metrics.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    qdl_accelerator::server::run(config, |ready| {
        // One machine-readable line on stdout: launchers (the lab, tests) wait for it.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "qdl-accelerator ready name={} listen={} metrics={} backend={} workers={} transport={} provider={}",
            ready.name, ready.listen, metrics, ready.backend, ready.workers, ready.transport, ready.provider
        );
        let _ = out.flush();
        tracing::info!(name = %ready.name, listen = %ready.listen, %metrics, backend = ready.backend, workers = ready.workers, "accelerator ready");
        let status = format!("READY=1\nSTATUS=serving on {} ({} x {})", ready.listen, ready.workers, ready.backend);
        if let Err(e) = qdl_shared::sdnotify::notify(&status) {
            tracing::warn!("{e}");
        }
    })
    .context("accelerator failed")?;
    Ok(())
}
