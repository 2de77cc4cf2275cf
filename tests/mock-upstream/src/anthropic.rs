//! The Anthropic Messages wire format (`POST /v1/messages`), token counting
//! (`POST /v1/messages/count_tokens`) and the models listing (`GET /v1/models`,
//! `GET /v1/models/{model_id}`).
//!
//! The stream is the stateful one: `message_start`, `ping`, then per content block
//! `content_block_start` / `content_block_delta`… / `content_block_stop`, then `message_delta`
//! (stop reason and output tokens) and `message_stop`. Ids are fixed (`msg_mock_0001`,
//! `toolu_mock_0001`, …) so the same request always gets the same bytes.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::reply::{self, Reply};
use crate::sse::event;

/// The `id` of every message.
pub const MESSAGE_ID: &str = "msg_mock_0001";

/// The id of the `index`-th tool use (counting from 0): `toolu_mock_0001`, ….
pub fn tool_use_id(index: usize) -> String {
    format!("toolu_mock_{:04}", index + 1)
}

/// An error body: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(kind: &str, message: &str) -> Bytes {
    Bytes::from(error_json(kind, message).to_string())
}

fn error_json(kind: &str, message: &str) -> Value {
    json!({ "type": "error", "error": { "type": kind, "message": message } })
}

/// The models the mock lists, newest first as the real API orders them: id, display name,
/// release date (RFC 3339).
pub const MODELS: [(&str, &str, &str); 3] = [
    (
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "2025-10-15T00:00:00Z",
    ),
    (
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
    ),
    (
        "claude-opus-4-1-20250805",
        "Claude Opus 4.1",
        "2025-08-05T00:00:00Z",
    ),
];

/// Page size of the models listing when the request gives no `limit`, and its bounds.
pub const DEFAULT_MODELS_LIMIT: usize = 20;
const MAX_MODELS_LIMIT: usize = 1000;

/// The `count_tokens` answer: `{"input_tokens":N}`.
pub fn count_tokens_body(input_tokens: u64) -> Bytes {
    Bytes::from(json!({ "input_tokens": input_tokens }).to_string())
}

fn model_json((id, display_name, created_at): (&str, &str, &str)) -> Value {
    json!({
        "type": "model",
        "id": id,
        "display_name": display_name,
        "created_at": created_at,
    })
}

/// One model object, or `None` for an id the mock does not list.
pub fn model_body(id: &str) -> Option<Bytes> {
    MODELS
        .iter()
        .find(|(known, _, _)| *known == id)
        .map(|model| Bytes::from(model_json(*model).to_string()))
}

/// The 404 body for an unknown model id.
pub fn model_not_found_body(id: &str) -> Bytes {
    error_body("not_found_error", &format!("model: {id}"))
}

/// A page of the models listing, paginated like the real API: `limit` (1 to 1000, default
/// 20) and either `after_id` or `before_id`, each the id of a listed model. The error is a
/// message for a `400`.
pub fn model_list_body(
    limit: Option<&str>,
    after_id: Option<&str>,
    before_id: Option<&str>,
) -> Result<Bytes, String> {
    let limit = reply::page_limit(limit, DEFAULT_MODELS_LIMIT, MAX_MODELS_LIMIT)?;
    let position = |name: &str, id: &str| {
        MODELS
            .iter()
            .position(|(known, _, _)| *known == id)
            .ok_or_else(|| format!("{name}: no model with id {id}"))
    };
    let (start, end) = match (after_id, before_id) {
        (Some(_), Some(_)) => return Err("after_id and before_id are exclusive".to_owned()),
        (Some(after), None) => {
            let start = position("after_id", after)? + 1;
            (start, (start + limit).min(MODELS.len()))
        }
        (None, Some(before)) => {
            let end = position("before_id", before)?;
            (end.saturating_sub(limit), end)
        }
        (None, None) => (0, limit.min(MODELS.len())),
    };
    let page = &MODELS[start..end];
    let has_more = if before_id.is_some() {
        start > 0
    } else {
        end < MODELS.len()
    };
    let body = json!({
        "data": page.iter().map(|model| model_json(*model)).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": page.first().map(|(id, _, _)| *id),
        "last_id": page.last().map(|(id, _, _)| *id),
    });
    Ok(Bytes::from(body.to_string()))
}

