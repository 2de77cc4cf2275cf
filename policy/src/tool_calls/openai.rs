//! OpenAI Chat Completions streams: each choice's tool calls (and, for a text inspector, its
//! text) are held until the choice's `finish_reason` chunk, then decided together and released
//! just before that chunk.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Decision, Inspector, Subject, ToolCall, inspect_all};
use crate::shapes::{self, Api, array, as_index};
use crate::{PolicyEvent, SseEvent};

#[derive(Default)]
pub(super) struct Gate {
    /// By choice index.
    choices: BTreeMap<usize, Choice>,
    /// The envelope of the stream's chunks, for injected ones.
    envelope: Option<Value>,
}

#[derive(Default)]
struct Choice {
    text: Option<HeldText>,
    /// Held tool calls by their `index`.
    calls: BTreeMap<usize, HeldCall>,
    /// Tool calls decided, and removed, in this choice.
    tool_calls: usize,
    removed: usize,
    /// The index the client sees for the next tool call kept.
    next_index: usize,
    /// Some non-empty text of this choice reached the client, so injected text needs a
    /// separator.
    text_sent: bool,
}

#[derive(Default)]
struct HeldCall {
    call: ToolCall,
    events: Vec<SseEvent>,
}

#[derive(Default)]
struct HeldText {
    text: String,
    events: Vec<SseEvent>,
}

/// Something a chunk carries that the gate holds.
enum Part {
    /// A tool-call delta (`delta.tool_calls[]` element) of a choice.
    ToolCall {
        choice: usize,
        index: usize,
        delta: Value,
    },
    /// A choice's non-empty `delta.content`.
    Text { choice: usize, text: String },
}

impl Part {
    fn choice(&self) -> usize {
        match self {
            Part::ToolCall { choice, .. } | Part::Text { choice, .. } => *choice,
        }
    }
}

