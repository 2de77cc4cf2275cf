//! Luthien's data plane: a lean HTTP proxy that speaks the providers' own
//! APIs (OpenAI chat completions, Anthropic messages), forwards each call
//! natively to the same API upstream, and streams every call to the control
//! plane over one bidirectional gRPC stream. Auxiliary endpoints that
//! generate nothing (token counting, model listings) go straight to the
//! provider (see [`auxiliary`]).
//!
//! It holds no policy logic and no database client: what a call becomes is
//! the control plane's decision; the data plane only moves bytes, enforces
//! limits and deadlines, and applies the fail mode when the control plane
//! is not there.

pub mod api;
mod auxiliary;
pub mod cli;
pub mod config;
mod control;
mod edge;
mod fail_mode;
mod metrics;
pub mod probe;
mod proxy;
mod readiness;
mod spool;
mod stream;
mod upstream;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{DataPlaneConfig, FailMode};
/// The control-plane channel's TLS, also used by `luthien calls` to reach a control plane.
pub use control::ClientTls;
pub use proxy::{CALL_ID_HEADER, OVERHEAD_HEADER};

use api::{Api, ApiError};
use control::{ControlClient, ControlSettings, Timeouts};
use upstream::Upstream;

/// Shared by every request handler.
pub struct AppState {
    config: DataPlaneConfig,
    readiness: Arc<readiness::Readiness>,
    calls: edge::CallSlots,
    control: ControlClient,
    /// Calls let through without policies, until a control plane records them.
    spool: Arc<spool::Spool>,
    upstream: Upstream,
    metrics: Arc<metrics::Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("upstream client: {0}")]
    Upstream(#[from] upstream::UpstreamSetupError),
    #[error("{0}")]
    Config(String),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds the HTTP application.
pub fn app(config: DataPlaneConfig) -> Result<(Router, Arc<AppState>), StartError> {
    let metrics = Arc::new(metrics::Metrics::new());
    // Of several (a rotation in progress), the first is presented.
    let token = config
        .control_plane_token
        .as_deref()
        .and_then(|tokens| luthien_telemetry::channel_tokens(tokens).next())
        .map(|token| format!("Bearer {token}").parse())
        .transpose()
        .map_err(|_| {
            StartError::Config("--control-plane-token is not a valid header value".into())
        })?;
    let control = ControlClient::new(
        ControlSettings {
            targets: &config.control_plane,
            tls: &config.control_plane_tls,
            resolve_interval: config.control_plane_resolve_interval,
            retries: config.control_plane_retries,
            connect_timeout: config.cp_connect_timeout,
            timeouts: Timeouts {
                message: config.cp_message_timeout,
                inactivity: config.cp_inactivity_timeout,
            },
            token,
        },
        metrics.control.clone(),
    )
    .map_err(StartError::Config)?;
    let upstream = Upstream::new(&config)?;
    upstream.validate().map_err(StartError::Config)?;
    let spool = Arc::new(spool::Spool::new(
        config.unpoliced_spool_bytes,
        metrics.spool.clone(),
    ));
    let state = Arc::new(AppState {
        spool,
        readiness: Arc::default(),
        calls: edge::CallSlots::new(config.edge.max_concurrent_calls),
        config,
        control,
        upstream,
        metrics,
    });
    let mut router = Router::new()
        .route("/v1/chat/completions", post(proxy::openai))
        .route("/v1/messages", post(proxy::anthropic))
        .route("/v1/responses", post(proxy::responses));
    if state.config.auxiliary_endpoints {
        router = router
            .route(auxiliary::COUNT_TOKENS_ROUTE, post(auxiliary::count_tokens))
            .route(auxiliary::MODELS_ROUTE, get(auxiliary::models))
            .route(auxiliary::MODEL_ROUTE, get(auxiliary::model))
            .route(
                auxiliary::RESPONSE_ROUTE,
                get(auxiliary::response).delete(auxiliary::response),
            )
            .route(auxiliary::RESPONSE_CANCEL_ROUTE, post(auxiliary::response))
            .route(
                auxiliary::RESPONSE_INPUT_ITEMS_ROUTE,
                get(auxiliary::response),
            )
            .route(auxiliary::INPUT_TOKENS_ROUTE, post(auxiliary::input_tokens))
            .route(auxiliary::COMPACT_ROUTE, post(auxiliary::compact));
    }
    let router = router
        .route("/health", get(readiness::healthz))
        .route("/healthz", get(readiness::healthz))
        .route("/readyz", get(readiness::readyz))
        .route("/metrics", get(metrics::handler))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::clone(&state))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(state.config.edge.clone()),
            edge::limit_headers,
        ));
    Ok((router, state))
}

