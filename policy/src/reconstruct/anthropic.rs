//! Anthropic Messages: the stateful event stream → one `message`.
//!
//! - `message_start` gives the skeleton: every field of its `message` is kept (including ones
//!   this code does not know), `content` is replaced by the blocks that follow.
//! - `content_block_start` opens block `index` exactly as sent, whatever its type (`text`,
//!   `tool_use` with `input: {}`, `thinking`, `redacted_thinking` with its `data`, server tool
//!   blocks, types added later).
//! - `content_block_delta`: `text_delta` appends to `text`, `thinking_delta` to `thinking`,
//!   `signature_delta` sets `signature`, `citations_delta` appends its `citation` to
//!   `citations`, and `input_json_delta` appends `partial_json` to a buffer that is parsed
//!   into `input` at `content_block_stop` (or by `finish` when the stream was cut first).
//!   Input that does not parse is kept as the raw string, and counted as skipped. Delta types
//!   added later are merged into the block by [`super::accumulate`] (their strings are
//!   appended), which is how every delta type so far works.
//! - `message_delta`: each field of its `delta` (`stop_reason`, `stop_sequence`, …) and any
//!   other top-level field besides `usage` is set on the message; its `usage` fields replace
//!   those of `message_start` one by one. `output_tokens` there is the running total, so it
//!   replaces the `1` from `message_start` rather than adding to it.
//! - `error` is kept as the result's `error` field (the `error` object of the event);
//!   `ping` and `message_stop` add nothing. Other event types are counted as skipped.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{accumulate, token_usage};
use luthien_api::TokenUsage;

#[derive(Debug, Default)]
pub(super) struct AnthropicStream {
    /// The `message` of `message_start`, without its `content`.
    message: Option<Map<String, Value>>,
    /// `message_start` usage with the `message_delta` usage merged over it.
    usage: Option<Map<String, Value>>,
    /// Fields `message_delta` set on the message (`stop_reason`, `stop_sequence`, …).
    delta: Map<String, Value>,
    blocks: BTreeMap<u64, Block>,
    error: Option<Value>,
    /// Something besides pings arrived, so there is something to return.
    seen: bool,
    skipped: u64,
}

#[derive(Debug)]
struct Block {
    value: Map<String, Value>,
    /// `input_json_delta` fragments not parsed yet: the block has not stopped.
    partial_json: Option<String>,
}

impl Block {
    fn new(value: Map<String, Value>) -> Self {
        Self {
            value,
            partial_json: None,
        }
    }

    /// The block with its pending input parsed, or kept as the raw text when it does not
    /// parse (which [`AnthropicStream::skipped`] counts).
    fn finished(&self) -> Map<String, Value> {
        let mut value = self.value.clone();
        match parse_input(self.partial_json.as_deref()) {
            Ok(None) => {}
            Ok(Some(input)) => {
                value.insert("input".to_owned(), input);
            }
            Err(raw) => {
                value.insert("input".to_owned(), Value::String(raw.to_owned()));
            }
        }
        value
    }
}

/// Parses streamed tool input. `Ok(None)`: nothing streamed (a tool without parameters), so
/// the `input` of `content_block_start` stands. `Err`: the raw text, which is not JSON.
fn parse_input(partial_json: Option<&str>) -> Result<Option<Value>, &str> {
    match partial_json {
        None => Ok(None),
        Some(raw) if raw.trim().is_empty() => Ok(None),
        Some(raw) => serde_json::from_str(raw).map(Some).map_err(|_| raw),
    }
}

impl AnthropicStream {
    pub(super) fn push(&mut self, event_name: Option<&str>, data: &Value) {
        let Some(event) = data.as_object() else {
            self.skipped += 1;
            return;
        };
        // The data's `type` is what the SDKs dispatch on; the SSE name repeats it.
        let kind = event.get("type").and_then(Value::as_str).or(event_name);
        let understood = match kind {
            Some("ping") => return,
            Some("message_start") => self.message_start(event),
            Some("content_block_start") => self.block_start(event),
            Some("content_block_delta") => self.block_delta(event),
            Some("content_block_stop") => self.block_stop(event),
            Some("message_delta") => self.message_delta(event),
            Some("message_stop") => true,
            Some("error") => {
                if self.error.is_none() {
                    self.error = Some(event.get("error").unwrap_or(data).clone());
                }
                true
            }
            _ => false,
        };
        if understood {
            self.seen = true;
        } else {
            self.skipped += 1;
        }
    }

    fn message_start(&mut self, event: &Map<String, Value>) -> bool {
        let Some(Value::Object(message)) = event.get("message") else {
            return false;
        };
        let mut skeleton = Map::with_capacity(message.len());
        for (key, value) in message {
            match (key.as_str(), value) {
                // The API sends `content: []`; should it ever send blocks, they come first.
                ("content", Value::Array(blocks)) => {
                    for (index, block) in blocks.iter().enumerate() {
                        if let Value::Object(block) = block {
                            self.blocks.insert(index as u64, Block::new(block.clone()));
                        }
                    }
                    skeleton.insert(key.clone(), Value::Array(Vec::new()));
                }
                ("usage", Value::Object(usage)) => {
                    self.usage = Some(usage.clone());
                    // A placeholder that keeps the field's place; `finish` fills it in.
                    skeleton.insert(key.clone(), Value::Null);
                }
                _ => {
                    skeleton.insert(key.clone(), value.clone());
                }
            }
        }
        self.message = Some(skeleton);
        true
    }

    fn block_start(&mut self, event: &Map<String, Value>) -> bool {
        let (Some(index), Some(Value::Object(block))) = (
            event.get("index").and_then(Value::as_u64),
            event.get("content_block"),
        ) else {
            return false;
        };
        self.blocks.insert(index, Block::new(block.clone()));
        true
    }

