//! Turns what the control plane sees of a call into durable events and
//! live activity, without ever making the call wait.
//!
//! A [`CallRecorder`] lives with its call: it keeps the original and final
//! request, the original and final response (or two stream
//! reconstructions), counts and timings, and hands finished records to the
//! [`EventSink`] (bounded queue, batched writer) and the [`ActivityBus`].
//! Both hand-offs are non-blocking; a full queue drops and counts. Secrets
//! and oversized payloads are handled by the writer
//! ([`luthien_store::redact`]), so nothing reaches the store unsanitised.

use std::sync::Arc;

use luthien_proto::common::v1::Header;
use luthien_proto::dataplane::v1::{CallEnd, CallOutcome};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::activity::{ActivityBus, ActivityMessage};
use luthien_policy::CallInfo;
use luthien_policy::reconstruct::Reconstructor;
use luthien_policy::shapes::Api;
use luthien_policy::sse::SseEvent;
use luthien_store::events::{
    Body, CallEvent, CallStatus, CallSummary, EventPayload, PREVIEW_CHARS, SCHEMA_VERSION,
    TokenUsage,
};
use luthien_store::{EventSink, Record};

/// Where finished records go; shared by all calls.
#[derive(Clone)]
pub struct Recording {
    sink: Option<EventSink>,
    activity: ActivityBus,
    /// This control plane's instance id, written on every call it records.
    control_plane_id: Option<Arc<str>>,
}

impl Recording {
    /// `sink` is `None` when persistence is off; activity is always published.
    pub fn new(sink: Option<EventSink>, activity: ActivityBus) -> Self {
        Self {
            sink,
            activity,
            control_plane_id: None,
        }
    }

    /// Calls recorded from now on carry `id`, the recording control plane's instance id.
    pub fn with_control_plane_id(mut self, id: Arc<str>) -> Self {
        self.control_plane_id = Some(id);
        self
    }

    /// Recording that keeps nothing and publishes in-process only.
    pub fn disabled() -> Self {
        Self::new(None, ActivityBus::in_process())
    }

    pub fn activity(&self) -> &ActivityBus {
        &self.activity
    }

    pub fn sink(&self) -> Option<&EventSink> {
        self.sink.as_ref()
    }
}

/// How a streamed response looked on each side of the policy chain.
struct StreamRecord {
    upstream: Reconstructor,
    client: Reconstructor,
    received: u64,
    sent: u64,
}

pub struct CallRecorder {
    recording: Arc<Recording>,
    info: CallInfo,
    created_at_micros: i64,
    next_sequence: u32,
    session_id: Option<String>,
    trace_id: Option<String>,
    policy_changed: bool,
    /// The calls list's preview: the start of the last user message as forwarded.
    preview: Option<String>,
    /// The policies that recorded an event, in the order they first did.
    policies: Vec<String>,
    stream: Option<StreamRecord>,
    response: Option<(Body, Body)>,
    /// A response a policy produced instead of calling upstream.
    immediate: Option<Body>,
    /// What the record and the trace read of the response the client received.
    facts: ResponseFacts,
    usage: TokenUsage,
    /// What went wrong with the stream itself, when something did.
    fault: Option<StreamFault>,
}

impl CallRecorder {
    /// `trace_id`: the trace the call's spans belong to, stored so the
    /// debug views can link to it.
    pub fn new(
        recording: Arc<Recording>,
        info: CallInfo,
        received_at_micros: i64,
        trace_id: Option<String>,
    ) -> Self {
        // Reconstruction only feeds the store; without one it is skipped.
        let stream = (info.stream && recording.sink.is_some()).then(|| StreamRecord {
            upstream: Reconstructor::new(info.api),
            client: Reconstructor::new(info.api),
            received: 0,
            sent: 0,
        });
        let created_at_micros = if received_at_micros > 0 {
            received_at_micros
        } else {
            luthien_api::time::unix_micros()
        };
        Self {
            recording,
            info,
            created_at_micros,
            next_sequence: 0,
            session_id: None,
            trace_id,
            policy_changed: false,
            preview: None,
            policies: Vec::new(),
            stream,
            response: None,
            immediate: None,
            facts: ResponseFacts::default(),
            usage: TokenUsage::default(),
            fault: None,
        }
    }

