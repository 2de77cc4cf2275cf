//! `/healthz` (the process is alive) and `/readyz` (it should get traffic) of the data plane.
//!
//! Ready means: not draining, and a control plane to police calls — one that reports its
//! `ControlPlaneService` as SERVING on `grpc.health.v1` — unless the fail mode is open, where
//! calls go on without one. Each control plane's health is watched (a server-streaming `Watch`,
//! re-opened a second after it breaks or reports anything but SERVING), never polled per call;
//! calls prefer the endpoints reported SERVING (see `control`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::AppState;
use crate::control::{ControlClient, ControlEndpoint};
use crate::fail_mode::FailMode;

/// The service name the control plane reports on `grpc.health.v1`.
const CONTROL_PLANE_SERVICE: &str = "luthien.dataplane.v1.ControlPlaneService";

/// Pause before re-opening a broken health watch.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

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

/// Follows the health of every control plane of `control` until `shutdown`.
pub fn watch(control: &ControlClient, tasks: &TaskTracker, shutdown: &CancellationToken) {
    for endpoint in control.endpoints() {
        let endpoint = Arc::clone(endpoint);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = follow(&endpoint) => {}
                }
                endpoint.set_serving(false);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(REWATCH_AFTER) => {}
                }
            }
        });
    }
}

/// One `Watch` stream, until it breaks.
async fn follow(endpoint: &ControlEndpoint) {
    let request = HealthCheckRequest {
        service: CONTROL_PLANE_SERVICE.to_owned(),
    };
    let Ok(response) = HealthClient::new(endpoint.channel()).watch(request).await else {
        return;
    };
    let mut updates = response.into_inner();
    while let Ok(Some(update)) = updates.message().await {
        let serving = update.status() == ServingStatus::Serving;
        endpoint.set_serving(serving);
        if !serving {
            // A control plane that is leaving waits for open streams: let this one go and
            // ask again shortly (a passing NOT_SERVING is followed by SERVING then).
            return;
        }
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
