//! The provider APIs Luthien speaks, and helpers that read their JSON shapes.
//!
//! Bodies always stay in the client's own API format; these helpers let a policy work on them
//! without knowing which API it is. The text visitors reach the human-readable text only —
//! message text, system prompts, assistant text — and never tool-call arguments, tool inputs,
//! thinking blocks or signatures, which clients parse or verify and a text transform would break.
//!
//! Streams are described in terms of *content streams*: the text of one OpenAI choice (by
//! `choices[].index`), of one Anthropic content block (by block `index`) or of one part of a
//! Responses output item, which arrives in deltas spread over many events and ends with a known
//! event. The Responses API then repeats each whole text in later events
//! ([`for_each_stream_final_text_mut`]).

mod anthropic;
#[cfg(test)]
pub(crate) mod fixtures;
mod openai;
pub mod reply;
mod responses;

use serde_json::Value;

use crate::ImmediateResponse;
use crate::sse::SseEvent;

pub use luthien_api::Api;

/// Calls `visit` on every text of a request: OpenAI `messages[].content` (a string or its
/// `text` parts); Anthropic `system` and `messages[].content` (a string or its `text` blocks).
/// Blocks nested in Anthropic `tool_result` blocks are not visited.
pub fn for_each_request_text(api: Api, request: &mut Value, mut visit: impl FnMut(&mut String)) {
    match api {
        Api::OpenAiChat => openai::for_each_request_text(request, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_request_text(request, &mut visit),
        Api::OpenAiResponses => responses::for_each_request_text(request, &mut visit),
    }
}

/// Calls `visit` on every assistant text of a complete response: OpenAI
/// `choices[].message.content`; Anthropic `content[]` blocks of type `text`.
pub fn for_each_response_text(api: Api, response: &mut Value, mut visit: impl FnMut(&mut String)) {
    match api {
        Api::OpenAiChat => openai::for_each_response_text(response, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_response_text(response, &mut visit),
        Api::OpenAiResponses => responses::for_each_response_text(response, &mut visit),
    }
}

/// Calls `visit(content stream index, text)` on every text delta of a stream event: OpenAI
/// `choices[].delta.content`; Anthropic `text_delta`s and the initial text of a `text` block in
/// `content_block_start`.
pub fn for_each_stream_text(api: Api, event: &Value, mut visit: impl FnMut(usize, &str)) {
    match api {
        Api::OpenAiChat => openai::for_each_stream_text(event, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_stream_text(event, &mut visit),
        Api::OpenAiResponses => responses::for_each_stream_text(event, &mut visit),
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
        Api::OpenAiResponses => responses::for_each_stream_text_mut(event, &mut visit),
    }
}

/// Calls `visit(index)` for every content stream this event ends: OpenAI choices with a
/// non-null `finish_reason`; Anthropic `content_block_stop`.
pub fn for_each_content_end(api: Api, event: &Value, mut visit: impl FnMut(usize)) {
    match api {
        Api::OpenAiChat => openai::for_each_content_end(event, &mut visit),
        Api::AnthropicMessages => anthropic::for_each_content_end(event, &mut visit),
        Api::OpenAiResponses => responses::for_each_content_end(event, &mut visit),
    }
}

/// True for the event after which the client expects nothing more: OpenAI `data: [DONE]`,
/// Anthropic `message_stop`, Responses `response.completed`, `.incomplete` or `.failed`. Text a
/// policy still holds must be sent before it.
pub fn is_stream_terminator(api: Api, event: &SseEvent) -> bool {
    match api {
        Api::OpenAiChat => event.is_done(),
        Api::AnthropicMessages => event.event_type() == Some("message_stop"),
        Api::OpenAiResponses => event.json().is_some_and(responses::is_stream_terminator),
    }
}

/// True when the event carries text deltas and nothing else, and all of them are empty, so
/// dropping it loses nothing (OpenAI: no role, tool calls, finish reason, logprobs or usage).
pub fn is_empty_text_delta(api: Api, event: &Value) -> bool {
    match api {
        Api::OpenAiChat => openai::is_empty_text_delta(event),
        Api::AnthropicMessages => anthropic::is_empty_text_delta(event),
        Api::OpenAiResponses => responses::is_empty_text_delta(event),
    }
}

/// The part of a stream event that events injected into the same stream must repeat (OpenAI:
/// `id`, `object`, `created`, `model`, `system_fingerprint`, `service_tier`); `None` for
/// Anthropic and Responses, whose deltas carry no envelope shared by the whole stream.
pub fn stream_envelope(api: Api, event: &Value) -> Option<Value> {
    match api {
        Api::OpenAiChat => Some(openai::chunk_envelope(event)),
        Api::AnthropicMessages | Api::OpenAiResponses => None,
    }
}

/// A stream event adding `text` to content stream `index`: an OpenAI chunk with the envelope
/// fields of `envelope` (any chunk of the stream, or a [`stream_envelope`]), an Anthropic
/// `content_block_delta` with a `text_delta` (`envelope` is ignored), or a Responses
/// `response.output_text.delta` taking `item_id` and `sequence_number` from `envelope` (the
/// event it goes before).
pub fn text_delta_event(
    api: Api,
    envelope: Option<&Value>,
    index: usize,
    text: String,
) -> SseEvent {
    match api {
        Api::OpenAiChat => openai::text_delta_event(envelope, index, text),
        Api::AnthropicMessages => anthropic::text_delta_event(index, text),
        Api::OpenAiResponses => responses::text_delta_event(envelope, index, text),
    }
}

/// Calls `visit` on every whole copy of an output text that a stream event repeats after the
/// deltas (Responses `response.output_text.done`, `.content_part.done`, `.output_item.done` and
/// the terminal event's `response`; the other APIs have none). A policy that rewrites the
/// deltas must rewrite these the same way, or the original text still reaches the client.
pub fn for_each_stream_final_text_mut(
    api: Api,
    event: &mut Value,
    mut visit: impl FnMut(&mut String),
) {
    if api != Api::OpenAiResponses {
        return;
    }
    for pointer in responses::final_text_pointers(event) {
        if let Some(Value::String(text)) = event.pointer_mut(&pointer) {
            visit(text);
        }
    }
}

/// [`for_each_stream_final_text_mut`] for reading.
pub fn for_each_stream_final_text(api: Api, event: &Value, mut visit: impl FnMut(&str)) {
    if api != Api::OpenAiResponses {
        return;
    }
    for pointer in responses::final_text_pointers(event) {
        if let Some(Value::String(text)) = event.pointer(&pointer) {
            visit(text);
        }
    }
}

/// The content stream of part `content_index` of Responses output item `output_index`.
pub fn responses_content_stream(output_index: usize, content_index: usize) -> usize {
    responses::content_stream(output_index, content_index)
}

/// An error answer in the API's own JSON error format (`luthien-api`'s, the same the data
/// plane answers with), with `message` also as the reason.
pub fn error_response(api: Api, status: u16, message: &str) -> ImmediateResponse {
    ImmediateResponse {
        status,
        content_type: "application/json",
        body: luthien_api::error_body(api, status, message),
        reason: message.to_owned(),
    }
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
pub(crate) fn array(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// [`array`], mutably.
pub(crate) fn array_mut(value: Option<&mut Value>) -> &mut [Value] {
    match value {
        Some(Value::Array(items)) => items,
        _ => &mut [],
    }
}

/// A JSON number as an index; `None` when absent, negative or not an integer.
pub(crate) fn as_index(value: Option<&Value>) -> Option<usize> {
    value
        .and_then(Value::as_u64)
        .and_then(|index| usize::try_from(index).ok())
}

/// A stream event's JSON `type` (Anthropic and Responses repeat their SSE `event:` name there).
pub(crate) fn event_type(event: &Value) -> Option<&str> {
    event.get("type").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_carry_the_shared_body_and_the_reason() {
        let response = error_response(Api::AnthropicMessages, 504, "judge timed out");
        assert_eq!(response.status, 504);
        assert_eq!(response.content_type, "application/json");
        assert_eq!(response.reason, "judge timed out");
        let body: Value = serde_json::from_slice(&response.body).unwrap();
        // The data plane's table: a policy's 504 looks like the data plane's own 504.
        assert_eq!(body["error"]["type"], "timeout_error");
        let body: Value =
            serde_json::from_slice(&error_response(Api::OpenAiChat, 404, "gone").body).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
