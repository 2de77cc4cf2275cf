//! Stream reconstruction: rebuilds the full response of a streamed call, in the API's own
//! non-streamed shape (OpenAI `chat.completion`, Anthropic `message`, OpenAI Responses
//! `response`), from its SSE events.
//!
//! Every streamed call is reconstructed twice — once from the events upstream sent (the
//! "original" response) and once from the events the client received (the "final" one) — so
//! that the record of a streamed call can be read and diffed exactly like a non-streamed one.
//!
//! Two rules shape the code:
//!
//! - **It never fails the call.** An event that cannot be understood (not JSON, wrong shape,
//!   a delta for a block that never started, an unknown event type) is skipped and counted in
//!   [`Reconstructor::skipped`]; everything else still counts. A stream that stops half way
//!   reconstructs to what was seen, and in-band error events are kept in an `error` field.
//! - **It is cheap per event.** Text is appended in place to one growing string per choice or
//!   content block; the response JSON is only assembled by [`Reconstructor::finish`]. Events
//!   arrive as [`SseEvent`]s whose JSON is parsed once and shared with the policies.
//!
//! It must also not be *thin* (the lesson of the system this one replaces, which joined
//! `delta.content` of choice 0 and stopped at `finish_reason`): every choice, tool call,
//! refusal, logprob, thinking block, signature, citation, stop reason and the usage that
//! arrives *after* the finish reason are kept, and fields it does not know are carried over
//! (the per-API rules are documented in `openai.rs` and `anthropic.rs`).

mod anthropic;
mod openai;
mod responses;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

use crate::shapes::Api;
use crate::sse::SseEvent;
use luthien_api::TokenUsage;

/// Rebuilds one streamed response; feed it every event of the stream, in order.
#[derive(Debug)]
pub struct Reconstructor {
    state: State,
    events_seen: u64,
    /// Events that were not JSON (and not `[DONE]`); the API states count their own skips.
    unparsed: u64,
}

#[derive(Debug)]
enum State {
    OpenAi(openai::OpenAiStream),
    Anthropic(anthropic::AnthropicStream),
    Responses(responses::ResponsesStream),
}

impl Reconstructor {
    pub fn new(api: Api) -> Self {
        let state = match api {
            Api::OpenAiChat => State::OpenAi(openai::OpenAiStream::default()),
            Api::AnthropicMessages => State::Anthropic(anthropic::AnthropicStream::default()),
            Api::OpenAiResponses => State::Responses(responses::ResponsesStream::default()),
        };
        Self {
            state,
            events_seen: 0,
            unparsed: 0,
        }
    }

    /// Feeds one SSE event. OpenAI's `[DONE]`, Anthropic's `ping` and comment lines carry
    /// nothing and are ignored; an event whose data is not JSON is skipped and counted.
    pub fn push(&mut self, event: &SseEvent) {
        // `json()` first: it is parsed once and cached in the event (policies read it too),
        // whereas `data()` of a policy-built event would serialise it again.
        if let Some(json) = event.json() {
            self.push_json(event.event_type(), json);
        } else if event.is_done() {
            self.events_seen += 1;
        } else if !event.data().trim().is_empty() {
            self.events_seen += 1;
            self.unparsed += 1;
        }
        // Otherwise a comment or keep-alive without data: not an event of the API.
    }

    /// Feeds an already parsed event: its JSON data and, for Anthropic, its SSE `event:` name
    /// (the data's own `type` takes precedence; the name is the fallback).
    pub fn push_json(&mut self, event_type: Option<&str>, data: &Value) {
        self.events_seen += 1;
        match &mut self.state {
            State::OpenAi(stream) => stream.push(data),
            State::Anthropic(stream) => stream.push(event_type, data),
            State::Responses(stream) => stream.push(event_type, data),
        }
    }

    /// Events fed so far that carried data, including `[DONE]`, pings and skipped ones.
    pub fn events_seen(&self) -> u64 {
        self.events_seen
    }

