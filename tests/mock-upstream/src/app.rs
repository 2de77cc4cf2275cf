//! The HTTP routes and the request flow shared by all APIs.
//!
//! Every request goes through the same steps: record it, read the control headers, answer
//! with a forced error status or hang if asked to, read the body, then render the [`Reply`]
//! as JSON or as an event stream in the API's own format. Each route receives the request
//! as a [`Call`], whose methods are those steps, so that a route only says what is its own.
//! Errors always use the format of the API that was called, because that is what a proxy
//! must pass through or translate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request};
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

mod responses;

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
}

/// The mock's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", any(openai_handler))
        .route("/v1/responses", any(responses::create))
        .route("/v1/responses/input_tokens", any(responses::input_tokens))
        .route("/v1/responses/compact", any(responses::compact))
        .route("/v1/responses/{response_id}", any(responses::by_id))
        .route("/v1/responses/{response_id}/cancel", any(responses::cancel))
        .route(
            "/v1/responses/{response_id}/input_items",
            any(responses::input_items),
        )
        .route("/v1/messages", any(anthropic_handler))
        .route("/v1/messages/count_tokens", any(count_tokens_handler))
        .route("/v1/models", any(models_handler))
        .route("/v1/models/{*model_id}", any(model_handler))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        // Whatever the proxy forwards must reach the mock, however large.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// The provider API a route speaks.
///
/// The Responses routes count as `OpenAi`: what the enum decides (the error format and the
/// "overloaded" status) is the same for both OpenAI APIs.
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

    /// A `400` for a request the mock cannot serve, saying why.
    fn bad_request(self, message: &str) -> Response {
        self.error(
            StatusCode::BAD_REQUEST,
            &format!("mock upstream: {message}"),
        )
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

/// A request as every route receives it: the state, and the request read whole (the body
/// too, since every request is recorded as received).
pub struct Call {
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl FromRequest<Arc<Shared>> for Call {
    type Rejection = Response;

    async fn from_request(request: Request, shared: &Arc<Shared>) -> Result<Self, Response> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, shared)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            shared: Arc::clone(shared),
            method,
            uri,
            headers,
            body,
        })
    }
}

/// What a route answers: `Err` is an answer given before the route got to its own, such as
/// the prelude's or a `400` for a body that does not parse.
type Answer = Result<Response, Response>;

impl Call {
    fn record(&self) {
        let shared = &self.shared;
        if !shared.record {
            return;
        }
        let request = RecordedRequest {
            method: self.method.clone(),
            path: self.uri.path().to_owned(),
            query: self.uri.query().map(str::to_owned),
            headers: self.headers.clone(),
            body: self.body.clone(),
        };
        // A poisoned lock only means another request panicked mid-push; the list is intact.
        shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
    }

