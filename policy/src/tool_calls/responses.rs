//! OpenAI Responses (`POST /v1/responses`): function calls and custom tool calls (and, for a
//! text inspector, message items) are held from their `response.output_item.added` to their
//! `response.output_item.done`; every event after a held item waits behind it, so the client
//! gets the events in their original order. A blocked call is replaced, at its `output_index`,
//! by a whole `message` item; the copies of decided items that later events repeat (the
//! `response` of lifecycle events, above all `response.completed`'s `output`) are made to say
//! the same. See [`super`] for the rules.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use super::{Decision, Inspector, Subject, ToolCall, inspect_all};
use crate::shapes::{self, Api, array, as_index, reply};
use crate::{PolicyEvent, SseEvent};

/// The output items that are tool calls a client runs, and the field of their arguments.
const CALL_FIELDS: [(&str, &str); 2] = [
    ("function_call", "arguments"),
    ("custom_tool_call", "input"),
];

/// The prefix of the `id` of a message that replaces a blocked call.
const REPLACEMENT_ID_PREFIX: &str = "msg_luthien_";

// ---------------------------------------------------------------------------------------
// Non-streamed responses, and the whole copies of items in stream events

/// Inspects the calls (and message texts, if asked) of a complete response's `output` and
/// replaces what the inspector blocks; returns the decisions' events.
pub(super) async fn inspect_response(
    response: &mut Value,
    inspector: &dyn Inspector,
) -> Vec<PolicyEvent> {
    let mut events = Vec::new();
    let mut known = Vec::new();
    if let Some(Value::Array(output)) = response.get_mut("output") {
        settle_output(output, &mut known, inspector, &mut events).await;
    }
    if known.iter().any(Known::changes_text) {
        refresh_output_text(response);
    }
    events
}

/// What became of an output item, for every copy of it.
struct Known {
    /// A message (text outcome) or a call.
    message: bool,
    id: Option<String>,
    call_id: Option<String>,
    outcome: Outcome,
}

enum Outcome {
    /// A call left as it was.
    Kept,
    /// A call replaced by this message item.
    Replaced(Value),
    /// A message: the text of each of its `output_text` parts, by content index.
    Texts(BTreeMap<usize, PartText>),
}

/// The text a message part has once decided.
#[derive(Clone, Debug)]
struct PartText {
    text: String,
    /// The inspector replaced it (its annotations and logprobs go too).
    replaced: bool,
}

impl Known {
    /// True when `item` is a copy of the item this is about: the same kind and, like the SDKs'
    /// stream accumulators, the same `call_id` for calls (their `id` is optional) and the same
    /// `id` for messages.
    fn describes(&self, item: &Value) -> bool {
        if self.message {
            is_message(item) && self.id.is_some() && self.id.as_deref() == text(item, "id")
        } else if call_field(item).is_none() {
            false
        } else {
            match (self.call_id.as_deref(), text(item, "call_id")) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => self.id.is_some() && self.id.as_deref() == text(item, "id"),
            }
        }
    }

    fn changes_text(&self) -> bool {
        match &self.outcome {
            Outcome::Kept => false,
            Outcome::Replaced(_) => true,
            Outcome::Texts(parts) => parts.values().any(|part| part.replaced),
        }
    }

    /// Makes `item`, a copy of this item, say what was decided.
    fn apply(&self, item: &mut Value) {
        match &self.outcome {
            Outcome::Kept => {}
            Outcome::Replaced(message) => *item = message.clone(),
            Outcome::Texts(parts) => settle_content(item, parts),
        }
    }
}

/// Sets every `output_text` part of a message item to its decided text.
fn settle_content(item: &mut Value, parts: &BTreeMap<usize, PartText>) {
    if let Some(Value::Array(content)) = item.get_mut("content") {
        for (position, part) in content.iter_mut().enumerate() {
            if let Some(decided) = parts.get(&position)
                && is_output_text(part)
            {
                settle_part(part, decided);
            }
        }
    }
}

