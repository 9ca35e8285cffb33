//! The sections both nodes' config files have: control-connection heartbeats, authentication,
//! TLS, logging and the data transport.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, check, invalid, resolve};

/// Heartbeat settings of a node, in config form.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Interval between heartbeats on the control connection, ms. Default 1000.
    pub interval_ms: u64,
    /// A peer silent for this many intervals is declared dead. Default 3.
    pub misses: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { interval_ms: 1000, misses: 3 }
    }
}

impl HeartbeatConfig {
    pub(super) fn validate(&self, section: &str) -> Result<(), ConfigError> {
        check(
            (10..=600_000).contains(&self.interval_ms),
            &format!("{section}.interval_ms"),
            "must be between 10 and 600000 ms",
        )?;
        check((1..=100).contains(&self.misses), &format!("{section}.misses"), "must be between 1 and 100")
    }

    /// As the control endpoint's type.
    pub fn to_heartbeat(self) -> crate::control::Heartbeat {
        crate::control::Heartbeat { interval: crate::time::Nanos::from_millis(self.interval_ms), misses: self.misses }
    }
}

/// `[tls]` (both nodes): TLS on the control channel (see [`crate::tls`]). Off by default: the
/// shared-secret handshake authenticates both sides either way; TLS adds confidentiality and the
/// accelerator's certificate. Both nodes of a cluster must agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Run the control channel in TLS. Default false.
    pub enabled: bool,
    /// (accelerator) Its certificate chain, PEM; relative paths resolve against the config
    /// file's directory. Required when enabled.
    pub cert_file: Option<PathBuf>,
    /// (accelerator) Its private key, PEM. Required when enabled.
    pub key_file: Option<PathBuf>,
    /// (frontend) CA certificates the accelerators' certificates must chain to, PEM. Required
    /// when enabled.
    pub ca_file: Option<PathBuf>,
    /// (frontend) The name to verify the accelerators' certificates against, instead of the host
    /// part of their addresses. Default none.
    pub server_name: Option<String>,
}

impl TlsConfig {
    pub(super) fn validate(&self, accelerator: bool) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let need = |p: &Option<PathBuf>, field: &str| match p {
            None => Err(invalid(field, "is required with tls.enabled = true")),
            Some(p) if !p.is_file() => Err(invalid(field, format!("{} is not a file", p.display()))),
            Some(_) => Ok(()),
        };
        if accelerator {
            need(&self.cert_file, "tls.cert_file")?;
            need(&self.key_file, "tls.key_file")
        } else {
            need(&self.ca_file, "tls.ca_file")
        }
    }

    pub(super) fn resolve(&mut self, base: &Path) {
        resolve(base, &mut self.cert_file);
        resolve(base, &mut self.key_file);
        resolve(base, &mut self.ca_file);
    }
}

/// `[auth]` (both nodes): the shared secret the control channel is authenticated with (see
/// [`crate::auth`]). The secret itself is never in a config file or on the command line: it is
/// in a file of its own (mode 0600), or in the `QDL_SECRET` environment variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A file holding the secret (at least 16 bytes; surrounding whitespace ignored); relative
    /// paths resolve against the config file's directory. `QDL_SECRET_FILE` overrides it and
    /// `QDL_SECRET` (the secret itself) overrides both. Default none.
    pub secret_file: Option<PathBuf>,
    /// Refuse to start without a secret. With false and no secret the node uses an empty key and
    /// talks only to nodes that have none either: for a closed lab only. Default true.
    pub required: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { secret_file: None, required: true }
    }
}

impl AuthConfig {
    /// The secret this config and the environment give (see [`crate::auth::Secret::load`]).
    pub fn secret(&self) -> Result<crate::auth::Secret, crate::auth::AuthError> {
        crate::auth::Secret::load(self.secret_file.as_deref(), self.required)
    }
}

/// Log output of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` env-filter directive, e.g. "info" or "qdl_frontend=debug". `RUST_LOG` wins.
    /// Default "info".
    pub filter: String,
    /// "text" or "json". Default "text".
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { filter: "info".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

// ---------------------------------------------------------------------------------------------
// Transport
// ---------------------------------------------------------------------------------------------

/// Which data transport a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TCP data connections (works everywhere).
    #[default]
    Tcp,
    /// RDMA reliable connections through libibverbs (InfiniBand, RoCE, Soft-RoCE).
    Rdma,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Rdma => "rdma",
        })
    }
}