    /// Records the request as received and as forwarded (`None`: unchanged). The bodies are
    /// kept as their text; the request is read for the session and the preview only.
    pub fn request(&mut self, original: &[u8], rewritten: Option<&[u8]>, headers: &[Header]) {
        let read = body_value(original);
        self.session_id = session_id(self.info.api, &read, headers);
        // The preview only goes into records.
        if self.recording.sink.is_some() {
            let forwarded = rewritten.map(body_value);
            self.preview = luthien_api::request::last_user_preview(
                forwarded.as_ref().unwrap_or(&read),
                PREVIEW_CHARS,
            );
        }
        let original = Body::from_bytes(original);
        let final_ = match rewritten {
            Some(bytes) => {
                self.policy_changed = true;
                Body::from_bytes(bytes)
            }
            None => original.clone(),
        };
        let headers: Map<String, Value> = headers
            .iter()
            .map(|header| (header.name.clone(), Value::String(header.value.clone())))
            .collect();
        self.record(Record::Call(self.summary(CallStatus::InProgress)));
        self.event(EventPayload::Request {
            original,
            final_,
            headers: Value::Object(headers),
        });
    }

    /// Records the response a policy answered with instead of upstream.
    pub fn immediate_response(&mut self, body: &[u8]) {
        let body = Body::from_bytes(body);
        self.facts = ResponseFacts::read(&body);
        self.policy_changed = true;
        self.immediate = Some(body);
    }

    /// Records a non-streamed response (`None`: unchanged).
    pub fn response(&mut self, original: &[u8], rewritten: Option<&[u8]>) {
        let original = Body::from_bytes(original);
        let final_ = match rewritten {
            Some(bytes) => {
                self.policy_changed = true;
                Body::from_bytes(bytes)
            }
            None => original.clone(),
        };
        self.facts = ResponseFacts::read(&final_);
        self.usage = self.facts.usage(self.info.api);
        self.response = Some((original, final_));
    }

    /// An SSE event as upstream sent it.
    pub fn upstream_event(&mut self, event: &SseEvent) {
        if let Some(stream) = self.stream.as_mut() {
            stream.received += 1;
            stream.upstream.push(event);
        }
    }

    /// An SSE event as the client receives it.
    pub fn client_event(&mut self, event: &SseEvent) {
        if let Some(stream) = self.stream.as_mut() {
            stream.sent += 1;
            if event.is_modified() {
                self.policy_changed = true;
            }
            stream.client.push(event);
        }
    }

    /// Whether stream events are worth decoding for this call's record.
    pub fn wants_stream_events(&self) -> bool {
        self.stream.is_some()
    }

    /// Observe mode: the client received exactly what upstream sent.
    pub fn observed_event(&mut self, event: &SseEvent) {
        if self.stream.is_none() {
            return;
        }
        self.upstream_event(event);
        self.client_event(event);
    }

    /// The stream could not be decoded to its end (see `SseDecoder`): the reconstructed
    /// response stops here and the record's `detail` says why.
    pub fn stream_truncated(&mut self, reason: String) {
        self.fault.get_or_insert(StreamFault::Truncated(reason));
    }

    /// The upstream's stream is not server-sent events: the call is recorded as an upstream
    /// error, whatever the data plane saw.
    pub fn stream_not_sse(&mut self, reason: String) {
        self.fault.get_or_insert(StreamFault::NotSse(reason));
    }

    /// Whether the stream already has a fault on its record.
    pub fn has_stream_fault(&self) -> bool {
        self.fault.is_some()
    }

    /// Something a policy wants on the record.
    pub fn policy_event(&mut self, policy: &str, action: &str, summary: &str, data: Value) {
        if !self.policies.iter().any(|name| name == policy) {
            self.policies.push(policy.to_owned());
        }
        self.event(EventPayload::Policy {
            policy: policy.to_owned(),
            action: action.to_owned(),
            summary: summary.to_owned(),
            data,
        });
    }

    /// The call ended as the data plane reports.
    pub fn finish(mut self, end: &CallEnd) {
        self.finish_with(status_of(end.outcome()), Some(end));
    }

