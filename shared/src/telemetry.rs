//! Logs and metrics set-up shared by both binaries.

use std::net::SocketAddr;

use crate::config::{LogConfig, LogFormat};

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter {
        /// The filter.
        filter: String,
        /// Why.
        reason: String,
    },
    /// The metrics address does not parse.
    #[error("invalid metrics address {0:?}")]
    Address(String),
    /// The Prometheus exporter could not start (e.g. the port is taken).
    #[error("cannot serve metrics on {addr}: {reason}")]
    Exporter {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Installs the global `tracing` subscriber: `RUST_LOG` if set, else the configured filter;
/// text or JSON lines on stderr.
pub fn init_logging(cfg: &LogConfig) -> Result<(), TelemetryError> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => v,
        _ => cfg.filter.clone(),
    };
    let env = EnvFilter::try_new(&filter)
        .map_err(|e| TelemetryError::Filter { filter: filter.clone(), reason: e.to_string() })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(env).with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    // A second initialisation (tests that run several nodes in one process) is harmless.
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// Starts the Prometheus exporter on `addr` and installs its recorder, and the thread that
/// publishes the `process_*` metrics; "" turns metrics off (no recorder: every metric handle is a
/// no-op). Returns the address it serves on.
pub fn install_metrics(addr: &str) -> Result<Option<SocketAddr>, TelemetryError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    if addr.is_empty() {
        // Metrics off: no recorder at all, so every handle is a no-op and costs nothing.
        return Ok(None);
    }
    let err = |reason: String| TelemetryError::Exporter { addr: addr.to_string(), reason };
    let mut builder = PrometheusBuilder::new();
    let buckets: [(&str, &[f64]); 4] = [
        ("_seconds", crate::metrics::LATENCY_BUCKETS),
        ("_batch_size", crate::metrics::BATCH_BUCKETS),
        ("_frames_per_write", crate::metrics::BATCH_BUCKETS),
        ("_frames_per_read", crate::metrics::BATCH_BUCKETS),
    ];
    for (suffix, b) in buckets {
        builder = builder.set_buckets_for_metric(Matcher::Suffix(suffix.into()), b).map_err(|e| err(e.to_string()))?;
    }
    let sock: SocketAddr = addr.parse().map_err(|_| TelemetryError::Address(addr.to_string()))?;
    // Bind first so a taken port is reported here, clearly, rather than from a background thread.
    let probe = std::net::TcpListener::bind(sock).map_err(|e| err(e.to_string()))?;
    let bound = probe.local_addr().map_err(|e| err(e.to_string()))?;
    drop(probe);
    builder.with_http_listener(bound).install().map_err(|e| err(e.to_string()))?;
    crate::metrics::process::start().map_err(|e| err(format!("cannot start the process metrics' thread: {e}")))?;
    Ok(Some(bound))
}
