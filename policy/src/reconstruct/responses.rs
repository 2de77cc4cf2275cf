//! OpenAI Responses: `response.*` stream events → one `response` object.
//!
//! What each event becomes:
//!
//! - **Lifecycle** (`response.created`, `.queued`, `.in_progress`, `.completed`,
//!   `.incomplete`, `.failed`): the latest event's `response` object gives every field of the
//!   result (`id`, `status`, `usage`, `incomplete_details`, `error`, the echoed request
//!   parameters, fields this code does not know) except `output`.
//! - **`output`** is built from the item events, by `output_index`: an item starts as
//!   `response.output_item.added` sent it, and grows with its events — message parts
//!   (`content_part.added`, `output_text.delta` appended to `text`, `logprobs` extended,
//!   `output_text.annotation.added`, `refusal.delta`), function-call `arguments` and custom-tool
//!   `input` deltas, reasoning `summary` parts and texts and `reasoning_text` content. Each
//!   `.done` event sets the whole value it repeats, and `response.output_item.done` replaces
//!   the item (it is the only place some fields arrive, such as a reasoning item's
//!   `encrypted_content`). For an item that never got its `output_item.done` (a failed or
//!   incomplete response), the terminal event's copy is the final word when it lists one. A
//!   stream cut short keeps its items as far as they got.
//! - **`error`** events (in-band, mid-stream): kept as the result's `error` when the
//!   lifecycle left it `null`.
//! - Progress events of built-in tools (`response.web_search_call.searching`, …) name an
//!   item whose full state arrives in its `output_item.done`; they add nothing. Events of
//!   another type, and item events naming an item or part that never started, are skipped and
//!   counted.
//!
//! For a complete stream the result equals the stream's own `response.completed` object
//! (tested on every scenario of the mock provider), which is what the SDKs return as the final
//! response; built from the events, it also reflects what a policy changed in them.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::token_usage;
use luthien_api::TokenUsage;

#[derive(Debug, Default)]
pub(super) struct ResponsesStream {
    /// The latest lifecycle event's `response`, its `output` taken out (left `null`).
    response: Option<Map<String, Value>>,
    /// The terminal event's `output`, for items no item event announced.
    terminal_output: Vec<Value>,
    /// Output items by `output_index`, and whether `response.output_item.done` sent it whole.
    items: BTreeMap<u64, (Map<String, Value>, bool)>,
    /// An in-band `error` event's error.
    error: Option<Value>,
    seen: bool,
    skipped: u64,
}

impl ResponsesStream {
    pub(super) fn push(&mut self, event_name: Option<&str>, event: &Value) {
        let Some(fields) = event.as_object() else {
            self.skipped += 1;
            return;
        };
        self.seen = true;
        let kind = fields
            .get("type")
            .and_then(Value::as_str)
            .or(event_name)
            .unwrap_or("");
        let understood = match kind {
            "response.created" | "response.queued" | "response.in_progress" => {
                self.lifecycle(fields, false)
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.lifecycle(fields, true)
            }
            "error" => {
                let error = match fields.get("error") {
                    Some(error @ Value::Object(_)) => error.clone(),
                    _ => without(fields, &["type", "sequence_number"]),
                };
                self.error = Some(error);
                true
            }
            "response.output_item.added" | "response.output_item.done" => {
                match (index(fields, "output_index"), fields.get("item")) {
                    (Some(position), Some(Value::Object(item))) => {
                        let done = kind == "response.output_item.done";
                        self.items.insert(position, (item.clone(), done));
                        true
                    }
                    _ => false,
                }
            }
            _ => self.item_event(kind, fields).unwrap_or(false),
        };
        if !understood {
            self.skipped += 1;
        }
    }

    fn lifecycle(&mut self, fields: &Map<String, Value>, terminal: bool) -> bool {
        let Some(Value::Object(response)) = fields.get("response") else {
            return false;
        };
        let mut response = response.clone();
        // Taken out but keeping its place, so the result's fields stay in the provider's order.
        let output = response.get_mut("output").map(Value::take);
        if terminal && let Some(Value::Array(output)) = output {
            self.terminal_output = output;
        }
        self.response = Some(response);
        true
    }

