//! Anthropic Messages shapes (`POST /v1/messages`).
//!
//! Text lives in `system` and `messages[].content` (requests), `content[]` blocks of type `text`
//! (responses) and `text_delta`s of `content_block_delta` events (streams). `thinking`,
//! `redacted_thinking` and `tool_use` blocks, `input_json_delta`, `thinking_delta` and
//! `signature_delta` are never visited.

use serde_json::{Value, json};

use super::{array_mut, as_index, event_type, visit_content_mut};
use crate::sse::SseEvent;

pub(super) fn for_each_request_text(request: &mut Value, visit: &mut impl FnMut(&mut String)) {
    if let Some(system) = request.get_mut("system") {
        visit_content_mut(system, visit);
    }
    for message in array_mut(request.get_mut("messages")) {
        if let Some(content) = message.get_mut("content") {
            visit_content_mut(content, visit);
        }
    }
}

pub(super) fn for_each_response_text(response: &mut Value, visit: &mut impl FnMut(&mut String)) {
    if let Some(content) = response.get_mut("content") {
        // A response's `content` is always an array of blocks; a string is not a response.
        if content.is_array() {
            visit_content_mut(content, visit);
        }
    }
}

pub(super) fn for_each_stream_text(event: &Value, visit: &mut impl FnMut(usize, &str)) {
    let Some((index, text_field)) = text_location(event) else {
        return;
    };
    if let Some(Value::String(text)) = event.pointer(text_field) {
        visit(index, text);
    }
}

pub(super) fn for_each_stream_text_mut(
    event: &mut Value,
    visit: &mut impl FnMut(usize, &mut String),
) {
    let Some((index, text_field)) = text_location(event) else {
        return;
    };
    if let Some(Value::String(text)) = event.pointer_mut(text_field) {
        visit(index, text);
    }
}

/// The block index and the JSON pointer of the text an event carries, if it carries text.
fn text_location(event: &Value) -> Option<(usize, &'static str)> {
    let text_field = match event_type(event) {
        Some("content_block_delta")
            if event.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta") =>
        {
            "/delta/text"
        }
        // A text block may start with text (in practice it starts empty).
        Some("content_block_start")
            if event.pointer("/content_block/type").and_then(Value::as_str) == Some("text") =>
        {
            "/content_block/text"
        }
        _ => return None,
    };
    Some((as_index(event.get("index"))?, text_field))
}

pub(super) fn for_each_content_end(event: &Value, visit: &mut impl FnMut(usize)) {
    if event_type(event) != Some("content_block_stop") {
        return;
    }
    if let Some(index) = as_index(event.get("index")) {
        visit(index);
    }
}

pub(super) fn is_empty_text_delta(event: &Value) -> bool {
    event_type(event) == Some("content_block_delta")
        && event.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta")
        && event.pointer("/delta/text").and_then(Value::as_str) == Some("")
}

pub(super) fn text_delta_event(index: usize, text: String) -> SseEvent {
    SseEvent::from_json(
        Some("content_block_delta"),
        json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{ANTHROPIC_RESPONSE, ANTHROPIC_STREAM, anthropic_request, decode};
    use super::super::*;

    fn upper_case(text: &mut String) {
        *text = text.to_uppercase();
    }

    #[test]
    fn request_text_includes_system_and_text_blocks_only() {
        let mut request = anthropic_request();
        for_each_request_text(Api::AnthropicMessages, &mut request, upper_case);
        assert_eq!(request["system"][0]["text"], "YOU ARE TERSE");
        assert_eq!(request["messages"][0]["content"], "WEATHER IN PARIS?");
        assert_eq!(
            request["messages"][1]["content"][0]["thinking"],
            "call the tool"
        );
        assert_eq!(request["messages"][1]["content"][1]["text"], "CHECKING.");
        assert_eq!(
            request["messages"][1]["content"][2]["input"]["city"],
            "paris"
        );
        assert_eq!(request["messages"][2]["content"][0]["content"], "sunny");
    }

    #[test]
    fn response_text_skips_thinking_and_tool_use() {
        let mut response: Value = serde_json::from_str(ANTHROPIC_RESPONSE).unwrap();
        for_each_response_text(Api::AnthropicMessages, &mut response, upper_case);
        assert_eq!(response["content"][0]["thinking"], "the user wants weather");
        assert_eq!(response["content"][1]["text"], "LET ME CHECK.");
        assert_eq!(response["content"][2]["input"]["city"], "paris");
    }

    #[test]
    fn stream_text_is_text_deltas_by_block_index() {
        let mut texts = Vec::new();
        let mut ended = Vec::new();
        for event in decode(ANTHROPIC_STREAM) {
            let Some(value) = event.json() else { continue };
            for_each_stream_text(Api::AnthropicMessages, value, |index, text| {
                texts.push((index, text.to_owned()))
            });
            for_each_content_end(Api::AnthropicMessages, value, |index| ended.push(index));
        }
        let texts: Vec<(usize, &str)> = texts
            .iter()
            .map(|(index, text)| (*index, text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                (1, ""),
                (1, "Let me"),
                (1, " check the weather."),
                (1, " One moment.")
            ]
        );
        assert_eq!(ended, [0, 1, 2]);
    }

    #[test]
    fn message_stop_terminates_the_stream() {
        let events = decode(ANTHROPIC_STREAM);
        let terminators: Vec<bool> = events
            .iter()
            .map(|e| is_stream_terminator(Api::AnthropicMessages, e))
            .collect();
        assert_eq!(terminators.iter().filter(|&&t| t).count(), 1);
        assert_eq!(terminators.last(), Some(&true));
    }
}
