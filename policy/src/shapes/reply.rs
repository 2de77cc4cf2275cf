//! Synthesized assistant replies: a policy answering a call itself, in the client's own format.
//!
//! [`assistant_reply`] reads what the client asked for from its request — the API, `model`,
//! `stream` and OpenAI `stream_options.include_usage` — and answers with one text reply that
//! ended normally (`finish_reason: stop` / `stop_reason: end_turn`), fresh ids, the requested
//! model echoed and zero token usage (nothing was generated upstream):
//!
//! - OpenAI: a `chat.completion`, or a stream of `chat.completion.chunk`s (role, text, finish,
//!   the usage chunk when `include_usage` was asked for) ending with `data: [DONE]`.
//! - Anthropic: a `message`, or the event sequence `message_start`, `content_block_start`,
//!   `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`.
//! - OpenAI Responses: a `response` (`status: completed`) with one `message` item, or the
//!   events `response.created`, `.in_progress`, `.output_item.added`, `.content_part.added`,
//!   one `.output_text.delta`, `.output_text.done`, `.content_part.done`, `.output_item.done`
//!   and `response.completed` carrying that same `response`, numbered from 0.

use std::time::SystemTime;

use bytes::Bytes;
use luthien_api::time::unix_seconds;
use serde_json::{Value, json};

use super::Api;
use crate::ImmediateResponse;
use crate::sse::SseEvent;

/// What the reply must look like, as the client's request asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyShape {
    /// The requested `model`, echoed back (empty when the request has none).
    pub model: String,
    /// The request had `stream: true`.
    pub stream: bool,
    /// OpenAI: the request had `stream_options.include_usage: true`.
    pub include_usage: bool,
}

impl ReplyShape {
    /// Reads the shape from a request body in either API's format.
    pub fn of_request(request: &Value) -> Self {
        Self {
            model: request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            stream: request.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
        }
    }
}

/// A complete, successful (200) answer to `request` whose assistant text is `text`; `reason`
/// is logged and recorded as why the call was answered without upstream.
pub fn assistant_reply(api: Api, request: &Value, text: &str, reason: &str) -> ImmediateResponse {
    let shape = ReplyShape::of_request(request);
    reply_with_ids(
        api,
        &shape,
        text,
        reason,
        &fresh_id(api),
        unix_seconds(SystemTime::now()),
    )
}

/// [`assistant_reply`] with a given id (`chatcmpl-…` / `msg_…`) and OpenAI `created` time.
pub fn reply_with_ids(
    api: Api,
    shape: &ReplyShape,
    text: &str,
    reason: &str,
    id: &str,
    created: u64,
) -> ImmediateResponse {
    let (content_type, body) = match (api, shape.stream) {
        (Api::OpenAiChat, false) => (
            "application/json",
            Bytes::from(openai_completion(id, created, &shape.model, text).to_string()),
        ),
        (Api::OpenAiChat, true) => (
            "text/event-stream",
            encode(&openai_chunks(
                id,
                created,
                &shape.model,
                text,
                shape.include_usage,
            )),
        ),
        (Api::AnthropicMessages, false) => (
            "application/json",
            Bytes::from(anthropic_message(id, &shape.model, text).to_string()),
        ),
        (Api::AnthropicMessages, true) => (
            "text/event-stream",
            encode(&anthropic_events(id, &shape.model, text)),
        ),
        (Api::OpenAiResponses, false) => (
            "application/json",
            Bytes::from(responses_object(id, created, &shape.model, text).to_string()),
        ),
        (Api::OpenAiResponses, true) => (
            "text/event-stream",
            encode(&responses_events(id, created, &shape.model, text)),
        ),
    };
    ImmediateResponse {
        status: 200,
        content_type,
        body,
        reason: reason.to_owned(),
    }
}

