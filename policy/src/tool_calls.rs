//! What `tool_call_filter` and `llm_judge` share: finding tool calls (and, for a judge, the
//! assistant text) in responses and streams, holding each one until it is complete, asking an
//! [`Inspector`] about it, and removing what it blocks.
//!
//! A policy supplies the [`Inspector`]; [`GuardCall`] is the whole [`CallPolicy`] around it.
//!
//! **Removal.** A blocked tool call is taken out and replaced by text the inspector chooses:
//!
//! - OpenAI, non-streamed: the call leaves `message.tool_calls` (the key goes when none is left,
//!   as OpenAI rejects an empty array in the next request) and its replacement text is appended
//!   to `message.content`, separated by a blank line from what is there.
//! - Anthropic, non-streamed: the `tool_use` block becomes a `text` block in the same place.
//! - OpenAI, streamed: the call's chunks are dropped and one content-delta chunk carrying the
//!   replacement text is sent instead. The tool calls kept are renumbered (`tool_calls[].index`)
//!   so that the client sees indices 0, 1, … without gaps.
//! - Anthropic, streamed: the block's events are dropped and a text block (`content_block_start`,
//!   one `text_delta`, `content_block_stop`) with the *same index* is sent in their place, so
//!   the indices of later blocks stay valid.
//! - Responses (`function_call` and `custom_tool_call` output items), non-streamed: the item
//!   becomes, in the same place of `output`, a completed assistant `message` item with one
//!   `output_text` part holding the replacement text (`annotations` and `logprobs` empty). Its
//!   `id` is `msg_luthien_` followed by the call's `id` without its `fc_` / `ctc_` prefix, so
//!   it is unique in the response and the same streamed or not.
//! - Responses, streamed: all the call's events (`output_item.added`, the argument deltas and
//!   `.done`, `output_item.done`) are dropped, and that same message is sent as a complete,
//!   well-formed item at the call's *same `output_index`*: `output_item.added` (status
//!   `in_progress`, no content), `content_part.added` (empty text), one `output_text.delta`
//!   with the whole text, `output_text.done`, `content_part.done`, `output_item.done`. Every
//!   event that repeats the call whole — the `response.output` of `response.completed`,
//!   `.incomplete`, `.failed` and of any other lifecycle event that lists items — gets the
//!   message in the call's place. So no `output_index` is renumbered (the client sees the
//!   provider's indices, one item per index), and `sequence_number`s are not renumbered
//!   either: events that pass keep the provider's numbers (resuming a stream with
//!   `starting_after` goes by them), and the injected events take, in order, the numbers of
//!   the events they replace (the last one again when there are fewer), so numbers never go
//!   down; a number may repeat, which the SDKs accept (they require neither contiguity nor
//!   uniqueness).
//!
//! When every tool call of a response (OpenAI: of a choice) is removed, the finish reason is
//! rewritten — OpenAI `finish_reason: tool_calls` → `stop`, Anthropic `stop_reason: tool_use`
//! → `end_turn` — because an agent client that sees `tool_calls` / `tool_use` waits for tool
//! calls that are no longer there. When only some are removed it stays. The Responses API has
//! no such field: a response with function calls has `status: completed` like any other, and
//! clients look for `function_call` items in `output`; with none left there is nothing to
//! rewrite (`status`, `incomplete_details` and `usage` stay as the provider sent them).
//!
//! One limit for Responses: a client that chains requests with `previous_response_id` (the
//! provider keeps the output, `store: true`) sends back no output of the removed call, and
//! the provider, which still has the call in its stored output, may reject that next request
//! for the missing `function_call_output`. Clients that resend the whole conversation as
//! `input` are unaffected.
//!
//! **Streams.** A tool call is held until it is complete, then released unchanged
//! (byte-identical) or replaced:
//!
//! - Anthropic: from a `tool_use` block's `content_block_start` to its `content_block_stop`.
//!   Blocks must reach the client in index order (the SDKs append blocks as they start), so
//!   everything that arrives while a block is held (a `ping`, say) waits behind it.
//! - OpenAI: from a tool call's first delta to its **choice's `finish_reason` chunk**. OpenAI
//!   streams parallel tool calls one after the other, but nothing in the format promises that a
//!   call's deltas stop when the next index starts (OpenAI-compatible servers interleave or
//!   batch them), and deciding on arguments that may still grow would let the rest through
//!   unchecked. So all the calls of a choice are decided together when the choice finishes
//!   (the inspections run concurrently), then released in index order just before the finish
//!   chunk. Text, role and other deltas of the choice are not held: OpenAI clients assemble
//!   `content` and `tool_calls` separately, so their relative order does not matter.
//!   A chunk carrying more than one held part (two tool calls, a tool call and text, a tool
//!   call and the finish reason) is split into one chunk per part plus the rest.
//! - Responses: from a call item's `response.output_item.added` to its
//!   `response.output_item.done` (every event naming its `output_index` is part of it). As
//!   for Anthropic, everything that arrives while an item is held waits behind it, so the
//!   events keep their order. The arguments inspected are the call's last whole copy
//!   (`output_item.done`'s item, else `.function_call_arguments.done`), else the deltas.
//!   Reasoning items (`encrypted_content` included), and every event the gate does not know,
//!   pass untouched and in order.
//!
//! Held parts are also decided — on what has arrived — when the stream ends without their end
//! (an in-band error, `[DONE]`, `message_stop`, `message_delta`, Responses
//! `response.completed` / `.incomplete` / `.failed` / `error`, or the end of the body), so
//! nothing held is ever lost or released unchecked. A Responses call that is removed that way
//! is still replaced by a whole message item. A call or message that a Responses lifecycle
//! event lists but no item event announced is inspected there, as in a non-streamed response.
//!
//! When the inspector [`Inspector::inspects_text`], text is held the same way and decided as a
//! whole: each Anthropic `text` block, the text of each OpenAI choice (until its finish), and
//! each Responses `message` item (from `output_item.added` to `output_item.done`), whose
//! `output_text` parts are decided one by one (concurrently). A blocked text is replaced by the
//! inspector's text; it never changes the finish reason. A Responses stream repeats each text
//! whole four times after its deltas, and every copy is replaced: the part's deltas become one
//! `output_text.delta` carrying the replacement (its `output_text.annotation.added` events are
//! dropped), and `output_text.done` `text`, `content_part.done` `part`, `output_item.done`
//! `item` and the terminal event's `response.output` carry it too, without the annotations and
//! logprobs that pointed into the original. A text kept passes byte-identical; should a copy
//! differ from the deltas that were inspected, it is set to them.

