//! OpenAI Chat Completions: `chat.completion.chunk` events → one `chat.completion`.
//!
//! What each part of a chunk becomes:
//!
//! - **Envelope** (`id`, `created`, `model`, `system_fingerprint`, `service_tier` and any
//!   field not listed here, e.g. Azure's `prompt_filter_results`): copied to the top level
//!   of the result; the latest non-blank value wins (see [`super::set_latest`]). `object`
//!   becomes `chat.completion`. `obfuscation` is dropped: it is random padding that OpenAI
//!   adds to stream chunks only, and means nothing in a complete response.
//! - **`usage`**: the latest non-null value, which with `stream_options.include_usage`
//!   arrives in a last chunk with `choices: []` *after* the finish reason. Without it the
//!   stream carries no usage and the result has no `usage` field.
//! - **`error`** (in-band `data: {"error": …}`): kept as the result's `error` field.
//! - **Choices**, by `index`: `message.role` from the first delta that has one (default
//!   `assistant`); `content` and `refusal` concatenated, `null` when no delta had a string;
//!   `tool_calls` merged by their `index` — `id`, `type` and `function.name` from the first
//!   delta that has them, `function.arguments` concatenated (custom tools' `custom.input`
//!   likewise); the legacy `function_call` the same way; any other delta field accumulated
//!   into the message (see [`super::accumulate`]). `finish_reason` is the latest non-null.
//!   `logprobs` keeps its `content` / `refusal` arrays concatenated, or is `null` if no chunk
//!   had any. Other choice fields (e.g. Azure's `content_filter_results`) are copied, latest
//!   non-blank wins.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{accumulate, set_latest, token_usage};
use luthien_api::TokenUsage;

#[derive(Debug, Default)]
pub(super) struct OpenAiStream {
    /// Top-level fields of the result, in the order first seen.
    envelope: Map<String, Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Map<String, Value>>,
    error: Option<Value>,
    /// Some chunk was a JSON object, so there is something to return.
    seen: bool,
    skipped: u64,
}

#[derive(Debug, Default)]
struct Choice {
    role: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    /// Keyed by the tool call's `index`; each value is the call without its `index`.
    tool_calls: BTreeMap<u64, Map<String, Value>>,
    function_call: Option<Map<String, Value>>,
    /// Delta fields without a rule of their own, accumulated into the message.
    other_delta: Map<String, Value>,
    /// Choice fields besides `index`, `delta`, `logprobs`, `finish_reason`.
    other: Map<String, Value>,
    logprobs: Option<Map<String, Value>>,
    finish_reason: Option<Value>,
}

impl OpenAiStream {
    pub(super) fn push(&mut self, chunk: &Value) {
        let Some(chunk) = chunk.as_object() else {
            self.skipped += 1;
            return;
        };
        self.seen = true;
        let mut understood = true;
        for (key, value) in chunk {
            match key.as_str() {
                "choices" => match value {
                    Value::Array(choices) => {
                        for (position, choice) in choices.iter().enumerate() {
                            understood &= self.push_choice(position, choice);
                        }
                    }
                    Value::Null => {}
                    _ => understood = false,
                },
                "usage" => match value {
                    Value::Object(usage) => self.usage = Some(usage.clone()),
                    Value::Null => {}
                    _ => understood = false,
                },
                // The first error is the cause; anything after it is a consequence.
                "error" => {
                    if self.error.is_none() && !value.is_null() {
                        self.error = Some(value.clone());
                    }
                }
                "object" | "obfuscation" => {}
                _ => set_latest(&mut self.envelope, key, value),
            }
        }
        if !understood {
            self.skipped += 1;
        }
    }

