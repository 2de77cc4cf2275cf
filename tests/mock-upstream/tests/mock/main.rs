//! End-to-end tests of the mock provider over real sockets, with a plain hyper client.

// Clippy allows these inside `#[test]` functions only; the helpers that check and rebuild
// streams are test code too, where a failed expectation is meant to fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod anthropic;
mod auxiliary;
mod control;
mod openai;
mod responses;
mod support;
