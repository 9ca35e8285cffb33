//! # qdl-frontend: the LoadGen node and its Query Dispatch Library (QDL)
//!
//! # Layout
//! - [`sut`]: the one SUT LoadGen sees ("qdl Network SUT (…)", named by asking every
//!   accelerator) and the QSL.
//! - [`issuer`]: the `QueryIssuer` (splits queries into per-sample submissions, arbitrates among
//!   connections, applies credit back-pressure) and its lanes.
//! - [`lane_core`]: a data connection's protocol logic, sans-IO (`LaneCore`: tracker, response
//!   ring, give-up and late answers).
//! - [`connection`]: the `ConnectionActor` per data connection, the thin driver of its `LaneCore`.
//! - [`client`]: the `AcceleratorClient` actor per accelerator control connection.
//! - [`supervisor`]: the run's connections and control sessions (`Cluster`), the failures that
//!   reach the supervisor as typed values (`RunFailure`), the survive-or-fail rule, and the
//!   rejoin of a lost accelerator. Its module docs draw the supervision tree of one `run` and
//!   the order in which its parts are built.
//! - The local baseline (cargo feature `local`, on by default): `run --local` and `lab` run the
//!   engine's workers in-process through `qdl_engine::local::LocalTransport`; without the
//!   feature the frontend is network-only (no ONNX Runtime, no cudarc).
//! - [`qsl`] and [`npy`]: sample generation, `.npy` datasets and (LLMs) text files of prompts
//!   tokenized when the QSL loads ([`qsl::prompts`]), loaded into one long-lived buffer.
//! - [`settings`]: LoadGen's settings in layers (mlperf.conf < TOML < user.conf < flags), where
//!   each came from, and the fix for an INVALID verdict.
//! - [`submission`]: the Network-division submission tree: system json, TEST06, qdl's check.
//! - [`report`]: report.json and LoadGen log parsing; [`timeline`] and [`plot`]: the run's time
//!   series and its SVG charts.
//! - The binary (`src/main.rs`, `src/app/`): the `run`, `lab`, `bench`, `tokenize` and
//!   `check-accuracy` commands.

#![warn(missing_docs)]

pub mod client;
pub mod connection;
pub mod issuer;
pub mod lane_core;
/// NumPy files (moved to the shared crate; kept here for existing paths).
pub use qdl_shared::npy;
pub mod plot;
pub mod qsl;
pub mod report;
pub mod settings;
pub mod submission;
pub mod supervisor;
pub mod sut;
pub mod timeline;