/// A new response id in the API's style: `chatcmpl-<32 hex>`, `msg_<32 hex>` or
/// `resp_<32 hex>`.
pub fn fresh_id(api: Api) -> String {
    let random = uuid::Uuid::new_v4().simple();
    match api {
        Api::OpenAiChat => format!("chatcmpl-{random}"),
        Api::AnthropicMessages => format!("msg_{random}"),
        Api::OpenAiResponses => format!("resp_{random}"),
    }
}

/// A Responses `response` with one assistant `message` item carrying `text`; the item's id is
/// the response's with `msg_` in place of `resp_`.
pub fn responses_object(id: &str, created: u64, model: &str, text: &str) -> Value {
    let message = responses_message(&responses_message_id(id), text);
    responses_envelope(id, created, model, "completed", vec![message])
}

/// The events of a streamed Responses answer carrying `text`.
pub fn responses_events(id: &str, created: u64, model: &str, text: &str) -> Vec<SseEvent> {
    let mut started = responses_envelope(id, created, model, "in_progress", Vec::new());
    started["usage"] = Value::Null;
    let message = responses_message(&responses_message_id(id), text);
    let mut events = vec![
        json!({"type": "response.created", "response": started}),
        json!({"type": "response.in_progress", "response": started}),
    ];
    events.extend(responses_message_events(0, &message));
    events.push(json!({"type": "response.completed",
        "response": responses_object(id, created, model, text)}));
    (0u64..)
        .zip(events)
        .map(|(number, event)| numbered_event(event, number.into()))
        .collect()
}

/// A completed assistant `message` item with one `output_text` part carrying `text`.
pub fn responses_message(id: &str, text: &str) -> Value {
    json!({"type": "message", "id": id, "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// The events that stream `message` (a completed item with one `output_text` part) whole at
/// `output_index`: the item added (in progress, no content), its part added empty, the text in
/// one delta, then the text, the part and the item done. Without `sequence_number`s, which
/// the caller gives ([`numbered_event`]).
pub fn responses_message_events(output_index: usize, message: &Value) -> Vec<Value> {
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let part = message
        .pointer("/content/0")
        .cloned()
        .unwrap_or(Value::Null);
    let text = part.get("text").cloned().unwrap_or(Value::Null);
    let mut opened = message.clone();
    opened["status"] = json!("in_progress");
    opened["content"] = json!([]);
    let mut empty_part = part.clone();
    empty_part["text"] = json!("");
    vec![
        json!({"type": "response.output_item.added", "output_index": output_index, "item": opened}),
        json!({"type": "response.content_part.added", "item_id": id, "output_index": output_index,
            "content_index": 0, "part": empty_part}),
        json!({"type": "response.output_text.delta", "item_id": id, "output_index": output_index,
            "content_index": 0, "delta": text, "logprobs": []}),
        json!({"type": "response.output_text.done", "item_id": id, "output_index": output_index,
            "content_index": 0, "text": text, "logprobs": []}),
        json!({"type": "response.content_part.done", "item_id": id, "output_index": output_index,
            "content_index": 0, "part": part}),
        json!({"type": "response.output_item.done", "output_index": output_index, "item": message}),
    ]
}

/// A Responses event from its data, `sequence_number` placed after `type` as the API sends it
/// (left out when `null`), named by its `type`.
pub fn numbered_event(body: Value, sequence_number: Value) -> SseEvent {
    let kind = body["type"].as_str().map(str::to_owned);
    let mut event = serde_json::Map::new();
    let Value::Object(fields) = body else {
        return SseEvent::from_json(kind.as_deref(), body);
    };
    let mut fields = fields.into_iter();
    event.extend(fields.next());
    if !sequence_number.is_null() {
        event.insert("sequence_number".to_owned(), sequence_number);
    }
    event.extend(fields);
    SseEvent::from_json(kind.as_deref(), Value::Object(event))
}

/// The fields of a `response` the SDKs require, with zero usage.
fn responses_envelope(
    id: &str,
    created: u64,
    model: &str,
    status: &str,
    output: Vec<Value>,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "usage": {
            "input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0
        }
    })
}

fn responses_message_id(response_id: &str) -> String {
    let random = response_id.strip_prefix("resp_").unwrap_or(response_id);
    format!("msg_{random}")
}

/// An OpenAI `chat.completion` with one choice carrying `text`.
pub fn openai_completion(id: &str, created: u64, model: &str, text: &str) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": openai_usage()
    })
}

