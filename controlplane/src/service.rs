//! The `ControlPlane` gRPC service: one task per call runs the call's
//! messages through the policy chain and answers the data plane.
//!
//! The driver follows the protocol's state machine (see
//! `proto/luthien/dataplane/v1/control_plane.proto`): a `CallStart` first, then
//! response messages, then `CallEnd`. It answers only what transform mode
//! asks for, sends keepalives while a policy is slow, and always logs how
//! the call ended — also when the data plane vanished without saying.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use luthien_proto::common::v1::Header;
use luthien_proto::dataplane::v1::control_plane_message::Message as ToData;
use luthien_proto::dataplane::v1::control_plane_service_server::ControlPlaneService as ControlPlane;
use luthien_proto::dataplane::v1::data_plane_message::Message as FromData;
use luthien_proto::dataplane::v1::request_decision::Action;
use luthien_proto::dataplane::v1::{
    CallEnd, CallOutcome, CallStart, ChunkReply, ContinueRequest, ControlPlaneMessage,
    DataPlaneMessage, Keepalive, RecordUnpolicedCallsRequest, RecordUnpolicedCallsResponse,
    RequestDecision, ResponseDecision, ResponseMode,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use tracing::field::Empty;

use crate::policy_source::PolicySource;
use crate::recorder::{CallRecorder, Recording};
use luthien_policy::shapes::{self, Api};
use luthien_policy::sse::SseDecoder;
use luthien_policy::{CallChain, CallInfo, Chain, ImmediateResponse, RequestVerdict, SseEvent};
use luthien_telemetry::propagation::{self, W3cContext};

/// Replies a call may queue towards its data plane. The data plane waits for
/// each reply before sending more, so a handful is plenty.
const REPLY_QUEUE: usize = 8;

/// Per-call settings of the service.
#[derive(Clone, Copy, Debug)]
pub struct CallSettings {
    /// How often a keepalive goes out while a policy works on a decision.
    pub keepalive_interval: Duration,
    /// How long a new stream may stay silent before its `CallStart`.
    pub start_timeout: Duration,
    /// Cap on one unfinished SSE event ([`SseDecoder`]).
    pub max_sse_event_bytes: usize,
}

/// The service; cheap to clone, shares the chain and the task tracker.
#[derive(Clone)]
pub struct ControlPlaneService {
    policies: PolicySource,
    settings: CallSettings,
    recording: Arc<Recording>,
    calls: TaskTracker,
    in_flight: InFlight,
}

/// The ids of the calls this control plane is running: a second `CallStart` with one of them
/// is refused, so no stream can write into another call's record. (The store refuses to
/// rewrite a call that has ended, whichever control plane ran it.)
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<HashSet<String>>>);

/// A call id held in [`InFlight`] until dropped.
struct InFlightId {
    ids: InFlight,
    id: String,
}

impl InFlight {
    fn is_running(&self, id: &str) -> bool {
        self.0.lock().is_ok_and(|ids| ids.contains(id))
    }

