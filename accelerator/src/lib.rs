//! # qdl-accelerator: the node that runs inference for frontends across the network
//!
//! # Layout
//! - [`server`]: the node: listener, [`server::control::ControlActor`] per session,
//!   [`server::connection::ConnectionActor`] per data connection, the session
//!   [`server::registry::Registry`], and [`server::run`] with the supervision tree and shutdown.
//!
//! The workers, batcher, backends and GPU layer are the engine's (`qdl-engine`); the actors'
//! pump is the shared crate's (`qdl_shared::pump`).
//!
//! Data path of one sample: the connection's transport reads the request into its slot (leased),
//! the `ConnectionActor` hands it to its worker's bounded queue, the worker batches, gathers,
//! infers, and delivers the answers back to the connection, which queues the response into the
//! same slot index and frees the slot.

#![warn(missing_docs)]

pub mod server;