    /// A call no policy saw (see `unpoliced`): recorded as `unpoliced`, saying why, whatever
    /// its upstream did.
    pub fn finish_unpoliced(mut self, end: &CallEnd, truncated: bool) {
        let mut end = end.clone();
        let outcome = status_of(end.outcome()).as_str();
        end.detail = format!(
            "the policies did not run: {} (the call then ended {outcome}){}",
            if end.detail.is_empty() {
                "no control plane took the call"
            } else {
                &end.detail
            },
            if truncated {
                "; bodies cut at the data plane's spool cap"
            } else {
                ""
            },
        );
        self.finish_with(CallStatus::Unpoliced, Some(&end));
    }

    /// The data plane vanished without a `CallEnd`.
    pub fn abandon(mut self) {
        self.finish_with(CallStatus::Abandoned, None);
    }

    fn finish_with(&mut self, mut status: CallStatus, end: Option<&CallEnd>) {
        let recorded = (
            self.stream.take(),
            self.response.take(),
            self.immediate.take(),
        );
        let (original, final_, received, sent) = match recorded {
            (Some(stream), _, _) => {
                if stream.sent != stream.received {
                    self.policy_changed = true;
                }
                self.usage = stream.client.usage();
                let final_ = stream.client.finish();
                if let Some(final_) = &final_ {
                    self.facts = ResponseFacts::of(final_);
                }
                (
                    stream.upstream.finish().map(Body::from),
                    final_.map(Body::from),
                    stream.received,
                    stream.sent,
                )
            }
            (None, Some((original, final_)), _) => (Some(original), Some(final_), 1, 1),
            (None, None, Some(immediate)) => (None, Some(immediate), 0, 1),
            (None, None, None) => (None, None, 0, 0),
        };
        let same = Body::same_text_if_any(original.as_ref(), final_.as_ref());
        if !same {
            self.policy_changed = true;
        }
        annotate_span(self.info.api, &self.facts, self.usage);
        crate::metrics::global().tokens(self.info.api.metric_label(), &self.info.model, self.usage);
        let millis = |micros: u64| (micros > 0).then(|| micros as f64 / 1000.0);
        let duration_ms = end.and_then(|end| millis(end.duration_micros));
        let time_to_first_chunk_ms = end.and_then(|end| millis(end.time_to_first_byte_micros));
        let ended = end
            .map(|end| end.detail.clone())
            .filter(|detail| !detail.is_empty());
        let fault = self.fault.take().map(|fault| match fault {
            StreamFault::Truncated(reason) => format!("stream truncated: {reason}"),
            StreamFault::NotSse(reason) => {
                if status == CallStatus::Completed {
                    status = CallStatus::UpstreamError;
                }
                format!("upstream stream is not server-sent events: {reason}")
            }
        });
        let detail = match (fault, ended) {
            (Some(fault), Some(ended)) => Some(format!("{fault}; {ended}")),
            (fault, ended) => fault.or(ended),
        };
        let upstream_status = end
            .and_then(|end| u16::try_from(end.upstream_status).ok())
            .filter(|status| *status > 0);
        self.event(EventPayload::Response {
            original,
            final_,
            status,
            upstream_status,
            detail,
            chunks_received: received,
            chunks_sent: sent,
            time_to_first_chunk_ms,
            duration_ms,
            overhead_ms: end.and_then(|end| millis(end.overhead_micros)),
            usage: self.usage,
        });
        let mut summary = self.summary(status);
        summary.duration_ms = duration_ms;
        summary.time_to_first_chunk_ms = time_to_first_chunk_ms;
        summary.completed_at_micros = Some(luthien_api::time::unix_micros());
        self.record(Record::Call(summary));
    }

    fn summary(&self, status: CallStatus) -> CallSummary {
        CallSummary {
            call_id: self.info.call_id.clone(),
            created_at_micros: self.created_at_micros,
            completed_at_micros: None,
            api: self.info.api,
            model: self.info.model.clone(),
            stream: self.info.stream,
            status,
            duration_ms: None,
            time_to_first_chunk_ms: None,
            usage: self.usage,
            session_id: self.session_id.clone(),
            trace_id: self.trace_id.clone(),
            policy_changed: self.policy_changed,
            control_plane_id: self
                .recording
                .control_plane_id
                .as_deref()
                .map(str::to_owned),
            preview: self.preview.clone(),
            policies: self.policies.clone(),
        }
    }

