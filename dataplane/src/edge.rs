//! The client-facing listener: what a client may hold of the data plane.
//!
//! A client without a key must not be able to hold resources for long: connections are capped
//! (past the cap, new ones wait in the listen backlog), each gets `--header-read-timeout` to
//! send a request's head (hyper starts that timer whenever the connection waits for one, so it
//! also closes idle keep-alive connections), and request heads beyond `--max-headers` /
//! `--max-header-bytes` get a 431 in the client's API format. Bodies are bounded in
//! [`crate::proxy::read_body`] and concurrent calls by [`CallSlots`].
//!
//! Every accepted connection is served by a task of the listener's [`TaskTracker`]; on
//! shutdown each is asked to finish its request in flight and close (HTTP/1 `Connection:
//! close`, HTTP/2 GOAWAY).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{Api, ApiError};
use crate::config::EdgeLimits;

/// Hyper's own limits, far above the configured ones so that a request over those still parses
/// and gets Luthien's 431 in the client's format; only a head past these gets hyper's bare 431.
const HYPER_MAX_HEADERS: usize = 1_000;
const HYPER_MAX_HEAD_BYTES: usize = 1024 * 1024;

/// Serves `router` on `listener` within `limits` until `shutdown`; then connections get
/// `grace` to finish their requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &EdgeLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(luthien_api::limits::HTTP2_KEEPALIVE_INTERVAL));
    let service = TowerToHyperService::new(router);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tasks = TaskTracker::new();
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accepting a client connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Streams write many small chunks: without TCP_NODELAY, Nagle holds each one until
        // the client's delayed ACK of the previous (tens of ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a client connection");
        }
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let connection = graceful.watch(connection);
        tasks.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("client connections still open after the grace period; closing them");
    }
    tasks.close();
    // Past the grace period hyper has been told to close; what is left ends with the runtime.
    let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
}

/// Concurrent calls, bounded by `--max-concurrent-calls`. A call holds its slot until it ends,
/// streams included.
#[derive(Clone, Debug)]
pub struct CallSlots(Arc<Semaphore>);

/// A call's slot; freed when dropped.
pub type CallSlot = OwnedSemaphorePermit;

impl CallSlots {
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Semaphore::new(limit.max(1))))
    }

    /// A slot, or the 503 the client gets when every slot is taken.
    pub fn take(&self, api: Api) -> Result<CallSlot, ApiError> {
        Arc::clone(&self.0).try_acquire_owned().map_err(|_| {
            ApiError::new(
                api,
                StatusCode::SERVICE_UNAVAILABLE,
                "too many calls in progress on this Luthien data plane; retry shortly",
            )
        })
    }
}

/// Middleware answering request heads over `--max-headers` / `--max-header-bytes` with a 431
/// in the client's format, before any route runs.
pub async fn limit_headers(
    State(limits): State<Arc<EdgeLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() <= limits.max_headers && bytes <= limits.max_header_bytes {
        return next.run(request).await;
    }
    let api = Api::guess(request.uri().path(), headers);
    let message = format!(
        "request headers too large: {} headers, {bytes} bytes (at most {} headers, {} bytes)",
        headers.len(),
        limits.max_headers,
        limits.max_header_bytes
    );
    crate::with_call_id(ApiError::new(
        api,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        message,
    ))
    .into_response()
}
