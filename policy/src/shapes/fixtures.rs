//! Wire fixtures for tests, in the exact shapes the two APIs send.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::CallPolicy;
use crate::sse::{SseDecoder, SseEvent};

/// Decodes a whole SSE body.
pub(crate) fn decode(stream: &str) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    decoder
        .push(Bytes::copy_from_slice(stream.as_bytes()), &mut events)
        .unwrap();
    events.extend(decoder.finish());
    events
}

/// The bytes a client would receive for `events`.
pub(crate) fn encode(events: &[SseEvent]) -> String {
    events
        .iter()
        .map(|event| String::from_utf8_lossy(&event.to_bytes()).into_owned())
        .collect()
}

/// Runs a whole stream through one call's `on_event` and `on_stream_end`.
pub(crate) async fn run_stream(call: &mut dyn CallPolicy, stream: &str) -> Vec<SseEvent> {
    let mut out = Vec::new();
    for event in decode(stream) {
        call.on_event(event, &mut out).await.unwrap();
    }
    call.on_stream_end(&mut out).await.unwrap();
    out
}

/// An OpenAI chat completion chunk with one choice (index 0).
pub(crate) fn openai_chunk(delta: Value, finish_reason: Option<&str>) -> Value {
    openai_chunk_for_choice(0, delta, finish_reason)
}

pub(crate) fn openai_chunk_for_choice(
    index: usize,
    delta: Value,
    finish_reason: Option<&str>,
) -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_eb9dce56a8",
        "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
    })
}

/// One unnamed SSE event carrying `value` (OpenAI style).
pub(crate) fn data_event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// A streamed OpenAI answer of `pieces` (one chunk each), as sent with
/// `stream_options.include_usage`: role chunk, content chunks, finish chunk, usage chunk, `[DONE]`.
pub(crate) fn openai_text_stream(pieces: &[&str]) -> String {
    let mut stream = data_event(&openai_chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    ));
    for piece in pieces {
        stream += &data_event(&openai_chunk(json!({"content": piece}), None));
    }
    stream += &data_event(&openai_chunk(json!({}), Some("stop")));
    stream += &data_event(&openai_usage_chunk());
    stream + "data: [DONE]\n\n"
}

/// The trailing `include_usage` chunk: no choices, after every `finish_reason`.
pub(crate) fn openai_usage_chunk() -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_eb9dce56a8",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    })
}

/// A streamed OpenAI answer with text and one tool call whose arguments arrive in pieces.
pub(crate) const OPENAI_TOOL_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Let me check.\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: [DONE]\n\n",
);

/// A non-streamed OpenAI answer with text and a tool call.
pub(crate) const OPENAI_TOOL_RESPONSE: &str = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [{
    "index": 0,
    "message": {
      "role": "assistant",
      "content": "Let me check.",
      "tool_calls": [{"id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
                      "function": {"name": "get_weather", "arguments": "{\"city\":\"paris\"}"}}],
      "refusal": null,
      "annotations": []
    },
    "logprobs": null,
    "finish_reason": "tool_calls"
  }],
  "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29},
  "system_fingerprint": "fp_eb9dce56a8"
}"#;

pub(crate) fn openai_request() -> Value {
    json!({
        "model": "gpt-4o",
        "stream": true,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ]
    })
}

pub(crate) fn anthropic_request() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are terse", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "call the tool", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "sunny"}
            ]}
        ]
    })
}

/// A non-streamed Anthropic answer with thinking, text and a tool call.
pub(crate) const ANTHROPIC_RESPONSE: &str = r#"{
  "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [
    {"type": "thinking", "thinking": "the user wants weather", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
    {"type": "text", "text": "Let me check."},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "paris"}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {"input_tokens": 2095, "output_tokens": 503}
}"#;

/// A streamed Anthropic answer: a thinking block (0), a text block (1) with a `ping` inside,
/// and a tool_use block (2) whose input arrives as `input_json_delta`s.
pub(crate) const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"the user wants weather\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Let me\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\" check the weather.\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\" One moment.\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"paris\\\"}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

/// A streamed Anthropic answer of one text block made of `pieces` (one delta each).
pub(crate) fn anthropic_text_stream(pieces: &[&str]) -> String {
    let mut stream = String::from(concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    ));
    for piece in pieces {
        let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}});
        stream += &format!("event: content_block_delta\ndata: {delta}\n\n");
    }
    stream += concat!(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    stream
}

/// A Responses stream of one message whose text arrives in `pieces`, each whole copy of the
/// text included (`output_text.done`, `content_part.done`, `output_item.done`,
/// `response.completed`), as the API sends it.
pub(crate) fn responses_text_stream(pieces: &[&str]) -> String {
    let text: String = pieces.concat();
    let events = crate::shapes::reply::responses_events("resp_01", 1741570283, "gpt-5", &text);
    let mut stream = String::new();
    for event in &events {
        let value = event.json().unwrap();
        if value["type"] == "response.output_text.delta" {
            for piece in pieces {
                let mut delta = value.clone();
                delta["delta"] = json!(piece);
                stream += &format!("event: response.output_text.delta\ndata: {delta}\n\n");
            }
        } else {
            stream += &String::from_utf8_lossy(&event.to_bytes());
        }
    }
    stream
}

/// The assistant text a client would assemble from a stream (all content streams, in order).
pub(crate) fn streamed_text(api: crate::shapes::Api, events: &[SseEvent]) -> String {
    let mut text = String::new();
    for event in events {
        if let Some(value) = event.json() {
            crate::shapes::for_each_stream_text(api, value, |_, piece| text.push_str(piece));
        }
    }
    text
}
