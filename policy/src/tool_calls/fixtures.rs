//! Responses API wire fixtures for the tool-call tests, and [`check_sdk_stream`], which
//! enforces on a stream what the openai Python SDK's stream accumulator
//! (`openai/lib/streaming/responses/_responses.py`, `ResponseStreamState`) raises on.
//!
//! Items and events have the fields, and the field order, of the SDK's types
//! (`openai/types/responses/`) and of the provider's streams.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::sse::SseEvent;

pub(crate) const RESPONSE_ID: &str = "resp_68af0b0ec8f08196b1a1c52ee0a14b0a0c4ae15eaec1d1f4";

/// A completed `function_call` output item.
pub(crate) fn function_call(id: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": "completed", "arguments": arguments, "call_id": call_id, "name": name})
}

/// A completed `custom_tool_call` output item (free-text input).
pub(crate) fn custom_tool_call(id: &str, call_id: &str, name: &str, input: &str) -> Value {
    json!({"id": id, "type": "custom_tool_call", "call_id": call_id, "input": input, "name": name})
}

/// A completed assistant `message` output item with one `output_text` part.
pub(crate) fn message(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "message", "status": "completed", "content": [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    ], "role": "assistant"})
}

/// A `reasoning` output item with an (opaque) `encrypted_content` and no summary.
pub(crate) fn reasoning(id: &str, encrypted_content: &str) -> Value {
    json!({"id": id, "type": "reasoning", "encrypted_content": encrypted_content, "summary": []})
}

/// A response object in `status`, listing `output`.
pub(crate) fn response_object(status: &str, output: &[Value]) -> Value {
    let done = status != "in_progress";
    json!({
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1_756_300_046,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "max_tool_calls": null,
        "model": "gpt-5-2025-08-07",
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "prompt_cache_key": null,
        "reasoning": {"effort": "medium", "summary": null},
        "safety_identifier": null,
        "service_tier": "default",
        "store": true,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [
            {"type": "function", "description": "Current weather of a city", "name": "get_weather",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}, "strict": true},
            {"type": "function", "description": "Run a shell command", "name": "bash",
             "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"], "additionalProperties": false}, "strict": true}
        ],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": if done {
            json!({"input_tokens": 81, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 142,
                   "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 223})
        } else {
            Value::Null
        },
        "user": null,
        "metadata": {}
    })
}

/// Builds a stream event by event, numbering them from 0.
pub(crate) struct StreamBuilder {
    text: String,
    sequence: u64,
}

impl StreamBuilder {
    /// `response.created` and `response.in_progress`.
    pub(crate) fn new() -> Self {
        let mut builder = Self {
            text: String::new(),
            sequence: 0,
        };
        let response = response_object("in_progress", &[]);
        builder.event("response.created", json!({"response": response.clone()}));
        builder.event("response.in_progress", json!({"response": response}));
        builder
    }

    /// One event: `type` and `sequence_number`, then `fields`.
    pub(crate) fn event(&mut self, kind: &str, fields: Value) -> &mut Self {
        let mut event = json!({"type": kind, "sequence_number": self.sequence});
        if let (Value::Object(event), Value::Object(fields)) = (&mut event, fields) {
            event.extend(fields);
        }
        self.sequence += 1;
        self.text += &format!("event: {kind}\ndata: {event}\n\n");
        self
    }

    /// Every event of output item `item` (a completed item) at `output_index`, its text or
    /// arguments in deltas of `piece` characters.
    pub(crate) fn item(&mut self, output_index: usize, item: &Value, piece: usize) -> &mut Self {
        self.item_until(output_index, item, piece, usize::MAX)
    }