    /// Applies one element of `choices`; false when part of it made no sense.
    fn push_choice(&mut self, position: usize, choice: &Value) -> bool {
        let Some(fields) = choice.as_object() else {
            return false;
        };
        // A choice without `index` is taken to be at its position, as a lone choice is.
        let index = match fields.get("index") {
            Some(index) => match index.as_u64() {
                Some(index) => index,
                None => return false,
            },
            None => position as u64,
        };
        let state = self.choices.entry(index).or_default();
        let mut understood = true;
        for (key, value) in fields {
            match key.as_str() {
                "index" => {}
                "delta" => match value {
                    Value::Object(delta) => understood &= state.push_delta(delta),
                    Value::Null => {}
                    _ => understood = false,
                },
                "finish_reason" => {
                    if !value.is_null() {
                        state.finish_reason = Some(value.clone());
                    }
                }
                "logprobs" => match value {
                    Value::Object(logprobs) => {
                        let target = state.logprobs.get_or_insert_with(Map::new);
                        for (key, value) in logprobs {
                            accumulate(target, key, value);
                        }
                    }
                    Value::Null => {}
                    _ => understood = false,
                },
                _ => set_latest(&mut state.other, key, value),
            }
        }
        understood
    }

    pub(super) fn skipped(&self) -> u64 {
        self.skipped
    }

    pub(super) fn finish(&self) -> Option<Value> {
        if !self.seen {
            return None;
        }
        let mut result = Map::new();
        // The order OpenAI uses: id, object, created, model, choices, usage, then the rest.
        if let Some(id) = self.envelope.get("id") {
            result.insert("id".to_owned(), id.clone());
        }
        result.insert("object".to_owned(), Value::from("chat.completion"));
        for key in ["created", "model"] {
            if let Some(value) = self.envelope.get(key) {
                result.insert(key.to_owned(), value.clone());
            }
        }
        let choices = self
            .choices
            .iter()
            .map(|(index, choice)| choice.finish(*index))
            .collect();
        result.insert("choices".to_owned(), Value::Array(choices));
        if let Some(usage) = &self.usage {
            result.insert("usage".to_owned(), Value::Object(usage.clone()));
        }
        for (key, value) in &self.envelope {
            if !result.contains_key(key) {
                result.insert(key.clone(), value.clone());
            }
        }
        if let Some(error) = &self.error {
            result.insert("error".to_owned(), error.clone());
        }
        Some(Value::Object(result))
    }

    pub(super) fn usage(&self) -> TokenUsage {
        token_usage(self.usage.as_ref(), "prompt_tokens", "completion_tokens")
    }

    pub(super) fn finish_reasons(&self) -> Vec<String> {
        self.choices
            .values()
            .filter_map(|choice| choice.finish_reason.as_ref()?.as_str().map(str::to_owned))
            .collect()
    }
}

impl Choice {
    /// Applies a `delta`; false when part of it made no sense.
    fn push_delta(&mut self, delta: &Map<String, Value>) -> bool {
        let mut understood = true;
        for (key, value) in delta {
            match key.as_str() {
                "role" => {
                    if self.role.is_none() && !value.is_null() {
                        self.role = Some(value.clone());
                    }
                }
                "content" => understood &= append_text(&mut self.content, value),
                "refusal" => understood &= append_text(&mut self.refusal, value),
                "tool_calls" => match value {
                    Value::Array(calls) => {
                        for call in calls {
                            understood &= self.push_tool_call(call);
                        }
                    }
                    Value::Null => {}
                    _ => understood = false,
                },
                "function_call" => match value {
                    Value::Object(call) => {
                        merge_call_fields(self.function_call.get_or_insert_with(Map::new), call);
                    }
                    Value::Null => {}
                    _ => understood = false,
                },
                _ => accumulate(&mut self.other_delta, key, value),
            }
        }
        understood
    }