    fn event(&mut self, payload: EventPayload) {
        let event = CallEvent {
            call_id: self.info.call_id.clone(),
            sequence: self.next_sequence,
            timestamp_micros: luthien_api::time::unix_micros(),
            schema_version: SCHEMA_VERSION,
            payload,
        };
        self.next_sequence += 1;
        let message = ActivityMessage::from_event(&event, &self.info.model, self.info.api);
        self.recording.activity.publish(message);
        self.record(Record::Event(event));
    }

    fn record(&self, record: Record) {
        if let Some(sink) = &self.recording.sink {
            sink.record(record);
        }
    }
}

/// What went wrong with a stream itself (see `CallRecorder::stream_truncated` and
/// `CallRecorder::stream_not_sse`).
#[derive(Debug)]
enum StreamFault {
    Truncated(String),
    NotSse(String),
}

pub fn status_of(outcome: CallOutcome) -> CallStatus {
    match outcome {
        CallOutcome::Completed => CallStatus::Completed,
        CallOutcome::Blocked => CallStatus::Blocked,
        CallOutcome::ClientDisconnected => CallStatus::ClientGone,
        CallOutcome::UpstreamError => CallStatus::UpstreamError,
        CallOutcome::UpstreamUnreachable => CallStatus::UpstreamUnreachable,
        CallOutcome::UpstreamTimeout => CallStatus::UpstreamTimeout,
        CallOutcome::ControlPlaneTimeout => CallStatus::ControlPlaneTimeout,
        CallOutcome::ControlPlaneError => CallStatus::ControlPlaneError,
        CallOutcome::Rejected => CallStatus::Rejected,
        CallOutcome::Unspecified => CallStatus::Abandoned,
    }
}