/// The chunks of a streamed OpenAI answer carrying `text`, `[DONE]` included.
pub fn openai_chunks(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    include_usage: bool,
) -> Vec<SseEvent> {
    let chunk = |delta: Value, finish_reason: Value| {
        SseEvent::from_json(
            None,
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
            }),
        )
    };
    let mut events = vec![
        chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        chunk(json!({"content": text}), Value::Null),
        chunk(json!({}), json!("stop")),
    ];
    if include_usage {
        events.push(SseEvent::from_json(
            None,
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": openai_usage()
            }),
        ));
    }
    events.push(SseEvent::from_wire(Bytes::from_static(b"data: [DONE]\n\n")));
    events
}

fn openai_usage() -> Value {
    json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
}

/// An Anthropic `message` with one text block carrying `text`.
pub fn anthropic_message(id: &str, model: &str, text: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0}
    })
}

/// The events of a streamed Anthropic answer carrying `text`.
pub fn anthropic_events(id: &str, model: &str, text: &str) -> Vec<SseEvent> {
    let event = |value: Value| {
        let event_type = value.get("type").and_then(Value::as_str).map(str::to_owned);
        SseEvent::from_json(event_type.as_deref(), value)
    };
    vec![
        event(json!({
            "type": "message_start",
            "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}
            }
        })),
        event(
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        event(json!({"type": "content_block_stop", "index": 0})),
        event(json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 0}
        })),
        event(json!({"type": "message_stop"})),
    ]
}

