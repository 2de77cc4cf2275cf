//! The provider APIs Luthien speaks, and helpers that read their JSON shapes.
//!
//! Bodies always stay in the client's own API format; these helpers let a policy work on them
//! without knowing which API it is. The text visitors reach the human-readable text only —
//! message text, system prompts, assistant text — and never tool-call arguments, tool inputs,
//! thinking blocks or signatures, which clients parse or verify and a text transform would break.
//!
//! Streams are described in terms of *content streams*: the text of one OpenAI choice (by
//! `choices[].index`) or of one Anthropic content block (by block `index`), which arrives in
//! deltas spread over many events and ends with a known event.

mod anthropic;
#[cfg(test)]
pub(crate) mod fixtures;
mod openai;
pub mod reply;

use bytes::Bytes;
use serde_json::Value;

use crate::policy::ImmediateResponse;
use crate::sse::SseEvent;

/// A provider API; bodies always stay in this API's own format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions`.
    OpenAiChat,
    /// Anthropic `POST /v1/messages`.
    AnthropicMessages,
}

impl Api {
    /// The `api` label of metrics, the same on both planes.
    pub fn metric_label(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::AnthropicMessages => "anthropic_messages",
        }
    }
}

/// Calls `visit` on every text of a request: OpenAI `messages[].content` (a string or its
/// `text` parts); Anthropic `system` and `messages[].content` (a string or its `text` blocks).
/// Blocks nested in Anthropic `tool_result` blocks are not visited.
pub fn for_each_request_text(api: Api, request: &mut Value, mut visit: impl FnMut(&mut String)) {
    match api {
        Api::OpenAiChat => openai::for_each_request_text(request, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_request_text(request, &mut visit),
    }
}

/// Calls `visit` on every assistant text of a complete response: OpenAI
/// `choices[].message.content`; Anthropic `content[]` blocks of type `text`.
pub fn for_each_response_text(api: Api, response: &mut Value, mut visit: impl FnMut(&mut String)) {
    match api {
        Api::OpenAiChat => openai::for_each_response_text(response, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_response_text(response, &mut visit),
    }
}

/// Calls `visit(content stream index, text)` on every text delta of a stream event: OpenAI
/// `choices[].delta.content`; Anthropic `text_delta`s and the initial text of a `text` block in
/// `content_block_start`.
pub fn for_each_stream_text(api: Api, event: &Value, mut visit: impl FnMut(usize, &str)) {
    match api {
        Api::OpenAiChat => openai::for_each_stream_text(event, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_stream_text(event, &mut visit),
    }
}

/// [`for_each_stream_text`] for rewriting: visits the same texts in the same order.
pub fn for_each_stream_text_mut(
    api: Api,
    event: &mut Value,
    mut visit: impl FnMut(usize, &mut String),
) {
    match api {
        Api::OpenAiChat => openai::for_each_stream_text_mut(event, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_stream_text_mut(event, &mut visit),
    }
}

/// Calls `visit(index)` for every content stream this event ends: OpenAI choices with a
/// non-null `finish_reason`; Anthropic `content_block_stop`.
pub fn for_each_content_end(api: Api, event: &Value, mut visit: impl FnMut(usize)) {
    match api {
        Api::OpenAiChat => openai::for_each_content_end(event, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_content_end(event, &mut visit),
    }
}

/// True for the event after which the client expects nothing more: OpenAI `data: [DONE]`,
/// Anthropic `message_stop`. Text a policy still holds must be sent before it.
pub fn is_stream_terminator(api: Api, event: &SseEvent) -> bool {
    match api {
        Api::OpenAiChat => event.is_done(),
        Api::AnthropicMessages => event.event_type() == Some("message_stop"),
    }
}

/// True when the event carries text deltas and nothing else, and all of them are empty, so
/// dropping it loses nothing (OpenAI: no role, tool calls, finish reason, logprobs or usage).
pub fn is_empty_text_delta(api: Api, event: &Value) -> bool {
    match api {
        Api::OpenAiChat => openai::is_empty_text_delta(event),
        Api::AnthropicMessages => anthropic::is_empty_text_delta(event),
    }
}

/// The part of a stream event that events injected into the same stream must repeat (OpenAI:
/// `id`, `object`, `created`, `model`, `system_fingerprint`, `service_tier`); `None` for
/// Anthropic, whose deltas carry no envelope.
pub fn stream_envelope(api: Api, event: &Value) -> Option<Value> {
    match api {
        Api::OpenAiChat => Some(openai::chunk_envelope(event)),
        Api::AnthropicMessages => None,
    }
}

/// A stream event adding `text` to content stream `index`: an OpenAI chunk with the envelope
/// fields of `envelope` (any chunk of the stream, or a [`stream_envelope`]), or an Anthropic
/// `content_block_delta` with a `text_delta` (`envelope` is ignored).
pub fn text_delta_event(
    api: Api,
    envelope: Option<&Value>,
    index: usize,
    text: String,
) -> SseEvent {
    match api {
        Api::OpenAiChat => openai::text_delta_event(envelope, index, text),
        Api::AnthropicMessages => anthropic::text_delta_event(index, text),
    }
}

/// The API's error `type` for an HTTP status, e.g. `rate_limit_error` for 429.
pub fn error_type(api: Api, status: u16) -> &'static str {
    match (status, api) {
        (400, _) => "invalid_request_error",
        (401, _) => "authentication_error",
        (403, _) => "permission_error",
        (404, _) => "not_found_error",
        (413, Api::AnthropicMessages) => "request_too_large",
        (429, _) => "rate_limit_error",
        (503, Api::OpenAiChat) => "service_unavailable",
        (503 | 529, Api::AnthropicMessages) => "overloaded_error",
        (500..=599, _) => "api_error",
        _ => "invalid_request_error",
    }
}

/// An error answer in the API's own JSON error format, with `message` also as the reason.
///
/// Errors are JSON even for streamed calls: both APIs answer a failed streaming request with a
/// JSON body and a 4xx/5xx status, and their SDKs read it that way.
pub fn error_response(api: Api, status: u16, message: &str) -> ImmediateResponse {
    let body = match api {
        Api::OpenAiChat => openai::error_body(error_type(api, status), message),
        Api::AnthropicMessages => anthropic::error_body(error_type(api, status), message),
    };
    ImmediateResponse {
        status,
        content_type: "application/json",
        body: Bytes::from(body.to_string()),
        reason: message.to_owned(),
    }
}

/// An in-band error event that ends a stream whose first bytes were already sent: OpenAI
/// `data: {"error":{...}}`, Anthropic `event: error` with an `api_error`.
pub fn stream_error_event(api: Api, message: &str) -> Bytes {
    let event = match api {
        Api::OpenAiChat => {
            SseEvent::from_json(None, openai::error_body(error_type(api, 500), message))
        }
        Api::AnthropicMessages => {
            SseEvent::from_json(Some("error"), anthropic::error_body("api_error", message))
        }
    };
    event.to_bytes()
}

/// Visits a `content` that is a string, or an array of blocks of which those with
/// `"type": "text"` hold their text in `text` (OpenAI content parts and Anthropic content
/// blocks share this shape).
fn visit_content_mut(content: &mut Value, visit: &mut impl FnMut(&mut String)) {
    match content {
        Value::String(text) => visit(text),
        Value::Array(blocks) => {
            for block in blocks {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    continue;
                }
                if let Some(Value::String(text)) = block.get_mut("text") {
                    visit(text);
                }
            }
        }
        _ => {}
    }
}

/// The elements of an optional JSON array; empty when absent or not an array.
fn array(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// [`array`], mutably.
fn array_mut(value: Option<&mut Value>) -> &mut [Value] {
    match value {
        Some(Value::Array(items)) => items,
        _ => &mut [],
    }
}

/// A JSON number as an index; `None` when absent, negative or not an integer.
fn as_index(value: Option<&Value>) -> Option<usize> {
    value
        .and_then(Value::as_u64)
        .and_then(|index| usize::try_from(index).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: &Bytes) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn openai_errors_use_the_openai_shape() {
        let response = error_response(Api::OpenAiChat, 429, "slow down");
        assert_eq!(response.status, 429);
        assert_eq!(response.content_type, "application/json");
        assert_eq!(
            parse(&response.body),
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": null}})
        );
        assert_eq!(response.reason, "slow down");
        assert_eq!(error_type(Api::OpenAiChat, 503), "service_unavailable");
    }

    #[test]
    fn anthropic_errors_use_the_anthropic_shape() {
        let response = error_response(Api::AnthropicMessages, 403, "blocked by policy");
        assert_eq!(
            parse(&response.body),
            json!({"type": "error", "error": {"type": "permission_error", "message": "blocked by policy"}})
        );
        assert_eq!(error_type(Api::AnthropicMessages, 503), "overloaded_error");
        assert_eq!(error_type(Api::AnthropicMessages, 500), "api_error");
        assert_eq!(
            error_type(Api::AnthropicMessages, 401),
            "authentication_error"
        );
        assert_eq!(error_type(Api::AnthropicMessages, 404), "not_found_error");
    }

    #[test]
    fn stream_errors_are_sse_events() {
        assert_eq!(
            stream_error_event(Api::OpenAiChat, "x\"y"),
            "data: {\"error\":{\"message\":\"x\\\"y\",\"type\":\"api_error\",\"param\":null,\"code\":null}}\n\n".as_bytes()
        );
        assert_eq!(
            stream_error_event(Api::AnthropicMessages, "boom"),
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n".as_bytes()
        );
    }
}
