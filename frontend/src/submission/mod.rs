//! The Network-division submission tree (docs/submission.md): what the official MLCommons
//! checker (v6.1 rules) requires of it, as qdl writes and checks it.
//!
//! - [`system`]: `systems/<system>.json` ([`system::SystemDescription`]: the 35 general and 13
//!   Network keys, the "meaningful" ones that must not be empty).
//! - [`test06`]: TEST06's verification of an LLM accuracy log (first token, trailing EOS, sample
//!   length), the `verify_accuracy.txt` it writes and the `audit.config` that runs it.
//! - [`check`]: qdl's own structural check of a tree ([`check::check_tree`]), a superset of
//!   the official checker's rules for llama3.1-8b, built on the detail-log rules of [`rules`].
//! - [`tree`]: writing the tree from finished runs ([`tree::SubmissionTree`]): each scenario
//!   folder (logs copied, the accuracy log hashed and truncated, TEST06 verified), the system
//!   description, `src/` and `documentation/`.

use std::path::PathBuf;

pub mod check;
pub mod rules;
pub mod system;
pub mod test06;
pub mod tree;

#[cfg(test)]
pub(crate) mod fixtures;

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
    /// A file of the tree could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A run's file the tree needs is not there.
    #[error("missing input file {path}")]
    MissingInput {
        /// The file.
        path: PathBuf,
    },
    /// A scenario folder name the checker does not know.
    #[error("unknown scenario {0:?}: the checker knows Offline, Server and Interactive")]
    UnknownScenario(String),
    /// A benchmark folder name qdl does not submit (the checker crashes on unknown ones).
    #[error("unknown benchmark {0:?}: qdl submits llama3.1-8b only")]
    UnknownBenchmark(String),
    /// A submitter or system name that is not one plain folder name.
    #[error("{what} name {name:?} is not a plain folder name")]
    BadName {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Fields that must be non-empty are empty.
    #[error("{what}: fields requiring a meaningful response are empty: {}", fields.join(", "))]
    MissingMeaningful {
        /// The file concerned.
        what: &'static str,
        /// The empty fields.
        fields: Vec<&'static str>,
    },
    /// A text the checker requires non-empty is empty.
    #[error("{what} is empty")]
    Empty {
        /// The file concerned.
        what: &'static str,
    },
    /// A value disagrees with the tree.
    #[error("{what} is {found:?}, the tree's is {expected:?}")]
    Mismatch {
        /// Which value.
        what: &'static str,
        /// The value given.
        found: String,
        /// The tree's.
        expected: String,
    },
    /// The scenario folder exists already and is not empty (it is neither merged nor deleted).
    #[error("{path} exists and is not empty")]
    AlreadyExists {
        /// The folder.
        path: PathBuf,
    },
}

impl SubmissionError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SubmissionError::Io { path: path.to_path_buf(), source }
    }
}