/// Brings every item of `output` in line with what was decided: items `known` describes get
/// their outcome; the others that are calls (or, for a text inspector, messages) are
/// inspected now, concurrently, and added to `known`.
async fn settle_output(
    output: &mut [Value],
    known: &mut Vec<Known>,
    inspector: &dyn Inspector,
    events: &mut Vec<PolicyEvent>,
) {
    let text_mode = inspector.inspects_text();
    // The items nothing decided yet, by position, with what is asked about them.
    let mut fresh: Vec<(usize, Fresh)> = Vec::new();
    for (position, item) in output.iter().enumerate() {
        if known.iter().any(|known| known.describes(item)) {
            continue;
        }
        if let Some(call) = item_call(item) {
            fresh.push((position, Fresh::Call(call)));
        } else if text_mode && is_message(item) {
            fresh.push((position, Fresh::Message(message_texts(item))));
        }
    }
    let subjects: Vec<Subject<'_>> = fresh
        .iter()
        .flat_map(|(_, fresh)| fresh.subjects())
        .collect();
    let mut decisions = inspect_all(inspector, &subjects).await.into_iter();
    let mut outcomes = Vec::new();
    for (position, fresh) in &fresh {
        let item = &output[*position];
        let outcome = match fresh {
            Fresh::Call(_) => {
                let decision = decisions.next().unwrap_or_default();
                events.extend(decision.event);
                match decision.replacement {
                    None => Outcome::Kept,
                    Some(replacement) => {
                        Outcome::Replaced(replacement_message(item, *position, replacement))
                    }
                }
            }
            Fresh::Message(texts) => Outcome::Texts(decide_texts(texts, &mut decisions, events)),
        };
        outcomes.push(Known {
            message: matches!(fresh, Fresh::Message(_)),
            id: text(item, "id").map(str::to_owned),
            call_id: text(item, "call_id").map(str::to_owned),
            outcome,
        });
    }
    known.extend(outcomes);
    for item in output.iter_mut() {
        if let Some(known) = known.iter().find(|known| known.describes(item)) {
            known.apply(item);
        }
    }
}

/// An item to inspect.
enum Fresh {
    Call(ToolCall),
    /// The texts of a message's `output_text` parts, by content index.
    Message(BTreeMap<usize, String>),
}

impl Fresh {
    fn subjects(&self) -> Vec<Subject<'_>> {
        match self {
            Fresh::Call(call) => vec![Subject::ToolCall(call)],
            Fresh::Message(texts) => text_subjects(texts).collect(),
        }
    }
}

/// The texts of a message worth asking about (not blank), in content order.
fn text_subjects(texts: &BTreeMap<usize, String>) -> impl Iterator<Item = Subject<'_>> {
    texts
        .values()
        .filter(|text| !text.trim().is_empty())
        .map(|text| Subject::Text(text))
}

/// The decided text of every part of `texts`, taking the decisions of the non-blank ones (in
/// the order of [`text_subjects`]) from `decisions`.
fn decide_texts(
    texts: &BTreeMap<usize, String>,
    decisions: &mut impl Iterator<Item = Decision>,
    events: &mut Vec<PolicyEvent>,
) -> BTreeMap<usize, PartText> {
    texts
        .iter()
        .map(|(index, text)| {
            let decision = if text.trim().is_empty() {
                Decision::keep()
            } else {
                decisions.next().unwrap_or_default()
            };
            events.extend(decision.event);
            let part = match decision.replacement {
                None => PartText {
                    text: text.clone(),
                    replaced: false,
                },
                Some(replacement) => PartText {
                    text: replacement,
                    replaced: true,
                },
            };
            (*index, part)
        })
        .collect()
}

/// The call an output item makes, if it is a function or custom tool call. Its `id` is the
/// `call_id` the client answers with (the item's `id` when there is none).
fn item_call(item: &Value) -> Option<ToolCall> {
    let field = call_field(item)?;
    Some(ToolCall {
        id: text(item, "call_id")
            .or_else(|| text(item, "id"))
            .map(str::to_owned),
        name: text(item, "name").unwrap_or_default().to_owned(),
        arguments: text(item, field).unwrap_or_default().to_owned(),
    })
}

/// The field holding a call item's arguments; `None` when the item is no call.
fn call_field(item: &Value) -> Option<&'static str> {
    let kind = text(item, "type")?;
    CALL_FIELDS
        .iter()
        .find(|(call, _)| *call == kind)
        .map(|(_, field)| *field)
}