    /// Events that could not be (fully) understood and were skipped in whole or in part,
    /// including an Anthropic tool input whose JSON does not parse (also when the stream was
    /// cut before the block's `content_block_stop`).
    pub fn skipped(&self) -> u64 {
        self.unparsed
            + match &self.state {
                State::OpenAi(stream) => stream.skipped(),
                State::Anthropic(stream) => stream.skipped(),
                State::Responses(stream) => stream.skipped(),
            }
    }

    /// The response in the API's non-streamed shape, built from everything seen so far;
    /// `None` when no event contributed anything.
    ///
    /// Takes `&self` so it can be called at any point (and again later) without consuming
    /// the state; each call assembles a fresh value, so call it once per stream end, not per
    /// event.
    pub fn finish(&self) -> Option<Value> {
        match &self.state {
            State::OpenAi(stream) => stream.finish(),
            State::Anthropic(stream) => stream.finish(),
            State::Responses(stream) => stream.finish(),
        }
    }

    /// Token usage, when the stream reported it (OpenAI: only with
    /// `stream_options.include_usage`).
    pub fn usage(&self) -> TokenUsage {
        match &self.state {
            State::OpenAi(stream) => stream.usage(),
            State::Anthropic(stream) => stream.usage(),
            State::Responses(stream) => stream.usage(),
        }
    }

    /// The finish reasons seen: OpenAI `finish_reason` of each choice that has one, by choice
    /// index; Anthropic `stop_reason`; Responses `incomplete_details.reason`, else the final
    /// `status`.
    pub fn finish_reasons(&self) -> Vec<String> {
        match &self.state {
            State::OpenAi(stream) => stream.finish_reasons(),
            State::Anthropic(stream) => stream.finish_reasons(),
            State::Responses(stream) => stream.finish_reasons(),
        }
    }
}

/// Adds a streamed fragment of a field the reconstructor has no specific rule for: strings
/// are concatenated, arrays extended, objects merged key by key with this same rule, and any
/// other value replaces the previous one. `null` never erases what was already seen.
///
/// This is how streams send such fields in practice (e.g. OpenAI-compatible
/// `reasoning_content` text, `audio.transcript`, `annotations` lists).
fn accumulate(target: &mut Map<String, Value>, key: &str, fragment: &Value) {
    match (target.get_mut(key), fragment) {
        (_, Value::Null) => {
            target.entry(key).or_insert(Value::Null);
        }
        (Some(Value::String(text)), Value::String(more)) => text.push_str(more),
        (Some(Value::Array(items)), Value::Array(more)) => items.extend(more.iter().cloned()),
        (Some(Value::Object(fields)), Value::Object(more)) => {
            for (key, value) in more {
                accumulate(fields, key, value);
            }
        }
        _ => {
            target.insert(key.to_owned(), fragment.clone());
        }
    }
}

/// Sets a field that streams repeat whole (ids, model names, filter results): the latest
/// value wins unless it is blank (`null`, `""`, `{}`, `[]`), because some providers open a
/// stream with blank placeholders (Azure's first chunk has `"model": ""`) or repeat `null`.
fn set_latest(target: &mut Map<String, Value>, key: &str, value: &Value) {
    if is_blank(value) {
        target.entry(key).or_insert_with(|| value.clone());
    } else if target.get(key) != Some(value) {
        // Compared first so that a value repeated in every chunk costs no allocation.
        target.insert(key.to_owned(), value.clone());
    }
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Usage read from a usage object with the API's key names.
fn token_usage(usage: Option<&Map<String, Value>>, input: &str, output: &str) -> TokenUsage {
    TokenUsage {
        input_tokens: usage
            .and_then(|usage| usage.get(input))
            .and_then(Value::as_u64),
        output_tokens: usage
            .and_then(|usage| usage.get(output))
            .and_then(Value::as_u64),
    }
}
