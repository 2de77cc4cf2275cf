//! The end-to-end harness: real Luthien stacks (control plane + data plane,
//! in-process, on port 0) in front of the mock provider, an HTTP client that
//! keeps every byte, and a scripted control plane for failure tests.

pub mod bench;
pub mod client;
pub mod databases;
pub mod fake_control_plane;
pub mod python;
pub mod stack;
pub mod wait;
pub mod wire;

pub use client::{Client, TestResponse};
pub use luthien_mock_upstream::MockUpstream;
pub use stack::{Stack, StackOptions};