/// The texts of a message item's `output_text` parts, by content index.
fn message_texts(item: &Value) -> BTreeMap<usize, String> {
    array(item.get("content"))
        .iter()
        .enumerate()
        .filter(|(_, part)| is_output_text(part))
        .map(|(index, part)| (index, text(part, "text").unwrap_or_default().to_owned()))
        .collect()
}

/// The completed message that takes the place of blocked call `call` (at `output_index`).
fn replacement_message(call: &Value, output_index: usize, text: String) -> Value {
    reply::responses_message(&replacement_id(call, output_index), &text)
}

/// `msg_luthien_` and the blocked call's `id` (or `call_id`) without its prefix: unique in the
/// response as the call's id was, and the same in a stream and in its `response.completed`.
fn replacement_id(call: &Value, output_index: usize) -> String {
    let id = text(call, "id").or_else(|| text(call, "call_id"));
    match id {
        Some(id) if !id.is_empty() => {
            let rest = id.split_once('_').map_or(id, |(_, rest)| rest);
            format!("{REPLACEMENT_ID_PREFIX}{rest}")
        }
        _ => format!("{REPLACEMENT_ID_PREFIX}{output_index}"),
    }
}

/// Sets an `output_text` part (or a `response.output_text.done` event, which has the same
/// fields) to its decided text; a replaced text loses its annotations and logprobs, which
/// point into the text that is gone.
fn settle_part(part: &mut Value, decided: &PartText) {
    if text(part, "text") != Some(decided.text.as_str()) {
        part["text"] = Value::String(decided.text.clone());
    }
    if decided.replaced {
        clear_array(part, "annotations");
        clear_array(part, "logprobs");
    }
}

/// Empties the array `field` of `value` when it has elements.
fn clear_array(value: &mut Value, field: &str) {
    if let Some(Value::Array(items)) = value.get_mut(field)
        && !items.is_empty()
    {
        items.clear();
    }
}

/// Recomputes a response's `output_text` (the concatenated `output_text` parts, which some
/// servers and SDK dumps include) when it has one.
fn refresh_output_text(response: &mut Value) {
    if !matches!(response.get("output_text"), Some(Value::String(_))) {
        return;
    }
    let mut joined = String::new();
    for item in array(response.get("output"))
        .iter()
        .filter(|item| is_message(item))
    {
        for part in array(item.get("content"))
            .iter()
            .filter(|part| is_output_text(part))
        {
            joined.push_str(text(part, "text").unwrap_or_default());
        }
    }
    response["output_text"] = Value::String(joined);
}

// ---------------------------------------------------------------------------------------
// Streams

#[derive(Default)]
pub(super) struct Gate {
    /// What the client gets next, in order; an item waits for its decision.
    queue: VecDeque<Entry>,
    /// Held items by `output_index`, from their `output_item.added` until they are decided.
    open: BTreeMap<usize, Held>,
    /// Decided items' events by their serial number, until the queue reaches them.
    decided: BTreeMap<u64, Vec<SseEvent>>,
    /// What became of every item decided, for the copies later events carry.
    known: Vec<Known>,
    next_serial: u64,
}

enum Entry {
    Event(SseEvent),
    /// The place of the held item with this serial number.
    Item(u64),
}

struct Held {
    serial: u64,
    /// The item of `output_item.added`.
    added: Value,
    /// The item of `output_item.done`, once it came.
    done: Option<Value>,
    kind: HeldKind,
    events: Vec<SseEvent>,
}

enum HeldKind {
    Call {
        /// The argument (or custom tool input) deltas, concatenated.
        deltas: String,
        /// The whole arguments of `.function_call_arguments.done` /
        /// `.custom_tool_call_input.done`.
        whole: Option<String>,
    },
    Message {
        /// The text of each `output_text` part as streamed (its `content_part.added` text
        /// and the deltas), by content index.
        parts: BTreeMap<usize, String>,
        /// The text of `response.output_text.done`, by content index.
        whole: BTreeMap<usize, String>,
    },
}

/// What an event means to the gate.
enum Step {
    /// `output_item.added` of an item to hold, at this `output_index`.
    Open(usize, Value),
    /// Another event of the item at this `output_index`.
    Item(usize),
    /// A terminal event or an `error`: nothing held may wait any longer.
    End,
    Other,
}

