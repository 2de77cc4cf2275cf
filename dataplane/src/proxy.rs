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
use hyper::body::Incoming;
use luthien_proto::common::v1::Header;
use luthien_proto::dataplane::v1::data_plane_message::Message as ToControl;
use luthien_proto::dataplane::v1::request_decision::Action;
use luthien_proto::dataplane::v1::{
    CallOutcome, CallStart, RequestDecision, ResponseBody, ResponseMode, TraceContext,
};
use luthien_telemetry::metrics::Label;
use luthien_telemetry::propagation::{self, W3cContext};
use subtle::ConstantTimeEq;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;
use tracing::field::Empty;
use uuid::Uuid;

use crate::AppState;
use crate::api::{Api, ApiError};
use crate::control::{CallSession, ControlError, Ending, Times};
use crate::edge::CallSlot;
use crate::fail_mode::{FailMode, Ruling, Stage};
use crate::metrics::{CallLabels, Metrics};
use crate::spool::Unpoliced;
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

pub async fn responses(State(state): State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Api::OpenAiResponses, request).await
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
    let slot = state.calls.take(api);
    let mut call = Call {
        id,
        api,
        received,
        upstream_wait: Duration::ZERO,
        state,
        client_trace,
        trace,
        model,
        session: None,
        unpoliced: None,
        slot: None,
        streamed: false,
    };
    let mut response = match slot {
        Ok(slot) => {
            call.slot = Some(slot);
            call.run(request).instrument(span.clone()).await
        }
        Err(refused) => refused.into_response(),
    };
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
    set_call_id(&mut response, id);
    response
}

/// Tells the client which call answered (`x-luthien-call-id`).
pub(crate) fn set_call_id(response: &mut Response, id: Uuid) {
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(CALL_ID_HEADER, value);
    }
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
    /// The call's control-plane stream, from the decision phase until the call ends (or the
    /// stream pump takes it); `None` when running without one (fail-open, or it failed).
    session: Option<CallSession>,
    /// A call no control plane took, let through by the fail mode: kept for the spool until
    /// it ends (or the stream pump takes it).
    unpoliced: Option<Unpoliced>,
    /// The call's place among `--max-concurrent-calls`; the stream pump takes it over.
    slot: Option<CallSlot>,
    /// Handed to the stream pump, which reports the overhead itself.
    streamed: bool,
}

/// A phase that ends the call before the normal end: what the client gets, and how the call
/// ended for the control plane.
struct Early {
    response: Response,
    ending: Ending,
}

impl Early {
    fn new(response: Response, outcome: CallOutcome, detail: impl Into<String>) -> Box<Self> {
        Self::ending(response, Ending::new(outcome, detail))
    }

    fn ending(response: Response, ending: Ending) -> Box<Self> {
        Box::new(Self { response, ending })
    }
}

/// Each phase returns what the next needs, or the call's early end (boxed: the happy path
/// should not move a response around).
type Phase<T> = Result<T, Box<Early>>;

/// The request as the request phase accepted it.
struct Accepted {
    parts: http::request::Parts,
    body: Bytes,
    /// The body's `model` ("" when absent).
    model: String,
    stream: bool,
    /// The header that carried the Luthien key; never forwarded upstream.
    stripped_credential: Option<HeaderName>,
}

/// What the decision phase settled: the body upstream gets and how the response is treated.
struct Decided {
    body: Bytes,
    mode: StreamMode,
}

/// An upstream request that has answered (its head) or failed, and how long it took.
struct Sent {
    result: Result<Result<http::Response<Incoming>, SendError>, tokio::time::error::Elapsed>,
    elapsed: Duration,
    span: tracing::Span,
}

impl Call {
    fn error(&self, status: StatusCode, message: impl Into<String>) -> Response {
        ApiError::new(self.api, status, message).into_response()
    }

    fn overhead(&self) -> Duration {
        self.received.elapsed().saturating_sub(self.upstream_wait)
    }

