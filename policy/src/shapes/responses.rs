//! OpenAI Responses shapes (`POST /v1/responses`).
//!
//! Text lives in `instructions` and `input` (a string, or a list of items whose messages hold a
//! string or `input_text` / `output_text` parts) in requests, and in the `output_text` parts of
//! `message` items of `output` in responses. A stream sends each part's text twice over: as
//! `response.output_text.delta` events, and then whole, four more times:
//! `response.output_text.done` (`text`), `response.content_part.done` (`part`),
//! `response.output_item.done` (`item`) and the terminal event's `response`
//! (`response.completed`, `.incomplete`, `.failed`), which the SDKs return as the final
//! response. [`final_text_pointers`] finds those copies, so that a policy rewriting the deltas
//! rewrites them too. Function-call arguments, reasoning items (summaries and
//! `encrypted_content`) and refusals are never visited.
//!
//! A content stream is one part of one output item, numbered [`content_stream`]`(output_index,
//! content_index)`.

use serde_json::{Value, json};

use super::{array, array_mut, as_index, event_type};
use crate::sse::SseEvent;

/// The event that ends a stream; the client expects nothing after it.
const TERMINAL_EVENTS: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// How many content parts one output item may have before content-stream numbers collide.
const PARTS_PER_ITEM: usize = 1 << 16;

/// The content stream of part `content_index` of output item `output_index`.
pub(crate) fn content_stream(output_index: usize, content_index: usize) -> usize {
    output_index * PARTS_PER_ITEM + content_index % PARTS_PER_ITEM
}

/// The output item and part of a [`content_stream`] number.
fn stream_position(index: usize) -> (usize, usize) {
    (index / PARTS_PER_ITEM, index % PARTS_PER_ITEM)
}

pub(super) fn for_each_request_text(request: &mut Value, visit: &mut impl FnMut(&mut String)) {
    if let Some(Value::String(instructions)) = request.get_mut("instructions") {
        visit(instructions);
    }
    match request.get_mut("input") {
        Some(Value::String(input)) => visit(input),
        Some(Value::Array(items)) => {
            for item in items.iter_mut().filter(|item| is_message(item)) {
                visit_parts_mut(
                    item.get_mut("content"),
                    &["input_text", "output_text"],
                    visit,
                );
            }
        }
        _ => {}
    }
}

pub(super) fn for_each_response_text(response: &mut Value, visit: &mut impl FnMut(&mut String)) {
    for item in array_mut(response.get_mut("output")) {
        if is_message(item) {
            visit_parts_mut(item.get_mut("content"), &["output_text"], visit);
        }
    }
}

pub(super) fn for_each_stream_text(event: &Value, visit: &mut impl FnMut(usize, &str)) {
    if let Some(index) = delta_stream(event)
        && let Some(Value::String(text)) = event.get("delta")
    {
        visit(index, text);
    }
}

pub(super) fn for_each_stream_text_mut(
    event: &mut Value,
    visit: &mut impl FnMut(usize, &mut String),
) {
    if let Some(index) = delta_stream(event)
        && let Some(Value::String(text)) = event.get_mut("delta")
    {
        visit(index, text);
    }
}

/// `response.output_text.done` ends its part's content stream: the whole text follows in it.
pub(super) fn for_each_content_end(event: &Value, visit: &mut impl FnMut(usize)) {
    if event_type(event) == Some("response.output_text.done")
        && let Some(index) = part_stream(event)
    {
        visit(index);
    }
}

pub(super) fn is_stream_terminator(event: &Value) -> bool {
    event_type(event).is_some_and(|kind| TERMINAL_EVENTS.contains(&kind))
}

pub(super) fn is_empty_text_delta(event: &Value) -> bool {
    delta_stream(event).is_some()
        && event.get("delta").and_then(Value::as_str) == Some("")
        && array(event.get("logprobs")).is_empty()
}