impl Gate {
    pub(super) async fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        if event.is_done() {
            self.decide_all(out, inspector, events).await;
            out.push(event);
            return;
        }
        let Some(value) = event.json() else {
            out.push(event);
            return;
        };
        if self.envelope.is_none() && value.get("id").is_some() {
            self.envelope = shapes::stream_envelope(Api::OpenAiChat, value);
        }
        let text_mode = inspector.inspects_text();
        let parts = held_parts(value, text_mode);
        if parts.is_empty() {
            self.plain(event, out, inspector, events).await;
            return;
        }
        if is_single_part(value, &parts) {
            if let Some(part) = parts.into_iter().next() {
                self.hold(part, event);
            }
            return;
        }
        // Several parts, or parts with something else: one chunk per part, and the rest.
        let envelope = shapes::stream_envelope(Api::OpenAiChat, value);
        for part in parts {
            let delta = match &part {
                Part::ToolCall { delta, .. } => json!({"tool_calls": [delta]}),
                Part::Text { text, .. } => json!({"content": text}),
            };
            let mut chunk = envelope.clone().unwrap_or_else(|| json!({}));
            chunk["choices"] = json!([{"index": part.choice(), "delta": delta, "logprobs": null, "finish_reason": null}]);
            self.hold(part, SseEvent::from_json(None, chunk));
        }
        let mut rest = event;
        if let Some(value) = rest.json_mut() {
            strip_parts(value, text_mode);
        }
        if rest.json().is_some_and(|value| !is_empty_rest(value)) {
            self.plain(rest, out, inspector, events).await;
        }
    }

    pub(super) async fn finish(
        &mut self,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        self.decide_all(out, inspector, events).await;
    }

    /// A chunk with nothing held in it: passes, after the held parts of the choices it
    /// finishes, with its finish reason rewritten when they lost all their tool calls.
    async fn plain(
        &mut self,
        event: SseEvent,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        let Some(value) = event.json() else {
            out.push(event);
            return;
        };
        if value.get("error").is_some_and(|error| !error.is_null()) {
            // An in-band error ends the stream: nothing held may come after it.
            self.decide_all(out, inspector, events).await;
            out.push(event);
            return;
        }
        let mut finished = Vec::new();
        for (position, choice) in array(value.get("choices")).iter().enumerate() {
            let index = choice_index(choice, position);
            if matches!(choice.pointer("/delta/content"), Some(Value::String(text)) if !text.is_empty())
            {
                self.choices.entry(index).or_default().text_sent = true;
            }
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                finished.push((index, reason.as_str() == Some("tool_calls")));
            }
        }
        if finished.is_empty() {
            out.push(event);
            return;
        }
        let indices: Vec<usize> = finished.iter().map(|(index, _)| *index).collect();
        self.decide(&indices, out, inspector, events).await;
        let rewrite: Vec<usize> = finished
            .iter()
            .filter(|(index, tool_calls)| {
                *tool_calls
                    && self
                        .choices
                        .get(index)
                        .is_some_and(|c| c.tool_calls > 0 && c.removed == c.tool_calls)
            })
            .map(|(index, _)| *index)
            .collect();
        let mut event = event;
        if !rewrite.is_empty()
            && let Some(value) = event.json_mut()
            && let Some(Value::Array(choices)) = value.get_mut("choices")
        {
            for (position, choice) in choices.iter_mut().enumerate() {
                if rewrite.contains(&choice_index(choice, position)) {
                    choice["finish_reason"] = json!("stop");
                }
            }
        }
        out.push(event);
    }

    /// Adds a held part's chunk to its tool call or text.
    fn hold(&mut self, part: Part, event: SseEvent) {
        match part {
            Part::ToolCall {
                choice,
                index,
                delta,
            } => {
                let held = self
                    .choices
                    .entry(choice)
                    .or_default()
                    .calls
                    .entry(index)
                    .or_default();
                accumulate(&mut held.call, &delta);
                held.events.push(event);
            }
            Part::Text { choice, text } => {
                let held = self
                    .choices
                    .entry(choice)
                    .or_default()
                    .text
                    .get_or_insert_with(HeldText::default);
                held.text.push_str(&text);
                held.events.push(event);
            }
        }
    }

    async fn decide_all(
        &mut self,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        let indices: Vec<usize> = self.choices.keys().copied().collect();
        self.decide(&indices, out, inspector, events).await;
    }

    /// Decides everything the choices `indices` hold (concurrently) and sends the result.
    async fn decide(
        &mut self,
        indices: &[usize],
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        let mut held: Vec<(usize, Option<HeldText>, BTreeMap<usize, HeldCall>)> = Vec::new();
        for index in indices {
            if let Some(choice) = self.choices.get_mut(index)
                && (choice.text.is_some() || !choice.calls.is_empty())
            {
                held.push((
                    *index,
                    choice.text.take(),
                    std::mem::take(&mut choice.calls),
                ));
            }
        }
        if held.is_empty() {
            return;
        }
        let mut subjects = Vec::new();
        for (_, text, calls) in &held {
            if let Some(text) = text
                && !text.text.trim().is_empty()
            {
                subjects.push(Subject::Text(&text.text));
            }
            subjects.extend(calls.values().map(|held| Subject::ToolCall(&held.call)));
        }
        let mut decisions = inspect_all(inspector, &subjects).await.into_iter();
        let mut next = || decisions.next().unwrap_or_default();

        for (index, text, calls) in held {
            let envelope = self.envelope.as_ref();
            let choice = self.choices.entry(index).or_default();
            if let Some(text) = text {
                let decision = if text.text.trim().is_empty() {
                    Decision::keep()
                } else {
                    next()
                };
                events.extend(decision.event);
                match decision.replacement {
                    None => {
                        choice.text_sent |= !text.text.is_empty();
                        out.extend(text.events);
                    }
                    Some(replacement) => {
                        out.push(shapes::text_delta_event(
                            Api::OpenAiChat,
                            envelope,
                            index,
                            replacement,
                        ));
                        choice.text_sent = true;
                    }
                }
            }
            for (call_index, held) in calls {
                let decision = next();
                events.extend(decision.event);
                choice.tool_calls += 1;
                match decision.replacement {
                    None => {
                        let client_index = choice.next_index;
                        choice.next_index += 1;
                        let mut released = held.events;
                        if client_index != call_index {
                            for event in &mut released {
                                renumber(event, client_index);
                            }
                        }
                        out.extend(released);
                    }
                    Some(replacement) => {
                        choice.removed += 1;
                        let text = if choice.text_sent {
                            format!("\n\n{replacement}")
                        } else {
                            replacement
                        };
                        out.push(shapes::text_delta_event(
                            Api::OpenAiChat,
                            envelope,
                            index,
                            text,
                        ));
                        choice.text_sent = true;
                    }
                }
            }
        }
    }
}

