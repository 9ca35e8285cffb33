//! # qdl-shared: what both qdl nodes agree on
//!
//! # Layout
//! - [`wire`]: the byte formats: connection [`wire::preamble`], control [`wire::message`]s
//!   (postcard 1), the data-connection [`wire::attach`] block and fixed-layout [`wire::data`] frames.
//! - [`auth`]: the shared secret and the challenge-response both nodes pass before anything else.
//! - [`tls`]: optional TLS (rustls) on the control channel.
//! - [`control`]: the control connection's handshake, name query, run states and heartbeats as a
//!   sans-IO state machine; [`control_link`] drives one over a TCP stream.
//! - [`pump`]: how both nodes' actix actors drive their I/O without a message per sample.
//! - [`tracker`]: the frontend's per-connection `TransactionTracker` (sans-IO slot ring).
//! - [`slots`]: the accelerator's per-connection slot memory and leases.
//! - [`transport`]: the data transport traits and the TCP transport.
//! - [`workload`]: tensor descriptors of the workloads and the reference output function;
//!   [`npy`]: reading (and writing) NumPy files of samples and reference outputs.
//! - [`config`]: both nodes' configuration (common sections, one module per node, the shared
//!   flags), validated field by field.
//! - [`metrics`]: metric names and descriptions; [`telemetry`]: log and metrics set-up.
//! - [`exit`]: both binaries' exit statuses.
//! - [`time`]: the nanosecond clock the sans-IO cores take as `now`; [`signals`]: SIGTERM/SIGINT;
//!   [`sdnotify`]: systemd readiness notifications and the service watchdog.

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod control;
pub mod control_link;
pub mod exit;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod npy;
pub mod pump;
pub mod sdnotify;
pub mod signals;
pub mod slots;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod tracker;
pub mod transport;
pub mod wire;
pub mod workload;
