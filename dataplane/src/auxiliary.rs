//! Auxiliary provider endpoints, passed straight through to the provider
//! without the control plane: Anthropic's `POST /v1/messages/count_tokens`,
//! both providers' `GET /v1/models` and `GET /v1/models/{id}`, and the
//! Responses API's stored responses: `GET` and `DELETE
//! /v1/responses/{id}` (`GET` with `?stream=true` replays a stored stream),
//! `POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items`,
//! `POST /v1/responses/input_tokens` and `POST /v1/responses/compact`.
//!
//! They generate nothing new, so there is nothing for response policies to
//! see, and clients (Claude Code, the SDKs, agents resuming a background
//! response) break without them. A stored response read back is the one
//! `POST /v1/responses` produced, which the policies saw then (when it was
//! made through Luthien). `compact` does run a model, but what it returns is
//! one opaque, encrypted item that only the provider can read; it is passed
//! through like `count_tokens`. Request policies do not see the bodies of
//! these endpoints (`count_tokens`, `input_tokens`, `compact`): that is the
//! price of not opening a call for them, and `--auxiliary-endpoints false`
//! turns the routes off for deployments that want every byte to go through
//! policies.
//!
//! The rules of the main routes still hold: the client key check, the body
//! limit, the provider key in place of the client's credentials,
//! hop-by-hop headers dropped both ways, the upstream deadline (for the
//! response headers and between two body frames) and trace propagation.
//! The response goes back as the provider sent it, streamed frame by frame.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use luthien_telemetry::propagation;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;
use tracing::field::Empty;

use crate::AppState;
use crate::api::{Api, ApiError};
use crate::metrics::PassthroughLabels;
use crate::proxy;
use crate::upstream::{self, SendError};

/// The auxiliary routes, for the router and the 404 message.
pub const COUNT_TOKENS_ROUTE: &str = "/v1/messages/count_tokens";
pub const MODELS_ROUTE: &str = "/v1/models";
pub const MODEL_ROUTE: &str = "/v1/models/{*model_id}";
pub const RESPONSE_ROUTE: &str = "/v1/responses/{response_id}";
pub const RESPONSE_CANCEL_ROUTE: &str = "/v1/responses/{response_id}/cancel";
pub const RESPONSE_INPUT_ITEMS_ROUTE: &str = "/v1/responses/{response_id}/input_items";
pub const INPUT_TOKENS_ROUTE: &str = "/v1/responses/input_tokens";
pub const COMPACT_ROUTE: &str = "/v1/responses/compact";

/// The methods a path's route takes, for a 405's message.
pub fn allowed_methods(path: &str) -> &'static str {
    if path.starts_with("/v1/models") || path.ends_with("/input_items") {
        "GET"
    } else if path.starts_with("/v1/responses/")
        && !path.ends_with("/cancel")
        && path != INPUT_TOKENS_ROUTE
        && path != COMPACT_ROUTE
    {
        "GET or DELETE"
    } else {
        "POST"
    }
}

/// An auxiliary endpoint, named for metrics and traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    CountTokens,
    Models,
    Model,
    /// A stored response: read, deleted, cancelled, or its input items listed.
    StoredResponse,
    InputTokens,
    Compact,
}

impl Endpoint {
    /// The `endpoint` label of `luthien_passthrough_total` (bounded).
    fn label(self) -> &'static str {
        match self {
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Models | Endpoint::Model => "models",
            Endpoint::StoredResponse => "responses",
            Endpoint::InputTokens => "input_tokens",
            Endpoint::Compact => "compact",
        }
    }

    /// The route, as OpenTelemetry's `http.route`.
    fn route(self, path: &str) -> &'static str {
        match self {
            Endpoint::CountTokens => COUNT_TOKENS_ROUTE,
            Endpoint::Models => MODELS_ROUTE,
            Endpoint::Model => "/v1/models/{model_id}",
            Endpoint::StoredResponse if path.ends_with("/cancel") => RESPONSE_CANCEL_ROUTE,
            Endpoint::StoredResponse if path.ends_with("/input_items") => {
                RESPONSE_INPUT_ITEMS_ROUTE
            }
            Endpoint::StoredResponse => RESPONSE_ROUTE,
            Endpoint::InputTokens => INPUT_TOKENS_ROUTE,
            Endpoint::Compact => COMPACT_ROUTE,
        }
    }
}