mod anthropic;
#[cfg(test)]
pub(crate) mod fixtures;
mod openai;
mod responses;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde_json::{Value, json};

use super::{Api, CallPolicy, PolicyError, PolicyEvent, SseEvent};

/// One tool call the model made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCall {
    /// OpenAI `id` / Anthropic `id` / Responses `call_id` (the id the tool's output answers),
    /// when known.
    pub id: Option<String>,
    /// The tool's name (OpenAI `function.name` or `custom.name`; Anthropic and Responses
    /// `name`).
    pub name: String,
    /// The arguments as a JSON text, as the model wrote them: OpenAI `function.arguments`
    /// (`custom.input` for custom tools); Anthropic's streamed `partial_json` concatenated, or
    /// its `input` serialised; Responses `arguments` (`input` for custom tool calls, which is
    /// free text).
    pub arguments: String,
}

impl ToolCall {
    /// The arguments parsed as JSON; `None` when they are not (e.g. cut off).
    pub fn parsed_arguments(&self) -> Option<Value> {
        serde_json::from_str(&self.arguments).ok()
    }

    /// The arguments as compact JSON (no whitespace between tokens, keys in their order, strings
    /// escaped the way `serde_json` writes them), so that the same call reads the same streamed
    /// and not, in both APIs; the raw text when they are not JSON.
    pub fn normalized_arguments(&self) -> Cow<'_, str> {
        match self.parsed_arguments() {
            Some(value) => Cow::Owned(value.to_string()),
            None => Cow::Borrowed(&self.arguments),
        }
    }
}