    /// [`Self::item`], cut after `limit` events.
    pub(crate) fn item_until(
        &mut self,
        output_index: usize,
        item: &Value,
        piece: usize,
        limit: usize,
    ) -> &mut Self {
        let id = item["id"].clone();
        let mut events: Vec<(&str, Value)> = Vec::new();
        match item["type"].as_str().unwrap() {
            kind @ ("function_call" | "custom_tool_call") => {
                let field = if kind == "function_call" {
                    "arguments"
                } else {
                    "input"
                };
                let mut added = item.clone();
                if kind == "function_call" {
                    added["status"] = json!("in_progress");
                }
                added[field] = json!("");
                events.push((
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": added}),
                ));
                let whole = item[field].as_str().unwrap();
                for (position, delta) in pieces(whole, piece).into_iter().enumerate() {
                    events.push((
                        if kind == "function_call" {
                            "response.function_call_arguments.delta"
                        } else {
                            "response.custom_tool_call_input.delta"
                        },
                        json!({"item_id": id, "output_index": output_index, "delta": delta, "obfuscation": format!("x{position}")}),
                    ));
                }
                let done = if kind == "function_call" {
                    "response.function_call_arguments.done"
                } else {
                    "response.custom_tool_call_input.done"
                };
                events.push((
                    done,
                    json!({"item_id": id, "output_index": output_index, field: whole}),
                ));
            }
            "message" => {
                let mut added = item.clone();
                added["status"] = json!("in_progress");
                added["content"] = json!([]);
                events.push((
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": added}),
                ));
                for (content_index, part) in item["content"].as_array().unwrap().iter().enumerate()
                {
                    let text = part["text"].as_str().unwrap();
                    let mut empty = part.clone();
                    empty["text"] = json!("");
                    events.push(("response.content_part.added", json!({"item_id": id, "output_index": output_index, "content_index": content_index, "part": empty})));
                    for (position, delta) in pieces(text, piece).into_iter().enumerate() {
                        events.push(("response.output_text.delta", json!({"item_id": id, "output_index": output_index, "content_index": content_index, "delta": delta, "logprobs": [], "obfuscation": format!("o{position}")})));
                    }
                    events.push(("response.output_text.done", json!({"item_id": id, "output_index": output_index, "content_index": content_index, "text": text, "logprobs": []})));
                    events.push(("response.content_part.done", json!({"item_id": id, "output_index": output_index, "content_index": content_index, "part": part})));
                }
            }
            _ => {
                let mut added = item.clone();
                if let Some(fields) = added.as_object_mut() {
                    fields.remove("status");
                }
                events.push((
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": added}),
                ));
            }
        }
        events.push((
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        ));
        for (kind, fields) in events.into_iter().take(limit) {
            self.event(kind, fields);
        }
        self
    }

    /// The terminal event `kind` (`response.completed`, …) listing `output`.
    pub(crate) fn terminal(&mut self, kind: &str, output: &[Value]) -> &mut Self {
        let status = kind.trim_start_matches("response.");
        let mut response = response_object(status, output);
        if status == "incomplete" {
            response["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        if status == "failed" {
            response["error"] = json!({"code": "server_error", "message": "The model failed."});
        }
        self.event(kind, json!({"response": response}))
    }

    /// A whole stream of `items`, ending with `response.completed`.
    pub(crate) fn complete(items: &[Value], piece: usize) -> String {
        let mut builder = Self::new();
        for (index, item) in items.iter().enumerate() {
            builder.item(index, item, piece);
        }
        builder.terminal("response.completed", items);
        builder.build()
    }

    pub(crate) fn build(&self) -> String {
        self.text.clone()
    }
}

/// `text` in pieces of `size` characters (one empty piece for an empty text).
fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    chars
        .chunks(size.max(1))
        .map(|chunk| chunk.iter().collect())
        .collect()
}

/// The SDK's identity of an output item: its type, its `id` (not for calls, whose `id` is
/// optional) and its `call_id`.
fn identity(item: &Value) -> (String, Option<String>, Option<String>) {
    let kind = item["type"].as_str().unwrap_or_default().to_owned();
    let call_id = item["call_id"].as_str().map(str::to_owned);
    let calls = [
        "function_call",
        "custom_tool_call",
        "shell_call",
        "shell_call_output",
    ];
    if calls.contains(&kind.as_str()) {
        (kind, None, call_id)
    } else {
        (kind, item["id"].as_str().map(str::to_owned), call_id)
    }
}