/// A body for the record: its JSON, or, when it is not JSON this control plane can read (a
/// number beyond a double, say), its text, so the record never loses it.
fn body_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// What the record and the trace read of a response body: its usage, model, id and why it
/// stopped. Read from the body's text straight into these few fields, skipping the rest, so a
/// response is never built into a tree on its way to the store. A body of another shape (an
/// error, text) has no facts.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResponseFacts {
    model: Option<String>,
    id: Option<String>,
    usage: Option<UsageFacts>,
    /// OpenAI Chat Completions.
    choices: Option<Vec<ChoiceFacts>>,
    /// Anthropic Messages.
    stop_reason: Option<String>,
    /// OpenAI Responses.
    status: Option<String>,
    incomplete_details: Option<IncompleteFacts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UsageFacts {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChoiceFacts {
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IncompleteFacts {
    reason: Option<String>,
}

impl ResponseFacts {
    fn read(body: &Body) -> Self {
        serde_json::from_str(body.json()).unwrap_or_default()
    }

    /// Of a stream's reconstruction, which is a tree already.
    fn of(response: &Value) -> Self {
        Self::deserialize(response).unwrap_or_default()
    }

    /// Token usage, in each API's names.
    fn usage(&self, api: Api) -> TokenUsage {
        let Some(usage) = &self.usage else {
            return TokenUsage::default();
        };
        match api {
            Api::OpenAiChat => TokenUsage {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
            },
            Api::AnthropicMessages | Api::OpenAiResponses => TokenUsage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
            },
        }
    }

    /// Why the response stopped: each choice's finish reason, Anthropic's stop reason, or a
    /// Responses response's reason for stopping early (`max_output_tokens`), else its status.
    fn finish_reasons(&self, api: Api) -> Vec<&str> {
        match api {
            Api::OpenAiChat => self
                .choices
                .iter()
                .flatten()
                .filter_map(|choice| choice.finish_reason.as_deref())
                .collect(),
            Api::AnthropicMessages => self.stop_reason.as_deref().into_iter().collect(),
            Api::OpenAiResponses => self
                .incomplete_details
                .as_ref()
                .and_then(|details| details.reason.as_deref())
                .or(self.status.as_deref())
                .into_iter()
                .collect(),
        }
    }
}

/// GenAI response attributes on the current span (the control plane's call
/// span: the control plane is where the response is reconstructed). Only
/// these fields, never a body.
fn annotate_span(api: Api, response: &ResponseFacts, usage: TokenUsage) {
    use luthien_telemetry::opentelemetry::{Array, StringValue, Value as OtelValue};
    use luthien_telemetry::tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some(tokens) = usage.input_tokens {
        span.record("gen_ai.usage.input_tokens", tokens);
    }
    if let Some(tokens) = usage.output_tokens {
        span.record("gen_ai.usage.output_tokens", tokens);
    }
    if let Some(model) = &response.model {
        span.record("gen_ai.response.model", model.as_str());
    }
    if let Some(id) = &response.id {
        span.record("gen_ai.response.id", id.as_str());
    }
    if !luthien_telemetry::tracing_enabled() {
        return;
    }
    let reasons: Vec<StringValue> = response
        .finish_reasons(api)
        .into_iter()
        .map(|reason| StringValue::from(reason.to_owned()))
        .collect();
    if !reasons.is_empty() {
        span.set_attribute(
            "gen_ai.response.finish_reasons",
            OtelValue::Array(Array::String(reasons)),
        );
    }
}

/// The client's session, when it names one: the `x-session-id` header, or
/// the `session_…` part of Anthropic's `metadata.user_id` (Claude Code), or
/// a Responses request's `conversation`.
fn session_id(api: Api, request: &Value, headers: &[Header]) -> Option<String> {
    if let Some(header) = headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("x-session-id"))
    {
        return Some(header.value.clone());
    }
    match api {
        Api::AnthropicMessages => {
            let user_id = request["metadata"]["user_id"].as_str()?;
            let (_, session) = user_id.rsplit_once("session_")?;
            (!session.is_empty()).then(|| session.to_owned())
        }
        // A conversation of OpenAI's Conversations API: an id, or an object with one.
        Api::OpenAiResponses => {
            let conversation = &request["conversation"];
            conversation
                .as_str()
                .or_else(|| conversation["id"].as_str())
                .map(str::to_owned)
        }
        Api::OpenAiChat => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn session_ids_come_from_the_header_or_claude_code_metadata() {
        let header = Header {
            name: "X-Session-Id".into(),
            value: "abc".into(),
        };
        assert_eq!(
            session_id(Api::OpenAiChat, &json!({}), std::slice::from_ref(&header)).as_deref(),
            Some("abc")
        );
        let claude_code = json!({"metadata": {"user_id": "user_1f2e_account__session_9d8c-77"}});
        assert_eq!(
            session_id(Api::AnthropicMessages, &claude_code, &[]).as_deref(),
            Some("9d8c-77")
        );
        assert_eq!(session_id(Api::AnthropicMessages, &json!({}), &[]), None);
        for conversation in [json!("conv_1"), json!({"id": "conv_1"})] {
            let request = json!({"conversation": conversation});
            assert_eq!(
                session_id(Api::OpenAiResponses, &request, &[]).as_deref(),
                Some("conv_1")
            );
        }
    }

    #[test]
    fn usage_and_reasons_are_read_in_each_api_shape() {
        let read = |body: Value| ResponseFacts::read(&Body::from(body));
        let openai = read(json!({
            "id": "chatcmpl-1", "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        }));
        assert_eq!(
            openai.usage(Api::OpenAiChat),
            TokenUsage {
                input_tokens: Some(3),
                output_tokens: Some(5)
            }
        );
        assert_eq!(openai.finish_reasons(Api::OpenAiChat), ["stop"]);
        assert_eq!(openai.model.as_deref(), Some("gpt-4o"));
        let anthropic = read(json!({
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 7, "output_tokens": 11, "cache_read_input_tokens": null}
        }));
        assert_eq!(
            anthropic.usage(Api::AnthropicMessages).output_tokens,
            Some(11)
        );
        assert_eq!(
            anthropic.finish_reasons(Api::AnthropicMessages),
            ["end_turn"]
        );
        let cut_short = json!({
            "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
            "usage": {"input_tokens": 2, "output_tokens": 9}
        });
        // A stream's reconstruction is read the same way.
        let responses = ResponseFacts::of(&cut_short);
        assert_eq!(responses.usage(Api::OpenAiResponses).input_tokens, Some(2));
        assert_eq!(
            responses.finish_reasons(Api::OpenAiResponses),
            ["max_output_tokens"]
        );
        // An error body or text has no facts, and no usage.
        for body in [
            json!({"error": {"message": "no"}}),
            json!("<html>502</html>"),
        ] {
            assert_eq!(read(body).usage(Api::OpenAiChat), TokenUsage::default());
        }
    }
}