/// The parts of a chunk the gate holds, in order.
fn held_parts(chunk: &Value, text_mode: bool) -> Vec<Part> {
    let mut parts = Vec::new();
    for (position, choice) in array(chunk.get("choices")).iter().enumerate() {
        let index = choice_index(choice, position);
        let Some(delta) = choice.get("delta") else {
            continue;
        };
        if text_mode
            && let Some(Value::String(text)) = delta.get("content")
            && !text.is_empty()
        {
            parts.push(Part::Text {
                choice: index,
                text: text.clone(),
            });
        }
        for (call_position, call) in array(delta.get("tool_calls")).iter().enumerate() {
            parts.push(Part::ToolCall {
                choice: index,
                index: as_index(call.get("index")).unwrap_or(call_position),
                delta: call.clone(),
            });
        }
    }
    parts
}

/// True when the chunk carries its one held part and nothing else that matters, so it can be
/// held (and released) whole.
fn is_single_part(chunk: &Value, parts: &[Part]) -> bool {
    let [part] = parts else {
        return false;
    };
    let [choice] = array(chunk.get("choices")) else {
        return false;
    };
    let own_key = match part {
        Part::ToolCall { .. } => "tool_calls",
        Part::Text { .. } => "content",
    };
    is_null(chunk.get("usage"))
        && is_null(chunk.get("error"))
        && is_null(choice.get("finish_reason"))
        && is_null(choice.get("logprobs"))
        && choice
            .get("delta")
            .and_then(Value::as_object)
            .is_some_and(|delta| {
                delta
                    .iter()
                    .all(|(key, value)| key == own_key || is_blank(key, value))
            })
}

/// Removes the held parts from a chunk that is split.
fn strip_parts(chunk: &mut Value, text_mode: bool) {
    let Some(Value::Array(choices)) = chunk.get_mut("choices") else {
        return;
    };
    for choice in choices {
        let Some(Value::Object(delta)) = choice.get_mut("delta") else {
            continue;
        };
        delta.remove("tool_calls");
        if text_mode
            && matches!(delta.get("content"), Some(Value::String(text)) if !text.is_empty())
        {
            delta.remove("content");
        }
    }
}

/// True when what is left of a split chunk carries nothing.
fn is_empty_rest(chunk: &Value) -> bool {
    let known = ["index", "delta", "logprobs", "finish_reason"];
    is_null(chunk.get("usage"))
        && is_null(chunk.get("error"))
        && array(chunk.get("choices")).iter().all(|choice| {
            let Some(fields) = choice.as_object() else {
                return false;
            };
            fields.keys().all(|key| known.contains(&key.as_str()))
                && is_null(choice.get("finish_reason"))
                && is_null(choice.get("logprobs"))
                && choice
                    .get("delta")
                    .and_then(Value::as_object)
                    .is_none_or(|delta| delta.iter().all(|(key, value)| is_blank(key, value)))
        })
}

/// Adds a tool-call delta to the call: `id`, `function.name` from the first delta that has them,
/// `function.arguments` (custom tools: `custom.input`) appended.
fn accumulate(call: &mut ToolCall, delta: &Value) {
    if call.id.is_none()
        && let Some(id) = delta.get("id").and_then(Value::as_str)
    {
        call.id = Some(id.to_owned());
    }
    let Some(function) = delta.get("function").or_else(|| delta.get("custom")) else {
        return;
    };
    if call.name.is_empty()
        && let Some(name) = function.get("name").and_then(Value::as_str)
    {
        call.name = name.to_owned();
    }
    if let Some(arguments) = function
        .get("arguments")
        .or_else(|| function.get("input"))
        .and_then(Value::as_str)
    {
        call.arguments.push_str(arguments);
    }
}

/// Sets the `index` of every tool-call delta in the chunk.
fn renumber(event: &mut SseEvent, index: usize) {
    let Some(value) = event.json_mut() else {
        return;
    };
    let Some(Value::Array(choices)) = value.get_mut("choices") else {
        return;
    };
    for choice in choices {
        if let Some(Value::Array(calls)) = choice.pointer_mut("/delta/tool_calls") {
            for call in calls {
                call["index"] = json!(index);
            }
        }
    }
}

/// A delta field that carries nothing: null, or an empty `content`.
fn is_blank(key: &str, value: &Value) -> bool {
    value.is_null() || (key == "content" && value.as_str() == Some(""))
}

fn is_null(value: Option<&Value>) -> bool {
    value.is_none_or(Value::is_null)
}

fn choice_index(choice: &Value, position: usize) -> usize {
    as_index(choice.get("index")).unwrap_or(position)
}
