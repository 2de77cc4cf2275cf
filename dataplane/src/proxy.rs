//! One proxied call, from the client's request to the response headers.
//!
//! The order of work is fixed: authenticate, read and check the body, ask the
//! control plane for a request decision, call upstream, then either answer a
//! non-streamed response or hand the stream to [`crate::stream`]. Every error
//! leaves here as a response in the client's own API format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use luthien_proto::common::v1::Header;
use luthien_proto::dataplane::v1::data_plane_message::Message as ToControl;
use luthien_proto::dataplane::v1::request_decision::Action;
use luthien_proto::dataplane::v1::{
    CallEnd, CallOutcome, CallStart, ResponseBody, ResponseMode, TraceContext,
};
use luthien_telemetry::metrics::Label;
use luthien_telemetry::propagation::{self, W3cContext};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;
use tracing::field::Empty;
use uuid::Uuid;

use crate::AppState;
use crate::api::{Api, ApiError};
use crate::config::FailMode;
use crate::control::{CallSession, ControlError};
use crate::metrics::{CallLabels, Metrics};
use crate::stream::{StreamMode, StreamPump};
use crate::upstream::{self, SendError};

/// Response header carrying the call id, generated at the boundary.
pub const CALL_ID_HEADER: HeaderName = HeaderName::from_static("x-luthien-call-id");
/// Response header carrying the time spent in Luthien (not upstream), in ms.
pub const OVERHEAD_HEADER: HeaderName = HeaderName::from_static("x-luthien-overhead-ms");

/// Upstream error bodies are passed to the control plane up to this size.
const MAX_RECORDED_ERROR_BODY: usize = 64 * 1024;

/// Client streams buffer at most this many chunks before the pump waits.
const CLIENT_QUEUE: usize = 8;

pub async fn openai(State(state): State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Api::OpenAiChat, request).await
}

pub async fn anthropic(State(state): State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Api::AnthropicMessages, request).await
}

async fn proxy(state: Arc<AppState>, api: Api, request: Request) -> Response {
    let received = Instant::now();
    let id = Uuid::now_v7();
    // The call's root span (OpenTelemetry GenAI conventions); renamed to
    // `chat {model}` once the body is read. Bodies never become attributes.
    let span = tracing::info_span!(
        "call",
        otel.name = "chat",
        otel.kind = "server",
        otel.status_code = Empty,
        luthien.call_id = %id,
        trace_id = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = api.provider(),
        gen_ai.request.model = Empty,
        gen_ai.request.stream = Empty,
        gen_ai.request.max_tokens = Empty,
        http.response.status_code = Empty,
    );
    let client_trace = trace_context(request.headers());
    propagation::set_parent(&span, &client_trace);
    let trace = propagation::outgoing(&span, &client_trace);
    if let Some(trace_id) = trace.trace_id() {
        span.record("trace_id", trace_id);
    }
    let model = state.metrics.models.get("");
    let mut call = Call {
        id,
        api,
        received,
        upstream_wait: Duration::ZERO,
        state,
        client_trace,
        trace,
        model,
        streamed: false,
    };
    let mut response = call.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let metrics = &call.state.metrics;
    metrics
        .calls
        .get_or_create(&CallLabels {
            api: api.metric_label(),
            model: call.model.clone(),
            status: status.as_u16(),
        })
        .inc();
    if !call.streamed {
        Metrics::observe(&metrics.overhead, api.metric_label(), call.overhead());
    }
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(CALL_ID_HEADER, value);
    }
    response
}

/// The fields of a request body the data plane needs; everything else is
/// skipped by the parser while it still validates the whole document.
#[derive(Deserialize)]
struct RequestProbe {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

struct Call {
    id: Uuid,
    api: Api,
    received: Instant,
    /// Time spent waiting for upstream, excluded from the overhead.
    upstream_wait: Duration,
    state: Arc<AppState>,
    /// The client's trace context, as received.
    client_trace: W3cContext,
    /// The context the control plane continues (the call span's).
    trace: W3cContext,
    /// The model's metrics label (bounded).
    model: Label,
    /// Handed to the stream pump, which reports the overhead itself.
    streamed: bool,
}

impl Call {
    fn error(&self, status: StatusCode, message: impl Into<String>) -> Response {
        ApiError::new(self.api, status, message).into_response()
    }

