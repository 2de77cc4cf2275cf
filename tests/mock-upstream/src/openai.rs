//! The OpenAI Chat Completions wire format (`POST /v1/chat/completions`) and the models
//! listing (`GET /v1/models`, `GET /v1/models/{model}`).
//!
//! Ids and timestamps are fixed (`chatcmpl-mock-0001`, `created: 1700000000`) and objects are
//! built field by field in the order OpenAI sends them, so the same request always gets the
//! same bytes.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::reply::Reply;

/// The `id` of every completion.
pub const COMPLETION_ID: &str = "chatcmpl-mock-0001";
/// The `created` timestamp of every completion.
pub const CREATED: u64 = 1_700_000_000;
/// The `system_fingerprint` of every completion.
pub const SYSTEM_FINGERPRINT: &str = "fp_mock";

/// The id of the `index`-th tool call (counting from 0): `call_mock_0001`, ….
pub fn tool_call_id(index: usize) -> String {
    format!("call_mock_{:04}", index + 1)
}

/// An error body: `{"error":{"message","type","param":null,"code":null}}`.
pub fn error_body(kind: &str, message: &str) -> Bytes {
    Bytes::from(error_json(kind, message).to_string())
}

pub(crate) fn error_json(kind: &str, message: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": null,
        }
    })
}

/// The models the mock lists: id, `created`, `owned_by`.
pub const MODELS: [(&str, u64, &str); 3] = [
    ("gpt-4o-mini", 1_686_935_002, "openai"),
    ("gpt-4o", 1_715_367_049, "system"),
    ("o3-mini", 1_737_146_383, "system"),
];

fn model_json((id, created, owned_by): (&str, u64, &str)) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": owned_by,
    })
}

/// The models listing: `{"object":"list","data":[…]}` (not paginated).
pub fn model_list_body() -> Bytes {
    let data: Vec<Value> = MODELS.iter().map(|model| model_json(*model)).collect();
    Bytes::from(json!({ "object": "list", "data": data }).to_string())
}

/// One model object, or `None` for an id the mock does not list.
pub fn model_body(id: &str) -> Option<Bytes> {
    MODELS
        .iter()
        .find(|(known, _, _)| *known == id)
        .map(|model| Bytes::from(model_json(*model).to_string()))
}

/// The 404 body for an unknown model id, as OpenAI words it.
pub fn model_not_found_body(id: &str) -> Bytes {
    let body = json!({
        "error": {
            "message": format!("The model `{id}` does not exist or you do not have access to it."),
            "type": "invalid_request_error",
            "param": null,
            "code": "model_not_found",
        }
    });
    Bytes::from(body.to_string())
}

fn finish_reason(reply: &Reply) -> &'static str {
    if reply.truncated {
        "length"
    } else if reply.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

fn usage(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    })
}

/// The non-streaming `chat.completion` object.
pub fn completion(reply: &Reply) -> Bytes {
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert("content".into(), reply.text.as_deref().into());
    message.insert("refusal".into(), Value::Null);
    if !reply.tool_calls.is_empty() {
        let calls = reply
            .tool_calls
            .iter()
            .enumerate()
            .map(|(index, call)| {
                json!({
                    "id": tool_call_id(index),
                    "type": "function",
                    "function": { "name": call.name, "arguments": call.arguments() },
                })
            })
            .collect();
        message.insert("tool_calls".into(), Value::Array(calls));
    }

    let completion = json!({
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reply),
        }],
        "usage": usage(reply),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    });
    Bytes::from(completion.to_string())
}

/// The streamed answer: one `data: …\n\n` event per chunk, ending with `data: [DONE]`.
///
/// With `include_usage`, every chunk carries `"usage": null` and a last chunk with no choices
/// carries the usage, after the chunk with the finish reason (as OpenAI does). A failing
/// stream sends half of the content deltas, then an in-band `{"error": …}` event, and stops
/// without `[DONE]`.
pub fn stream_events(reply: &Reply, include_usage: bool) -> Vec<Bytes> {
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = Map::new();
        chunk.insert("id".into(), COMPLETION_ID.into());
        chunk.insert("object".into(), "chat.completion.chunk".into());
        chunk.insert("created".into(), CREATED.into());
        chunk.insert("model".into(), reply.model.as_str().into());
        chunk.insert("system_fingerprint".into(), SYSTEM_FINGERPRINT.into());
        chunk.insert("choices".into(), choices);
        if include_usage {
            chunk.insert("usage".into(), usage.unwrap_or(Value::Null));
        }
        data(&Value::Object(chunk))
    };
    let delta = |delta: Value| {
        chunk(
            json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": null }]),
            None,
        )
    };

    let text_deltas = reply.text_deltas();
    let argument_fragments: usize = reply
        .tool_calls
        .iter()
        .map(|call| 1 + call.argument_fragments.len())
        .sum();
    let mut events = Vec::with_capacity(text_deltas.len() + argument_fragments + 4);

    // The first chunk announces the role; `content` is "" when text follows and null for an
    // answer made of tool calls only, mirroring the non-streamed `content`.
    let opening_content = if reply.text.is_some() {
        json!("")
    } else {
        Value::Null
    };
    events.push(delta(
        json!({ "role": "assistant", "content": opening_content }),
    ));

    if reply.fails_mid_stream {
        let sent = Reply::deltas_before_error(text_deltas.len());
        events.extend(
            text_deltas[..sent]
                .iter()
                .map(|text| delta(json!({ "content": text }))),
        );
        events.push(data(&error_json("overloaded_error", "Overloaded")));
        return events;
    }

    events.extend(
        text_deltas
            .iter()
            .map(|text| delta(json!({ "content": text }))),
    );

    for (index, call) in reply.tool_calls.iter().enumerate() {
        events.push(delta(json!({
            "tool_calls": [{
                "index": index,
                "id": tool_call_id(index),
                "type": "function",
                "function": { "name": call.name, "arguments": "" },
            }]
        })));
        events.extend(call.argument_fragments.iter().map(|fragment| {
            delta(json!({
                "tool_calls": [{ "index": index, "function": { "arguments": fragment } }]
            }))
        }));
    }

    // With several tool calls the finish reason travels in a chunk of its own, with an empty
    // delta; the mock always does so, which is also valid for plain text.
    events.push(chunk(
        json!([{
            "index": 0,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish_reason(reply),
        }]),
        None,
    ));
    if include_usage {
        events.push(chunk(json!([]), Some(usage(reply))));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn data(json: &Value) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}