/// What an [`Inspector`] looks at.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    ToolCall(&'a ToolCall),
    /// The whole text of an Anthropic `text` block, of an OpenAI choice, or of one
    /// `output_text` part of a Responses `message` item.
    Text(&'a str),
}

/// An [`Inspector`]'s answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// `Some(text)`: remove the subject and put `text` in its place.
    pub replacement: Option<String>,
    /// What goes on the call's record (every removal must have one).
    pub event: Option<PolicyEvent>,
}

impl Decision {
    pub fn keep() -> Self {
        Self::default()
    }
}

/// Decides about tool calls (and optionally text); shared by all calls of a policy.
#[async_trait]
pub trait Inspector: Send + Sync + 'static {
    /// True when text is held and inspected too, not only tool calls.
    fn inspects_text(&self) -> bool {
        false
    }

    async fn inspect(&self, subject: Subject<'_>) -> Decision;
}

/// Inspects several subjects concurrently; the decisions come back in order.
async fn inspect_all(inspector: &dyn Inspector, subjects: &[Subject<'_>]) -> Vec<Decision> {
    match subjects {
        [] => Vec::new(),
        [only] => vec![inspector.inspect(*only).await],
        _ => join_all(subjects.iter().map(|subject| inspector.inspect(*subject))).await,
    }
}

/// The per-call state of a policy built on an [`Inspector`].
pub struct GuardCall {
    api: Api,
    inspector: Arc<dyn Inspector>,
    stream: StreamGate,
    events: Vec<PolicyEvent>,
}

impl GuardCall {
    pub fn new(api: Api, inspector: Arc<dyn Inspector>) -> Self {
        Self {
            api,
            inspector,
            stream: StreamGate::new(api),
            events: Vec::new(),
        }
    }
}

#[async_trait]
impl CallPolicy for GuardCall {
    async fn on_response(&mut self, response: &mut Value) -> Result<(), PolicyError> {
        let events = inspect_response(self.api, response, self.inspector.as_ref()).await;
        self.events.extend(events);
        Ok(())
    }

    async fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut Vec<SseEvent>,
    ) -> Result<(), PolicyError> {
        self.stream
            .on_event(event, out, self.inspector.as_ref(), &mut self.events)
            .await;
        Ok(())
    }

    async fn on_stream_end(&mut self, out: &mut Vec<SseEvent>) -> Result<(), PolicyError> {
        self.stream
            .on_stream_end(out, self.inspector.as_ref(), &mut self.events)
            .await;
        Ok(())
    }

    fn take_events(&mut self) -> Vec<PolicyEvent> {
        std::mem::take(&mut self.events)
    }
}

/// Inspects the tool calls (and text, if asked) of a complete response and removes what the
/// inspector blocks; returns the decisions' events.
pub async fn inspect_response(
    api: Api,
    response: &mut Value,
    inspector: &dyn Inspector,
) -> Vec<PolicyEvent> {
    match api {
        Api::OpenAiChat => openai_response(response, inspector).await,
        Api::AnthropicMessages => anthropic_response(response, inspector).await,
        Api::OpenAiResponses => responses::inspect_response(response, inspector).await,
    }
}

/// A tool call of an OpenAI response message, or of a stream's accumulated deltas.
fn openai_tool_call(call: &Value) -> ToolCall {
    let function = call.get("function").or_else(|| call.get("custom"));
    let text = |field: &str| {
        function
            .and_then(|function| function.get(field))
            .and_then(Value::as_str)
    };
    ToolCall {
        id: call.get("id").and_then(Value::as_str).map(str::to_owned),
        name: text("name").unwrap_or_default().to_owned(),
        arguments: text("arguments")
            .or_else(|| text("input"))
            .unwrap_or_default()
            .to_owned(),
    }
}

