//! The commands of the `qdl-frontend` binary.

pub mod accuracy;
#[cfg(feature = "local")]
pub mod baseline;
pub mod bench;
pub mod cluster;
pub mod io;
pub mod lab;
pub mod progress;
pub mod run;
pub mod signals;
pub mod summary;
