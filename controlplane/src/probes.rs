//! `/healthz` (the process is alive) and `/readyz` (it should get traffic) of the control plane,
//! on its HTTP listener. They reveal nothing, so they answer without the admin key.
//!
//! Ready means: the policy chain is loaded (it is before anything listens), the process is not
//! shutting down, and the event store, when there is one, is reachable and migrated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use luthien_store::Store;

/// Longest `/readyz` waits for the store; a slower store is not ready.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Default)]
pub struct Readiness {
    store: Option<Store>,
    stopping: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new(store: Option<Store>) -> Self {
        Self {
            store,
            stopping: Arc::default(),
        }
    }

    /// From now on `/readyz` says no.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    if readiness.stopping.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    }
    if let Some(store) = &readiness.store {
        match tokio::time::timeout(STORE_CHECK_TIMEOUT, store.check()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("event store not ready: {error}"),
                );
            }
            Err(_) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "event store did not answer in time".to_owned(),
                );
            }
        }
    }
    (StatusCode::OK, "ready".to_owned())
}