impl Gate {
    pub(super) async fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        match classify(&event, inspector.inspects_text()) {
            Step::Open(index, item) if !self.open.contains_key(&index) => {
                let serial = self.next_serial;
                self.next_serial += 1;
                let kind = if is_message(&item) {
                    HeldKind::Message {
                        parts: BTreeMap::new(),
                        whole: BTreeMap::new(),
                    }
                } else {
                    HeldKind::Call {
                        deltas: String::new(),
                        whole: None,
                    }
                };
                let held = Held {
                    serial,
                    added: item,
                    done: None,
                    kind,
                    events: vec![event],
                };
                self.open.insert(index, held);
                self.queue.push_back(Entry::Item(serial));
                return;
            }
            Step::Open(index, _) | Step::Item(index) if self.open.contains_key(&index) => {
                let mut finished = false;
                if let Some(held) = self.open.get_mut(&index) {
                    if let Some(value) = event.json() {
                        finished = held.absorb(value);
                    }
                    held.events.push(event);
                }
                if finished {
                    self.decide(vec![index], inspector, events).await;
                    self.drain(out, inspector, events).await;
                }
                return;
            }
            Step::End => self.decide_all(inspector, events).await,
            _ => {}
        }
        self.queue.push_back(Entry::Event(event));
        self.drain(out, inspector, events).await;
    }

    pub(super) async fn finish(
        &mut self,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        self.decide_all(inspector, events).await;
        self.drain(out, inspector, events).await;
    }

    async fn decide_all(&mut self, inspector: &dyn Inspector, events: &mut Vec<PolicyEvent>) {
        let indices: Vec<usize> = self.open.keys().copied().collect();
        self.decide(indices, inspector, events).await;
    }

    /// Decides the held items at `indices` (concurrently) and files their events in
    /// `decided`.
    async fn decide(
        &mut self,
        indices: Vec<usize>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        let items: Vec<(usize, Held)> = indices
            .into_iter()
            .filter_map(|index| Some((index, self.open.remove(&index)?)))
            .collect();
        let asked: Vec<Fresh> = items.iter().map(|(_, held)| held.subjects()).collect();
        let subjects: Vec<Subject<'_>> = asked.iter().flat_map(Fresh::subjects).collect();
        let mut decisions = inspect_all(inspector, &subjects).await.into_iter();
        for ((index, held), asked) in items.into_iter().zip(&asked) {
            let identity = held.done.as_ref().unwrap_or(&held.added);
            let id = text(identity, "id").or_else(|| text(&held.added, "id"));
            let call_id = text(identity, "call_id").or_else(|| text(&held.added, "call_id"));
            let mut known = Known {
                message: false,
                id: id.map(str::to_owned),
                call_id: call_id.map(str::to_owned),
                outcome: Outcome::Kept,
            };
            let released = match asked {
                Fresh::Call(_) => {
                    let decision = decisions.next().unwrap_or_default();
                    events.extend(decision.event);
                    match decision.replacement {
                        None => held.events,
                        Some(replacement) => {
                            let message = replacement_message(&held.added, index, replacement);
                            let released = message_events(index, &message, &held.events);
                            known.outcome = Outcome::Replaced(message);
                            released
                        }
                    }
                }
                Fresh::Message(texts) => {
                    let parts = decide_texts(texts, &mut decisions, events);
                    let released = settle_message_events(held.events, &parts);
                    known.message = true;
                    known.outcome = Outcome::Texts(parts);
                    released
                }
            };
            self.known.push(known);
            self.decided.insert(held.serial, released);
        }
    }

    /// Sends the queue's front up to the first item not decided yet; the copies of items in
    /// the events it sends are settled first.
    async fn drain(
        &mut self,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        while let Some(entry) = self.queue.front() {
            match entry {
                Entry::Event(_) => {
                    if let Some(Entry::Event(mut event)) = self.queue.pop_front() {
                        self.settle_copies(&mut event, inspector, events).await;
                        out.push(event);
                    }
                }
                Entry::Item(serial) => {
                    let Some(released) = self.decided.remove(serial) else {
                        return;
                    };
                    out.extend(released);
                    self.queue.pop_front();
                }
            }
        }
    }

    /// Settles the `output` of an event's `response` (lifecycle events); the event is
    /// rewritten only when that changes something.
    async fn settle_copies(
        &mut self,
        event: &mut SseEvent,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        let Some(value) = event.json() else {
            return;
        };
        let Some(response) = value.get("response") else {
            return;
        };
        if array(response.get("output")).is_empty() {
            return;
        }
        let mut settled = response.clone();
        if let Some(Value::Array(output)) = settled.get_mut("output") {
            settle_output(output, &mut self.known, inspector, events).await;
        }
        refresh_output_text(&mut settled);
        if Some(&settled) != event.json().and_then(|value| value.get("response"))
            && let Some(value) = event.json_mut()
        {
            value["response"] = settled;
        }
    }
}