    /// An event about one output item; `None` when it names an item or part that never
    /// started, or lacks its fields.
    fn item_event(&mut self, kind: &str, fields: &Map<String, Value>) -> Option<bool> {
        let Some(kind) = kind.strip_prefix("response.") else {
            return Some(false);
        };
        let (item, _) = self.items.get_mut(&index(fields, "output_index")?)?;
        match kind {
            "content_part.added" | "content_part.done" => {
                set_at(
                    item,
                    "content",
                    index(fields, "content_index")?,
                    fields.get("part")?,
                );
            }
            "output_text.delta" => {
                let part = element(item, "content", index(fields, "content_index")?)?;
                append(part, "text", fields.get("delta")?);
                if let Some(Value::Array(logprobs)) = fields.get("logprobs")
                    && !logprobs.is_empty()
                {
                    match part.get_mut("logprobs") {
                        Some(Value::Array(all)) => all.extend(logprobs.iter().cloned()),
                        _ => {
                            part.insert("logprobs".to_owned(), Value::Array(logprobs.clone()));
                        }
                    }
                }
            }
            "output_text.done" => {
                let part = element(item, "content", index(fields, "content_index")?)?;
                part.insert("text".to_owned(), fields.get("text")?.clone());
            }
            "output_text.annotation.added" => {
                let part = element(item, "content", index(fields, "content_index")?)?;
                let annotation = fields.get("annotation")?;
                set_at(
                    part,
                    "annotations",
                    index(fields, "annotation_index")?,
                    annotation,
                );
            }
            "refusal.delta" => {
                let part = element(item, "content", index(fields, "content_index")?)?;
                append(part, "refusal", fields.get("delta")?);
            }
            "refusal.done" => {
                let part = element(item, "content", index(fields, "content_index")?)?;
                part.insert("refusal".to_owned(), fields.get("refusal")?.clone());
            }
            "function_call_arguments.delta" => append(item, "arguments", fields.get("delta")?),
            "function_call_arguments.done" => {
                item.insert("arguments".to_owned(), fields.get("arguments")?.clone());
            }
            "custom_tool_call_input.delta" => append(item, "input", fields.get("delta")?),
            "custom_tool_call_input.done" => {
                item.insert("input".to_owned(), fields.get("input")?.clone());
            }
            "reasoning_summary_part.added" | "reasoning_summary_part.done" => {
                set_at(
                    item,
                    "summary",
                    index(fields, "summary_index")?,
                    fields.get("part")?,
                );
            }
            "reasoning_summary_text.delta" => {
                let part = element(item, "summary", index(fields, "summary_index")?)?;
                append(part, "text", fields.get("delta")?);
            }
            "reasoning_summary_text.done" => {
                let part = element(item, "summary", index(fields, "summary_index")?)?;
                part.insert("text".to_owned(), fields.get("text")?.clone());
            }
            "reasoning_text.delta" => {
                let position = index(fields, "content_index")?;
                if element(item, "content", position).is_none() {
                    let part = serde_json::json!({"type": "reasoning_text", "text": ""});
                    set_at(item, "content", position, &part);
                }
                append(
                    element(item, "content", position)?,
                    "text",
                    fields.get("delta")?,
                );
            }
            "reasoning_text.done" => {
                let part = element(item, "content", index(fields, "content_index")?)?;
                part.insert("text".to_owned(), fields.get("text")?.clone());
            }
            // A built-in tool's progress (`web_search_call.searching`, …): its state arrives
            // whole in the item's `output_item.done`.
            _ if fields.contains_key("item_id") => {}
            _ => return Some(false),
        }
        Some(true)
    }

    pub(super) fn skipped(&self) -> u64 {
        self.skipped
    }

    pub(super) fn finish(&self) -> Option<Value> {
        if !self.seen {
            return None;
        }
        let mut response = self.response.clone().unwrap_or_else(|| {
            let mut response = Map::new();
            response.insert("object".to_owned(), Value::from("response"));
            response
        });
        let mut output: BTreeMap<u64, Value> = self
            .items
            .iter()
            .map(|(&position, (item, _))| (position, Value::Object(item.clone())))
            .collect();
        for (position, item) in (0u64..).zip(&self.terminal_output) {
            let done = self.items.get(&position).is_some_and(|(_, done)| *done);
            if !done {
                output.insert(position, item.clone());
            }
        }
        let output = Value::Array(output.into_values().collect());
        response.insert("output".to_owned(), output);
        if let Some(error) = &self.error
            && response.get("error").is_none_or(Value::is_null)
        {
            response.insert("error".to_owned(), error.clone());
        }
        Some(Value::Object(response))
    }

    pub(super) fn usage(&self) -> TokenUsage {
        let usage = self
            .response
            .as_ref()
            .and_then(|response| response.get("usage"))
            .and_then(Value::as_object);
        token_usage(usage, "input_tokens", "output_tokens")
    }

    /// Why the response ended: `incomplete_details.reason` when it has one (such as
    /// `max_output_tokens`), else its `status` once terminal.
    pub(super) fn finish_reasons(&self) -> Vec<String> {
        let Some(response) = &self.response else {
            return Vec::new();
        };
        let reason = response
            .get("incomplete_details")
            .and_then(|details| details.get("reason"))
            .and_then(Value::as_str)
            .or_else(|| match response.get("status").and_then(Value::as_str) {
                Some(status @ ("completed" | "incomplete" | "failed" | "cancelled")) => {
                    Some(status)
                }
                _ => None,
            });
        reason.map(str::to_owned).into_iter().collect()
    }
}

/// A non-negative integer field.
fn index(fields: &Map<String, Value>, key: &str) -> Option<u64> {
    fields.get(key).and_then(Value::as_u64)
}

/// The object at `position` of the array `key` of `target`.
fn element<'a>(
    target: &'a mut Map<String, Value>,
    key: &str,
    position: u64,
) -> Option<&'a mut Map<String, Value>> {
    target
        .get_mut(key)?
        .as_array_mut()?
        .get_mut(usize::try_from(position).ok()?)?
        .as_object_mut()
}

/// Puts `value` at `position` of the array `key` of `target` (created when missing), filling a
/// gap with `null`s: parts and summaries are announced in order, but nothing checks that.
fn set_at(target: &mut Map<String, Value>, key: &str, position: u64, value: &Value) {
    let Ok(position) = usize::try_from(position) else {
        return;
    };
    let entry = target
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    let Value::Array(items) = entry else {
        return;
    };
    if items.len() <= position {
        items.resize(position + 1, Value::Null);
    }
    items[position] = value.clone();
}

/// Appends a delta to the string `key` of `target` (created when missing).
fn append(target: &mut Map<String, Value>, key: &str, delta: &Value) {
    let Some(delta) = delta.as_str() else {
        return;
    };
    match target.get_mut(key) {
        Some(Value::String(text)) => text.push_str(delta),
        _ => {
            target.insert(key.to_owned(), Value::from(delta));
        }
    }
}

/// The fields of `fields` but `keys`, as an object.
fn without(fields: &Map<String, Value>, keys: &[&str]) -> Value {
    Value::Object(
        fields
            .iter()
            .filter(|(key, _)| !keys.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    )
}