fn compatible_id(previous: &Value, replacement: &Value) -> bool {
    previous.get("id") == replacement.get("id")
        || (previous.get("id").is_none_or(Value::is_null)
            && ["function_call", "custom_tool_call"]
                .contains(&previous["type"].as_str().unwrap_or_default()))
}

/// Checks a stream as the Python SDK's `ResponseStreamState` does (every `RuntimeError` and
/// assertion it has), plus what a client relies on: the `event:` name repeats the `type`,
/// `sequence_number`s never go down, `item_id`s name the item of their `output_index`, every
/// whole copy of a text or of arguments equals what the deltas built, every item done is
/// repeated unchanged by `response.completed`, and nothing follows the terminal event.
/// Returns the final response (`response.completed`'s), if any.
pub(crate) fn check_sdk_stream(events: &[SseEvent]) -> Result<Option<Value>, String> {
    let mut response_id: Option<Value> = None;
    // The snapshot of each item added, by output_index, and the items done.
    let mut items: BTreeMap<u64, Value> = BTreeMap::new();
    let mut done: BTreeMap<u64, Value> = BTreeMap::new();
    let mut last_sequence = None;
    let mut ended = false;
    let mut completed = None;
    for (position, event) in events.iter().enumerate() {
        let at = |message: String| format!("event {position}: {message}");
        let value = event
            .json()
            .ok_or_else(|| at(format!("not JSON: {}", event.data())))?;
        let kind = value["type"].as_str().ok_or_else(|| at("no type".into()))?;
        if event.event_type() != Some(kind) {
            return Err(at(format!(
                "event name {:?} is not {kind}",
                event.event_type()
            )));
        }
        if ended {
            return Err(at(format!("{kind} after the terminal event")));
        }
        let sequence = value["sequence_number"]
            .as_u64()
            .ok_or_else(|| at("no sequence_number".into()))?;
        if last_sequence.is_some_and(|last| sequence < last) {
            return Err(at(format!("sequence_number {sequence} goes down")));
        }
        last_sequence = Some(sequence);
        if response_id.is_none() {
            if kind != "response.created" {
                return Err(at(format!(
                    "Expected to have received `response.created` before `{kind}`"
                )));
            }
            response_id = Some(value["response"]["id"].clone());
            continue;
        }
        if kind.starts_with("response.")
            && value.get("response").is_some()
            && Some(&value["response"]["id"]) != response_id.as_ref()
        {
            return Err(at("Lifecycle response identity changed.".into()));
        }
        let index = value["output_index"].as_u64();
        let content_index = value["content_index"].as_u64().map(|index| index as usize);
        let item = |items: &BTreeMap<u64, Value>| -> Result<Value, String> {
            let index = index.ok_or_else(|| at("no output_index".into()))?;
            items.get(&index).cloned().ok_or_else(|| {
                at(format!(
                    "Received a content event for output index {index} before receiving its output item"
                ))
            })
        };
        if let Some(item_id) = value.get("item_id") {
            let owner = item(&items)?;
            if owner.get("id") != Some(item_id) {
                return Err(at(format!("item_id {item_id} is not {}", owner["id"])));
            }
        }
        match kind {
            "response.output_item.added" => {
                let index = index.ok_or_else(|| at("no output_index".into()))?;
                if items.contains_key(&index) {
                    return Err(at(format!("Duplicate response output index {index}.")));
                }
                items.insert(index, value["item"].clone());
            }
            "response.content_part.added" => {
                let mut owner = item(&items)?;
                if owner["type"] == "message" {
                    owner["content"]
                        .as_array_mut()
                        .ok_or_else(|| at("message without content".into()))?
                        .push(value["part"].clone());
                    items.insert(index.unwrap_or_default(), owner);
                }
            }
            "response.output_text.delta" | "response.output_text.done" => {
                let mut owner = item(&items)?;
                if owner["type"] != "message" {
                    return Err(at(format!("{kind} for a {}", owner["type"])));
                }
                let content_index = content_index.ok_or_else(|| at("no content_index".into()))?;
                let part = owner["content"]
                    .get_mut(content_index)
                    .filter(|part| part["type"] == "output_text")
                    .ok_or_else(|| at(format!("no output_text part {content_index}")))?;
                let snapshot = part["text"].as_str().unwrap_or_default().to_owned();
                if kind.ends_with("delta") {
                    part["text"] = json!(snapshot + value["delta"].as_str().unwrap_or_default());
                    items.insert(index.unwrap_or_default(), owner);
                } else if value["text"] != json!(snapshot) {
                    return Err(at(format!(
                        "output_text.done text {} is not the deltas' {snapshot:?}",
                        value["text"]
                    )));
                }
            }
            "response.content_part.done" => {
                let owner = item(&items)?;
                let part = &owner["content"][content_index.unwrap_or_default()];
                if value["part"]["type"] == "output_text" && value["part"]["text"] != part["text"] {
                    return Err(at(format!(
                        "content_part.done text {} is not the deltas' {}",
                        value["part"]["text"], part["text"]
                    )));
                }
            }
            "response.function_call_arguments.delta"
            | "response.function_call_arguments.done"
            | "response.custom_tool_call_input.delta"
            | "response.custom_tool_call_input.done" => {
                let mut owner = item(&items)?;
                let (call, field) = if kind.contains("custom") {
                    ("custom_tool_call", "input")
                } else {
                    ("function_call", "arguments")
                };
                if owner["type"] != call {
                    return Err(at(format!("{kind} for a {}", owner["type"])));
                }
                let snapshot = owner[field].as_str().unwrap_or_default().to_owned();
                if kind.ends_with("delta") {
                    owner[field] = json!(snapshot + value["delta"].as_str().unwrap_or_default());
                    items.insert(index.unwrap_or_default(), owner);
                } else if value[field] != json!(snapshot) {
                    return Err(at(format!("{kind} {} is not the deltas'", value[field])));
                }
            }
            "response.output_item.done" => {
                let index = index.ok_or_else(|| at("no output_index".into()))?;
                let finished = &value["item"];
                if let Some(added) = items.get(&index) {
                    if identity(added) != identity(finished) || !compatible_id(added, finished) {
                        return Err(at("Completed output item identity changed.".into()));
                    }
                    if added["type"] == "message" {
                        for (position, part) in array(&added["content"]).iter().enumerate() {
                            if part["type"] == "output_text"
                                && finished["content"][position]["text"] != part["text"]
                            {
                                return Err(at(format!(
                                    "output_item.done text {} is not the deltas' {}",
                                    finished["content"][position]["text"], part["text"]
                                )));
                            }
                        }
                    }
                    for field in ["arguments", "input"] {
                        if added["type"] != "message"
                            && added.get(field).is_some()
                            && finished.get(field) != added.get(field)
                        {
                            return Err(at(format!("output_item.done {field} is not the deltas'")));
                        }
                    }
                }
                if done
                    .iter()
                    .any(|(other, item)| *other != index && identity(item) == identity(finished))
                {
                    return Err(at(
                        "Response snapshot has conflicting output identities.".into()
                    ));
                }
                done.insert(index, finished.clone());
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                ended = true;
                let output = array(&value["response"]["output"]);
                let find = |item: &Value| {
                    output
                        .iter()
                        .find(|other| identity(other) == identity(item))
                        .cloned()
                };
                if kind == "response.completed" {
                    for item in done.values() {
                        if let Some(last) = find(item) {
                            if !compatible_id(item, &last) {
                                return Err(at(
                                    "Completed response output identity changed.".into()
                                ));
                            }
                            if &last != item {
                                return Err(at(format!(
                                    "response.completed repeats {} as {last}",
                                    item
                                )));
                            }
                        }
                    }
                    for (index, item) in &items {
                        let finished = find(item).is_some_and(|last| compatible_id(item, &last));
                        if !done.contains_key(index) && !finished {
                            return Err(at(
                                "Cannot complete response with unfinished output items.".into(),
                            ));
                        }
                    }
                    completed = Some(value["response"].clone());
                }
            }
            "error" => ended = true,
            _ => {}
        }
    }
    Ok(completed)
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}
