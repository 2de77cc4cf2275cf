//! The streamed Responses answer: `event: TYPE\ndata: JSON\n\n` frames, each data object
//! carrying its `type` and a `sequence_number` that counts from 0, and no `data: [DONE]`.
//!
//! The order is the one the official SDK's `ResponseStreamState` checks: `response.created`
//! and `response.in_progress` (status `in_progress`, empty output, no usage), then for each
//! item `response.output_item.added`, its part and delta events, `response.output_item.done`,
//! and last `response.completed`, `response.incomplete` or `response.failed`, whose `response`
//! is byte for byte the non-streamed object.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Item, Request, Status, final_response, items, output_text, response, summary_part};
use crate::reply::Reply;
use crate::sse;

/// The in-band error that breaks off the `stream_error` scenario's stream.
///
/// The mock sends the shape the live API sends, with the fields nested under `error`:
/// `{"type":"error","sequence_number":N,"error":{"type":"server_error","code":"server_error",
/// "message":"Overloaded","param":null}}`. The SDK's generated `ResponseErrorEvent` type (and
/// the API reference) describe the fields flat (`code`, `message`, `param` next to `type`),
/// but that is not what the API sends, and it is not what the SDK reacts to: its
/// `openai/_streaming.py` raises `APIError` on an event only when the data has a truthy
/// `error` key, taking the message from `error.message`; a flat error event would be handed
/// to the caller as an ordinary event and the failure go unnoticed.
fn error_event() -> Value {
    json!({
        "error": {
            "type": "server_error",
            "code": "server_error",
            "message": "Overloaded",
            "param": null,
        }
    })
}

