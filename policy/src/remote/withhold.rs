//! `on_error: block` after the request phase: the response (or the rest of the stream) is
//! withheld and replaced by a notice, in a shape the client's SDK still accepts.
//!
//! - Non-streamed: the body becomes a complete answer with the notice as its only text
//!   (`finish_reason: stop` / `stop_reason: end_turn`), keeping the original id and model.
//! - Streamed: [`StreamCut`] follows what already went to the client and, on failure, closes
//!   it properly: OpenAI — a notice text delta, a `finish_reason: stop` chunk for every choice
//!   still open, `[DONE]`; Anthropic — `message_start` if none was sent, a `content_block_stop`
//!   for every open block, a text block with the notice, `message_delta` (`end_turn`) if none
//!   was sent, `message_stop`; Responses — the whole reply of [`reply::responses_events`] if
//!   `response.created` was not sent, else an `output_item.done` (status `incomplete`) for
//!   every item still open, a message item with the notice, and `response.completed` listing
//!   every item sent. Everything upstream sends afterwards is dropped.

use std::collections::{BTreeMap, BTreeSet};

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
        Api::OpenAiResponses => {
            let created = body.get("created_at").and_then(Value::as_u64).unwrap_or(0);
            reply::responses_object(&id, created, &model, notice)
        }
    };
}

/// What of a stream already reached the client, so that it can be cut off cleanly.
#[derive(Debug, Default)]
pub struct StreamCut {
    /// OpenAI: the envelope of the first upstream chunk, for injected chunks.
    envelope: Option<Value>,
    /// OpenAI choices / Anthropic blocks / Responses output items started and not yet finished.
    open: BTreeSet<u64>,
    /// Anthropic: the index a new block gets; Responses: a new output item's.
    next_block: u64,
    /// Responses: the latest lifecycle `response` sent, the output items sent (as added, then
    /// as done), and the next `sequence_number`.
    response: Option<Value>,
    items: BTreeMap<u64, Value>,
    next_sequence: u64,
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
            Api::OpenAiResponses => self.sent_responses_event(value),
        }
    }

    fn sent_responses_event(&mut self, event: &Value) {
        if let Some(number) = event.get("sequence_number").and_then(Value::as_u64) {
            self.next_sequence = self.next_sequence.max(number + 1);
        }
        if let Some(response @ Value::Object(_)) = event.get("response") {
            self.message_started = true;
            self.response = Some(response.clone());
        }
        let index = event.get("output_index").and_then(Value::as_u64);
        match (
            event.get("type").and_then(Value::as_str),
            index,
            event.get("item"),
        ) {
            (Some("response.output_item.added"), Some(index), Some(item)) => {
                self.open.insert(index);
                self.items.insert(index, item.clone());
                self.next_block = self.next_block.max(index + 1);
            }
            (Some("response.output_item.done"), Some(index), Some(item)) => {
                self.open.remove(&index);
                self.items.insert(index, item.clone());
                self.next_block = self.next_block.max(index + 1);
            }
            _ => {}
        }
    }

    /// The Responses events that end the stream with `notice`.
    fn cut_responses(&mut self, model: &str, notice: &str) -> Vec<SseEvent> {
        let Some(response) = self.response.take() else {
            return reply::responses_events(
                &reply::fresh_id(Api::OpenAiResponses),
                0,
                model,
                notice,
            );
        };
        let id = response
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let created = response
            .get("created_at")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let model = response
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(model);
        let mut events = Vec::new();
        for index in std::mem::take(&mut self.open) {
            if let Some(item) = self.items.get_mut(&index) {
                item["status"] = json!("incomplete");
                events.push(json!({"type": "response.output_item.done", "output_index": index, "item": item}));
            }
        }
        // The notice: a message item of its own at the next output index.
        let index = self.next_block;
        let message_id = reply::fresh_id(Api::OpenAiResponses).replacen("resp_", "msg_", 1);
        let message = reply::responses_message(&message_id, notice);
        let position = usize::try_from(index).unwrap_or(usize::MAX);
        events.extend(reply::responses_message_events(position, &message));
        self.items.insert(index, message);
        let mut completed = reply::responses_object(id, created, model, notice);
        if let Value::Object(fields) = &response {
            for (key, value) in fields {
                if !matches!(
                    key.as_str(),
                    "status" | "output" | "error" | "incomplete_details"
                ) {
                    completed[key] = value.clone();
                }
            }
        }
        completed["output"] = Value::Array(self.items.values().cloned().collect());
        events.push(json!({"type": "response.completed", "response": completed}));
        events
            .into_iter()
            .map(|event| {
                let number = self.next_sequence;
                self.next_sequence += 1;
                reply::numbered_event(event, number.into())
            })
            .collect()
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
            Api::OpenAiResponses => events = self.cut_responses(model, notice),
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
    fn responses_cuts_finish_open_items_and_complete_the_response() {
        let mut cut = StreamCut::default();
        let api = Api::OpenAiResponses;
        let response = json!({"id": "resp_1", "object": "response", "created_at": 5, "status": "in_progress",
            "model": "gpt-5", "output": [], "tools": [], "usage": null});
        let item = json!({"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []});
        for value in [
            json!({"type": "response.created", "sequence_number": 0, "response": response}),
            json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": item}),
            json!({"type": "response.output_text.delta", "sequence_number": 2, "output_index": 0,
                "content_index": 0, "item_id": "msg_1", "delta": "hi", "logprobs": []}),
        ] {
            let kind = value["type"].as_str().unwrap().to_owned();
            cut.sent(api, &SseEvent::from_json(Some(&kind), value));
        }
        let events = cut.cut(api, "m", "withheld");
        assert_eq!(
            types(&events),
            [
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let numbers: Vec<_> = events
            .iter()
            .map(|event| event.json().unwrap()["sequence_number"].clone())
            .collect();
        assert_eq!(numbers, (3..11).map(|n| json!(n)).collect::<Vec<_>>());
        assert_eq!(events[0].json().unwrap()["item"]["status"], "incomplete");
        assert!(
            events[1..7]
                .iter()
                .all(|event| event.json().unwrap()["output_index"] == 1)
        );
        assert_eq!(events[3].json().unwrap()["delta"], "withheld");
        let completed = &events[7].json().unwrap()["response"];
        assert_eq!(
            (&completed["id"], &completed["model"], &completed["status"]),
            (&json!("resp_1"), &json!("gpt-5"), &json!("completed"))
        );
        let output = completed["output"].as_array().unwrap();
        assert_eq!(output.len(), 2);
        assert_eq!(output[0]["id"], "msg_1");
        assert_eq!(output[1]["content"][0]["text"], "withheld");
        assert!(cut.cut(api, "m", "again").is_empty());

        // Nothing sent yet: a whole reply.
        let events = StreamCut::default().cut(api, "gpt-5", "withheld");
        assert_eq!(
            events.first().unwrap().event_type(),
            Some("response.created")
        );
        assert_eq!(
            events.last().unwrap().event_type(),
            Some("response.completed")
        );
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
