//! `noop`: passes every call through untouched.
//!
//! The default chain, and the baseline for measuring the gateway's own overhead: being
//! read-only, it lets the data plane run calls in observe mode.

use super::{CallInfo, CallPolicy, FromConfig, NoConfig, Policy};

/// Does nothing, read-only.
#[derive(Debug)]
pub struct Noop {
    name: String,
}

impl Default for Noop {
    fn default() -> Self {
        Self {
            name: Self::KIND.to_owned(),
        }
    }
}

impl FromConfig for Noop {
    const KIND: &'static str = "noop";
    type Config = NoConfig;

    fn from_config(name: String, _: NoConfig) -> Result<Self, String> {
        Ok(Self { name })
    }
}

impl Policy for Noop {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_only(&self) -> bool {
        true
    }

    fn start_call(&self, _: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(NoopCall)
    }
}

/// Every hook keeps its pass-through default.
struct NoopCall;

impl CallPolicy for NoopCall {}