async fn openai_response(response: &mut Value, inspector: &dyn Inspector) -> Vec<PolicyEvent> {
    let mut events = Vec::new();
    let Some(Value::Array(choices)) = response.get_mut("choices") else {
        return events;
    };
    for choice in choices {
        let Some(message) = choice.get_mut("message") else {
            continue;
        };
        let calls: Vec<ToolCall> = match message.get("tool_calls") {
            Some(Value::Array(calls)) => calls.iter().map(openai_tool_call).collect(),
            _ => Vec::new(),
        };
        let text = match message.get("content") {
            Some(Value::String(text)) if inspector.inspects_text() && !text.trim().is_empty() => {
                Some(text.clone())
            }
            _ => None,
        };
        let mut subjects: Vec<Subject<'_>> = calls.iter().map(Subject::ToolCall).collect();
        if let Some(text) = &text {
            subjects.push(Subject::Text(text));
        }
        let mut decisions = inspect_all(inspector, &subjects).await;
        events.extend(decisions.iter_mut().filter_map(|d| d.event.take()));

        if text.is_some()
            && let Some(replacement) = decisions.pop().and_then(|d| d.replacement)
        {
            message["content"] = Value::String(replacement);
        }
        let replacements: Vec<String> = decisions
            .iter()
            .filter_map(|decision| decision.replacement.clone())
            .collect();
        if replacements.is_empty() {
            continue;
        }
        let all_removed = replacements.len() == calls.len();
        if let Some(Value::Array(tool_calls)) = message.get_mut("tool_calls") {
            let mut decisions = decisions.iter();
            tool_calls.retain(|_| decisions.next().is_none_or(|d| d.replacement.is_none()));
        }
        if all_removed && let Some(fields) = message.as_object_mut() {
            fields.remove("tool_calls");
        }
        append_text(message, &replacements.join("\n\n"));
        if all_removed && choice.get("finish_reason").and_then(Value::as_str) == Some("tool_calls")
        {
            choice["finish_reason"] = json!("stop");
        }
    }
    events
}

/// Appends `text` to an OpenAI message's `content` (a string, null, or content parts).
fn append_text(message: &mut Value, text: &str) {
    match message.get_mut("content") {
        Some(Value::String(content)) if !content.is_empty() => {
            content.push_str("\n\n");
            content.push_str(text);
        }
        Some(Value::Array(parts)) => parts.push(json!({"type": "text", "text": text})),
        _ => message["content"] = Value::String(text.to_owned()),
    }
}

async fn anthropic_response(response: &mut Value, inspector: &dyn Inspector) -> Vec<PolicyEvent> {
    let mut events = Vec::new();
    let Some(Value::Array(blocks)) = response.get_mut("content") else {
        return events;
    };
    // (position in `content`, subject) of every block to inspect.
    let mut calls = Vec::new();
    let mut texts = Vec::new();
    for (position, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => calls.push((
                position,
                ToolCall {
                    id: block.get("id").and_then(Value::as_str).map(str::to_owned),
                    name: block
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: block
                        .get("input")
                        .map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            )),
            Some("text") if inspector.inspects_text() => {
                if let Some(text) = block.get("text").and_then(Value::as_str)
                    && !text.trim().is_empty()
                {
                    texts.push((position, text.to_owned()));
                }
            }
            _ => {}
        }
    }
    let subjects: Vec<(usize, Subject<'_>)> = calls
        .iter()
        .map(|(position, call)| (*position, Subject::ToolCall(call)))
        .chain(
            texts
                .iter()
                .map(|(position, text)| (*position, Subject::Text(text))),
        )
        .collect();
    let only_subjects: Vec<Subject<'_>> = subjects.iter().map(|(_, subject)| *subject).collect();
    let decisions = inspect_all(inspector, &only_subjects).await;
    let mut removed_calls = 0;
    for ((position, subject), decision) in subjects.iter().zip(decisions) {
        events.extend(decision.event);
        let Some(replacement) = decision.replacement else {
            continue;
        };
        match subject {
            Subject::ToolCall(_) => {
                removed_calls += 1;
                blocks[*position] = json!({"type": "text", "text": replacement});
            }
            Subject::Text(_) => {
                // Citations point into the text that is gone.
                blocks[*position] = json!({"type": "text", "text": replacement});
            }
        }
    }
    if !calls.is_empty()
        && removed_calls == calls.len()
        && response.get("stop_reason").and_then(Value::as_str) == Some("tool_use")
    {
        response["stop_reason"] = json!("end_turn");
    }
    events
}

/// The streaming half: holds tool calls (and text) until complete, then releases or replaces
/// them. One per call.
pub struct StreamGate {
    inner: Gate,
}

enum Gate {
    OpenAi(openai::Gate),
    Anthropic(anthropic::Gate),
    Responses(responses::Gate),
}

impl StreamGate {
    pub fn new(api: Api) -> Self {
        let inner = match api {
            Api::OpenAiChat => Gate::OpenAi(openai::Gate::default()),
            Api::AnthropicMessages => Gate::Anthropic(anthropic::Gate::default()),
            Api::OpenAiResponses => Gate::Responses(responses::Gate::default()),
        };
        Self { inner }
    }

    /// Takes one upstream event; pushes what the client gets now to `out` and the decisions'
    /// events to `events`.
    pub async fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        match &mut self.inner {
            Gate::OpenAi(gate) => gate.on_event(event, out, inspector, events).await,
            Gate::Anthropic(gate) => gate.on_event(event, out, inspector, events).await,
            Gate::Responses(gate) => gate.on_event(event, out, inspector, events).await,
        }
    }

    /// The upstream stream ended: decides and releases everything still held.
    pub async fn on_stream_end(
        &mut self,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        match &mut self.inner {
            Gate::OpenAi(gate) => gate.finish(out, inspector, events).await,
            Gate::Anthropic(gate) => gate.finish(out, inspector, events).await,
            Gate::Responses(gate) => gate.finish(out, inspector, events).await,
        }
    }
}

