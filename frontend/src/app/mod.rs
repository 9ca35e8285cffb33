//! The commands of the `qdl-frontend` binary.

pub mod accuracy;
pub mod io;
pub mod progress;
pub mod run;
