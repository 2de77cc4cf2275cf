//! OpenAI Chat Completions shapes (`POST /v1/chat/completions`).
//!
//! Text lives in `messages[].content` (requests), `choices[].message.content` (responses) and
//! `choices[].delta.content` (stream chunks). Tool calls live in `tool_calls[].function.arguments`
//! next to them and are never visited.

use serde_json::{Map, Value, json};

use super::{array, array_mut, as_index, visit_content_mut};
use crate::sse::SseEvent;

pub(super) fn for_each_request_text(request: &mut Value, visit: &mut impl FnMut(&mut String)) {
    for message in array_mut(request.get_mut("messages")) {
        if let Some(content) = message.get_mut("content") {
            visit_content_mut(content, visit);
        }
    }
}

pub(super) fn for_each_response_text(response: &mut Value, visit: &mut impl FnMut(&mut String)) {
    for choice in array_mut(response.get_mut("choices")) {
        if let Some(content) = choice.pointer_mut("/message/content") {
            visit_content_mut(content, visit);
        }
    }
}

pub(super) fn for_each_stream_text(chunk: &Value, visit: &mut impl FnMut(usize, &str)) {
    for (position, choice) in array(chunk.get("choices")).iter().enumerate() {
        if let Some(Value::String(text)) = choice.pointer("/delta/content") {
            visit(choice_index(choice, position), text);
        }
    }
}

pub(super) fn for_each_stream_text_mut(
    chunk: &mut Value,
    visit: &mut impl FnMut(usize, &mut String),
) {
    for (position, choice) in array_mut(chunk.get_mut("choices")).iter_mut().enumerate() {
        let index = choice_index(choice, position);
        if let Some(Value::String(text)) = choice.pointer_mut("/delta/content") {
            visit(index, text);
        }
    }
}

pub(super) fn for_each_content_end(chunk: &Value, visit: &mut impl FnMut(usize)) {
    for (position, choice) in array(chunk.get("choices")).iter().enumerate() {
        if !is_null_or_absent(choice.get("finish_reason")) {
            visit(choice_index(choice, position));
        }
    }
}

pub(super) fn is_empty_text_delta(chunk: &Value) -> bool {
    let choices = array(chunk.get("choices"));
    !choices.is_empty()
        && is_null_or_absent(chunk.get("usage"))
        && choices.iter().all(|choice| {
            is_null_or_absent(choice.get("finish_reason"))
                && is_null_or_absent(choice.get("logprobs"))
                && choice
                    .get("delta")
                    .and_then(Value::as_object)
                    .is_some_and(|delta| {
                        delta.iter().all(|(key, value)| match key.as_str() {
                            "content" => value.is_null() || value.as_str() == Some(""),
                            _ => value.is_null(),
                        })
                    })
        })
}

/// The chunk fields every chunk of one stream repeats.
const ENVELOPE_FIELDS: [&str; 6] = [
    "id",
    "object",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
];

pub(super) fn chunk_envelope(chunk: &Value) -> Value {
    let mut envelope = Map::new();
    for field in ENVELOPE_FIELDS {
        if let Some(value) = chunk.get(field) {
            envelope.insert(field.to_owned(), value.clone());
        }
    }
    Value::Object(envelope)
}

pub(super) fn text_delta_event(envelope: Option<&Value>, index: usize, text: String) -> SseEvent {
    let mut chunk = envelope.map(chunk_envelope).unwrap_or_else(|| json!({}));
    chunk["choices"] = json!([{"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]);
    SseEvent::from_json(None, chunk)
}

/// A choice's `index`, or its position when the field is missing.
fn choice_index(choice: &Value, position: usize) -> usize {
    as_index(choice.get("index")).unwrap_or(position)
}

fn is_null_or_absent(value: Option<&Value>) -> bool {
    value.is_none_or(Value::is_null)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{OPENAI_TOOL_RESPONSE, openai_chunk, openai_request};
    use super::super::*;
    use serde_json::json;

    fn upper_case(text: &mut String) {
        *text = text.to_uppercase();
    }

    #[test]
    fn request_text_includes_string_and_part_content_but_not_tool_arguments() {
        let mut request = openai_request();
        for_each_request_text(Api::OpenAiChat, &mut request, upper_case);
        assert_eq!(request["messages"][0]["content"], "BE BRIEF");
        assert_eq!(
            request["messages"][1]["content"][0]["text"],
            "WHAT IS IN THIS IMAGE?"
        );
        assert_eq!(
            request["messages"][1]["content"][1]["image_url"]["url"],
            "https://example.com/a.png"
        );
        assert_eq!(
            request["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"paris\"}"
        );
        assert_eq!(request["messages"][3]["content"], "SUNNY");
    }

    #[test]
    fn response_text_skips_tool_calls() {
        let mut response: Value = serde_json::from_str(OPENAI_TOOL_RESPONSE).unwrap();
        for_each_response_text(Api::OpenAiChat, &mut response, upper_case);
        assert_eq!(
            response["choices"][0]["message"]["content"],
            "LET ME CHECK."
        );
        assert_eq!(
            response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"paris\"}"
        );
    }

    #[test]
    fn stream_text_and_content_end_carry_the_choice_index() {
        let chunk = json!({"choices": [
            {"index": 1, "delta": {"content": "b"}, "finish_reason": null},
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        ]});
        let mut texts = Vec::new();
        for_each_stream_text(Api::OpenAiChat, &chunk, |index, text| {
            texts.push((index, text.to_owned()))
        });
        assert_eq!(texts, [(1, "b".to_owned())]);
        let mut ended = Vec::new();
        for_each_content_end(Api::OpenAiChat, &chunk, |index| ended.push(index));
        assert_eq!(ended, [0]);
    }

    #[test]
    fn only_chunks_carrying_nothing_but_empty_content_are_empty_text_deltas() {
        assert!(is_empty_text_delta(
            Api::OpenAiChat,
            &openai_chunk(json!({"content": ""}), None)
        ));
        assert!(!is_empty_text_delta(
            Api::OpenAiChat,
            &openai_chunk(json!({"content": "a"}), None)
        ));
        assert!(!is_empty_text_delta(
            Api::OpenAiChat,
            &openai_chunk(json!({"role": "assistant", "content": ""}), None)
        ));
        assert!(!is_empty_text_delta(
            Api::OpenAiChat,
            &openai_chunk(json!({"content": ""}), Some("stop"))
        ));
        assert!(!is_empty_text_delta(
            Api::OpenAiChat,
            &json!({"choices": [], "usage": {"total_tokens": 3}})
        ));
    }

    #[test]
    fn injected_chunks_copy_the_envelope() {
        let current = openai_chunk(json!({}), Some("stop"));
        let event = text_delta_event(Api::OpenAiChat, Some(&current), 0, "held".to_owned());
        assert_eq!(
            event.json(),
            Some(&json!({
                "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion.chunk",
                "created": 1741570283, "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_eb9dce56a8",
                "choices": [{"index": 0, "delta": {"content": "held"}, "logprobs": null, "finish_reason": null}]
            }))
        );
    }
}
