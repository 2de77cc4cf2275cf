//! Luthien's control plane: receives every call the data planes proxy, one
//! bidirectional gRPC stream per call, and runs it through the configured
//! policy chain.
//!
//! It wires the other crates together: [`server`] (settings, gRPC server, shutdown) →
//! [`service`] (the per-call state machine) → the chain of `luthien-policy`, with
//! [`recorder`] turning each call into records for `luthien-store`, [`activity`] publishing
//! them live, and [`debug`] answering questions about them.

pub mod activity;
pub mod cli;
pub mod debug;
pub mod diff;
pub mod liveness;
pub mod metrics;
pub mod policy_source;
pub mod probes;
pub mod recorder;
pub mod replay;
pub mod server;
pub mod service;
pub mod tls;
pub mod unpoliced;

pub use server::{ControlPlaneConfig, serve};