    /// The call, phase by phase: request, decision, upstream, then the stream or the whole
    /// response. A phase that ends the call early says how; the session is ended here.
    async fn run(&mut self, request: Request) -> Response {
        match self.phases(request).await {
            Ok(response) => response,
            Err(early) => {
                self.end(early.ending);
                early.response
            }
        }
    }

    async fn phases(&mut self, request: Request) -> Phase<Response> {
        let accepted = self.request_phase(request).await?;
        let early = self.state.config.send_before_decision;
        let (decided, upstream) = if early && self.state.control.send_before_decision() {
            // The chain does not inspect requests: the decision can only be "continue,
            // unchanged", so it is awaited beside the upstream request, not before it.
            let sending = self.send_upstream(&accepted, accepted.body.clone());
            let (decided, sent) = tokio::join!(self.decision_phase(&accepted, true), sending);
            let decided = decided?;
            if decided.body.as_ptr() != accepted.body.as_ptr() {
                tracing::warn!(call_id = %self.id, "the control plane rewrote a request that had already gone upstream; the rewrite was not applied");
            }
            (decided, self.upstream_answered(sent)?)
        } else {
            let decided = self.decision_phase(&accepted, false).await?;
            let sent = self.send_upstream(&accepted, decided.body.clone()).await;
            (decided, self.upstream_answered(sent)?)
        };
        if accepted.stream && upstream.status().is_success() {
            return Ok(self.stream_phase(upstream, decided.mode));
        }
        self.response_phase(upstream, decided.mode).await
    }

    /// Ends the control-plane session, if the call still has one — or spools the call no
    /// control plane took; the one place it happens outside the stream pump.
    fn end(&mut self, ending: Ending) {
        let elapsed = self.received.elapsed();
        let times = Times {
            duration: elapsed,
            first_byte: elapsed,
            overhead: self.overhead(),
        };
        if let Some(session) = self.session.take() {
            session.end(ending, times);
        } else if let Some(unpoliced) = self.unpoliced.take() {
            self.state
                .spool
                .push(unpoliced.finish(ending.call_end(times)));
        }
    }

    /// Request phase: the client's key, the body within its limit, and the few fields of it
    /// the data plane reads (checking the whole document is JSON).
    async fn request_phase(&mut self, request: Request) -> Phase<Accepted> {
        let config = &self.state.config;
        let (parts, body) = request.into_parts();
        let rejected = |error: ApiError| {
            let detail = error.message.clone();
            Early::new(error.into_response(), CallOutcome::Rejected, detail)
        };
        let stripped_credential =
            authenticate(config.client_api_key.as_deref(), self.api, &parts.headers)
                .map_err(rejected)?;
        let limits = BodyLimits {
            max_bytes: config.max_body_bytes,
            read_timeout: config.edge.body_read_timeout,
        };
        let body = read_body(self.api, limits, &parts.headers, body)
            .await
            .map_err(rejected)?;
        let probe = crate::probe::probe(&body).map_err(|problem| {
            rejected(ApiError::new(self.api, StatusCode::BAD_REQUEST, problem))
        })?;
        let stream = probe.stream();
        let span = tracing::Span::current();
        if let Some(model) = probe.model() {
            self.model = self.state.metrics.models.get(model);
            propagation::rename(&span, format!("chat {model}"));
            span.record("gen_ai.request.model", model);
        }
        span.record("gen_ai.request.stream", stream);
        if let Some(max_tokens) = probe.max_tokens() {
            span.record("gen_ai.request.max_tokens", max_tokens);
        }
        Ok(Accepted {
            parts,
            body,
            model: probe.model().unwrap_or_default().to_owned(),
            stream,
            stripped_credential,
        })
    }