    fn push_tool_call(&mut self, call: &Value) -> bool {
        let Some(fields) = call.as_object() else {
            return false;
        };
        let index = match fields.get("index").map(Value::as_u64) {
            Some(Some(index)) => index,
            Some(None) => return false,
            // Some OpenAI-compatible servers omit `index`: a delta with an id not seen yet
            // starts a new call, anything else continues the last one.
            None => {
                let id = fields.get("id").filter(|id| !id.is_null());
                let known = id.is_some_and(|id| {
                    self.tool_calls
                        .values()
                        .any(|call| call.get("id") == Some(id))
                });
                let last = self.tool_calls.keys().next_back().copied();
                match (id, known, last) {
                    (Some(_), false, Some(last)) => last + 1,
                    (_, _, Some(last)) => last,
                    (_, _, None) => 0,
                }
            }
        };
        let target = self.tool_calls.entry(index).or_default();
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("index", _) => {}
                // `function` (or `custom`): a name given once, and arguments in fragments.
                (_, Value::Object(inner)) => match target.get_mut(key) {
                    Some(Value::Object(existing)) => merge_call_fields(existing, inner),
                    _ => {
                        let mut merged = Map::new();
                        merge_call_fields(&mut merged, inner);
                        target.insert(key.clone(), Value::Object(merged));
                    }
                },
                // `id`, `type`: only the first delta has them.
                _ => first_wins(target, key, value),
            }
        }
        true
    }

    fn finish(&self, index: u64) -> Value {
        let mut message = Map::new();
        message.insert(
            "role".to_owned(),
            self.role
                .clone()
                .unwrap_or_else(|| Value::from("assistant")),
        );
        message.insert("content".to_owned(), text_or_null(&self.content));
        message.insert("refusal".to_owned(), text_or_null(&self.refusal));
        if !self.tool_calls.is_empty() {
            let calls = self.tool_calls.values().map(finish_tool_call).collect();
            message.insert("tool_calls".to_owned(), Value::Array(calls));
        }
        if let Some(call) = &self.function_call {
            message.insert("function_call".to_owned(), Value::Object(call.clone()));
        }
        for (key, value) in &self.other_delta {
            message.insert(key.clone(), value.clone());
        }

        let mut choice = Map::new();
        choice.insert("index".to_owned(), Value::from(index));
        choice.insert("message".to_owned(), Value::Object(message));
        choice.insert(
            "logprobs".to_owned(),
            self.logprobs.clone().map_or(Value::Null, Value::Object),
        );
        choice.insert(
            "finish_reason".to_owned(),
            self.finish_reason.clone().unwrap_or(Value::Null),
        );
        for (key, value) in &self.other {
            choice.insert(key.clone(), value.clone());
        }
        Value::Object(choice)
    }
}

/// Appends a `content` / `refusal` fragment; `null` adds nothing (and does not turn a text
/// seen so far back into `null`). False for a value that is neither.
fn append_text(target: &mut Option<String>, fragment: &Value) -> bool {
    match fragment {
        Value::String(text) => {
            target.get_or_insert_with(String::new).push_str(text);
            true
        }
        Value::Null => true,
        _ => false,
    }
}

fn text_or_null(text: &Option<String>) -> Value {
    text.as_deref().map_or(Value::Null, Value::from)
}

/// Merges a fragment of a `function` / `custom` / `function_call` object: `arguments` and
/// `input` are the parts that stream in pieces; everything else (`name`) comes whole, once.
fn merge_call_fields(target: &mut Map<String, Value>, fragment: &Map<String, Value>) {
    for (key, value) in fragment {
        match (key.as_str(), target.get_mut(key), value) {
            ("arguments" | "input", Some(Value::String(text)), Value::String(more)) => {
                text.push_str(more);
            }
            _ => first_wins(target, key, value),
        }
    }
}

/// Keeps the first non-null value of a field.
fn first_wins(target: &mut Map<String, Value>, key: &str, value: &Value) {
    match target.get(key) {
        Some(existing) if !existing.is_null() => {}
        _ => {
            target.insert(key.to_owned(), value.clone());
        }
    }
}

/// A tool call as the non-streamed response has it: `type` is always there (OpenAI sends it
/// in the first delta, some compatible servers never do).
fn finish_tool_call(call: &Map<String, Value>) -> Value {
    let mut call = call.clone();
    if !call.contains_key("type") && call.contains_key("function") {
        let mut with_type = Map::new();
        for (key, value) in call {
            let is_id = key == "id";
            with_type.insert(key, value);
            if is_id {
                with_type.insert("type".to_owned(), Value::from("function"));
            }
        }
        if !with_type.contains_key("type") {
            with_type.insert("type".to_owned(), Value::from("function"));
        }
        call = with_type;
    }
    Value::Object(call)
}