/// How RDMA completions are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CompletionMode {
    /// Sleep on the completion channel (registered with the I/O thread's event loop); wake on
    /// solicited completions. Costs no CPU when idle.
    #[default]
    Event,
    /// Busy-poll the completion queue: lowest latency, one core per I/O thread at 100 %.
    Poll,
}

/// `[transport]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// "tcp" or "rdma". Default "tcp".
    pub kind: TransportKind,
    /// RDMA settings, used when `kind = "rdma"`.
    pub rdma: RdmaConfig,
}

impl TransportConfig {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.rdma.validate("transport.rdma")
    }
}

/// `[transport.rdma]`: device selection and the data path's efficiency knobs (each one is
/// visible in the `qdl_rdma_*` metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdmaConfig {
    /// Device name (`ibv_devices` lists them, e.g. "mlx5_0" or "rxe0"); "" = the first device.
    /// Default "".
    pub device: String,
    /// Port number on the device (1-based). Default 1.
    pub port: u8,
    /// GID index; -1 picks the first RoCE v2 IPv4 GID, else the first non-zero GID. Default -1.
    pub gid_index: i32,
    /// Path MTU, bytes (256, 512, 1024, 2048 or 4096); 0 = the port's active MTU. The smaller of
    /// the two sides' values is used. Default 0.
    pub mtu: u32,
    /// Payloads of at most this many bytes are copied into the work request ("inline") instead of
    /// being read by the NIC from memory; 0 disables. Capped by what the device allows. Default 256.
    pub inline_threshold: u32,
    /// Every Nth write is signalled (generates a local completion that frees send-queue entries);
    /// the rest are unsignalled. Default 64.
    pub signal_every: u32,
    /// Most work requests posted with one doorbell (a chain). Default 256.
    pub max_chain: u32,
    /// Send-queue depth, work requests. Default 2048.
    pub send_queue_depth: u32,
    /// Mark the last work request of every chain solicited, so an event-driven peer wakes once per
    /// chain. Default true.
    pub solicit: bool,
    /// "event" (completion channel) or "poll" (busy polling). Default "event".
    pub completion: CompletionMode,
    /// Local ACK timeout exponent: the NIC waits 4.096 µs × 2^n for an ACK before retrying
    /// (14 ≈ 67 ms). Default 14.
    pub ack_timeout: u8,
    /// Retries before the connection is declared broken (0..=7). Default 7.
    pub retry_count: u8,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: String::new(),
            port: 1,
            gid_index: -1,
            mtu: 0,
            inline_threshold: 256,
            signal_every: 64,
            max_chain: 256,
            send_queue_depth: 2048,
            solicit: true,
            completion: CompletionMode::Event,
            ack_timeout: 14,
            retry_count: 7,
        }
    }
}

impl RdmaConfig {
    /// Checks every value; `prefix` is the section's dotted path.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let f = |name: &str| format!("{prefix}.{name}");
        check(
            self.device.len() <= 64 && self.device.chars().all(|c| c.is_ascii_graphic()),
            &f("device"),
            "must be a device name of at most 64 printable characters",
        )?;
        check(self.port >= 1, &f("port"), "must be at least 1 (ports are numbered from 1)")?;
        check((-1..=255).contains(&self.gid_index), &f("gid_index"), "must be -1 (automatic) or 0 to 255")?;
        check(
            matches!(self.mtu, 0 | 256 | 512 | 1024 | 2048 | 4096),
            &f("mtu"),
            "must be 0 (the port's MTU), 256, 512, 1024, 2048 or 4096",
        )?;
        check(self.inline_threshold <= 4096, &f("inline_threshold"), "must be at most 4096 bytes")?;
        check((16..=65_536).contains(&self.send_queue_depth), &f("send_queue_depth"), "must be between 16 and 65536")?;
        check(
            self.signal_every >= 1 && self.signal_every <= self.send_queue_depth / 2,
            &f("signal_every"),
            "must be between 1 and half of send_queue_depth",
        )?;
        check(
            self.max_chain >= 1 && self.max_chain <= self.send_queue_depth,
            &f("max_chain"),
            "must be between 1 and send_queue_depth",
        )?;
        check(self.ack_timeout <= 31, &f("ack_timeout"), "must be between 0 and 31")?;
        check(self.retry_count <= 7, &f("retry_count"), "must be between 0 and 7")
    }
}
