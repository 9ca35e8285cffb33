//! Configuration of both nodes, read from TOML. Every field has a default (documented with its
//! unit); unknown fields are errors; [`FrontendConfig::validate`] and
//! [`AcceleratorConfig::validate`] name the offending field. Relative paths are resolved against
//! the directory of the file they appear in.
//!
//! # Layout
//! - this module: [`ConfigError`], reading and parsing TOML, path resolution, [`hostname`]; it
//!   re-exports every config type, so `qdl_shared::config::X` names them all.
//! - [`common`]: the sections both nodes have (`[heartbeat]`, `[auth]`, `[tls]`, `[log]`,
//!   `[transport]`).
//! - [`frontend`]: the frontend's file (`[frontend]`, `[workload]`, `[loadgen]`, `[local]`).
//! - [`cli`]: the flags both nodes have ([`cli::CommonFlags`]) and how they override a config.
//! - [`accelerator`]: the accelerator's file (`[accelerator]`, `[limits]`, `[batcher]`,
//!   `[workers]`, `[backend]`).
//! - [`generation`]: the accelerator's generative (LLM) sections (`[generation]`,
//!   `[backend.synthetic.tokens]`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod accelerator;
pub mod cli;
pub mod common;
pub mod frontend;
pub mod generation;

pub use accelerator::*;
pub use common::*;
pub use frontend::*;
pub use generation::*;

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config (unknown field, wrong type, ...).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `batcher.max_batch`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.to_string(), reason: reason.into() }
}

fn check(ok: bool, field: &str, reason: &str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(invalid(field, reason)) }
}

fn check_addr(value: &str, field: &str, allow_empty: bool) -> Result<(), ConfigError> {
    if value.is_empty() && allow_empty {
        return Ok(());
    }
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|e| invalid(field, format!("{value:?} is not an IP:port address ({e})")))
}

fn load_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_toml(&text, path)
}

fn parse_toml<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text)
        .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().to_string() })
}

fn resolve(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(path) = p
        && path.is_relative()
    {
        *path = base.join(&*path);
    }
}

/// The machine's host name (`/proc/sys/kernel/hostname`, else `/etc/hostname`), for default node
/// names; "localhost" if neither holds a usable name (1-64 printable ASCII characters).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn acc(text: &str) -> Result<AcceleratorConfig, ConfigError> {
        AcceleratorConfig::from_toml(text, Path::new("test.toml"))
    }

    pub(super) fn fe(text: &str) -> Result<FrontendConfig, ConfigError> {
        FrontendConfig::from_toml(text, Path::new("test.toml"), Path::new("."))
    }

    pub(super) fn field_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::Parse { message, .. } => format!("parse: {message}"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_secret_itself_cannot_be_put_in_a_config_file() {
        let e = field_of(acc("[auth]\nsecret = \"hunter2hunter2hunter2\"").unwrap_err());
        assert!(e.starts_with("parse:") && e.contains("secret"), "{e}");
        let a = acc("[auth]\nsecret_file = \"secret\"\nrequired = false").unwrap();
        assert_eq!((a.auth.secret_file.as_deref(), a.auth.required), (Some(Path::new("secret")), false));
    }

    #[test]
    fn empty_files_give_documented_defaults() {
        let a = acc("").unwrap();
        assert_eq!(a.batcher, BatcherConfig { max_batch: 64, max_queue_delay_us: 500, max_queue: 65536 });
        assert_eq!(a.limits.max_slots_per_connection, 8192);
        assert_eq!(a.heartbeat, HeartbeatConfig { interval_ms: 1000, misses: 3 });
        let f = fe("").unwrap();
        assert_eq!(f.frontend.slots_per_connection, 8192);
        assert_eq!(f.frontend.connections_per_accelerator, 2);
        assert_eq!(f.workload.total(), 50_000);
        assert_eq!(f.workload.performance(), 1024);
    }

    #[test]
    fn unknown_fields_and_bad_types_are_parse_errors_naming_the_key() {
        let e = acc("[batcher]\nmax_bach = 3").unwrap_err().to_string();
        assert!(e.contains("max_bach"), "{e}");
        let e = fe("[loadgen]\nscenario = \"turbo\"").unwrap_err().to_string();
        assert!(e.contains("turbo") || e.contains("scenario"), "{e}");
        let e = fe("[frontend]\nslots_per_connection = \"many\"").unwrap_err().to_string();
        assert!(e.contains("slots_per_connection"), "{e}");
        let e = acc("[transport]\nkind = \"udp\"").unwrap_err().to_string();
        assert!(e.contains("udp") || e.contains("kind"), "{e}");
    }

    #[test]
    fn shipped_config_files_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut checked = 0;
        for dir in [root.clone(), root.join("lab")] {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if name.starts_with("accelerator") && name.ends_with(".toml") {
                    AcceleratorConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    checked += 1;
                } else if name.starts_with("frontend") && name.ends_with(".toml") {
                    FrontendConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 4, "config/ and config/lab/ each hold a frontend and an accelerator config");
    }
}