    fn overhead(&self) -> Duration {
        self.received.elapsed().saturating_sub(self.upstream_wait)
    }

    fn call_end(&self, outcome: CallOutcome, detail: impl Into<String>) -> CallEnd {
        let elapsed = self.received.elapsed();
        CallEnd {
            outcome: outcome.into(),
            detail: detail.into(),
            duration_micros: micros(elapsed),
            time_to_first_byte_micros: micros(elapsed),
            overhead_micros: micros(self.overhead()),
            ..CallEnd::default()
        }
    }

    async fn run(&mut self, request: Request) -> Response {
        let config = &self.state.config;
        let (parts, body) = request.into_parts();

        let stripped_credential =
            match authenticate(config.client_api_key.as_deref(), self.api, &parts.headers) {
                Ok(header) => header,
                Err(error) => return error.into_response(),
            };
        let body = match read_body(self.api, config.max_body_bytes, &parts.headers, body).await {
            Ok(body) => body,
            Err(error) => return error.into_response(),
        };
        let probe: RequestProbe = match serde_json::from_slice(&body) {
            Ok(probe) => probe,
            Err(error) => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    format!("request body is not valid JSON for this API: {error}"),
                );
            }
        };
        let stream = probe.stream.unwrap_or(false);
        let span = tracing::Span::current();
        if let Some(model) = probe.model.as_deref() {
            self.model = self.state.metrics.models.get(model);
            propagation::rename(&span, format!("chat {model}"));
            span.record("gen_ai.request.model", model);
        }
        span.record("gen_ai.request.stream", stream);
        if let Some(max_tokens) = probe.max_completion_tokens.or(probe.max_tokens) {
            span.record("gen_ai.request.max_tokens", max_tokens);
        }

        let start = CallStart {
            call_id: self.id.to_string(),
            api: self.api.kind().into(),
            path: parts.uri.path().to_owned(),
            model: probe.model.unwrap_or_default(),
            stream,
            headers: forwardable_metadata(&parts.headers),
            trace: Some(TraceContext {
                traceparent: self.trace.traceparent.clone(),
                tracestate: self.trace.tracestate.clone(),
            }),
            body: body.clone(),
            received_at_unix_micros: luthien_api::time::unix_micros(),
        };

        // Request phase: the control plane may rewrite, block, and picks the
        // response mode.
        let (mut session, upstream_body, mode) = match self.open_session(start).await {
            Ok(Some((session, decision))) => match (decision.response_mode(), decision.action) {
                (_, Some(Action::ImmediateResponse(immediate))) => {
                    let response =
                        immediate_response(immediate.status, immediate.headers, immediate.body);
                    session.end(self.call_end(CallOutcome::Blocked, immediate.reason));
                    return self.with_overhead(response);
                }
                (response_mode, Some(Action::ContinueRequest(continued))) => {
                    let mode = match response_mode {
                        ResponseMode::Observe => StreamMode::Observe,
                        ResponseMode::Transform | ResponseMode::Unspecified => {
                            StreamMode::Transform
                        }
                    };
                    (Some(session), continued.body.unwrap_or(body), mode)
                }
                (_, None) => {
                    let error = ControlError::Protocol("RequestDecision without an action".into());
                    match self.control_failed(error) {
                        Ok(()) => (None, body, StreamMode::PassThrough),
                        Err(error) => return error.into_response(),
                    }
                }
            },
            Ok(None) => (None, body, StreamMode::PassThrough),
            Err(error) => return error.into_response(),
        };