/// A `response.output_text.delta` for content stream `index`. Its `item_id` and
/// `sequence_number` are those of `envelope` (the event it is sent before): the format has no
/// way to number an event the provider did not send, and the SDKs do not require the numbers
/// to be contiguous.
pub(super) fn text_delta_event(envelope: Option<&Value>, index: usize, text: String) -> SseEvent {
    let (output_index, content_index) = stream_position(index);
    let field = |name: &str| {
        envelope
            .and_then(|event| event.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let item_id = match field("item_id") {
        Value::Null => Value::String(String::new()),
        id => id,
    };
    let kind = "response.output_text.delta";
    SseEvent::from_json(
        Some(kind),
        json!({
            "type": kind,
            "sequence_number": field("sequence_number"),
            "item_id": item_id,
            "output_index": output_index,
            "content_index": content_index,
            "delta": text,
            "logprobs": [],
        }),
    )
}

/// JSON pointers to every whole copy of an output text a stream event carries (see the module
/// docs); empty for deltas and every other event, without allocating.
pub(crate) fn final_text_pointers(event: &Value) -> Vec<String> {
    let mut pointers = Vec::new();
    match event_type(event) {
        Some("response.output_text.done") => pointers.push("/text".to_owned()),
        Some("response.content_part.done") if is_output_text(event.get("part")) => {
            pointers.push("/part/text".to_owned());
        }
        Some("response.output_item.done") => {
            if let Some(item) = event.get("item") {
                message_text_pointers("/item", item, &mut pointers);
            }
        }
        Some(_) => {
            if let Some(response) = event.get("response") {
                for (position, item) in array(response.get("output")).iter().enumerate() {
                    message_text_pointers(
                        &format!("/response/output/{position}"),
                        item,
                        &mut pointers,
                    );
                }
            }
        }
        None => {}
    }
    pointers
}

/// Pointers to the `output_text` texts of an output item at `prefix`, when it is a message.
fn message_text_pointers(prefix: &str, item: &Value, pointers: &mut Vec<String>) {
    if !is_message(item) {
        return;
    }
    for (position, part) in array(item.get("content")).iter().enumerate() {
        if is_output_text(Some(part)) {
            pointers.push(format!("{prefix}/content/{position}/text"));
        }
    }
}

/// The content stream of a `response.output_text.delta`.
fn delta_stream(event: &Value) -> Option<usize> {
    if event_type(event) == Some("response.output_text.delta") {
        part_stream(event)
    } else {
        None
    }
}

/// The content stream an event's `output_index` and `content_index` name.
fn part_stream(event: &Value) -> Option<usize> {
    Some(content_stream(
        as_index(event.get("output_index"))?,
        as_index(event.get("content_index"))?,
    ))
}

/// A message item: `type: "message"`, or an input item with a `role` and no `type` (the
/// "easy input message" form).
fn is_message(item: &Value) -> bool {
    match item.get("type").and_then(Value::as_str) {
        Some(kind) => kind == "message",
        None => item.get("role").is_some(),
    }
}

fn is_output_text(part: Option<&Value>) -> bool {
    part.and_then(|part| part.get("type"))
        .and_then(Value::as_str)
        == Some("output_text")
}

/// Visits a message `content`: a string, or the `text` of its parts whose type is one of
/// `kinds`.
fn visit_parts_mut(
    content: Option<&mut Value>,
    kinds: &[&str],
    visit: &mut impl FnMut(&mut String),
) {
    match content {
        Some(Value::String(text)) => visit(text),
        Some(Value::Array(parts)) => {
            for part in parts {
                let kind = part.get("type").and_then(Value::as_str);
                if kind.is_some_and(|kind| kinds.contains(&kind))
                    && let Some(Value::String(text)) = part.get_mut("text")
                {
                    visit(text);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::{content_stream, final_text_pointers};
    use serde_json::json;

    fn upper_case(text: &mut String) {
        *text = text.to_uppercase();
    }

    #[test]
    fn request_text_covers_instructions_strings_and_text_parts_only() {
        let mut request = json!({
            "model": "gpt-5",
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "weather in paris?"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}], "encrypted_content": "abc"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "and here?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"}
                ]}
            ]
        });
        for_each_request_text(Api::OpenAiResponses, &mut request, upper_case);
        assert_eq!(request["instructions"], "BE BRIEF");
        assert_eq!(request["input"][0]["content"], "WEATHER IN PARIS?");
        assert_eq!(request["input"][1]["content"][0]["text"], "CHECKING.");
        assert_eq!(request["input"][2]["arguments"], "{\"city\":\"paris\"}");
        assert_eq!(request["input"][3]["output"], "sunny");
        assert_eq!(request["input"][4]["summary"][0]["text"], "think");
        assert_eq!(request["input"][5]["content"][0]["text"], "AND HERE?");

        let mut request = json!({"input": "hello"});
        for_each_request_text(Api::OpenAiResponses, &mut request, upper_case);
        assert_eq!(request["input"], "HELLO");
    }

    #[test]
    fn response_text_is_the_output_text_of_messages() {
        let mut response = json!({"object": "response", "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "sunny", "annotations": []},
                {"type": "refusal", "refusal": "no"}
            ]},
            {"type": "function_call", "name": "f", "arguments": "{\"a\":\"b\"}"}
        ]});
        for_each_response_text(Api::OpenAiResponses, &mut response, upper_case);
        assert_eq!(response["output"][1]["content"][0]["text"], "SUNNY");
        assert_eq!(response["output"][1]["content"][1]["refusal"], "no");
        assert_eq!(response["output"][0]["summary"][0]["text"], "think");
        assert_eq!(response["output"][2]["arguments"], "{\"a\":\"b\"}");
    }

    #[test]
    fn deltas_and_ends_name_their_part() {
        let delta = json!({"type": "response.output_text.delta", "sequence_number": 5, "item_id": "msg_1",
            "output_index": 2, "content_index": 1, "delta": "hi", "logprobs": []});
        let mut seen = Vec::new();
        for_each_stream_text(Api::OpenAiResponses, &delta, |index, text| {
            seen.push((index, text.to_owned()))
        });
        assert_eq!(seen, [(content_stream(2, 1), "hi".to_owned())]);
        let done = json!({"type": "response.output_text.done", "sequence_number": 6, "item_id": "msg_1",
            "output_index": 2, "content_index": 1, "text": "hi"});
        let mut ended = Vec::new();
        for_each_content_end(Api::OpenAiResponses, &done, |index| ended.push(index));
        assert_eq!(ended, [content_stream(2, 1)]);

        let injected = text_delta_event(
            Api::OpenAiResponses,
            Some(&done),
            content_stream(2, 1),
            "x".into(),
        );
        assert_eq!(injected.event_type(), Some("response.output_text.delta"));
        let mut injected = injected.json().unwrap().clone();
        assert!(!is_empty_text_delta(Api::OpenAiResponses, &injected));
        injected["delta"] = json!("");
        assert!(is_empty_text_delta(Api::OpenAiResponses, &injected));
        assert_eq!(
            injected,
            json!({"type": "response.output_text.delta", "sequence_number": 6, "item_id": "msg_1",
                "output_index": 2, "content_index": 1, "delta": "", "logprobs": []})
        );
    }

    #[test]
    fn every_whole_copy_of_a_text_is_found() {
        let message = json!({"type": "message", "id": "msg_1", "role": "assistant", "content": [
            {"type": "output_text", "text": "one", "annotations": []},
            {"type": "refusal", "refusal": "no"},
            {"type": "output_text", "text": "two", "annotations": []}
        ]});
        let cases = [
            (
                json!({"type": "response.output_text.done", "text": "one"}),
                vec!["/text"],
            ),
            (
                json!({"type": "response.content_part.done", "part": {"type": "output_text", "text": "one"}}),
                vec!["/part/text"],
            ),
            (
                json!({"type": "response.content_part.done", "part": {"type": "refusal", "refusal": "no"}}),
                vec![],
            ),
            (
                json!({"type": "response.output_item.done", "item": message}),
                vec!["/item/content/0/text", "/item/content/2/text"],
            ),
            (
                json!({"type": "response.completed", "response": {"output": [
                    {"type": "function_call", "arguments": "{}"}, message
                ]}}),
                vec![
                    "/response/output/1/content/0/text",
                    "/response/output/1/content/2/text",
                ],
            ),
            (
                json!({"type": "response.output_text.delta", "delta": "one"}),
                vec![],
            ),
            (
                json!({"type": "response.function_call_arguments.done", "arguments": "{}"}),
                vec![],
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(final_text_pointers(&event), expected, "{event}");
        }
    }
}
