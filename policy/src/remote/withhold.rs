//! `on_error: block` after the request phase: the response (or the rest of the stream) is
//! withheld and replaced by a notice, in a shape the client's SDK still accepts.
//!
//! - Non-streamed: the body becomes a complete answer with the notice as its only text
//!   (`finish_reason: stop` / `stop_reason: end_turn`), keeping the original id and model.
//! - Streamed: [`StreamCut`] follows what already went to the client and, on failure, closes
//!   it properly: OpenAI — a notice text delta, a `finish_reason: stop` chunk for every choice
//!   still open, `[DONE]`; Anthropic — `message_start` if none was sent, a `content_block_stop`
//!   for every open block, a text block with the notice, `message_delta` (`end_turn`) if none
//!   was sent, `message_stop`. Everything upstream sends afterwards is dropped.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::shapes::{self, Api, reply};
use crate::sse::SseEvent;

/// Replaces a complete response body with the notice.
pub fn withhold_response(api: Api, body: &mut Value, model: &str, notice: &str) {
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let model = match text("model") {
        found if !found.is_empty() => found,
        _ => model.to_owned(),
    };
    let id = match text("id") {
        found if !found.is_empty() => found,
        _ => reply::fresh_id(api),
    };
    *body = match api {
        Api::OpenAiChat => {
            let created = body.get("created").and_then(Value::as_u64).unwrap_or(0);
            reply::openai_completion(&id, created, &model, notice)
        }
        Api::AnthropicMessages => reply::anthropic_message(&id, &model, notice),
    };
}

/// What of a stream already reached the client, so that it can be cut off cleanly.
#[derive(Debug, Default)]
pub struct StreamCut {
    /// OpenAI: the envelope of the first upstream chunk, for injected chunks.
    envelope: Option<Value>,
    /// OpenAI choices / Anthropic blocks started and not yet finished.
    open: BTreeSet<u64>,
    /// Anthropic: the index a new block gets.
    next_block: u64,
    message_started: bool,
    message_delta_sent: bool,
    /// `[DONE]` / `message_stop` went out: nothing can be added any more.
    terminated: bool,
}

impl StreamCut {
    /// Notes an upstream event (for the OpenAI envelope).
    pub fn saw_upstream(&mut self, api: Api, event: &SseEvent) {
        if self.envelope.is_none()
            && api == Api::OpenAiChat
            && let Some(value) = event.json()
        {
            self.envelope = shapes::stream_envelope(api, value);
        }
    }

    /// Notes an event that goes to the client.
    pub fn sent(&mut self, api: Api, event: &SseEvent) {
        if shapes::is_stream_terminator(api, event) {
            self.terminated = true;
            return;
        }
        let Some(value) = event.json() else {
            return;
        };
        match api {
            Api::OpenAiChat => {
                for choice in value
                    .get("choices")
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice)
                {
                    let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                    if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                        self.open.remove(&index);
                    } else {
                        self.open.insert(index);
                    }
                }
            }
            Api::AnthropicMessages => {
                let index = value.get("index").and_then(Value::as_u64);
                match value.get("type").and_then(Value::as_str) {
                    Some("message_start") => self.message_started = true,
                    Some("message_delta") => self.message_delta_sent = true,
                    Some("content_block_start") => {
                        if let Some(index) = index {
                            self.open.insert(index);
                            self.next_block = self.next_block.max(index + 1);
                        }
                    }
                    Some("content_block_stop") => {
                        if let Some(index) = index {
                            self.open.remove(&index);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The events that end the stream with `notice`; empty when it already ended.
    pub fn cut(&mut self, api: Api, model: &str, notice: &str) -> Vec<SseEvent> {
        if self.terminated {
            return Vec::new();
        }
        self.terminated = true;
        let mut events = Vec::new();
        match api {
            Api::OpenAiChat => {
                let envelope = self.envelope.clone().unwrap_or_else(|| {
                    json!({
                        "id": reply::fresh_id(api),
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": model,
                    })
                });
                events.push(shapes::text_delta_event(
                    api,
                    Some(&envelope),
                    0,
                    format!("\n\n{notice}"),
                ));
                let mut open = std::mem::take(&mut self.open);
                open.insert(0);
                for index in open {
                    let mut chunk = envelope.clone();
                    chunk["choices"] = json!([{
                        "index": index, "delta": {}, "logprobs": null, "finish_reason": "stop"
                    }]);
                    events.push(SseEvent::from_json(None, chunk));
                }
                events.push(SseEvent::from_wire(Bytes::from_static(b"data: [DONE]\n\n")));
            }
            Api::AnthropicMessages => {
                let event = |value: Value| {
                    let kind = value.get("type").and_then(Value::as_str).map(str::to_owned);
                    SseEvent::from_json(kind.as_deref(), value)
                };
                if !self.message_started {
                    let mut start = reply::anthropic_events(&reply::fresh_id(api), model, "");
                    start.truncate(1);
                    events.append(&mut start);
                }
                for index in std::mem::take(&mut self.open) {
                    events.push(event(json!({"type": "content_block_stop", "index": index})));
                }
                let index = self.next_block;
                events.push(event(json!({
                    "type": "content_block_start", "index": index,
                    "content_block": {"type": "text", "text": ""}
                })));
                events.push(event(json!({
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": notice}
                })));
                events.push(event(json!({"type": "content_block_stop", "index": index})));
                if !self.message_delta_sent {
                    events.push(event(json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                        "usage": {"output_tokens": 0}
                    })));
                }
                events.push(event(json!({"type": "message_stop"})));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(events: &[SseEvent]) -> Vec<String> {
        events
            .iter()
            .map(|event| event.event_type().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn anthropic_cuts_close_open_blocks_and_the_message() {
        let mut cut = StreamCut::default();
        let api = Api::AnthropicMessages;
        for value in [
            json!({"type": "message_start", "message": {}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ] {
            let kind = value["type"].as_str().unwrap().to_owned();
            cut.sent(api, &SseEvent::from_json(Some(&kind), value));
        }
        let events = cut.cut(api, "m", "withheld");
        assert_eq!(
            types(&events),
            [
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[1].json().unwrap()["index"], 1);
        assert!(cut.cut(api, "m", "again").is_empty());
    }

    #[test]
    fn openai_cuts_finish_open_choices_and_end_with_done() {
        let mut cut = StreamCut::default();
        let api = Api::OpenAiChat;
        let chunk = SseEvent::from_json(
            None,
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "g",
                   "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}),
        );
        cut.saw_upstream(api, &chunk);
        cut.sent(api, &chunk);
        let events = cut.cut(api, "m", "withheld");
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].json().unwrap()["id"], "c1");
        assert_eq!(
            events[0].json().unwrap()["choices"][0]["delta"]["content"],
            "\n\nwithheld"
        );
        assert_eq!(
            events[1].json().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        assert!(events[2].is_done());
    }

    #[test]
    fn withheld_responses_keep_id_and_model() {
        let mut body = json!({"id": "msg_1", "model": "claude", "content": [{"type": "tool_use"}]});
        withhold_response(Api::AnthropicMessages, &mut body, "x", "withheld");
        assert_eq!(body["id"], "msg_1");
        assert_eq!(
            body["content"],
            json!([{"type": "text", "text": "withheld"}])
        );
        assert_eq!(body["stop_reason"], "end_turn");
    }
}