/// `POST /v1/messages/count_tokens` (Anthropic).
pub async fn count_tokens(State(state): State<Arc<AppState>>, request: Request) -> Response {
    forward(
        state,
        Api::AnthropicMessages,
        Endpoint::CountTokens,
        request,
    )
    .await
}

/// `GET /v1/models`: Anthropic's when the request looks like Anthropic's
/// (see [`Api::guess`]), else OpenAI's.
pub async fn models(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let api = Api::guess(request.uri().path(), request.headers());
    forward(state, api, Endpoint::Models, request).await
}

/// `GET /v1/models/{id}`, to the same provider as [`models`]. Ids may hold
/// `/` (OpenAI-compatible servers name models `org/model`), but no dot
/// segment: the path must stay under `/v1/models/` upstream.
pub async fn model(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let api = Api::guess(request.uri().path(), request.headers());
    let path = request.uri().path();
    if !model_path_is_plain(path) {
        return ApiError::new(
            api,
            StatusCode::NOT_FOUND,
            format!("no route for {} {path}: not a model id", request.method()),
        )
        .into_response();
    }
    forward(state, api, Endpoint::Model, request).await
}

/// `GET` / `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`
/// and `GET /v1/responses/{id}/input_items` (OpenAI Responses). The id is
/// one plain segment, never `.` or `..`, so the path stays under
/// `/v1/responses/` upstream.
pub async fn response(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let path = request.uri().path();
    let id = path
        .strip_prefix("/v1/responses/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    if !segment_is_plain(id) {
        return ApiError::new(
            Api::OpenAiResponses,
            StatusCode::NOT_FOUND,
            format!(
                "no route for {} {path}: not a response id",
                request.method()
            ),
        )
        .into_response();
    }
    forward(
        state,
        Api::OpenAiResponses,
        Endpoint::StoredResponse,
        request,
    )
    .await
}

/// `POST /v1/responses/input_tokens` (OpenAI Responses).
pub async fn input_tokens(State(state): State<Arc<AppState>>, request: Request) -> Response {
    forward(state, Api::OpenAiResponses, Endpoint::InputTokens, request).await
}

/// `POST /v1/responses/compact` (OpenAI Responses; see the module docs).
pub async fn compact(State(state): State<Arc<AppState>>, request: Request) -> Response {
    forward(state, Api::OpenAiResponses, Endpoint::Compact, request).await
}

/// True when every segment after `/v1/models/` is a non-empty name, not
/// `.` or `..` (percent-encoded or not).
fn model_path_is_plain(path: &str) -> bool {
    let Some(id) = path.strip_prefix("/v1/models/") else {
        return false;
    };
    id.split('/').all(segment_is_plain)
}

/// A non-empty path segment that is not `.` or `..`, percent-encoded or not.
fn segment_is_plain(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    !segment.is_empty() && decoded != "." && decoded != ".."
}

async fn forward(state: Arc<AppState>, api: Api, endpoint: Endpoint, request: Request) -> Response {
    let route = endpoint.route(request.uri().path());
    let span = tracing::info_span!(
        "luthien.passthrough",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        otel.status_code = Empty,
        trace_id = Empty,
        http.request.method = %request.method(),
        http.route = route,
        gen_ai.provider.name = api.provider(),
        http.response.status_code = Empty,
    );
    let client_trace = proxy::trace_context(request.headers());
    propagation::set_parent(&span, &client_trace);
    let trace = propagation::outgoing(&span, &client_trace);
    if let Some(trace_id) = trace.trace_id() {
        span.record("trace_id", trace_id);
    }
    let upstream_trace = state.config.propagate_trace_upstream.then_some(trace);
    let response = pass(&state, api, endpoint, request, upstream_trace)
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    state
        .metrics
        .passthrough
        .get_or_create(&PassthroughLabels {
            api: api.metric_label(),
            endpoint: endpoint.label(),
            status: status.as_u16(),
        })
        .inc();
    response
}