/// The events of a stream, numbered as they are added.
#[derive(Debug, Default)]
struct Events(Vec<(&'static str, Value)>);

impl Events {
    /// Adds the event `kind`, whose data is `type`, `sequence_number`, then `fields`.
    fn push(&mut self, kind: &'static str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".into(), kind.into());
        data.insert("sequence_number".into(), self.0.len().into());
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        self.0.push((kind, Value::Object(data)));
    }
}

/// The streamed answer for response `id`, without the events numbered up to
/// `starting_after` when given (a replay that resumes after an event the client already
/// has).
///
/// A `stream_error` answer sends half of the text deltas, then an `error` event with its
/// fields nested under `error` (as the live API sends it and the SDK raises on), and stops.
/// A `failed` answer sends half of the text deltas, then `response.failed` without finishing
/// the message (whose final form in the failed response is `incomplete`, with the text sent
/// so far).
pub fn stream_events(
    id: &str,
    reply: &Reply,
    request: &Request,
    starting_after: Option<u64>,
) -> Vec<Bytes> {
    let skip = starting_after.map_or(0, |after| {
        usize::try_from(after).map_or(usize::MAX, |after| after.saturating_add(1))
    });
    events(id, reply, request)
        .iter()
        .skip(skip)
        .map(|(kind, data)| sse::event(kind, data))
        .collect()
}

/// Every event of the streamed answer, as its name and data, before framing.
pub(super) fn events(id: &str, reply: &Reply, request: &Request) -> Vec<(&'static str, Value)> {
    let mut events = Events::default();
    let in_progress = response(id, reply, request, Status::InProgress, Vec::new());
    events.push(
        "response.created",
        json!({ "response": in_progress.clone() }),
    );
    events.push("response.in_progress", json!({ "response": in_progress }));

    for (output_index, item) in items(reply).iter().enumerate() {
        events.push(
            "response.output_item.added",
            json!({ "output_index": output_index, "item": item.added() }),
        );
        let item_id = item.id();
        match item {
            Item::Reasoning { deltas } => {
                let head = SUMMARY.head(&item_id, output_index);
                SUMMARY.start(&mut events, &head, deltas);
                SUMMARY.finish(&mut events, &head, deltas);
            }
            Item::Message { deltas, .. } => {
                let head = OUTPUT_TEXT.head(&item_id, output_index);
                OUTPUT_TEXT.start(&mut events, &head, deltas);
                if reply.fails_mid_stream {
                    events.push("error", error_event());
                    return events.0;
                }
                if reply.failed {
                    break;
                }
                OUTPUT_TEXT.finish(&mut events, &head, deltas);
            }
            Item::FunctionCall { call, .. } => {
                let head = json!({ "item_id": item_id, "output_index": output_index });
                for fragment in call.argument_fragments {
                    events.push(
                        "response.function_call_arguments.delta",
                        with(&head, json!({ "delta": fragment })),
                    );
                }
                events.push(
                    "response.function_call_arguments.done",
                    with(&head, json!({ "arguments": call.arguments() })),
                );
            }
        }
        events.push(
            "response.output_item.done",
            json!({ "output_index": output_index, "item": item.done() }),
        );
    }

    let terminal = match Status::of(reply) {
        Status::Failed => "response.failed",
        Status::Incomplete => "response.incomplete",
        _ => "response.completed",
    };
    events.push(
        terminal,
        json!({ "response": final_response(id, reply, request, None) }),
    );
    events.0
}

/// A part whose text is streamed as deltas. The message's `output_text` part and the
/// reasoning item's summary part go through the same four events, under their own names.
struct TextPart {
    /// The names of the events: the part added, a text delta, the text done, the part done.
    part_added: &'static str,
    text_delta: &'static str,
    text_done: &'static str,
    part_done: &'static str,
    /// The field that numbers the part within its item.
    index_field: &'static str,
    /// The part object holding a text.
    part: fn(&str) -> Value,
    /// Whether the text events carry `logprobs` (output text does, a summary does not).
    logprobs: bool,
}

const OUTPUT_TEXT: TextPart = TextPart {
    part_added: "response.content_part.added",
    text_delta: "response.output_text.delta",
    text_done: "response.output_text.done",
    part_done: "response.content_part.done",
    index_field: "content_index",
    part: output_text,
    logprobs: true,
};

const SUMMARY: TextPart = TextPart {
    part_added: "response.reasoning_summary_part.added",
    text_delta: "response.reasoning_summary_text.delta",
    text_done: "response.reasoning_summary_text.done",
    part_done: "response.reasoning_summary_part.done",
    index_field: "summary_index",
    part: summary_part,
    logprobs: false,
};

impl TextPart {
    /// The fields every event of the item's only part starts with.
    fn head(&self, item_id: &str, output_index: usize) -> Value {
        let mut head = Map::new();
        head.insert("item_id".into(), item_id.into());
        head.insert("output_index".into(), output_index.into());
        head.insert(self.index_field.into(), 0.into());
        Value::Object(head)
    }

    /// The part announced empty, then the text deltas.
    fn start(&self, events: &mut Events, head: &Value, deltas: &[&str]) {
        events.push(
            self.part_added,
            with(head, json!({ "part": (self.part)("") })),
        );
        for delta in deltas {
            events.push(self.text_delta, with(head, self.text("delta", delta)));
        }
    }

    /// The whole text, then the finished part.
    fn finish(&self, events: &mut Events, head: &Value, deltas: &[&str]) {
        let text = deltas.concat();
        events.push(self.text_done, with(head, self.text("text", &text)));
        events.push(
            self.part_done,
            with(head, json!({ "part": (self.part)(&text) })),
        );
    }

    /// `{field: text}`, with `logprobs` after it when the part has them.
    fn text(&self, field: &str, text: &str) -> Value {
        let mut fields = Map::new();
        fields.insert(field.into(), text.into());
        if self.logprobs {
            fields.insert("logprobs".into(), json!([]));
        }
        Value::Object(fields)
    }
}

/// The fields of `head` followed by those of `rest` (both objects).
fn with(head: &Value, rest: Value) -> Value {
    let mut fields = head.as_object().cloned().unwrap_or_default();
    if let Value::Object(rest) = rest {
        fields.extend(rest);
    }
    Value::Object(fields)
}