    /// Decision phase: the control plane may rewrite the request, answer it itself, and picks
    /// the response mode. Without a control plane the fail mode decides.
    async fn decision_phase(&mut self, accepted: &Accepted, sent_before: bool) -> Phase<Decided> {
        let start = CallStart {
            call_id: self.id.to_string(),
            api: self.api.kind().into(),
            path: accepted.parts.uri.path().to_owned(),
            model: accepted.model.clone(),
            stream: accepted.stream,
            headers: forwardable_metadata(&accepted.parts.headers),
            trace: Some(TraceContext {
                traceparent: self.trace.traceparent.clone(),
                tracestate: self.trace.tracestate.clone(),
            }),
            body: accepted.body.clone(),
            received_at_unix_micros: luthien_api::time::unix_micros(),
            sent_before_decision: sent_before,
        };
        let unpoliced = Decided {
            body: accepted.body.clone(),
            mode: StreamMode::PassThrough,
        };
        // Fail-open may let the call through unpoliced: then it is spooled, start included
        // (a cheap copy: the body is shared).
        let spooled_start = (self.state.config.fail_mode == FailMode::Open).then(|| start.clone());
        let decision = match self.open_session(start).await {
            Ok(decision) => decision,
            Err(error) => {
                self.control_failed(Stage::BeforeResponse, error)?;
                self.unpoliced = spooled_start.map(Unpoliced::new);
                return Ok(unpoliced);
            }
        };
        let mode = match decision.response_mode() {
            ResponseMode::Observe => StreamMode::Observe,
            ResponseMode::Transform | ResponseMode::Unspecified => StreamMode::Transform,
        };
        match decision.action {
            Some(Action::ImmediateResponse(immediate)) => {
                let response = self.with_overhead(immediate_response(
                    immediate.status,
                    immediate.headers,
                    immediate.body,
                ));
                Err(Early::new(response, CallOutcome::Blocked, immediate.reason))
            }
            Some(Action::ContinueRequest(continued)) => Ok(Decided {
                body: continued.body.unwrap_or_else(|| accepted.body.clone()),
                mode,
            }),
            None => {
                let error = ControlError::Protocol("RequestDecision without an action".into());
                self.control_failed(Stage::BeforeResponse, error)?;
                self.unpoliced = spooled_start.map(Unpoliced::new);
                Ok(unpoliced)
            }
        }
    }