impl Held {
    /// Takes one more event of the item; true when it is `output_item.done`, which ends it.
    fn absorb(&mut self, event: &Value) -> bool {
        let kind = text(event, "type").unwrap_or_default();
        if kind == "response.output_item.done" {
            self.done = event.get("item").cloned();
            return true;
        }
        match &mut self.kind {
            HeldKind::Call { deltas, whole } => match kind {
                "response.function_call_arguments.delta"
                | "response.custom_tool_call_input.delta" => {
                    deltas.push_str(text(event, "delta").unwrap_or_default());
                }
                "response.function_call_arguments.done" => {
                    *whole = text(event, "arguments").map(str::to_owned);
                }
                "response.custom_tool_call_input.done" => {
                    *whole = text(event, "input").map(str::to_owned);
                }
                _ => {}
            },
            HeldKind::Message { parts, whole } => {
                let Some(content_index) = as_index(event.get("content_index")) else {
                    return false;
                };
                match kind {
                    "response.content_part.added" => {
                        if let Some(part) = event.get("part").filter(|part| is_output_text(part)) {
                            parts.insert(
                                content_index,
                                text(part, "text").unwrap_or_default().to_owned(),
                            );
                        }
                    }
                    "response.output_text.delta" => parts
                        .entry(content_index)
                        .or_default()
                        .push_str(text(event, "delta").unwrap_or_default()),
                    "response.output_text.done" => {
                        whole.insert(
                            content_index,
                            text(event, "text").unwrap_or_default().to_owned(),
                        );
                    }
                    _ => {}
                }
            }
        }
        false
    }

    /// What to ask about the item, on what has arrived. A call's arguments are its last whole
    /// copy (`output_item.done`, then `.arguments.done`), else what was streamed; a message's
    /// texts are as streamed (`content_part.added` text and deltas), a whole copy standing in
    /// for a part nothing was streamed for.
    fn subjects(&self) -> Fresh {
        match &self.kind {
            HeldKind::Call { deltas, whole } => {
                // As streamed: the added item's arguments (normally empty) and the deltas,
                // as the SDKs accumulate them.
                let mut call = item_call(&self.added).unwrap_or_default();
                call.arguments.push_str(deltas);
                if let Some(whole) = whole {
                    call.arguments.clone_from(whole);
                }
                if let Some(done) = self.done.as_ref()
                    && let Some(copy) = item_call(done)
                {
                    if !copy.name.is_empty() {
                        call.name = copy.name;
                    }
                    if call.id.is_none() {
                        call.id = copy.id;
                    }
                    if has_arguments(done) {
                        call.arguments = copy.arguments;
                    }
                }
                Fresh::Call(call)
            }
            HeldKind::Message { parts, whole } => {
                // A part nothing was streamed for takes its text from a whole copy.
                let mut texts = parts.clone();
                let copies = whole
                    .iter()
                    .map(|(index, text)| (*index, text.clone()))
                    .chain(self.done.iter().flat_map(message_texts));
                for (index, copy) in copies {
                    let text = texts.entry(index).or_default();
                    if text.is_empty() {
                        *text = copy;
                    }
                }
                Fresh::Message(texts)
            }
        }
    }
}

/// True when a call item carries its arguments (or input).
fn has_arguments(item: &Value) -> bool {
    call_field(item).is_some_and(|field| item.get(field).is_some_and(Value::is_string))
}

