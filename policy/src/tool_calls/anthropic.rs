//! Anthropic Messages streams: `tool_use` blocks (and, for a text inspector, `text` blocks) are
//! held from `content_block_start` to `content_block_stop`; every event after a held block waits
//! behind it, so the client gets the events in their original order.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

use super::{Inspector, Subject, ToolCall, inspect_all};
use crate::{PolicyEvent, SseEvent};

#[derive(Default)]
pub(super) struct Gate {
    /// What the client gets next, in order; the front waits for its block's decision.
    queue: VecDeque<Entry>,
    /// Held blocks by index, from their start until they are decided.
    open: BTreeMap<usize, Held>,
    /// Decided blocks' events, until the queue reaches them.
    decided: BTreeMap<usize, Vec<SseEvent>>,
    /// `tool_use` blocks seen, and removed, in this message.
    tool_calls: usize,
    removed: usize,
}

enum Entry {
    Event(SseEvent),
    /// The place of held block `index`.
    Block(usize),
}

struct Held {
    kind: HeldKind,
    events: Vec<SseEvent>,
}

enum HeldKind {
    ToolCall {
        call: ToolCall,
        /// The `input` of `content_block_start`, which stands when no `partial_json` follows.
        start_input: Option<Value>,
    },
    Text(String),
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
            Step::Start(index, kind) if !self.open.contains_key(&index) => {
                if matches!(kind, HeldKind::ToolCall { .. }) {
                    self.tool_calls += 1;
                }
                let held = Held {
                    kind,
                    events: vec![event],
                };
                self.open.insert(index, held);
                self.queue.push_back(Entry::Block(index));
                return;
            }
            Step::Delta(index, piece) if self.open.contains_key(&index) => {
                if let Some(held) = self.open.get_mut(&index) {
                    if let Some(piece) = piece {
                        match &mut held.kind {
                            HeldKind::ToolCall { call, .. } => call.arguments.push_str(&piece),
                            HeldKind::Text(text) => text.push_str(&piece),
                        }
                    }
                    held.events.push(event);
                }
                return;
            }
            Step::Stop(index) if self.open.contains_key(&index) => {
                if let Some(held) = self.open.get_mut(&index) {
                    held.events.push(event);
                }
                self.decide(vec![index], inspector, events).await;
                self.drain(out);
                return;
            }
            Step::MessageDelta { tool_use } => {
                // Every block ends before the message does; one still open was cut off.
                self.decide_all(inspector, events).await;
                let mut event = event;
                if tool_use
                    && self.tool_calls > 0
                    && self.removed == self.tool_calls
                    && let Some(value) = event.json_mut()
                {
                    value["delta"]["stop_reason"] = json!("end_turn");
                }
                self.queue.push_back(Entry::Event(event));
                self.drain(out);
                return;
            }
            Step::End => self.decide_all(inspector, events).await,
            _ => {}
        }
        self.queue.push_back(Entry::Event(event));
        self.drain(out);
    }

    pub(super) async fn finish(
        &mut self,
        out: &mut Vec<SseEvent>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        self.decide_all(inspector, events).await;
        self.drain(out);
    }

    async fn decide_all(&mut self, inspector: &dyn Inspector, events: &mut Vec<PolicyEvent>) {
        let indices: Vec<usize> = self.open.keys().copied().collect();
        self.decide(indices, inspector, events).await;
    }

    /// Decides the held blocks `indices` (concurrently) and files their events in `decided`.
    async fn decide(
        &mut self,
        indices: Vec<usize>,
        inspector: &dyn Inspector,
        events: &mut Vec<PolicyEvent>,
    ) {
        let mut blocks: Vec<(usize, Held)> = indices
            .into_iter()
            .filter_map(|index| Some((index, self.open.remove(&index)?)))
            .collect();
        for (_, held) in &mut blocks {
            if let HeldKind::ToolCall { call, start_input } = &mut held.kind
                && call.arguments.trim().is_empty()
            {
                call.arguments = start_input
                    .as_ref()
                    .map_or_else(|| "{}".to_owned(), Value::to_string);
            }
        }
        let subjects: Vec<Option<Subject<'_>>> = blocks
            .iter()
            .map(|(_, held)| match &held.kind {
                HeldKind::ToolCall { call, .. } => Some(Subject::ToolCall(call)),
                HeldKind::Text(text) if !text.trim().is_empty() => Some(Subject::Text(text)),
                HeldKind::Text(_) => None,
            })
            .collect();
        let asked: Vec<Subject<'_>> = subjects.iter().flatten().copied().collect();
        let mut decisions = inspect_all(inspector, &asked).await.into_iter();
        let decisions: Vec<_> = subjects
            .iter()
            .map(|subject| subject.and_then(|_| decisions.next()).unwrap_or_default())
            .collect();
        for ((index, held), decision) in blocks.into_iter().zip(decisions) {
            events.extend(decision.event);
            let released = match decision.replacement {
                None => held.events,
                Some(text) => {
                    if matches!(held.kind, HeldKind::ToolCall { .. }) {
                        self.removed += 1;
                    }
                    text_block(index, text)
                }
            };
            self.decided.insert(index, released);
        }
    }

    /// Sends the queue's front up to the first block not decided yet.
    fn drain(&mut self, out: &mut Vec<SseEvent>) {
        while let Some(entry) = self.queue.front() {
            match entry {
                Entry::Event(_) => {
                    if let Some(Entry::Event(event)) = self.queue.pop_front() {
                        out.push(event);
                    }
                }
                Entry::Block(index) => {
                    let Some(events) = self.decided.remove(index) else {
                        return;
                    };
                    out.extend(events);
                    self.queue.pop_front();
                }
            }
        }
    }
}