    /// Upstream phase, first half: sends the (possibly rewritten) body and waits for the
    /// response head. It borrows nothing of the call, so it can run beside the decision.
    fn send_upstream<'a>(
        &self,
        accepted: &'a Accepted,
        body: Bytes,
    ) -> impl Future<Output = Sent> + 'a {
        let state = Arc::clone(&self.state);
        let api = self.api;
        let span = tracing::info_span!(
            "luthien.upstream",
            otel.kind = "client",
            gen_ai.provider.name = api.provider(),
            http.response.status_code = Empty,
        );
        let trace = state
            .config
            .propagate_trace_upstream
            .then(|| propagation::outgoing(&span, &self.client_trace));
        async move {
            let started = Instant::now();
            let result = tokio::time::timeout(
                state.config.upstream_timeout,
                state.upstream.send(
                    api,
                    accepted.parts.uri.query(),
                    &accepted.parts.headers,
                    accepted.stripped_credential.as_ref(),
                    body,
                    trace.as_ref(),
                ),
            )
            .instrument(span.clone())
            .await;
            Sent {
                result,
                elapsed: started.elapsed(),
                span,
            }
        }
    }

    /// Upstream phase, second half: the response head, or the call's early end.
    fn upstream_answered(&mut self, sent: Sent) -> Phase<http::Response<Incoming>> {
        let Sent {
            result,
            elapsed,
            span: upstream_span,
        } = sent;
        self.upstream_wait += elapsed;
        match result {
            Ok(Ok(response)) => {
                upstream_span.record("http.response.status_code", response.status().as_u16());
                let metric = &self.state.metrics.upstream;
                Metrics::observe(metric, self.api.metric_label(), elapsed);
                Ok(response)
            }
            Ok(Err(SendError::InvalidUri)) => {
                let message = "the query string is not valid";
                let response = self.error(StatusCode::BAD_REQUEST, message);
                Err(Early::new(response, CallOutcome::Rejected, message))
            }
            Ok(Err(SendError::Failed(error))) => {
                tracing::warn!(call_id = %self.id, %error, "upstream unreachable");
                let response = self.error(StatusCode::BAD_GATEWAY, "upstream provider unreachable");
                let outcome = CallOutcome::UpstreamUnreachable;
                Err(Early::new(response, outcome, error.to_string()))
            }
            Err(_) => {
                let response = self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream provider did not answer in time",
                );
                let outcome = CallOutcome::UpstreamTimeout;
                Err(Early::new(response, outcome, "no response headers"))
            }
        }
    }

    /// Stream phase: answers with the response head at once and hands the body, and the
    /// session, to a [`StreamPump`] task.
    fn stream_phase(&mut self, upstream: http::Response<Incoming>, mode: StreamMode) -> Response {
        let config = &self.state.config;
        let (upstream_parts, upstream_body) = upstream.into_parts();
        let (client, client_body) = tokio::sync::mpsc::channel(CLIENT_QUEUE);
        let mut response = Response::new(Body::from_stream(ReceiverStream::new(client_body)));
        *response.status_mut() = upstream_parts.status;
        upstream::copy_forwardable(&upstream_parts.headers, response.headers_mut());
        let response = self.with_overhead(response);
        let pump = StreamPump {
            slot: self.slot.take(),
            api: self.api,
            status: upstream_parts.status.as_u16(),
            session: self.session.take(),
            unpoliced: self.unpoliced.take(),
            spool: Arc::clone(&self.state.spool),
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
        response
    }

    /// Response phase: reads the whole upstream response (an error is never streamed), lets
    /// the control plane see or transform a 2xx, and ends the call.
    async fn response_phase(
        &mut self,
        upstream: http::Response<Incoming>,
        mode: StreamMode,
    ) -> Phase<Response> {
        let config = &self.state.config;
        let (upstream_parts, upstream_body) = upstream.into_parts();
        let status = upstream_parts.status;
        let mut headers = HeaderMap::with_capacity(upstream_parts.headers.len());
        upstream::copy_forwardable(&upstream_parts.headers, &mut headers);

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
                let message = if error.is::<http_body_util::LengthLimitError>() {
                    "upstream response exceeds --max-response-bytes"
                } else {
                    "upstream connection failed mid-response"
                };
                let response = self.error(StatusCode::BAD_GATEWAY, message);
                return Err(Early::new(
                    response,
                    CallOutcome::UpstreamUnreachable,
                    message,
                ));
            }
            Err(_) => {
                let response = self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream provider did not answer in time",
                );
                let outcome = CallOutcome::UpstreamTimeout;
                return Err(Early::new(response, outcome, "response body too slow"));
            }
        };

        if !status.is_success() {
            let mut ending = Ending::new(
                CallOutcome::UpstreamError,
                format!("upstream answered {status}"),
            );
            ending.upstream_status = status.as_u16();
            ending.upstream_error_body = body.slice(..body.len().min(MAX_RECORDED_ERROR_BODY));
            let response = self.respond(status, headers, body);
            return Err(Early::ending(response, ending));
        }

        let body = self.policed_response(status, &headers, body, mode).await?;
        if let Some(unpoliced) = self.unpoliced.as_mut() {
            unpoliced.capture(&body);
        }
        self.end(Ending::completed(status.as_u16()));
        Ok(self.respond(status, headers, body))
    }

    /// Shows a complete 2xx response to the control plane: in transform mode its answer is
    /// what the client gets; in observe mode it gets a copy.
    async fn policed_response(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        mode: StreamMode,
    ) -> Phase<Bytes> {
        let Some(session) = self.session.as_mut() else {
            return Ok(body);
        };
        let message = ToControl::ResponseBody(response_message(status, headers, body.clone()));
        let decided = if mode == StreamMode::Transform {
            async {
                session.send(message).await?;
                session.response_decision().await.map(Some)
            }
            .instrument(tracing::info_span!("luthien.control_plane.response"))
            .await
        } else {
            session.send(message).await.map(|()| None)
        };
        match decided {
            Ok(Some(decision)) => Ok(decision.body.unwrap_or(body)),
            Ok(None) => Ok(body),
            Err(error) => {
                self.control_failed(Stage::BeforeResponse, error)?;
                Ok(body)
            }
        }
    }

    /// Opens the control-plane stream and waits for the request decision; the session is
    /// kept on the call.
    async fn open_session(&mut self, start: CallStart) -> Result<RequestDecision, ControlError> {
        async {
            let mut session = self.state.control.open(start).await?;
            let decision = session.request_decision().await;
            // Kept even when the decision failed, so the failure is ended on it.
            self.session = Some(session);
            decision
        }
        .instrument(tracing::info_span!("luthien.control_plane.request"))
        .await
    }

    /// A control-plane failure before any response byte: the session, if any, is told how
    /// the call stops using it, and the fail mode rules.
    fn control_failed(&mut self, stage: Stage, error: ControlError) -> Phase<()> {
        let ending = error.ending();
        match self.state.config.fail_mode.rule(self.api, stage, &error) {
            Ruling::Proceed => {
                self.end(ending);
                Ok(())
            }
            Ruling::Refuse(refusal) => Err(Early::ending(refusal.into_response(), ending)),
        }
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
    let matches = |key: &[u8]| bool::from(key.ct_eq(expected.as_bytes()));
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(luthien_api::headers::bearer_token);
    if bearer.is_some_and(|key| matches(key.as_bytes())) {
        return Ok(Some(header::AUTHORIZATION));
    }
    let api_key = headers.get("x-api-key").map(HeaderValue::as_bytes);
    if api_key.is_some_and(matches) {
        return Ok(Some(HeaderName::from_static("x-api-key")));
    }
    Err(ApiError::new(
        api,
        StatusCode::UNAUTHORIZED,
        "missing or invalid API key: send the Luthien key as `Authorization: Bearer <key>` or `x-api-key`",
    ))
}

