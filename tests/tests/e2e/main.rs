//! Luthien end to end: real data planes and control planes on port 0, in front of the mock
//! provider, with real PostgreSQL, Redis and headless Chromium where a suite needs them.
//!
//! One test binary for every suite, so the whole stack is linked once. Each module is one
//! suite; run one with `cargo test -p luthien-tests --test e2e -- recording::`.
//!
//! Process-wide state is shared by every suite here: `telemetry` installs the OTLP exporter
//! once (other suites' spans reach its receiver too, and its checks select their own calls),
//! and the control plane's metrics registry is global (checks on it compare before and after).

mod auxiliary;
mod control_plane;
mod debug_api;
mod debug_web;
mod deploy;
mod edge;
mod errors;
mod fleet;
mod lifecycle;
mod policies;
mod policy_admin;
mod policy_redact_block;
mod policy_tools_judge;
mod recording;
mod remote_policy;
mod responses;
mod telemetry;