    fn block_delta(&mut self, event: &Map<String, Value>) -> bool {
        let (Some(index), Some(Value::Object(delta))) = (
            event.get("index").and_then(Value::as_u64),
            event.get("delta"),
        ) else {
            return false;
        };
        // A delta for a block that never started has no type to give the block.
        let Some(block) = self.blocks.get_mut(&index) else {
            return false;
        };
        let kind = delta.get("type").and_then(Value::as_str);
        let field = |name: &str| delta.get(name).and_then(Value::as_str);
        match kind {
            Some("text_delta") => append(&mut block.value, "text", field("text")),
            Some("thinking_delta") => append(&mut block.value, "thinking", field("thinking")),
            Some("input_json_delta") => match field("partial_json") {
                Some(json) => {
                    block
                        .partial_json
                        .get_or_insert_with(String::new)
                        .push_str(json);
                    true
                }
                None => false,
            },
            Some("signature_delta") => match delta.get("signature") {
                Some(signature @ Value::String(_)) => {
                    block
                        .value
                        .insert("signature".to_owned(), signature.clone());
                    true
                }
                _ => false,
            },
            Some("citations_delta") => match delta.get("citation") {
                Some(citation) => {
                    match block.value.get_mut("citations") {
                        Some(Value::Array(citations)) => citations.push(citation.clone()),
                        _ => {
                            block.value.insert(
                                "citations".to_owned(),
                                Value::Array(vec![citation.clone()]),
                            );
                        }
                    }
                    true
                }
                None => false,
            },
            _ => {
                for (key, value) in delta {
                    if key != "type" {
                        accumulate(&mut block.value, key, value);
                    }
                }
                true
            }
        }
    }

    fn block_stop(&mut self, event: &Map<String, Value>) -> bool {
        let Some(block) = event
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|index| self.blocks.get_mut(&index))
        else {
            return false;
        };
        let result = parse_input(block.partial_json.as_deref()).map_err(str::to_owned);
        block.partial_json = None;
        match result {
            Ok(None) => true,
            Ok(Some(input)) => {
                block.value.insert("input".to_owned(), input);
                true
            }
            Err(raw) => {
                block.value.insert("input".to_owned(), Value::String(raw));
                false
            }
        }
    }

    fn message_delta(&mut self, event: &Map<String, Value>) -> bool {
        let mut understood = true;
        for (key, value) in event {
            match (key.as_str(), value) {
                ("type", _) => {}
                ("delta", Value::Object(delta)) => {
                    for (key, value) in delta {
                        self.delta.insert(key.clone(), value.clone());
                    }
                }
                ("usage", Value::Object(usage)) => {
                    let merged = self.usage.get_or_insert_with(Map::new);
                    for (key, value) in usage {
                        // A `null` does not erase a count `message_start` gave.
                        if !value.is_null() || !merged.contains_key(key) {
                            merged.insert(key.clone(), value.clone());
                        }
                    }
                }
                ("delta" | "usage", Value::Null) => {}
                ("delta" | "usage", _) => understood = false,
                _ => {
                    self.delta.insert(key.clone(), value.clone());
                }
            }
        }
        understood
    }

    pub(super) fn skipped(&self) -> u64 {
        // Blocks cut off before their stop are judged now, as `finish` will show them.
        let unparsable = self
            .blocks
            .values()
            .filter(|block| parse_input(block.partial_json.as_deref()).is_err())
            .count();
        self.skipped + unparsable as u64
    }

    pub(super) fn finish(&self) -> Option<Value> {
        if !self.seen {
            return None;
        }
        let content: Vec<Value> = self
            .blocks
            .values()
            .map(|block| Value::Object(block.finished()))
            .collect();
        let mut message = match &self.message {
            Some(skeleton) => skeleton.clone(),
            // The stream lost its `message_start`: the fields every message has.
            None => {
                let mut message = Map::new();
                message.insert("type".to_owned(), Value::from("message"));
                message.insert("role".to_owned(), Value::from("assistant"));
                message
            }
        };
        // `insert` keeps the position of a key the skeleton already has.
        message.insert("content".to_owned(), Value::Array(content));
        for key in ["stop_reason", "stop_sequence"] {
            message.entry(key).or_insert(Value::Null);
        }
        for (key, value) in &self.delta {
            message.insert(key.clone(), value.clone());
        }
        if let Some(usage) = &self.usage {
            message.insert("usage".to_owned(), Value::Object(usage.clone()));
        }
        if let Some(error) = &self.error {
            message.insert("error".to_owned(), error.clone());
        }
        Some(Value::Object(message))
    }

    pub(super) fn usage(&self) -> TokenUsage {
        token_usage(self.usage.as_ref(), "input_tokens", "output_tokens")
    }

    pub(super) fn finish_reasons(&self) -> Vec<String> {
        let stop_reason = self.delta.get("stop_reason").or_else(|| {
            self.message
                .as_ref()
                .and_then(|message| message.get("stop_reason"))
        });
        stop_reason
            .and_then(Value::as_str)
            .map(str::to_owned)
            .into_iter()
            .collect()
    }
}

/// Appends a text fragment to a block's string field; false when the delta has no text.
fn append(block: &mut Map<String, Value>, key: &str, fragment: Option<&str>) -> bool {
    let Some(fragment) = fragment else {
        return false;
    };
    match block.get_mut(key) {
        Some(Value::String(text)) => text.push_str(fragment),
        _ => {
            block.insert(key.to_owned(), Value::from(fragment));
        }
    }
    true
}