fn classify(event: &SseEvent, text_mode: bool) -> Step {
    if shapes::is_stream_terminator(Api::OpenAiResponses, event) {
        return Step::End;
    }
    let Some(value) = event.json() else {
        return Step::Other;
    };
    let kind = text(value, "type");
    if kind == Some("error") {
        return Step::End;
    }
    let Some(index) = as_index(value.get("output_index")) else {
        return Step::Other;
    };
    if kind == Some("response.output_item.added")
        && let Some(item) = value.get("item")
        && (call_field(item).is_some() || (text_mode && is_message(item)))
    {
        return Step::Open(index, item.clone());
    }
    Step::Item(index)
}

/// The events of a whole message item at `output_index` (added, one `output_text` part with
/// its text in one delta, done), in place of a blocked call's `removed` events. Each takes
/// the `sequence_number` of the removed event in the same place (the last one's when there
/// are fewer), so the numbers never go down.
fn message_events(output_index: usize, message: &Value, removed: &[SseEvent]) -> Vec<SseEvent> {
    let numbers: Vec<Value> = removed
        .iter()
        .filter_map(|event| event.json()?.get("sequence_number").cloned())
        .collect();
    reply::responses_message_events(output_index, message)
        .into_iter()
        .enumerate()
        .map(|(position, body)| {
            let number = numbers.get(position).or(numbers.last()).cloned();
            reply::numbered_event(body, number.unwrap_or(Value::Null))
        })
        .collect()
}

/// A held message's events with each part's decided text in every copy: a replaced part's
/// deltas become one delta carrying the replacement (its annotation events are dropped), and
/// its `output_text.done`, `content_part.done` and `output_item.done` copies carry the
/// replacement too. A part kept has its copies set to the text that was inspected when they
/// differ from it. Events nothing changes stay byte-identical.
fn settle_message_events(held: Vec<SseEvent>, parts: &BTreeMap<usize, PartText>) -> Vec<SseEvent> {
    let mut out = Vec::with_capacity(held.len());
    // Replaced parts whose one delta was sent, and parts the client has (content_part.added).
    let mut delta_sent = BTreeSet::new();
    let mut added = BTreeSet::new();
    for mut event in held {
        let Some(value) = event.json() else {
            out.push(event);
            continue;
        };
        let kind = text(value, "type").unwrap_or_default();
        let part = as_index(value.get("content_index"))
            .and_then(|index| Some((index, parts.get(&index)?)));
        let mut settled = value.clone();
        match (kind, part) {
            ("response.output_item.done", _) => {
                if let Some(item) = settled.get_mut("item") {
                    settle_content(item, parts);
                }
            }
            ("response.content_part.added", Some((index, decided))) => {
                added.insert(index);
                if decided.replaced
                    && let Some(part) = settled.get_mut("part").filter(|part| is_output_text(part))
                {
                    settle_part(
                        part,
                        &PartText {
                            text: String::new(),
                            replaced: true,
                        },
                    );
                }
            }
            ("response.output_text.delta", Some((index, decided))) if decided.replaced => {
                if !delta_sent.insert(index) {
                    continue;
                }
                settled["delta"] = Value::String(decided.text.clone());
                clear_array(&mut settled, "logprobs");
            }
            ("response.output_text.annotation.added", Some((_, decided))) if decided.replaced => {
                continue;
            }
            ("response.output_text.done", Some((index, decided))) => {
                if decided.replaced && added.contains(&index) && delta_sent.insert(index) {
                    let output_index = as_index(value.get("output_index")).unwrap_or_default();
                    out.push(shapes::text_delta_event(
                        Api::OpenAiResponses,
                        Some(value),
                        shapes::responses_content_stream(output_index, index),
                        decided.text.clone(),
                    ));
                }
                settle_part(&mut settled, decided);
            }
            ("response.content_part.done", Some((_, decided))) => {
                if let Some(part) = settled.get_mut("part").filter(|part| is_output_text(part)) {
                    settle_part(part, decided);
                }
            }
            _ => {}
        }
        if event.json() != Some(&settled)
            && let Some(value) = event.json_mut()
        {
            *value = settled;
        }
        out.push(event);
    }
    out
}

// ---------------------------------------------------------------------------------------
// JSON helpers

/// A message item: `type: "message"`.
fn is_message(item: &Value) -> bool {
    text(item, "type") == Some("message")
}

fn is_output_text(part: &Value) -> bool {
    text(part, "type") == Some("output_text")
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}