/// How much of a request body the data plane reads, and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimits {
    /// `--max-body-bytes`.
    pub max_bytes: usize,
    /// `--body-read-timeout`.
    pub read_timeout: Duration,
}

/// After refusing an oversized body, how long and how much of it is still read and thrown
/// away before the connection closes, so that a client writing its whole body before reading
/// (Python's `http.client`) reads the 413 instead of a broken pipe (RFC 9112 §9.6, nginx's
/// lingering close).
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Reads a request body of at most `limits.max_bytes` within `limits.read_timeout`; a larger
/// one, declared or not, is a 413 (after a bounded lingering read), a slower one a 408.
pub(crate) async fn read_body(
    api: Api,
    limits: BodyLimits,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = limits.max_bytes;
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
        linger(body).await;
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut collected = bytes::BytesMut::new();
    let read = tokio::time::timeout(limits.read_timeout, async {
        while let Some(frame) = futures_util::StreamExt::next(&mut stream).await {
            let frame = frame.map_err(|error| {
                ApiError::new(
                    api,
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {error}"),
                )
            })?;
            if collected.len() + frame.len() > limit {
                return Err(too_large());
            }
            collected.extend_from_slice(&frame);
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => Ok(collected.freeze()),
        Ok(Err(error)) => {
            if error.status == StatusCode::PAYLOAD_TOO_LARGE {
                linger(Body::from_stream(stream)).await;
            }
            Err(error)
        }
        Err(_) => Err(ApiError::new(
            api,
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {}",
                humantime::format_duration(limits.read_timeout)
            ),
        )),
    }
}

/// Reads and discards what is left of a refused body, within [`LINGER_TIME`] and
/// [`LINGER_BYTES`].
async fn linger(body: Body) {
    let mut stream = body.into_data_stream();
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut discarded = 0;
        while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut stream).await {
            discarded += frame.len();
            if discarded > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
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
}