        // Upstream.
        let upstream_span = tracing::info_span!(
            "luthien.upstream",
            otel.kind = "client",
            gen_ai.provider.name = self.api.provider(),
            http.response.status_code = Empty,
        );
        let upstream_trace = config
            .propagate_trace_upstream
            .then(|| propagation::outgoing(&upstream_span, &self.client_trace));
        let upstream_started = Instant::now();
        let sent = tokio::time::timeout(
            config.upstream_timeout,
            self.state.upstream.send(
                self.api,
                parts.uri.query(),
                &parts.headers,
                stripped_credential.as_ref(),
                upstream_body,
                upstream_trace.as_ref(),
            ),
        )
        .instrument(upstream_span.clone())
        .await;
        let upstream_elapsed = upstream_started.elapsed();
        self.upstream_wait += upstream_elapsed;
        let upstream_response = match sent {
            Ok(Ok(response)) => {
                upstream_span.record("http.response.status_code", response.status().as_u16());
                Metrics::observe(
                    &self.state.metrics.upstream,
                    self.api.metric_label(),
                    upstream_elapsed,
                );
                response
            }
            Ok(Err(SendError::InvalidUri)) => {
                return self.reject(
                    session,
                    StatusCode::BAD_REQUEST,
                    "the query string is not valid",
                );
            }
            Ok(Err(SendError::Failed(error))) => {
                tracing::warn!(call_id = %self.id, %error, "upstream unreachable");
                let response = self.error(StatusCode::BAD_GATEWAY, "upstream provider unreachable");
                if let Some(session) = session.take() {
                    session.end(self.call_end(CallOutcome::UpstreamUnreachable, error.to_string()));
                }
                return response;
            }
            Err(_) => {
                let response = self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream provider did not answer in time",
                );
                if let Some(session) = session.take() {
                    session.end(self.call_end(CallOutcome::UpstreamTimeout, "no response headers"));
                }
                return response;
            }
        };
        let (upstream_parts, upstream_body) = upstream_response.into_parts();
        let status = upstream_parts.status;
        let mut headers = HeaderMap::with_capacity(upstream_parts.headers.len());
        upstream::copy_forwardable(&upstream_parts.headers, &mut headers);

        if stream && status.is_success() {
            let (client, client_body) = tokio::sync::mpsc::channel(CLIENT_QUEUE);
            let mut response = Response::new(Body::from_stream(ReceiverStream::new(client_body)));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            let response = self.with_overhead(response);
            let pump = StreamPump {
                api: self.api,
                session,
                mode,
                fail_mode: config.fail_mode,
                upstream: upstream_body,
                upstream_timeout: config.upstream_timeout,
                client,
                received: self.received,
                upstream_wait: self.upstream_wait,
                metrics: Arc::clone(&self.state.metrics),
            };
            self.streamed = true;
            self.state
                .control
                .tasks()
                .spawn(pump.run().instrument(tracing::Span::current()));
            return response;
        }

        // Non-streamed (or an upstream error, which is never streamed).
        let read_started = Instant::now();
        let read = tokio::time::timeout(
            config.upstream_timeout,
            Limited::new(upstream_body, config.max_response_bytes).collect(),
        )
        .await;
        self.upstream_wait += read_started.elapsed();
        let body = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) => {
                let too_large = error.is::<http_body_util::LengthLimitError>();
                let (outcome, message) = if too_large {
                    (
                        CallOutcome::UpstreamUnreachable,
                        "upstream response exceeds --max-response-bytes",
                    )
                } else {
                    (
                        CallOutcome::UpstreamUnreachable,
                        "upstream connection failed mid-response",
                    )
                };
                if let Some(session) = session.take() {
                    session.end(self.call_end(outcome, message));
                }
                return self.error(StatusCode::BAD_GATEWAY, message);
            }
            Err(_) => {
                if let Some(session) = session.take() {
                    session
                        .end(self.call_end(CallOutcome::UpstreamTimeout, "response body too slow"));
                }
                return self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream provider did not answer in time",
                );
            }
        };

        if !status.is_success() {
            if let Some(session) = session.take() {
                let mut end = self.call_end(
                    CallOutcome::UpstreamError,
                    format!("upstream answered {status}"),
                );
                end.upstream_status = u32::from(status.as_u16());
                end.upstream_error_body = body.slice(..body.len().min(MAX_RECORDED_ERROR_BODY));
                session.end(end);
            }
            return self.respond(status, headers, body);
        }

        // Response phase.
        let body = match (session.as_mut(), mode) {
            (Some(active), StreamMode::Transform) => {
                let cp_started = Instant::now();
                let decided = async {
                    match active
                        .send(ToControl::ResponseBody(response_message(
                            status,
                            &headers,
                            body.clone(),
                        )))
                        .await
                    {
                        Ok(()) => active.response_decision().await,
                        Err(error) => Err(error),
                    }
                }
                .instrument(tracing::info_span!("luthien.control_plane.response"))
                .await;
                tracing::trace!(call_id = %self.id, waited = ?cp_started.elapsed(), "response decision");
                match decided {
                    Ok(decision) => decision.body.unwrap_or(body),
                    Err(error) => {
                        self.end_failed_session(session.take(), &error);
                        if let Err(refusal) = self.control_failed(error) {
                            return refusal.into_response();
                        }
                        body
                    }
                }
            }
            (Some(active), _) => {
                let sent = active
                    .send(ToControl::ResponseBody(response_message(
                        status,
                        &headers,
                        body.clone(),
                    )))
                    .await;
                if let Err(error) = sent {
                    self.end_failed_session(session.take(), &error);
                    if let Err(refusal) = self.control_failed(error) {
                        return refusal.into_response();
                    }
                }
                body
            }
            (None, _) => body,
        };
        if let Some(session) = session {
            let mut end = self.call_end(CallOutcome::Completed, "");
            end.upstream_status = u32::from(status.as_u16());
            session.end(end);
        }
        self.respond(status, headers, body)
    }

    /// Opens the control-plane stream and waits for the request decision.
    /// `Ok(None)` means fail-open: proceed without the control plane.
    async fn open_session(
        &self,
        start: CallStart,
    ) -> Result<Option<(CallSession, luthien_proto::dataplane::v1::RequestDecision)>, ApiError>
    {
        let opened = async {
            match self.state.control.open(start).await {
                Ok(mut session) => match session.request_decision().await {
                    Ok(decision) => Ok((session, decision)),
                    Err(error) => {
                        self.end_failed_session(Some(session), &error);
                        Err(error)
                    }
                },
                Err(error) => Err(error),
            }
        }
        .instrument(tracing::info_span!("luthien.control_plane.request"))
        .await;
        let opened = match opened {
            Ok(decided) => return Ok(Some(decided)),
            Err(error) => error,
        };
        self.control_failed(opened).map(|()| None)
    }

    /// Applies the fail mode to a control-plane failure that happened before
    /// any response byte was sent. `Ok` means carry on without it.
    fn control_failed(&self, error: ControlError) -> Result<(), ApiError> {
        match self.state.config.fail_mode {
            FailMode::Open => {
                tracing::warn!(call_id = %self.id, %error, "control plane failed; fail-open: call proceeds unmodified");
                Ok(())
            }
            FailMode::Closed => {
                tracing::warn!(call_id = %self.id, %error, "control plane failed; fail-closed: call refused");
                Err(ApiError::new(
                    self.api,
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("policy control plane unavailable: {error}"),
                ))
            }
        }
    }

    /// Tells a failing control plane, best effort, why the call stops using it.
    fn end_failed_session(&self, session: Option<CallSession>, error: &ControlError) {
        if let Some(session) = session {
            session.end(self.call_end(error.outcome(), error.to_string()));
        }
    }

    fn reject(&self, session: Option<CallSession>, status: StatusCode, message: &str) -> Response {
        if let Some(session) = session {
            session.end(self.call_end(CallOutcome::Rejected, message));
        }
        self.error(status, message)
    }

    fn respond(&self, status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        self.with_overhead(response)
    }

    fn with_overhead(&self, mut response: Response) -> Response {
        let millis = self.overhead().as_secs_f64() * 1000.0;
        if let Ok(value) = HeaderValue::from_str(&format!("{millis:.3}")) {
            response.headers_mut().insert(OVERHEAD_HEADER, value);
        }
        response
    }
}

