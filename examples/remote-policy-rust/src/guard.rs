//! The policy itself: find tool calls in responses (OpenAI `tool_calls[].function.arguments`,
//! Anthropic `tool_use.input`), check their paths, and replace the calls that reach outside
//! the allowed directory with an explanatory text.
//!
//! Streams: a tool call's arguments arrive in fragments, so each call is held until it is
//! complete — OpenAI: until its choice's `finish_reason` chunk (calls are then re-sent whole,
//! renumbered without gaps); Anthropic: from the `tool_use` block's `content_block_start` to
//! its `content_block_stop` (events arriving meanwhile wait behind it, to keep the order).
//! When every tool call was removed, the finish reason becomes `stop` / `end_turn`, so the
//! client does not wait for tool calls that are gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use luthien_proto::common::v1::Api as ProtoApi;
use luthien_proto::policy::v1::PolicyStreamEvent;
use serde_json::{Map, Value, json};

use crate::paths::paths_outside;

/// A removed tool call.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    pub tool: String,
    pub paths: Vec<String>,
}

/// The configured policy: shared by all calls.
#[derive(Clone, Debug)]
pub struct Guard {
    allowed: PathBuf,
}

/// The provider API of a call, from `PolicyCallStart.api`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    /// `PolicyCallStart.api`; `None` for an API this server does not know.
    pub fn parse(api: i32) -> Option<Api> {
        match ProtoApi::try_from(api).ok()? {
            ProtoApi::OpenaiChat => Some(Api::OpenAi),
            ProtoApi::AnthropicMessages => Some(Api::Anthropic),
            ProtoApi::Unspecified => None,
        }
    }
}

impl Guard {
    pub fn new(allowed: impl Into<PathBuf>) -> Self {
        Self {
            allowed: allowed.into(),
        }
    }

    pub fn allowed_dir(&self) -> &Path {
        &self.allowed
    }

    /// `Some` when the call must go.
    fn check(&self, tool: &str, arguments: &str) -> Option<Blocked> {
        let paths = paths_outside(&self.allowed, arguments);
        (!paths.is_empty()).then(|| Blocked {
            tool: tool.to_owned(),
            paths,
        })
    }

    /// What the client sees instead of a removed call.
    pub fn explanation(&self, blocked: &Blocked) -> String {
        format!(
            "[path-guard] Removed the call to `{}`: it touches {}, outside the allowed directory {}.",
            blocked.tool,
            blocked.paths.join(", "),
            self.allowed.display()
        )
    }

    /// Checks a complete (non-streamed) response body in place; returns what was removed.
    pub fn response(&self, api: Api, body: &mut Value) -> Vec<Blocked> {
        match api {
            Api::OpenAi => self.openai_response(body),
            Api::Anthropic => self.anthropic_response(body),
        }
    }

    fn openai_response(&self, body: &mut Value) -> Vec<Blocked> {
        let mut removed = Vec::new();
        let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) else {
            return removed;
        };
        for choice in choices {
            let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(Value::Array(calls)) = message.remove("tool_calls") else {
                continue;
            };
            let mut kept = Vec::new();
            let mut texts = Vec::new();
            for call in calls {
                let function = call.get("function");
                let name = text_at(function, "name");
                let arguments = text_at(function, "arguments");
                match self.check(&name, &arguments) {
                    Some(blocked) => {
                        texts.push(self.explanation(&blocked));
                        removed.push(blocked);
                    }
                    None => kept.push(call),
                }
            }
            let all_removed = kept.is_empty() && !texts.is_empty();
            if !kept.is_empty() {
                message.insert("tool_calls".to_owned(), Value::Array(kept));
            }
            if !texts.is_empty() {
                let mut content = message
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                for text in texts {
                    if !content.is_empty() {
                        content.push_str("\n\n");
                    }
                    content.push_str(&text);
                }
                message.insert("content".to_owned(), Value::String(content));
            }
            if all_removed && choice.get("finish_reason") == Some(&json!("tool_calls")) {
                choice["finish_reason"] = json!("stop");
            }
        }
        removed
    }

    fn anthropic_response(&self, body: &mut Value) -> Vec<Blocked> {
        let mut removed = Vec::new();
        let mut kept = 0;
        if let Some(blocks) = body.get_mut("content").and_then(Value::as_array_mut) {
            for block in blocks {
                if block.get("type").and_then(Value::as_str) != Some("tool_use") {
                    continue;
                }
                let name = text_at(Some(block), "name");
                let input = block.get("input").map(Value::to_string).unwrap_or_default();
                match self.check(&name, &input) {
                    Some(blocked) => {
                        *block = json!({"type": "text", "text": self.explanation(&blocked)});
                        removed.push(blocked);
                    }
                    None => kept += 1,
                }
            }
        }
        if kept == 0 && !removed.is_empty() && body.get("stop_reason") == Some(&json!("tool_use")) {
            body["stop_reason"] = json!("end_turn");
        }
        removed
    }
}