/// What an event means to the gate.
enum Step {
    /// A block to hold starts at this index.
    Start(usize, HeldKind),
    /// A delta of block `index`, with the text or JSON it adds.
    Delta(usize, Option<String>),
    Stop(usize),
    /// `message_delta`; `tool_use` when its stop reason is `tool_use`.
    MessageDelta {
        tool_use: bool,
    },
    /// `message_stop` or `error`: nothing held may wait any longer.
    End,
    Other,
}

fn classify(event: &SseEvent, inspects_text: bool) -> Step {
    let Some(value) = event.json() else {
        return Step::Other;
    };
    let index = value
        .get("index")
        .and_then(Value::as_u64)
        .and_then(|index| usize::try_from(index).ok());
    match (value.get("type").and_then(Value::as_str), index) {
        (Some("content_block_start"), Some(index)) => {
            let block = value.get("content_block");
            match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                Some("tool_use") => Step::Start(
                    index,
                    HeldKind::ToolCall {
                        call: ToolCall {
                            id: text_field(block, "id"),
                            name: text_field(block, "name").unwrap_or_default(),
                            arguments: String::new(),
                        },
                        start_input: block.and_then(|block| block.get("input")).cloned(),
                    },
                ),
                Some("text") if inspects_text => Step::Start(
                    index,
                    HeldKind::Text(text_field(block, "text").unwrap_or_default()),
                ),
                _ => Step::Other,
            }
        }
        (Some("content_block_delta"), Some(index)) => {
            let delta = value.get("delta");
            let piece = text_field(delta, "partial_json").or_else(|| text_field(delta, "text"));
            Step::Delta(index, piece)
        }
        (Some("content_block_stop"), Some(index)) => Step::Stop(index),
        (Some("message_delta"), _) => Step::MessageDelta {
            tool_use: value.pointer("/delta/stop_reason").and_then(Value::as_str)
                == Some("tool_use"),
        },
        (Some("message_stop" | "error"), _) => Step::End,
        _ => Step::Other,
    }
}

/// A whole text block at `index` holding `text`.
fn text_block(index: usize, text: String) -> Vec<SseEvent> {
    vec![
        SseEvent::from_json(
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ),
        SseEvent::from_json(
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        ),
        SseEvent::from_json(
            Some("content_block_stop"),
            json!({"type": "content_block_stop", "index": index}),
        ),
    ]
}

fn text_field(value: Option<&Value>, field: &str) -> Option<String> {
    value?.get(field)?.as_str().map(str::to_owned)
}