    fn claim(&self, id: &str) -> Option<InFlightId> {
        let mut ids = self.0.lock().ok()?;
        ids.insert(id.to_owned()).then(|| InFlightId {
            ids: self.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for InFlightId {
    fn drop(&mut self) {
        if let Ok(mut ids) = self.ids.0.lock() {
            ids.remove(&self.id);
        }
    }
}

impl ControlPlaneService {
    pub fn new(policies: PolicySource, settings: CallSettings, recording: Recording) -> Self {
        Self {
            policies,
            settings,
            recording: Arc::new(recording),
            calls: TaskTracker::new(),
            in_flight: InFlight::default(),
        }
    }

    /// Calls in progress; shutdown waits for them.
    pub fn calls(&self) -> &TaskTracker {
        &self.calls
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    type ProcessCallStream = ReceiverStream<Result<ControlPlaneMessage, Status>>;

    async fn process_call(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<Self::ProcessCallStream>, Status> {
        let (replies, reply_stream) = mpsc::channel(REPLY_QUEUE);
        let driver = CallDriver {
            // The call keeps this chain to its end, whatever reloads happen.
            chain: self.policies.chain(),
            recording: Arc::clone(&self.recording),
            settings: self.settings,
            inbound: request.into_inner(),
            replies,
            in_flight: self.in_flight.clone(),
        };
        self.calls.spawn(driver.run());
        Ok(Response::new(ReceiverStream::new(reply_stream)))
    }

    async fn record_unpoliced_calls(
        &self,
        request: Request<RecordUnpolicedCallsRequest>,
    ) -> Result<Response<RecordUnpolicedCallsResponse>, Status> {
        let calls = request.into_inner().calls;
        let mut recorded = 0;
        for call in calls {
            // A call this control plane is running is not a call no control plane took.
            let running = call
                .start
                .as_ref()
                .is_some_and(|start| self.in_flight.is_running(&start.call_id));
            if !running
                && crate::unpoliced::record(
                    &self.recording,
                    call,
                    self.settings.max_sse_event_bytes,
                )
            {
                recorded += 1;
            }
        }
        if recorded > 0 {
            tracing::warn!(
                recorded,
                "recorded calls a data plane let through without policies while no control plane could take them"
            );
        }
        Ok(Response::new(RecordUnpolicedCallsResponse { recorded }))
    }
}

struct CallDriver {
    chain: Arc<Chain>,
    recording: Arc<Recording>,
    settings: CallSettings,
    inbound: Streaming<DataPlaneMessage>,
    replies: mpsc::Sender<Result<ControlPlaneMessage, Status>>,
    in_flight: InFlight,
}

/// A call's state once its request was decided.
struct ActiveCall {
    info: CallInfo,
    chain: CallChain,
    recorder: CallRecorder,
    mode: ResponseMode,
    decoder: SseDecoder,
    /// Events the chain emitted for the current upstream event; reused.
    emitted: Vec<SseEvent>,
    /// Set when a policy failed on a stream event: the rest of the stream
    /// passes through unmodified (the response-phase failure rule).
    chain_failed: bool,
}

impl CallDriver {
    async fn run(mut self) {
        let start =
            match tokio::time::timeout(self.settings.start_timeout, self.inbound.message()).await {
                Ok(Ok(Some(DataPlaneMessage {
                    message: Some(FromData::CallStart(start)),
                }))) => start,
                Ok(Ok(Some(_))) => {
                    self.fail(Status::invalid_argument(
                        "the first message of a call must be CallStart",
                    ))
                    .await;
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) => return,
                Err(_) => {
                    self.fail(Status::deadline_exceeded("no CallStart received"))
                        .await;
                    return;
                }
            };
        let Some(_claimed) = self.in_flight.claim(&start.call_id) else {
            self.fail(Status::already_exists(format!(
                "call {} is already in progress",
                start.call_id
            )))
            .await;
            return;
        };
        let span = call_span(&start);
        self.drive(start).instrument(span).await;
    }

    /// The call after its `CallStart`, inside the call's span.
    async fn drive(mut self, mut start: CallStart) {
        let Some(api) = Api::from_kind(start.api) else {
            self.fail(Status::invalid_argument(
                "CallStart.api is required and must be an API this control plane knows",
            ))
            .await;
            return;
        };
        let info = call_info(&mut start, api);
        // The trace the call's spans belong to: this plane's own span when
        // exported (a child of the data plane's), else the data plane's.
        let trace_id = propagation::outgoing(&tracing::Span::current(), &info.trace)
            .trace_id()
            .map(str::to_owned);
        let mut call = ActiveCall {
            chain: self.chain.start_call(&info),
            recorder: CallRecorder::new(
                Arc::clone(&self.recording),
                info.clone(),
                start.received_at_unix_micros,
                trace_id,
            ),
            info,
            mode: ResponseMode::Observe,
            decoder: SseDecoder::new(self.settings.max_sse_event_bytes),
            emitted: Vec::new(),
            chain_failed: false,
        };
        let mut decision = if start.sent_before_decision && self.chain.inspects_requests() {
            self.request_gone_upstream(&mut call)
        } else {
            self.decide_request(&mut call, &start).await
        };
        decision.requests_not_inspected = !self.chain.inspects_requests();
        let (rewritten, immediate) = match &decision.action {
            Some(Action::ContinueRequest(continued)) => (continued.body.clone(), None),
            Some(Action::ImmediateResponse(response)) => (None, Some(response.body.clone())),
            None => (None, None),
        };
        let answered = self.reply(ToData::RequestDecision(decision)).await;
        // Recording happens once the answer is on its way.
        call.recorder
            .request(&start.body, rewritten.as_deref(), &call.info.headers);
        if let Some(body) = immediate {
            call.recorder.immediate_response(&body);
        }
        record_policy_events(&mut call);
        let ended = if answered {
            self.serve_response(&mut call).await
        } else {
            None
        };
        record_policy_events(&mut call);
        let span = tracing::Span::current();
        let outcome = match &ended {
            Some(end) => end
                .outcome()
                .as_str_name()
                .trim_start_matches("CALL_OUTCOME_"),
            None => "ABANDONED",
        };
        span.record("luthien.outcome", outcome);
        if let Some(end) = &ended
            && end.upstream_status > 0
        {
            span.record("http.response.status_code", end.upstream_status);
        }
        let api = call.info.api.metric_label();
        // Finished first: a call counted here has its tokens counted too.
        match ended {
            Some(end) => call.recorder.finish(&end),
            None => call.recorder.abandon(),
        }
        crate::metrics::global()
            .calls
            .get_or_create(&crate::metrics::CallLabels { api, outcome })
            .inc();
    }

    /// The response mode of this call's chain.
    fn response_mode(&self) -> ResponseMode {
        if !self.chain.read_only() && self.chain.transforms_responses() {
            ResponseMode::Transform
        } else {
            ResponseMode::Observe
        }
    }

    /// The request went upstream before its decision (`CallStart.sent_before_decision`), but
    /// this call's chain inspects requests: the data plane had not yet heard of the reload that
    /// made it so. Too late to police the request; it is recorded and counted as such, and
    /// the response is policed as usual.
    fn request_gone_upstream(&self, call: &mut ActiveCall) -> RequestDecision {
        call.mode = self.response_mode();
        crate::metrics::global().request_decisions_skipped.inc();
        tracing::warn!(call_id = %call.info.call_id, "request sent upstream before the chain, which now inspects requests, could see it");
        call.recorder.policy_event(
            "luthien",
            "request_not_policed",
            "the data plane sent the request upstream before its decision (the chain began inspecting requests in a reload it had not heard of yet); the request policies did not run",
            serde_json::json!({"reason": "sent_before_decision"}),
        );
        continue_unchanged(call.mode)
    }

    /// Request phase. A read-only chain answers at once, unchanged, in
    /// observe mode: no parsing, no copy.
    async fn decide_request(&self, call: &mut ActiveCall, start: &CallStart) -> RequestDecision {
        call.mode = self.response_mode();
        if self.chain.read_only() {
            return continue_unchanged(call.mode);
        }
        // Response-only chains (tool_call_filter, all_caps, …): the request
        // goes on unparsed, so a large agent request costs nothing here.
        if !self.chain.inspects_requests() {
            return continue_unchanged(call.mode);
        }
        let mut body: Value = match serde_json::from_slice(&start.body) {
            Ok(body) => body,
            Err(error) => {
                let message = format!("request body is not valid JSON: {error}");
                return immediate(shapes::error_response(call.info.api, 400, &message));
            }
        };
        let original = body.clone();
        let verdict = with_keepalive(
            call.chain.on_request(&mut body),
            &self.replies,
            self.settings.keepalive_interval,
        )
        .await;
        match verdict {
            Ok(RequestVerdict::Continue) if body == original => continue_unchanged(call.mode),
            Ok(RequestVerdict::Continue) => match serde_json::to_vec(&body) {
                Ok(rewritten) => RequestDecision {
                    action: Some(Action::ContinueRequest(ContinueRequest {
                        body: Some(Bytes::from(rewritten)),
                    })),
                    response_mode: call.mode.into(),
                    requests_not_inspected: false,
                },
                Err(error) => {
                    let message = format!("rewritten request could not be encoded: {error}");
                    immediate(shapes::error_response(call.info.api, 500, &message))
                }
            },
            Ok(RequestVerdict::Respond(response)) => {
                tracing::info!(call_id = %call.info.call_id, reason = %response.reason, "call answered by policy");
                immediate(response)
            }
            Err(error) => {
                tracing::warn!(call_id = %call.info.call_id, %error, "request policy failed; call rejected");
                let message = format!("request rejected: {error}");
                immediate(shapes::error_response(call.info.api, 500, &message))
            }
        }
    }

    /// Response phase: answers the data plane's response messages until
    /// `CallEnd` (returned) or until the data plane goes away (`None`).
    async fn serve_response(&mut self, call: &mut ActiveCall) -> Option<CallEnd> {
        loop {
            // Re-read each time: a stream can go from transform to observe
            // (`pass_through_rest`).
            let transform = call.mode == ResponseMode::Transform;
            let message = match self.inbound.message().await {
                Ok(Some(DataPlaneMessage {
                    message: Some(message),
                })) => message,
                Ok(Some(DataPlaneMessage { message: None })) => continue,
                Ok(None) => {
                    tracing::warn!(call_id = %call.info.call_id, "data plane closed the call without CallEnd");
                    return None;
                }
                Err(status) => {
                    tracing::warn!(call_id = %call.info.call_id, %status, "data plane went away mid-call");
                    return None;
                }
            };
            let answered = match message {
                FromData::ResponseBody(response) if transform => {
                    let body = self.transform_response(call, &response.body).await;
                    let decision = ResponseDecision { body: body.clone() };
                    let answered = self.reply(ToData::ResponseDecision(decision)).await;
                    call.recorder.response(&response.body, body.as_deref());
                    answered
                }
                FromData::StreamChunk(chunk) if transform => {
                    let mut reply = self.transform_chunk(call, chunk.data).await;
                    reply.seq = chunk.seq;
                    self.reply(ToData::ChunkReply(reply)).await
                }
                FromData::StreamEnd(end) if transform => {
                    let chunks = self.finish_stream(call).await;
                    let reply = ChunkReply {
                        seq: end.chunks,
                        chunks,
                        end_stream: true,
                        ..ChunkReply::default()
                    };
                    self.reply(ToData::ChunkReply(reply)).await
                }
                // Observe mode: the client already has these bytes; they
                // only feed the call's record.
                FromData::ResponseBody(response) => {
                    call.recorder.response(&response.body, None);
                    true
                }
                FromData::StreamChunk(chunk) => {
                    observe_chunk(call, chunk.data);
                    true
                }
                FromData::StreamEnd(_) => {
                    let mut last: Vec<SseEvent> = call.decoder.finish().into_iter().collect();
                    observe_events(call, &mut last);
                    true
                }
                FromData::CallEnd(end) => {
                    log_call_end(&call.info, &end);
                    return Some(end);
                }
                FromData::CallStart(_) => {
                    self.fail(Status::invalid_argument("CallStart sent twice on one call"))
                        .await;
                    return None;
                }
            };
            if !answered {
                return None;
            }
        }
    }

    /// Runs a complete response through the chain; `None` means unchanged.
    /// A failing policy lets the original through (and is logged).
    async fn transform_response(&self, call: &mut ActiveCall, body: &Bytes) -> Option<Bytes> {
        let Ok(mut response) = serde_json::from_slice::<Value>(body) else {
            tracing::warn!(call_id = %call.info.call_id, "upstream response is not JSON; passed through");
            return None;
        };
        let original = response.clone();
        let outcome = with_keepalive(
            call.chain.on_response(&mut response),
            &self.replies,
            self.settings.keepalive_interval,
        )
        .await;
        if let Err(error) = outcome {
            tracing::warn!(call_id = %call.info.call_id, %error, "response policy failed; original response passed through");
            return None;
        }
        if response == original {
            return None;
        }
        serde_json::to_vec(&response).ok().map(Bytes::from)
    }

    /// Reassembles SSE events from one upstream frame and runs each through
    /// the chain; answers with what the client gets now (`seq` left to the
    /// caller).
    ///
    /// - An event past the decoder's cap cannot be policed: the client gets
    ///   the events before it and an in-band error, and the stream ends.
    /// - Once the chain has failed, nothing more will change: the reply says
    ///   `pass_through_rest` (with the bytes of an event begun in this frame),
    ///   and the rest of the stream is observed, saving a round trip per chunk.
    async fn transform_chunk(&self, call: &mut ActiveCall, frame: Bytes) -> ChunkReply {
        let mut events = Vec::new();
        let decoded = call.decoder.push(frame, &mut events);
        let not_sse = split_not_sse(&mut events);
        let mut chunks = self.run_events(call, events).await;
        if let Some(reason) = not_sse {
            return self.end_not_sse(call, chunks, reason);
        }
        let Err(overflow) = decoded else {
            if !call.chain_failed {
                return ChunkReply {
                    chunks,
                    ..ChunkReply::default()
                };
            }
            // The client has every byte before the unfinished event; the
            // data plane forwards every byte after this frame.
            if call.decoder.buffered_len() > 0 {
                chunks.push(call.decoder.pending());
            }
            call.mode = ResponseMode::Observe;
            return ChunkReply {
                chunks,
                pass_through_rest: true,
                ..ChunkReply::default()
            };
        };
        let reason = overflow.to_string();
        tracing::warn!(call_id = %call.info.call_id, %reason, "stream ended with an error: an upstream event is too large to police");
        chunks.push(luthien_api::stream_error_event(
            call.info.api,
            502,
            &format!("the upstream response could not be checked by policy: {reason}"),
        ));
        call.recorder.stream_truncated(reason);
        ChunkReply {
            chunks,
            end_stream: true,
            ..ChunkReply::default()
        }
    }

    /// Ends a transformed stream whose upstream is not sending server-sent events: what was
    /// policed goes out, then an in-band error; the call is recorded as an upstream error.
    fn end_not_sse(
        &self,
        call: &mut ActiveCall,
        mut chunks: Vec<Bytes>,
        reason: String,
    ) -> ChunkReply {
        tracing::warn!(call_id = %call.info.call_id, %reason, "stream ended with an error: the upstream stream is not server-sent events");
        chunks.push(luthien_api::stream_error_event(
            call.info.api,
            502,
            "the upstream provider's stream is not server-sent events",
        ));
        call.recorder.stream_not_sse(reason);
        ChunkReply {
            chunks,
            end_stream: true,
            ..ChunkReply::default()
        }
    }

    async fn finish_stream(&self, call: &mut ActiveCall) -> Vec<Bytes> {
        let mut events: Vec<SseEvent> = call.decoder.finish().into_iter().collect();
        let not_sse = split_not_sse(&mut events);
        let mut chunks = self.run_events(call, events).await;
        if let Some(reason) = not_sse {
            return self.end_not_sse(call, chunks, reason).chunks;
        }
        if call.chain_failed {
            return chunks;
        }
        let flushed = with_keepalive(
            call.chain.on_stream_end(),
            &self.replies,
            self.settings.keepalive_interval,
        )
        .await;
        match flushed {
            Ok(events) => {
                for event in &events {
                    call.recorder.client_event(event);
                }
                chunks.extend(events.iter().map(SseEvent::to_bytes));
            }
            Err(error) => {
                tracing::warn!(call_id = %call.info.call_id, %error, "policy failed at stream end; held text is lost");
            }
        }
        chunks
    }

    async fn run_events(&self, call: &mut ActiveCall, events: Vec<SseEvent>) -> Vec<Bytes> {
        let mut chunks = Vec::with_capacity(events.len());
        for event in events {
            call.recorder.upstream_event(&event);
            if call.chain_failed {
                call.recorder.client_event(&event);
                chunks.push(event.to_bytes());
                continue;
            }
            let original = event.to_bytes();
            let outcome = with_keepalive(
                call.chain.on_event_into(event, &mut call.emitted),
                &self.replies,
                self.settings.keepalive_interval,
            )
            .await;
            match outcome {
                Ok(()) => {
                    for event in call.emitted.drain(..) {
                        call.recorder.client_event(&event);
                        chunks.push(event.to_bytes());
                    }
                }
                Err(error) => {
                    tracing::warn!(call_id = %call.info.call_id, %error, "stream policy failed; rest of the stream passes unmodified");
                    call.chain_failed = true;
                    call.recorder
                        .client_event(&SseEvent::from_wire(original.clone()));
                    chunks.push(original);
                }
            }
        }
        chunks
    }

    /// Sends a message; false when the data plane is gone.
    async fn reply(&self, message: ToData) -> bool {
        let message = ControlPlaneMessage {
            message: Some(message),
        };
        self.replies.send(Ok(message)).await.is_ok()
    }

    async fn fail(&self, status: Status) {
        tracing::warn!(%status, "call stream rejected");
        let _ = self.replies.send(Err(status)).await;
    }
}

/// The control plane's span of one call: a child of the data plane's call
/// span (its context travels in `CallStart.trace`), so both planes share one
/// trace. The response-side GenAI attributes are filled by the recorder.
fn call_span(start: &CallStart) -> tracing::Span {
    let provider = Api::from_kind(start.api).map_or("openai", Api::provider);
    let span = tracing::info_span!(
        "luthien.control_plane.call",
        otel.kind = "server",
        luthien.call_id = %start.call_id,
        trace_id = Empty,
        luthien.outcome = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = %start.model,
        gen_ai.request.stream = start.stream,
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        http.response.status_code = Empty,
    );
    let incoming = incoming_trace(start);
    propagation::set_parent(&span, &incoming);
    if let Some(trace_id) = incoming.trace_id() {
        span.record("trace_id", trace_id);
    }
    span
}

/// The data plane's call-span context sent in `CallStart` (empty if none).
/// What policies and the record know of a call, from its `CallStart` (whose headers move
/// into it: the record reads them from there).
pub(crate) fn call_info(start: &mut CallStart, api: Api) -> CallInfo {
    CallInfo {
        call_id: start.call_id.clone(),
        api,
        model: start.model.clone(),
        stream: start.stream,
        headers: Arc::from(std::mem::take(&mut start.headers)),
        trace: incoming_trace(start),
    }
}

fn incoming_trace(start: &CallStart) -> W3cContext {
    start
        .trace
        .as_ref()
        .map(|trace| W3cContext {
            traceparent: trace.traceparent.clone(),
            tracestate: trace.tracestate.clone(),
        })
        .unwrap_or_default()
}

/// Observe mode: the client already has these bytes; they are decoded only
/// when the call's record needs them.
fn observe_chunk(call: &mut ActiveCall, frame: Bytes) {
    if !call.recorder.wants_stream_events() {
        return;
    }
    let mut events = std::mem::take(&mut call.emitted);
    let decoded = call.decoder.push(frame, &mut events);
    observe_events(call, &mut events);
    call.emitted = events;
    // The client's stream is not ours to change: only the record stops here.
    if let Err(overflow) = decoded
        && !call.recorder.has_stream_fault()
    {
        tracing::warn!(call_id = %call.info.call_id, reason = %overflow, "stream no longer recorded: an upstream event is too large");
        call.recorder.stream_truncated(overflow.to_string());
    }
}

/// Observe mode: records `events` (leaving the vector empty); one that is not a server-sent
/// event makes the call an upstream error on its record, and the rest is not reconstructed.
fn observe_events(call: &mut ActiveCall, events: &mut Vec<SseEvent>) {
    if call.recorder.has_stream_fault() {
        events.clear();
        return;
    }
    let not_sse = split_not_sse(events);
    for event in events.drain(..) {
        call.recorder.observed_event(&event);
    }
    if let Some(reason) = not_sse {
        tracing::warn!(call_id = %call.info.call_id, %reason, "the upstream stream is not server-sent events");
        call.recorder.stream_not_sse(reason);
    }
}

/// Cuts `events` before the first one that is not a server-sent event (a JSON or HTML body
/// sent as a stream), and says what it looked like.
fn split_not_sse(events: &mut Vec<SseEvent>) -> Option<String> {
    let position = events
        .iter()
        .position(|event| !event.is_server_sent_event())?;
    let bytes = events[position].to_bytes();
    events.truncate(position);
    let start = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
    Some(format!("it sent {start:?}"))
}

fn record_policy_events(call: &mut ActiveCall) {
    for (policy, event) in call.chain.take_events() {
        call.recorder
            .policy_event(&policy, &event.action, &event.summary, event.data);
    }
}

/// Awaits `work`, sending a keepalive every `interval` it takes, so the data
/// plane's inactivity deadline does not expire under a slow policy.
async fn with_keepalive<F: Future>(
    work: F,
    replies: &mpsc::Sender<Result<ControlPlaneMessage, Status>>,
    interval: Duration,
) -> F::Output {
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticks.tick() => {
                let keepalive = ControlPlaneMessage { message: Some(ToData::Keepalive(Keepalive {})) };
                // A full queue means the data plane is not reading; the
                // keepalive would not help it, so it is not awaited.
                let _ = replies.try_send(Ok(keepalive));
            }
        }
    }
}

fn continue_unchanged(mode: ResponseMode) -> RequestDecision {
    RequestDecision {
        action: Some(Action::ContinueRequest(ContinueRequest { body: None })),
        response_mode: mode.into(),
        requests_not_inspected: false,
    }
}

fn immediate(response: ImmediateResponse) -> RequestDecision {
    RequestDecision {
        action: Some(Action::ImmediateResponse(
            luthien_proto::dataplane::v1::ImmediateResponse {
                status: u32::from(response.status),
                headers: vec![Header {
                    name: "content-type".into(),
                    value: response.content_type.into(),
                }],
                body: response.body,
                reason: response.reason,
            },
        )),
        response_mode: ResponseMode::Unspecified.into(),
        requests_not_inspected: false,
    }
}

fn log_call_end(info: &CallInfo, end: &CallEnd) {
    let outcome = end.outcome();
    let duration_ms = end.duration_micros as f64 / 1000.0;
    let overhead_ms = end.overhead_micros as f64 / 1000.0;
    match outcome {
        CallOutcome::Completed | CallOutcome::Blocked => tracing::info!(
            call_id = %info.call_id, model = %info.model, stream = info.stream,
            outcome = outcome.as_str_name(), duration_ms, overhead_ms, "call ended"
        ),
        _ => tracing::warn!(
            call_id = %info.call_id, model = %info.model, stream = info.stream,
            outcome = outcome.as_str_name(), detail = %end.detail, upstream_status = end.upstream_status,
            duration_ms, "call ended"
        ),
    }
}