    /// The steps every route shares: record the request, check the method, read the control
    /// headers, and answer a forced status or hang when asked to. `Err` is the answer.
    async fn prelude(&self, api: Api, allowed: &[Method]) -> Result<Controls, Response> {
        let (method, uri) = (&self.method, &self.uri);
        self.record();
        tracing::debug!(?api, %method, %uri, "mock request");

        if !allowed.contains(method) {
            return Err(api.error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("mock upstream: {method} is not allowed on {}", uri.path()),
            ));
        }
        let controls = match Controls::from_headers(&self.headers) {
            Ok(controls) => controls,
            Err(err) => return Err(api.error(StatusCode::BAD_REQUEST, &err.to_string())),
        };
        if let Some(status) = controls.status {
            let reason = status.canonical_reason().unwrap_or(error_type(status));
            return Err(api.error(
                status,
                &format!("mock upstream: forced {} {reason}", status.as_u16()),
            ));
        }
        if controls.scenario == Scenario::Hang {
            // Dropping the mock closes the connection, which drops this future early.
            tokio::time::sleep(HANG_LIMIT).await;
            return Err(api.error(
                StatusCode::GATEWAY_TIMEOUT,
                "mock upstream: the hang scenario gave up",
            ));
        }
        Ok(controls)
    }

    /// The body as `parse` reads it, or a `400` in `api`'s format saying what is wrong.
    #[expect(
        clippy::result_large_err,
        reason = "the error is the answer, moved once per request"
    )]
    fn parse<T>(&self, api: Api, parse: fn(&[u8]) -> Result<T, String>) -> Result<T, Response> {
        parse(&self.body).map_err(|message| api.bad_request(&message))
    }

    /// A `POST` route whose answer depends on its body alone: the prelude, the body as
    /// `parse` reads it, then a `200` with the JSON `body` makes of the request.
    async fn json_of_body<T>(
        &self,
        api: Api,
        parse: fn(&[u8]) -> Result<T, String>,
        body: impl FnOnce(&T) -> Bytes,
    ) -> Answer {
        self.prelude(api, &[Method::POST]).await?;
        let request = self.parse(api, parse)?;
        Ok(json_response(StatusCode::OK, body(&request)))
    }

    /// The query parameters; the error is a message for a `400`.
    fn query(&self) -> Result<HashMap<String, String>, String> {
        Query::try_from_uri(&self.uri)
            .map(|Query(query)| query)
            .map_err(|err| err.body_text())
    }

    /// Renders an answer in `api`'s format: the JSON `body`, or when `stream` is set the
    /// `events`, paced by `controls`. A non-streamed `stream_error` answer is the API's
    /// "overloaded" error instead, since there is no stream for the error to break off.
    fn answer(
        &self,
        api: Api,
        controls: &Controls,
        reply: &Reply,
        stream: bool,
        body: impl FnOnce() -> Bytes,
        events: impl FnOnce() -> Vec<Bytes>,
    ) -> Response {
        if stream {
            let body = sse::body(events(), controls.delay, Arc::clone(&self.shared.streams));
            return (
                [(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"))],
                body,
            )
                .into_response();
        }
        if reply.fails_mid_stream {
            return api.error(api.overloaded_status(), "Overloaded");
        }
        json_response(StatusCode::OK, body())
    }
}

/// `POST /v1/chat/completions`.
async fn openai_handler(call: Call) -> Answer {
    handle(Api::OpenAi, call).await
}

/// `POST /v1/messages`.
async fn anthropic_handler(call: Call) -> Answer {
    handle(Api::Anthropic, call).await
}

async fn handle(api: Api, call: Call) -> Answer {
    let controls = call.prelude(api, &[Method::POST]).await?;
    if controls.scenario == Scenario::Failed {
        return Err(api.bad_request(
            "the failed scenario is only for the Responses API (POST /v1/responses)",
        ));
    }
    let request = call.parse(api, RequestBody::parse)?;
    let reply = Reply::new(&controls, &request, api == Api::Anthropic);
    Ok(call.answer(
        api,
        &controls,
        &reply,
        request.stream,
        || match api {
            Api::OpenAi => openai::completion(&reply),
            Api::Anthropic => anthropic::message_body(&reply),
        },
        || match api {
            Api::OpenAi => openai::stream_events(&reply, request.include_usage),
            Api::Anthropic => anthropic::stream_events(&reply),
        },
    ))
}

/// Anthropic `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, N counted as for the
/// `usage` of a message (words under `messages` and `system`).
async fn count_tokens_handler(call: Call) -> Answer {
    call.json_of_body(Api::Anthropic, RequestBody::parse, |request| {
        anthropic::count_tokens_body(request.input_tokens)
    })
    .await
}

/// Both providers serve `/v1/models` at the same path (relative to their base URLs); like
/// the real Anthropic API, which requires the header, a request with `anthropic-version`
/// gets Anthropic's format, any other OpenAI's.
fn models_api(headers: &HeaderMap) -> Api {
    if headers.contains_key("anthropic-version") {
        Api::Anthropic
    } else {
        Api::OpenAi
    }
}

/// `GET /v1/models`: OpenAI's list, or Anthropic's page (`limit`, `after_id`, `before_id`).
async fn models_handler(call: Call) -> Answer {
    let api = models_api(&call.headers);
    call.prelude(api, &[Method::GET]).await?;
    let body = match api {
        Api::OpenAi => openai::model_list_body(),
        Api::Anthropic => {
            let invalid = |message: String| api.error(StatusCode::BAD_REQUEST, &message);
            let query = call.query().map_err(invalid)?;
            let param = |name: &str| query.get(name).map(String::as_str);
            anthropic::model_list_body(param("limit"), param("after_id"), param("before_id"))
                .map_err(invalid)?
        }
    };
    Ok(json_response(StatusCode::OK, body))
}

/// `GET /v1/models/{model_id}`: the model object, or a `404` in the provider's format.
async fn model_handler(call: Call) -> Answer {
    let api = models_api(&call.headers);
    call.prelude(api, &[Method::GET]).await?;
    let id = call
        .uri
        .path()
        .strip_prefix("/v1/models/")
        .unwrap_or_default();
    let (found, not_found) = match api {
        Api::OpenAi => (openai::model_body(id), openai::model_not_found_body(id)),
        Api::Anthropic => (
            anthropic::model_body(id),
            anthropic::model_not_found_body(id),
        ),
    };
    Ok(match found {
        Some(body) => json_response(StatusCode::OK, body),
        None => json_response(StatusCode::NOT_FOUND, not_found),
    })
}

async fn not_found(call: Call) -> Response {
    call.record();
    Api::OpenAi.error(
        StatusCode::NOT_FOUND,
        &format!(
            "mock upstream: no route for {} {}",
            call.method,
            call.uri.path()
        ),
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
