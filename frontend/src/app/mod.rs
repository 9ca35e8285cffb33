//! The commands of the `qdl-frontend` binary.

pub mod accuracy;
pub mod bench;
pub mod cluster;
pub mod io;
pub mod lab;
pub mod progress;
pub mod run;
pub mod signals;