fn text_at(value: Option<&Value>, key: &str) -> String {
    value
        .and_then(|value| value.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// One call's stream state.
#[derive(Debug)]
pub struct StreamGuard {
    api: Api,
    /// OpenAI: tool calls held per choice index, by their own index.
    openai: BTreeMap<u64, BTreeMap<u64, HeldCall>>,
    /// Anthropic: the `tool_use` block being held.
    anthropic: Option<HeldBlock>,
    /// OpenAI: the envelope (`id`, `model`, …) of the last chunk, for chunks sent at the end.
    envelope: Map<String, Value>,
    kept: usize,
    removed: usize,
}

#[derive(Debug, Default)]
struct HeldCall {
    id: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Debug)]
struct HeldBlock {
    index: u64,
    name: String,
    input: String,
    /// Held events, each marked whether it belongs to the block.
    events: Vec<(PolicyStreamEvent, bool)>,
}

impl StreamGuard {
    pub fn new(api: Api) -> Self {
        Self {
            api,
            openai: BTreeMap::new(),
            anthropic: None,
            envelope: Map::new(),
            kept: 0,
            removed: 0,
        }
    }

    /// One upstream event: pushes what replaces it (0..N events) to `out`.
    pub fn event(
        &mut self,
        guard: &Guard,
        event: PolicyStreamEvent,
        out: &mut Vec<PolicyStreamEvent>,
        removed: &mut Vec<Blocked>,
    ) {
        match self.api {
            Api::OpenAi => self.openai_event(guard, event, out, removed),
            Api::Anthropic => self.anthropic_event(guard, event, out, removed),
        }
    }

    /// The stream ended: releases anything still held (a stream cut short).
    pub fn end(
        &mut self,
        guard: &Guard,
        out: &mut Vec<PolicyStreamEvent>,
        removed: &mut Vec<Blocked>,
    ) {
        let choices: Vec<u64> = self.openai.keys().copied().collect();
        let envelope = std::mem::take(&mut self.envelope);
        for choice in choices {
            self.release_choice(guard, choice, &envelope, out, removed);
        }
        if let Some(held) = self.anthropic.take() {
            self.release_block(guard, held, None, out, removed);
        }
    }

    fn openai_event(
        &mut self,
        guard: &Guard,
        event: PolicyStreamEvent,
        out: &mut Vec<PolicyStreamEvent>,
        removed: &mut Vec<Blocked>,
    ) {
        let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(&event.data) else {
            // `[DONE]`: nothing can follow, so release what is held first.
            self.end(guard, out, removed);
            out.push(event);
            return;
        };
        let envelope: Map<String, Value> = chunk
            .iter()
            .filter(|(key, _)| key.as_str() != "choices" && key.as_str() != "usage")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        self.envelope.clone_from(&envelope);
        let mut changed = false;
        let mut releases = Vec::new();
        if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
            for choice in choices {
                let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(Value::Array(calls)) = choice
                    .get_mut("delta")
                    .and_then(Value::as_object_mut)
                    .and_then(|delta| delta.remove("tool_calls"))
                {
                    changed = true;
                    let held = self.openai.entry(index).or_default();
                    for call in calls {
                        let slot = held
                            .entry(call.get("index").and_then(Value::as_u64).unwrap_or(0))
                            .or_default();
                        if let Some(id) = call.get("id") {
                            slot.id = Some(id.clone());
                        }
                        let function = call.get("function");
                        slot.name.push_str(&text_at(function, "name"));
                        slot.arguments.push_str(&text_at(function, "arguments"));
                    }
                }
                if choice
                    .get("finish_reason")
                    .is_some_and(|reason| !reason.is_null())
                {
                    let before = self.removed;
                    let all_removed =
                        self.release_choice(guard, index, &envelope, &mut releases, removed);
                    if all_removed
                        && self.removed > before
                        && choice.get("finish_reason") == Some(&json!("tool_calls"))
                    {
                        choice["finish_reason"] = json!("stop");
                        changed = true;
                    }
                }
            }
        }
        out.append(&mut releases);
        if !changed {
            out.push(event);
            return;
        }
        let empty = chunk.get("usage").is_none_or(Value::is_null)
            && chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|choices| {
                    choices.iter().all(|choice| {
                        choice.get("finish_reason").is_none_or(Value::is_null)
                            && choice
                                .get("delta")
                                .and_then(Value::as_object)
                                .is_none_or(Map::is_empty)
                    })
                });
        if !empty {
            out.push(PolicyStreamEvent {
                seq: event.seq,
                event_type: event.event_type,
                data: Bytes::from(Value::Object(chunk).to_string()),
            });
        }
    }

    /// Decides the held calls of one choice and pushes the chunks that carry the kept ones
    /// (whole, renumbered) and the explanations; true when every call was removed.
    fn release_choice(
        &mut self,
        guard: &Guard,
        choice: u64,
        envelope: &Map<String, Value>,
        out: &mut Vec<PolicyStreamEvent>,
        removed: &mut Vec<Blocked>,
    ) -> bool {
        let Some(calls) = self.openai.remove(&choice) else {
            return false;
        };
        let chunk = |delta: Value| {
            let mut chunk = envelope.clone();
            chunk.insert(
                "choices".to_owned(),
                json!([{"index": choice, "delta": delta, "logprobs": null, "finish_reason": null}]),
            );
            PolicyStreamEvent {
                seq: 0,
                event_type: String::new(),
                data: Bytes::from(Value::Object(chunk).to_string()),
            }
        };
        let mut next = 0;
        let mut texts = Vec::new();
        for call in calls.into_values() {
            match guard.check(&call.name, &call.arguments) {
                Some(blocked) => {
                    texts.push(guard.explanation(&blocked));
                    removed.push(blocked);
                    self.removed += 1;
                }
                None => {
                    out.push(chunk(json!({"tool_calls": [{
                        "index": next,
                        "id": call.id.unwrap_or(Value::Null),
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }]})));
                    next += 1;
                    self.kept += 1;
                }
            }
        }
        if !texts.is_empty() {
            out.push(chunk(json!({"content": texts.join("\n\n")})));
        }
        next == 0 && !texts.is_empty()
    }

    fn anthropic_event(
        &mut self,
        guard: &Guard,
        event: PolicyStreamEvent,
        out: &mut Vec<PolicyStreamEvent>,
        removed: &mut Vec<Blocked>,
    ) {
        let Ok(value) = serde_json::from_slice::<Value>(&event.data) else {
            out.push(event);
            return;
        };
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let index = value.get("index").and_then(Value::as_u64);
        if let Some(held) = &mut self.anthropic {
            let ours = index == Some(held.index);
            match kind {
                "content_block_delta" if ours => {
                    if let Some(partial) =
                        value.pointer("/delta/partial_json").and_then(Value::as_str)
                    {
                        held.input.push_str(partial);
                    }
                    held.events.push((event, true));
                }
                "content_block_stop" if ours => {
                    if let Some(held) = self.anthropic.take() {
                        self.release_block(guard, held, Some(event), out, removed);
                    }
                }
                _ => held.events.push((event, false)),
            }
            return;
        }
        match kind {
            "content_block_start"
                if value.pointer("/content_block/type") == Some(&json!("tool_use")) =>
            {
                let input = value
                    .pointer("/content_block/input")
                    .filter(|input| input.as_object().is_some_and(|input| !input.is_empty()))
                    .map(Value::to_string)
                    .unwrap_or_default();
                self.anthropic = Some(HeldBlock {
                    index: index.unwrap_or(0),
                    name: text_at(value.get("content_block"), "name"),
                    input,
                    events: vec![(event, true)],
                });
            }
            "message_delta"
                if self.kept == 0
                    && self.removed > 0
                    && value.pointer("/delta/stop_reason") == Some(&json!("tool_use")) =>
            {
                let mut value = value;
                value["delta"]["stop_reason"] = json!("end_turn");
                out.push(PolicyStreamEvent {
                    seq: event.seq,
                    event_type: event.event_type,
                    data: Bytes::from(value.to_string()),
                });
            }
            _ => out.push(event),
        }
    }

    fn release_block(
        &mut self,
        guard: &Guard,
        held: HeldBlock,
        stop: Option<PolicyStreamEvent>,
        out: &mut Vec<PolicyStreamEvent>,
        removed: &mut Vec<Blocked>,
    ) {
        match guard.check(&held.name, &held.input) {
            None => {
                self.kept += 1;
                out.extend(held.events.into_iter().map(|(event, _)| event));
                out.extend(stop);
            }
            Some(blocked) => {
                self.removed += 1;
                let text = guard.explanation(&blocked);
                removed.push(blocked);
                let event = |value: Value| PolicyStreamEvent {
                    seq: 0,
                    event_type: value["type"].as_str().unwrap_or_default().to_owned(),
                    data: Bytes::from(value.to_string()),
                };
                let index = held.index;
                out.push(event(json!({"type": "content_block_start", "index": index,
                                      "content_block": {"type": "text", "text": ""}})));
                out.push(event(json!({"type": "content_block_delta", "index": index,
                                      "delta": {"type": "text_delta", "text": text}})));
                out.push(event(json!({"type": "content_block_stop", "index": index})));
                // What waited behind the block (a `ping`, say) follows it.
                out.extend(
                    held.events
                        .into_iter()
                        .filter(|(_, ours)| !ours)
                        .map(|(event, _)| event),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new("/workspace")
    }

    fn sse(event_type: &str, data: Value) -> PolicyStreamEvent {
        PolicyStreamEvent {
            seq: 0,
            event_type: event_type.to_owned(),
            data: Bytes::from(data.to_string()),
        }
    }

    fn json_of(event: &PolicyStreamEvent) -> Value {
        serde_json::from_slice(&event.data).unwrap_or(Value::Null)
    }

    #[test]
    fn openai_responses_lose_blocked_calls() {
        let mut body = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "b", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"cat /etc/passwd\"}"}}
        ]}}]});
        let removed = guard().response(Api::OpenAi, &mut body);
        assert_eq!(removed.len(), 1);
        let message = &body["choices"][0]["message"];
        assert_eq!(message["tool_calls"].as_array().unwrap().len(), 1);
        assert!(message["content"].as_str().unwrap().contains("/etc/passwd"));
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn anthropic_responses_turn_blocked_calls_into_text() {
        let mut body = json!({"stop_reason": "tool_use", "content": [
            {"type": "tool_use", "id": "t", "name": "read", "input": {"path": "../../x"}}]});
        guard().response(Api::Anthropic, &mut body);
        assert_eq!(body["content"][0]["type"], "text");
        assert_eq!(body["stop_reason"], "end_turn");
    }

    #[test]
    fn openai_streams_hold_calls_until_the_finish_chunk() {
        let mut stream = StreamGuard::new(Api::OpenAi);
        let mut out = Vec::new();
        let mut removed = Vec::new();
        let chunk = |delta: Value, finish: Value| {
            sse(
                "",
                json!({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
            )
        };
        for (index, name, fragments) in [
            (0, "get_weather", ["{\"city\":", "\"Paris\"}"]),
            (1, "bash", ["{\"command\":\"ls /t", "mp\"}"]),
        ] {
            stream.event(&guard(), chunk(json!({"tool_calls": [{"index": index, "id": format!("id{index}"), "type": "function", "function": {"name": name, "arguments": ""}}]}), Value::Null), &mut out, &mut removed);
            for fragment in fragments {
                stream.event(&guard(), chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}), Value::Null), &mut out, &mut removed);
            }
        }
        assert!(out.is_empty(), "tool calls are held");
        stream.event(
            &guard(),
            chunk(json!({}), json!("tool_calls")),
            &mut out,
            &mut removed,
        );
        assert_eq!(removed[0].paths, ["/tmp"]);
        let deltas: Vec<Value> = out
            .iter()
            .map(|e| json_of(e)["choices"][0].clone())
            .collect();
        assert_eq!(
            deltas[0]["delta"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert_eq!(
            deltas[0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert!(
            deltas[1]["delta"]["content"]
                .as_str()
                .unwrap()
                .contains("`bash`")
        );
        assert_eq!(deltas[2]["finish_reason"], "tool_calls");
    }

    #[test]
    fn anthropic_streams_replace_blocked_blocks_in_place() {
        let mut stream = StreamGuard::new(Api::Anthropic);
        let mut out = Vec::new();
        let mut removed = Vec::new();
        let events = [
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "bash", "input": {}}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"command\":\"rm -rf ~"}}),
            ),
            sse("ping", json!({"type": "ping"})),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "/\"}"}}),
            ),
            sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            sse(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
            ),
        ];
        for event in events {
            stream.event(&guard(), event, &mut out, &mut removed);
        }
        let kinds: Vec<&str> = out.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "ping",
                "message_delta"
            ]
        );
        assert_eq!(json_of(&out[0])["content_block"]["type"], "text");
        assert_eq!(json_of(&out[4])["delta"]["stop_reason"], "end_turn");
        assert_eq!(removed[0].paths, ["~/"]);
    }
}
