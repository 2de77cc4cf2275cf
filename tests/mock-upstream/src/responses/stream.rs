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

/// Collects the events, numbering them; those at or before `starting_after` are numbered
/// but not sent (a replay that resumes after an event the client already has).
struct Events {
    frames: Vec<Bytes>,
    next: u64,
    starting_after: Option<u64>,
}

impl Events {
    /// Adds the event `kind`, whose data is `type`, `sequence_number`, then `fields`.
    fn push(&mut self, kind: &str, fields: Value) {
        let sequence_number = self.next;
        self.next += 1;
        if self
            .starting_after
            .is_some_and(|after| sequence_number <= after)
        {
            return;
        }
        let mut data = Map::new();
        data.insert("type".into(), kind.into());
        data.insert("sequence_number".into(), sequence_number.into());
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        self.frames.push(sse::event(kind, &Value::Object(data)));
    }
}

/// The streamed answer for response `id`, without the events numbered up to
/// `starting_after` when given.
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
    let mut events = Events {
        frames: Vec::new(),
        next: 0,
        starting_after,
    };
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
                reasoning_events(&mut events, &item_id, output_index, deltas);
            }
            Item::Message { deltas, .. } => {
                let head =
                    json!({ "item_id": item_id, "output_index": output_index, "content_index": 0 });
                events.push(
                    "response.content_part.added",
                    with(&head, json!({ "part": output_text("") })),
                );
                for delta in deltas {
                    events.push(
                        "response.output_text.delta",
                        with(&head, json!({ "delta": delta, "logprobs": [] })),
                    );
                }
                if reply.fails_mid_stream {
                    events.push("error", error_event());
                    return events.frames;
                }
                if reply.failed {
                    break;
                }
                let text = deltas.concat();
                events.push(
                    "response.output_text.done",
                    with(&head, json!({ "text": text, "logprobs": [] })),
                );
                events.push(
                    "response.content_part.done",
                    with(&head, json!({ "part": output_text(&text) })),
                );
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
    events.frames
}

/// A reasoning item's summary: one part, streamed as text deltas.
fn reasoning_events(events: &mut Events, item_id: &str, output_index: usize, deltas: &[&str]) {
    let head = json!({ "item_id": item_id, "output_index": output_index, "summary_index": 0 });
    events.push(
        "response.reasoning_summary_part.added",
        with(&head, json!({ "part": summary_part("") })),
    );
    for delta in deltas {
        events.push(
            "response.reasoning_summary_text.delta",
            with(&head, json!({ "delta": delta })),
        );
    }
    let text = deltas.concat();
    events.push(
        "response.reasoning_summary_text.done",
        with(&head, json!({ "text": text })),
    );
    events.push(
        "response.reasoning_summary_part.done",
        with(&head, json!({ "part": summary_part(&text) })),
    );
}

/// The fields of `head` followed by those of `rest` (both objects).
fn with(head: &Value, rest: Value) -> Value {
    let mut fields = head.as_object().cloned().unwrap_or_default();
    if let Value::Object(rest) = rest {
        fields.extend(rest);
    }
    Value::Object(fields)
}