async fn pass(
    state: &AppState,
    api: Api,
    endpoint: Endpoint,
    request: Request,
    trace: Option<propagation::W3cContext>,
) -> Response {
    let config = &state.config;
    let (parts, body) = request.into_parts();
    let stripped_credential =
        match proxy::authenticate(config.client_api_key.as_deref(), api, &parts.headers) {
            Ok(header) => header,
            Err(error) => return error.into_response(),
        };
    let body = match proxy::read_body(
        api,
        proxy::BodyLimits {
            max_bytes: config.max_body_bytes,
            read_timeout: config.edge.body_read_timeout,
        },
        &parts.headers,
        body,
    )
    .await
    {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let sent = tokio::time::timeout(
        config.upstream_timeout,
        state.upstream.send_auxiliary(
            api,
            &parts,
            stripped_credential.as_ref(),
            body,
            trace.as_ref(),
        ),
    )
    .await;
    let upstream_response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(SendError::InvalidUri)) => {
            return ApiError::new(
                api,
                StatusCode::BAD_REQUEST,
                "the path or query string is not valid",
            )
            .into_response();
        }
        Ok(Err(SendError::Failed(error))) => {
            tracing::warn!(endpoint = endpoint.label(), %error, "upstream unreachable");
            return ApiError::new(
                api,
                StatusCode::BAD_GATEWAY,
                "upstream provider unreachable",
            )
            .into_response();
        }
        Err(_) => {
            return ApiError::new(
                api,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream provider did not answer in time",
            )
            .into_response();
        }
    };
    let (upstream_parts, upstream_body) = upstream_response.into_parts();
    let mut headers = HeaderMap::with_capacity(upstream_parts.headers.len());
    upstream::copy_forwardable(&upstream_parts.headers, &mut headers);
    let relay = Relay::new(upstream_body, config.upstream_timeout, endpoint);
    let mut response = Response::new(Body::new(relay));
    *response.status_mut() = upstream_parts.status;
    *response.headers_mut() = headers;
    response
}

/// The upstream body on its way to the client, frame by frame, failing
/// when upstream stays silent longer than the deadline (the client then
/// sees the response cut short, as with any broken connection).
struct Relay {
    upstream: Incoming,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    endpoint: Endpoint,
}

impl Relay {
    fn new(upstream: Incoming, idle: Duration, endpoint: Endpoint) -> Self {
        Self {
            upstream,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            endpoint,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("upstream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("upstream body: {0}")]
    Upstream(#[from] hyper::Error),
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.upstream).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(endpoint = this.endpoint.label(), %error, "upstream connection failed mid-response");
                Poll::Ready(Some(Err(RelayError::Upstream(error))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::warn!(
                        endpoint = this.endpoint.label(),
                        "upstream response body too slow"
                    );
                    Poll::Ready(Some(Err(RelayError::Idle(this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.upstream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.upstream.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_may_not_climb_out_of_the_models_path() {
        for plain in [
            "/v1/models/gpt-4o-mini",
            "/v1/models/claude-sonnet-4-5-20250929",
            "/v1/models/meta-llama/Llama-3.1-8B",
            "/v1/models/ft:gpt-4o-mini:org::abc",
            "/v1/models/a..b",
        ] {
            assert!(model_path_is_plain(plain), "{plain}");
        }
        for climbing in [
            "/v1/models/",
            "/v1/models/..",
            "/v1/models/../chat/completions",
            "/v1/models/x/../../files",
            "/v1/models/%2e%2E/files",
            "/v1/models/.",
            "/v1/models/a//b",
            "/v1/modelsx",
        ] {
            assert!(!model_path_is_plain(climbing), "{climbing}");
        }
    }

    #[test]
    fn endpoint_labels_are_bounded() {
        assert_eq!(Endpoint::CountTokens.label(), "count_tokens");
        assert_eq!(Endpoint::Models.label(), "models");
        assert_eq!(Endpoint::Model.label(), "models");
        assert_eq!(Endpoint::StoredResponse.label(), "responses");
        assert_eq!(
            Endpoint::StoredResponse.route("/v1/responses/resp_1/input_items"),
            RESPONSE_INPUT_ITEMS_ROUTE
        );
        assert_eq!(
            Endpoint::StoredResponse.route("/v1/responses/resp_1"),
            RESPONSE_ROUTE
        );
    }

    #[test]
    fn each_path_names_the_methods_its_route_takes() {
        for (path, allowed) in [
            ("/v1/models", "GET"),
            ("/v1/responses/resp_1/input_items", "GET"),
            ("/v1/responses/resp_1", "GET or DELETE"),
            ("/v1/responses/resp_1/cancel", "POST"),
            ("/v1/responses/input_tokens", "POST"),
            ("/v1/responses", "POST"),
            ("/v1/chat/completions", "POST"),
        ] {
            assert_eq!(allowed_methods(path), allowed, "{path}");
        }
        assert!(!segment_is_plain("%2E%2e"));
        assert!(segment_is_plain("resp_68af"));
    }
}