/// Checks the client's key when `LUTHIEN_API_KEY` is set (`expected`).
/// Returns the header that carried it, which must not travel upstream.
pub(crate) fn authenticate(
    expected: Option<&str>,
    api: Api,
    headers: &HeaderMap,
) -> Result<Option<HeaderName>, ApiError> {
    let Some(expected) = expected else {
        return Ok(None);
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if bearer.is_some_and(|key| bool::from(key.as_bytes().ct_eq(expected.as_bytes()))) {
        return Ok(Some(header::AUTHORIZATION));
    }
    let api_key = headers.get("x-api-key").map(HeaderValue::as_bytes);
    if api_key.is_some_and(|key| bool::from(key.ct_eq(expected.as_bytes()))) {
        return Ok(Some(HeaderName::from_static("x-api-key")));
    }
    Err(ApiError::new(
        api,
        StatusCode::UNAUTHORIZED,
        "missing or invalid API key: send the Luthien key as `Authorization: Bearer <key>` or `x-api-key`",
    ))
}

/// Reads a request body of at most `limit` bytes (`--max-body-bytes`); a
/// larger one, declared or not, is a 413.
pub(crate) async fn read_body(
    api: Api,
    limit: usize,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            api,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::new(
            api,
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {error}"),
        )),
    }
}