fn stop_reason(reply: &Reply) -> &'static str {
    if reply.truncated {
        "max_tokens"
    } else if reply.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    }
}

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

fn message(reply: &Reply, content: Vec<Value>, stop_reason: Option<&str>, usage: Value) -> Value {
    json!({
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage,
    })
}

/// The tool-use input as a JSON object. The fixed arguments always parse; an empty object
/// stands in should they ever not, rather than failing the request.
fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

/// The non-streaming `message` object.
pub fn message_body(reply: &Reply) -> Bytes {
    let mut content = Vec::new();
    if let Some(thinking) = &reply.thinking {
        content.push(json!({
            "type": "thinking",
            "thinking": thinking.text,
            "signature": thinking.signature,
        }));
    }
    if let Some(text) = &reply.text {
        content.push(json!({ "type": "text", "text": text }));
    }
    for (index, call) in reply.tool_calls.iter().enumerate() {
        content.push(json!({
            "type": "tool_use",
            "id": tool_use_id(index),
            "name": call.name,
            "input": tool_input(&call.arguments()),
        }));
    }
    let message = message(
        reply,
        content,
        Some(stop_reason(reply)),
        usage(reply.input_tokens, reply.output_tokens),
    );
    Bytes::from(message.to_string())
}

/// The streamed answer, one `event: …\ndata: …\n\n` per event.
///
/// `message_start` reports one output token, like the real API; the final count comes in
/// `message_delta`, so a reassembly must take the last value rather than add them up. A
/// failing stream stops after half of the text deltas with an `error` event.
pub fn stream_events(reply: &Reply) -> Vec<Bytes> {
    let mut events = Vec::new();
    let mut push = |kind: &str, data: Value| events.push(event(kind, &data));

    push(
        "message_start",
        json!({
            "type": "message_start",
            "message": message(reply, Vec::new(), None, usage(reply.input_tokens, 1)),
        }),
    );
    push("ping", json!({ "type": "ping" }));

    let mut index = 0;
    let block_start = |index: usize, block: Value| json!({ "type": "content_block_start", "index": index, "content_block": block });
    let block_delta = |index: usize, delta: Value| json!({ "type": "content_block_delta", "index": index, "delta": delta });
    let block_stop = |index: usize| json!({ "type": "content_block_stop", "index": index });

    if let Some(thinking) = &reply.thinking {
        push(
            "content_block_start",
            block_start(
                index,
                json!({ "type": "thinking", "thinking": "", "signature": "" }),
            ),
        );
        for text in reply.thinking_deltas() {
            push(
                "content_block_delta",
                block_delta(index, json!({ "type": "thinking_delta", "thinking": text })),
            );
        }
        push(
            "content_block_delta",
            block_delta(
                index,
                json!({ "type": "signature_delta", "signature": thinking.signature }),
            ),
        );
        push("content_block_stop", block_stop(index));
        index += 1;
    }

    if reply.text.is_some() {
        push(
            "content_block_start",
            block_start(index, json!({ "type": "text", "text": "" })),
        );
        let deltas = reply.text_deltas();
        let sent = if reply.fails_mid_stream {
            Reply::deltas_before_error(deltas.len())
        } else {
            deltas.len()
        };
        for text in &deltas[..sent] {
            push(
                "content_block_delta",
                block_delta(index, json!({ "type": "text_delta", "text": text })),
            );
        }
        if reply.fails_mid_stream {
            push("error", error_json("overloaded_error", "Overloaded"));
            return events;
        }
        push("content_block_stop", block_stop(index));
        index += 1;
    }

    for (call_index, call) in reply.tool_calls.iter().enumerate() {
        push(
            "content_block_start",
            block_start(
                index,
                json!({
                    "type": "tool_use",
                    "id": tool_use_id(call_index),
                    "name": call.name,
                    "input": {},
                }),
            ),
        );
        for fragment in call.argument_fragments {
            push(
                "content_block_delta",
                block_delta(
                    index,
                    json!({ "type": "input_json_delta", "partial_json": fragment }),
                ),
            );
        }
        push("content_block_stop", block_stop(index));
        index += 1;
    }

    push(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason(reply), "stop_sequence": null },
            "usage": { "output_tokens": reply.output_tokens },
        }),
    );
    push("message_stop", json!({ "type": "message_stop" }));
    events
}