/// Serves the data plane on `listener` until `shutdown` is cancelled, then drains: `/readyz`
/// turns false at once, calls are still accepted for `--drain-delay`, then the listener closes
/// and calls in flight get `--drain-timeout` to finish, their `CallEnd`s included.
pub async fn serve(
    config: DataPlaneConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let (router, state) = app(config)?;
    tracing::info!(
        listen = %listener.local_addr()?,
        control_plane = %state.config.control_plane,
        fail_mode = ?state.config.fail_mode,
        client_auth = state.config.client_api_key.is_some(),
        auxiliary_endpoints = state.config.auxiliary_endpoints,
        "data plane listening"
    );
    let background = TaskTracker::new();
    let watching = CancellationToken::new();
    state.control.start(&background, watching.clone()).await;
    background.spawn(deliver_unpoliced(Arc::clone(&state), watching.clone()));
    let stop_accepting = CancellationToken::new();
    let drain = {
        let state = Arc::clone(&state);
        let stop_accepting = stop_accepting.clone();
        async move {
            shutdown.cancelled().await;
            state.readiness.start_draining();
            tracing::info!(
                delay = %humantime::format_duration(state.config.drain_delay),
                "draining: /readyz is false; still accepting calls while load balancers notice"
            );
            tokio::time::sleep(state.config.drain_delay).await;
            stop_accepting.cancel();
        }
    };
    let drain = tokio::spawn(drain);
    let drain_timeout = state.config.drain_timeout;
    edge::serve(
        listener,
        router,
        &state.config.edge,
        stop_accepting,
        drain_timeout,
    )
    .await;
    drain.abort();
    let tasks = state.control.tasks();
    tasks.close();
    if tokio::time::timeout(drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tasks.len(),
            "drain timeout over; abandoning streams"
        );
    }
    watching.cancel();
    background.close();
    background.wait().await;
    // One last delivery of the calls no policy saw, bounded like the rest of the drain.
    let _ = tokio::time::timeout(drain_timeout, state.control.deliver(&state.spool)).await;
    state.control.stop().await;
    tracing::info!("data plane drained");
    Ok(())
}

/// Hands the calls no policy saw to a control plane as soon as one serves, until `stop`.
async fn deliver_unpoliced(state: Arc<AppState>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if !state.spool.is_empty() && state.control.any_serving() {
            state.control.deliver(&state.spool).await;
        }
    }
}

async fn not_found(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let api = Api::guess(request.uri().path(), request.headers());
    let served = if state.config.auxiliary_endpoints {
        "POST /v1/chat/completions, POST /v1/messages, POST /v1/responses, POST /v1/messages/count_tokens, GET /v1/models, GET /v1/models/{model_id}, GET and DELETE /v1/responses/{response_id}, POST /v1/responses/{response_id}/cancel, GET /v1/responses/{response_id}/input_items, POST /v1/responses/input_tokens and POST /v1/responses/compact"
    } else {
        "POST /v1/chat/completions, POST /v1/messages and POST /v1/responses"
    };
    with_call_id(ApiError::new(
        api,
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}; Luthien serves {served}",
            request.method(),
            request.uri().path()
        ),
    ))
}

async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path();
    let api = Api::guess(path, request.headers());
    let allowed = auxiliary::allowed_methods(path);
    with_call_id(ApiError::new(
        api,
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {path}; use {allowed}",
            request.method()
        ),
    ))
}

/// An error answered before any call began (no route, bad head), under a call id of its own
/// like every answer, so a client's report can be found in the logs.
pub(crate) fn with_call_id(error: ApiError) -> Response {
    let id = uuid::Uuid::now_v7();
    tracing::info!(call_id = %id, status = error.status.as_u16(), message = %error.message, "request refused");
    let mut response = error.into_response();
    proxy::set_call_id(&mut response, id);
    response
}
