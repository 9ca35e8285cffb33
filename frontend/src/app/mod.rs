//! The commands of the `qdl-frontend` binary.

pub mod accuracy;
mod accuracy_tokens;
#[cfg(feature = "local")]
pub mod baseline;
pub mod bench;
pub mod cluster;
pub mod io;
pub mod lab;
pub mod progress;
pub mod run;
pub mod signals;
pub mod submission;
pub mod submission_run;
pub mod summary;
