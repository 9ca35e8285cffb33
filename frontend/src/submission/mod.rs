//! The Network-division submission tree (docs/submission.md): what the official MLCommons
//! checker (v6.1 rules) requires of it, as qdl writes and checks it.
//!
//! - [`system`]: `systems/<system>.json` ([`system::SystemDescription`]: the 35 general and 13
//!   Network keys, the "meaningful" ones that must not be empty).
//! - [`test06`]: TEST06's verification of an LLM accuracy log (first token, trailing EOS, sample
//!   length), the `verify_accuracy.txt` it writes and the `audit.config` that runs it.
//! - [`check`]: qdl's own structural check of a tree ([`check::check_tree`]), a superset of
//!   the official checker's rules for llama3.1-8b, built on the detail-log rules of [`rules`].

use std::path::PathBuf;

pub mod check;
pub mod rules;
pub mod system;
pub mod test06;

/// What reading or parsing a submission's files can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SubmissionError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A JSON file is not what it should be.
    #[error("{path} is not valid JSON of its kind: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A LoadGen detail log whose first line is not a `:::MLLOG` line.
    #[error("{path} is not a LoadGen detail log (its first line does not start with :::MLLOG)")]
    NotDetailLog {
        /// The file.
        path: PathBuf,
    },
}

impl SubmissionError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SubmissionError::Io { path: path.to_path_buf(), source }
    }
}
