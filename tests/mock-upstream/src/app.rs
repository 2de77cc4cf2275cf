//! The HTTP routes and the request flow shared by both APIs.
//!
//! Every request goes through the same steps: record it, read the control headers, answer
//! with a forced error status or hang if asked to, read the body, then render the [`Reply`]
//! as JSON or as an event stream in the API's own format. Errors always use the format of
//! the API that was called, because that is what a proxy must pass through or translate.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use crate::RecordedRequest;
use crate::reply::{Reply, RequestBody};
use crate::scenario::{Controls, Scenario};
use crate::sse::StreamStats;
use crate::{anthropic, openai, sse};

/// How long the `hang` scenario holds a request before answering `504`. A client that gives
/// up earlier closes the connection, which ends the request at once; the limit is for clients
/// that never give up, so that they cannot pin a connection forever.
pub const HANG_LIMIT: Duration = Duration::from_secs(120);

/// State shared by all requests of one mock instance.
#[derive(Debug)]
pub struct Shared {
    pub record: bool,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub streams: Arc<StreamStats>,
}

impl Shared {
    pub fn new(record: bool) -> Self {
        Self {
            record,
            requests: Mutex::new(Vec::new()),
            streams: Arc::new(StreamStats::default()),
        }
    }

    fn record(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) {
        if !self.record {
            return;
        }
        let request = RecordedRequest {
            method: method.clone(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: headers.clone(),
            body: body.clone(),
        };
        // A poisoned lock only means another request panicked mid-push; the list is intact.
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
    }
}

/// The mock's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", any(openai_handler))
        .route("/v1/messages", any(anthropic_handler))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        // Whatever the proxy forwards must reach the mock, however large.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// The provider API a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    fn error(self, status: StatusCode, message: &str) -> Response {
        let kind = error_type(status);
        let body = match self {
            Api::OpenAi => openai::error_body(kind, message),
            Api::Anthropic => anthropic::error_body(kind, message),
        };
        json_response(status, body)
    }

    /// The status a non-streaming request of the `stream_error` scenario gets: each API's
    /// "overloaded" status.
    fn overloaded_status(self) -> StatusCode {
        match self {
            Api::OpenAi => StatusCode::SERVICE_UNAVAILABLE,
            // 529 is Anthropic's own "overloaded" status; it is a valid code, so this never
            // falls back in practice.
            Api::Anthropic => StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

/// The error `type` for a status, as both APIs name them.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

async fn openai_handler(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(Api::OpenAi, &shared, method, uri, headers, body).await
}

async fn anthropic_handler(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(Api::Anthropic, &shared, method, uri, headers, body).await
}

async fn handle(
    api: Api,
    shared: &Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.record(&method, &uri, &headers, &body);
    tracing::debug!(?api, %method, %uri, "mock request");

    if method != Method::POST {
        return api.error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("mock upstream: {method} is not allowed on {}", uri.path()),
        );
    }
    let controls = match Controls::from_headers(&headers) {
        Ok(controls) => controls,
        Err(err) => return api.error(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    if let Some(status) = controls.status {
        let reason = status.canonical_reason().unwrap_or(error_type(status));
        return api.error(
            status,
            &format!("mock upstream: forced {} {reason}", status.as_u16()),
        );
    }
    if controls.scenario == Scenario::Hang {
        // Dropping the mock closes the connection, which drops this future early.
        tokio::time::sleep(HANG_LIMIT).await;
        return api.error(
            StatusCode::GATEWAY_TIMEOUT,
            "mock upstream: the hang scenario gave up",
        );
    }
    let request = match RequestBody::parse(&body) {
        Ok(request) => request,
        Err(message) => {
            return api.error(
                StatusCode::BAD_REQUEST,
                &format!("mock upstream: {message}"),
            );
        }
    };

    let reply = Reply::new(&controls, &request, api == Api::Anthropic);
    if !request.stream {
        if reply.fails_mid_stream {
            return api.error(api.overloaded_status(), "Overloaded");
        }
        let body = match api {
            Api::OpenAi => openai::completion(&reply),
            Api::Anthropic => anthropic::message_body(&reply),
        };
        return json_response(StatusCode::OK, body);
    }

    let events = match api {
        Api::OpenAi => openai::stream_events(&reply, request.include_usage),
        Api::Anthropic => anthropic::stream_events(&reply),
    };
    let body = sse::body(events, controls.delay, Arc::clone(&shared.streams));
    (
        [(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"))],
        body,
    )
        .into_response()
}

async fn not_found(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.record(&method, &uri, &headers, &body);
    Api::OpenAi.error(
        StatusCode::NOT_FOUND,
        &format!("mock upstream: no route for {method} {}", uri.path()),
    )
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_follow_the_status() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (529, "overloaded_error"),
        ];
        for (code, kind) in cases {
            let status = StatusCode::from_u16(code).expect("valid status");
            assert_eq!(error_type(status), kind, "for {code}");
        }
    }
}