fn response_message(status: StatusCode, headers: &HeaderMap, body: Bytes) -> ResponseBody {
    ResponseBody {
        status: u32::from(status.as_u16()),
        headers: metadata(headers),
        body,
    }
}

fn immediate_response(status: u32, headers: Vec<Header>, body: Bytes) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for Header { name, value } in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Request headers the control plane may see: end-to-end, no credentials.
fn forwardable_metadata(headers: &HeaderMap) -> Vec<Header> {
    let mut forwardable = HeaderMap::new();
    upstream::copy_forwardable(headers, &mut forwardable);
    metadata(&forwardable)
}

fn metadata(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .filter(|(name, _)| !luthien_api::is_credential(name.as_str()))
        .filter_map(|(name, value)| {
            Some(Header {
                name: name.as_str().to_owned(),
                value: value.to_str().ok()?.to_owned(),
            })
        })
        .collect()
}

/// The W3C trace context the client sent (empty fields when absent).
pub(crate) fn trace_context(headers: &HeaderMap) -> W3cContext {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    W3cContext {
        traceparent: text("traceparent"),
        tracestate: text("tracestate"),
    }
}

pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_never_carries_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer sk-x"));
        headers.insert("x-api-key", HeaderValue::from_static("sk-ant"));
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        headers.insert("connection", HeaderValue::from_static("close"));
        let names: Vec<String> = forwardable_metadata(&headers)
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, vec!["anthropic-version".to_owned()]);
    }

    #[test]
    fn probe_reads_model_and_stream_and_rejects_bad_json() {
        let probe: RequestProbe =
            serde_json::from_slice(br#"{"model":"gpt","stream":true,"messages":[{"x":[1,2]}]}"#)
                .unwrap();
        assert_eq!(probe.model.as_deref(), Some("gpt"));
        assert_eq!(probe.stream, Some(true));
        assert!(serde_json::from_slice::<RequestProbe>(br#"{"model":"gpt",}"#).is_err());
        assert!(serde_json::from_slice::<RequestProbe>(br#"{"model":"gpt"} trailing"#).is_err());
        assert!(serde_json::from_slice::<RequestProbe>(br#"[1,2]"#).is_err());
    }
}