/// A text with `{placeholder}`s, checked when the policy is configured.
///
/// A placeholder is `{` + a name of letters, digits and `_` + `}`; any other brace is literal
/// (so JSON examples in a prompt need no escaping). A name the template does not know is an
/// error.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<TemplatePart>,
}

#[derive(Clone, Debug)]
enum TemplatePart {
    Literal(String),
    Field(&'static str),
}

impl Template {
    /// Parses `text`, whose placeholders must be among `fields`.
    pub fn parse(text: &str, fields: &[&'static str]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if name_len > 0 && after[name_len..].starts_with('}') {
                let name = &after[..name_len];
                let Some(field) = fields.iter().find(|field| **field == name) else {
                    let known: Vec<String> = fields.iter().map(|f| format!("{{{f}}}")).collect();
                    return Err(format!(
                        "unknown placeholder {{{name}}}; known: {}",
                        known.join(", ")
                    ));
                };
                if !literal.is_empty() {
                    parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(TemplatePart::Field(field));
                rest = &after[name_len + 1..];
            } else {
                literal.push('{');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// The text with each placeholder replaced by its value (empty when `values` lacks it).
    pub fn render(&self, values: &[(&str, &str)]) -> String {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(literal) => text.push_str(literal),
                TemplatePart::Field(field) => {
                    if let Some((_, value)) = values.iter().find(|(name, _)| name == field) {
                        text.push_str(value);
                    }
                }
            }
        }
        text
    }
}

/// Tool-name patterns: `*` matches any run of characters, `?` one character, the rest itself
/// (case-sensitive).
#[derive(Clone, Debug)]
pub struct ToolNames {
    regex: regex::Regex,
}

impl ToolNames {
    /// Compiles `patterns`; there must be at least one and none may be empty.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err(": must not be empty".to_owned());
        }
        let mut alternatives = Vec::with_capacity(patterns.len());
        for (index, pattern) in patterns.iter().enumerate() {
            if pattern.is_empty() {
                return Err(format!("[{index}]: must not be empty"));
            }
            let mut regex = String::new();
            let mut literal = [0u8; 4];
            for c in pattern.chars() {
                match c {
                    '*' => regex.push_str(".*"),
                    '?' => regex.push('.'),
                    c => regex.push_str(&regex::escape(c.encode_utf8(&mut literal))),
                }
            }
            alternatives.push(regex);
        }
        let regex = regex::Regex::new(&format!("^(?:{})$", alternatives.join("|")))
            .map_err(|error| format!(": {error}"))?;
        Ok(Self { regex })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }
}