fn encode(events: &[SseEvent]) -> Bytes {
    let mut body = Vec::new();
    for event in events {
        body.extend_from_slice(&event.to_bytes());
    }
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::fixtures::decode;

    fn shape(stream: bool, include_usage: bool) -> ReplyShape {
        ReplyShape {
            model: "gpt-4o".to_owned(),
            stream,
            include_usage,
        }
    }

    fn body_text(response: &ImmediateResponse) -> &str {
        std::str::from_utf8(&response.body).unwrap()
    }

    #[test]
    fn the_shape_comes_from_the_request() {
        let request = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": []});
        assert_eq!(ReplyShape::of_request(&request), shape(true, true));
        let request = json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []});
        assert_eq!(
            ReplyShape::of_request(&request),
            ReplyShape {
                model: "claude-sonnet-4-5".to_owned(),
                stream: false,
                include_usage: false
            }
        );
        assert_eq!(ReplyShape::of_request(&json!({})).model, "");
    }

    #[test]
    fn openai_completion_has_the_exact_chat_completion_shape() {
        let response = reply_with_ids(
            Api::OpenAiChat,
            &shape(false, false),
            "No.",
            "blocked",
            "chatcmpl-1",
            1741570283,
        );
        assert_eq!(response.status, 200);
        assert_eq!(response.content_type, "application/json");
        assert_eq!(response.reason, "blocked");
        assert_eq!(
            serde_json::from_slice::<Value>(&response.body).unwrap(),
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1741570283, "model": "gpt-4o",
                "choices": [{"index": 0,
                             "message": {"role": "assistant", "content": "No.", "refusal": null, "annotations": []},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            })
        );
    }

    #[test]
    fn openai_stream_is_role_text_finish_usage_done() {
        let response = reply_with_ids(
            Api::OpenAiChat,
            &shape(true, true),
            "No \"way\"\nhere.",
            "blocked",
            "chatcmpl-1",
            7,
        );
        assert_eq!(response.content_type, "text/event-stream");
        let envelope =
            r#""id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"gpt-4o""#;
        assert_eq!(
            body_text(&response),
            format!(
                "data: {{{envelope},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n\
                 data: {{{envelope},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"No \\\"way\\\"\\nhere.\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n\
                 data: {{{envelope},\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n\
                 data: {{{envelope},\"choices\":[],\"usage\":{{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0}}}}\n\n\
                 data: [DONE]\n\n"
            )
        );
        // Without include_usage there is no usage chunk.
        let response = reply_with_ids(Api::OpenAiChat, &shape(true, false), "x", "r", "c", 7);
        let events = decode(body_text(&response));
        assert_eq!(events.len(), 4);
        assert!(events[3].is_done());
        assert_eq!(
            crate::shapes::fixtures::streamed_text(Api::OpenAiChat, &events),
            "x"
        );
    }

    #[test]
    fn anthropic_message_has_the_exact_message_shape() {
        let shape = ReplyShape {
            model: "claude-sonnet-4-5".to_owned(),
            stream: false,
            include_usage: false,
        };
        let response = reply_with_ids(Api::AnthropicMessages, &shape, "No.", "r", "msg_1", 0);
        assert_eq!(response.content_type, "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&response.body).unwrap(),
            json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "No."}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}
            })
        );
    }

    #[test]
    fn anthropic_stream_is_the_full_event_sequence() {
        let shape = ReplyShape {
            model: "claude-sonnet-4-5".to_owned(),
            stream: true,
            include_usage: false,
        };
        let response = reply_with_ids(Api::AnthropicMessages, &shape, "No.", "r", "msg_1", 0);
        assert_eq!(response.content_type, "text/event-stream");
        assert_eq!(
            body_text(&response),
            concat!(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\n",
                "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"No.\"}}\n\n",
                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":0}}\n\n",
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            )
        );
        let events = decode(body_text(&response));
        assert!(crate::shapes::is_stream_terminator(
            Api::AnthropicMessages,
            &events[5]
        ));
    }

    #[test]
    fn responses_stream_rebuilds_to_the_non_streamed_response() {
        let mut shape = shape(false, false);
        let whole = reply_with_ids(Api::OpenAiResponses, &shape, "No.", "r", "resp_1", 7);
        assert_eq!(whole.content_type, "application/json");
        let whole: Value = serde_json::from_slice(&whole.body).unwrap();
        assert_eq!(whole["output"][0]["id"], "msg_1");
        assert_eq!(whole["output"][0]["content"][0]["text"], "No.");
        assert_eq!(
            (&whole["status"], &whole["model"]),
            (&json!("completed"), &json!("gpt-4o"))
        );

        shape.stream = true;
        let streamed = reply_with_ids(Api::OpenAiResponses, &shape, "No.", "r", "resp_1", 7);
        assert_eq!(streamed.content_type, "text/event-stream");
        let events = decode(body_text(&streamed));
        let numbers: Vec<_> = events
            .iter()
            .map(|event| event.json().unwrap()["sequence_number"].as_u64())
            .collect();
        assert_eq!(numbers, (0..9).map(Some).collect::<Vec<_>>());
        assert_eq!(events[0].event_type(), Some("response.created"));
        assert!(crate::shapes::is_stream_terminator(
            Api::OpenAiResponses,
            &events[8]
        ));
        assert_eq!(events[8].json().unwrap()["response"], whole);
        let mut rebuilt = crate::reconstruct::Reconstructor::new(Api::OpenAiResponses);
        events.iter().for_each(|event| rebuilt.push(event));
        assert_eq!(rebuilt.finish(), Some(whole));
        assert_eq!(rebuilt.skipped(), 0);
    }

    #[test]
    fn fresh_ids_differ_and_follow_the_api_style() {
        let a = fresh_id(Api::OpenAiChat);
        assert!(a.starts_with("chatcmpl-") && a.len() == 41, "{a}");
        assert_ne!(a, fresh_id(Api::OpenAiChat));
        assert!(fresh_id(Api::AnthropicMessages).starts_with("msg_"));
        assert!(fresh_id(Api::OpenAiResponses).starts_with("resp_"));
        let reply = assistant_reply(Api::OpenAiChat, &json!({"model": "m"}), "t", "r");
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(body["model"], "m");
    }
}
