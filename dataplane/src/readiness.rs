//! `/healthz` (the process is alive) and `/readyz` (it should get traffic) of the data plane.
//!
//! Ready means: not draining, and a control plane to police calls — one that reports its
//! `ControlPlaneService` as SERVING on `grpc.health.v1` and was not ejected (see
//! `control::pool`) — unless the fail mode is open, where calls go on without one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;
use crate::control::ControlClient;
use crate::fail_mode::FailMode;

#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    /// From now on `/readyz` says no: the process is leaving.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Why the data plane should not get traffic now, if it should not.
    fn not_ready(&self, fail_mode: FailMode, control: &ControlClient) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining");
        }
        (!control.any_serving() && fail_mode == FailMode::Closed)
            .then_some("no control plane is serving")
    }
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    match state
        .readiness
        .not_ready(state.config.fail_mode, &state.control)
    {
        None => (StatusCode::OK, "ready"),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}
