//! Luthien's control plane: receives every call the data planes proxy, one
//! bidirectional gRPC stream per call, and runs it through the configured
//! policy chain.
//!
//! Code map: [`server`] (settings, gRPC server, shutdown) → [`service`] (the
//! per-call state machine) → [`policy`] (the chain and the built-in
//! policies), which read provider shapes through [`api`] and streams through
//! [`sse`]. [`config`] turns the YAML policy file into a chain.

pub mod activity;
pub mod api;
pub mod config;
pub mod debug;
pub mod diff;
pub mod events;
pub mod metrics;
pub mod policy;
pub mod policy_source;
pub mod reconstruct;
pub mod recorder;
pub mod replay;
pub mod server;
pub mod service;
pub mod sse;
pub mod store;

pub use server::{ControlPlaneConfig, serve};
