//! The OpenAI Responses wire format (`POST /v1/responses`) and the bodies of its auxiliary
//! endpoints (retrieve, delete, cancel, input items, input token count, compaction).
//!
//! An answer is a `response` object whose `output` lists items in order: a `reasoning` item
//! (the `thinking` scenario), a `message` with one `output_text` part, then `function_call`s.
//! The stream ([`stream_events`]) is the named-event sequence the official SDK's stream state
//! machine accepts, ending with a terminal event whose `response` is exactly the non-streamed
//! object.
//!
//! Ids and timestamps are fixed (`resp_mock_0001`, `msg_mock_0001`, `fc_mock_0001`,
//! `rs_mock_0001`, `created_at: 1700000000`), and function calls carry the Chat Completions
//! tool names, arguments and call ids (`call_mock_0001`, …) so that tests can share
//! expectations across the two OpenAI formats. The request's settings (`instructions`, `tools`,
//! `tool_choice`, `temperature`, `metadata`, …) are echoed, with the API's defaults where the
//! request has none, as the real API does.
//!
//! Reasoning items always carry `encrypted_content`, whatever the request's `include`: the SDK
//! documents it as populated by default on `POST /v1/responses`, and an opaque blob that must
//! be passed back verbatim is exactly what a proxy must not mangle. While streaming it appears
//! only in `response.output_item.done` and the terminal response, not in
//! `response.output_item.added` (where the API says it "may be incomplete"), so that a client
//! keeping the added item instead of the done one is caught.

mod stream;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::openai;
use crate::reply::{self, Reply, RequestBody, ToolCall};

pub use stream::stream_events;

/// The `id` of every created response (retrieved ones keep the id they were asked for).
pub const RESPONSE_ID: &str = "resp_mock_0001";
/// The `created_at` timestamp of every response.
pub const CREATED_AT: u64 = 1_700_000_000;
/// The `completed_at` timestamp of a completed response (`null` in any other status).
pub const COMPLETED_AT: u64 = CREATED_AT + 1;
/// The id of the answer's message item.
pub const MESSAGE_ID: &str = "msg_mock_0001";
/// The id of the `thinking` scenario's reasoning item.
pub const REASONING_ID: &str = "rs_mock_0001";
/// The reasoning item's `encrypted_content`: opaque base64 that clients must pass back as is.
pub const REASONING_ENCRYPTED_CONTENT: &str = "bHV0aGllbiBtb2NrIHVwc3RyZWFtOiB0aGUgZW5jcnlwdGVkIHJlYXNvbmluZyBvZiByc19tb2NrXzAwMDEuIE9wYXF1ZSB0byBjbGllbnRzLCB3aGljaCBwYXNzIGl0IGJhY2sgdmVyYmF0aW0gaW4gdGhlaXIgbmV4dCByZXF1ZXN0Lg==";
/// The `error.message` of a failed response (the `failed` scenario).
pub const FAILURE_MESSAGE: &str = "The server had an error while processing your request.";

/// The id of the `index`-th function call item (counting from 0): `fc_mock_0001`, ….
pub fn function_call_id(index: usize) -> String {
    format!("fc_mock_{:04}", index + 1)
}

/// A Responses request: what [`RequestBody`] reads (input tokens are counted over `input`
/// and `instructions`), plus the fields the response object echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub body: RequestBody,
    fields: Map<String, Value>,
}

impl Request {
    /// Reads a request body; the error message is meant for a `400` answer. Only the fields
    /// the mock uses are checked, so that a proxy adding fields the mock does not know of
    /// still gets an answer.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let fields = reply::parse_object(body)?;
        // Field, what it must be, and the test for it.
        type Shape = (&'static str, &'static str, fn(&Value) -> bool);
        let shapes: [Shape; 5] = [
            ("input", "a string or an array of items", |value| {
                value.is_string() || value.is_array()
            }),
            ("instructions", "a string", Value::is_string),
            ("tools", "an array", Value::is_array),
            ("include", "an array", Value::is_array),
            ("metadata", "an object", Value::is_object),
        ];
        for (name, shape, fits) in shapes {
            match fields.get(name) {
                None | Some(Value::Null) => {}
                Some(value) if fits(value) => {}
                Some(_) => return Err(format!("`{name}` must be {shape}")),
            }
        }
        let body = RequestBody::from_fields(&fields, &["input", "instructions"])?;
        Ok(Self { body, fields })
    }

    /// The request a stored response stands for. The mock stores nothing, so a retrieved or
    /// cancelled response is the answer to a request without fields (model `mock-model`),
    /// under the `x-mock-*` headers of the retrieving request.
    pub fn empty() -> Self {
        let body = RequestBody {
            model: reply::DEFAULT_MODEL.to_owned(),
            stream: false,
            include_usage: false,
            input_tokens: 0,
        };
        Self {
            body,
            fields: Map::new(),
        }
    }

    /// The request's `name` field, or `default` when it is absent or null.
    fn echo(&self, name: &str, default: Value) -> Value {
        match self.fields.get(name) {
            None | Some(Value::Null) => default,
            Some(value) => value.clone(),
        }
    }
}

/// The `status` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
    Cancelled,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status the answer ends in.
    fn of(reply: &Reply) -> Self {
        if reply.failed {
            Status::Failed
        } else if reply.truncated {
            Status::Incomplete
        } else {
            Status::Completed
        }
    }
}

/// One output item, with the deltas its stream events carry.
#[derive(Debug)]
enum Item<'r> {
    Reasoning {
        deltas: Vec<&'static str>,
    },
    Message {
        /// What is sent of the text: all of it, or the first half when the answer fails.
        deltas: Vec<&'r str>,
        /// `completed`, or `incomplete` when the answer was cut off or failed.
        status: &'static str,
    },
    FunctionCall {
        index: usize,
        call: &'static ToolCall,
    },
}

/// The items of the answer, in output order.
fn items(reply: &Reply) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    if reply.thinking.is_some() {
        items.push(Item::Reasoning {
            deltas: reply.thinking_deltas(),
        });
    }
    if reply.text.is_some() {
        let mut deltas = reply.text_deltas();
        if reply.failed || reply.fails_mid_stream {
            deltas.truncate(Reply::deltas_before_error(deltas.len()));
        }
        let status = if reply.failed || reply.truncated {
            "incomplete"
        } else {
            "completed"
        };
        items.push(Item::Message { deltas, status });
    }
    items.extend(
        reply
            .tool_calls
            .iter()
            .enumerate()
            .map(|(index, call)| Item::FunctionCall { index, call }),
    );
    items
}

impl Item<'_> {
    fn id(&self) -> String {
        match self {
            Item::Reasoning { .. } => REASONING_ID.to_owned(),
            Item::Message { .. } => MESSAGE_ID.to_owned(),
            Item::FunctionCall { index, .. } => function_call_id(*index),
        }
    }

    /// The item as `response.output_item.added` announces it: nothing generated yet.
    fn added(&self) -> Value {
        let id = self.id();
        match self {
            Item::Reasoning { .. } => json!({ "type": "reasoning", "id": id, "summary": [] }),
            Item::Message { .. } => json!({
                "type": "message",
                "id": id,
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }),
            Item::FunctionCall { index, call } => {
                function_call(&id, *index, call, "", "in_progress")
            }
        }
    }

    /// The finished item, as `response.output_item.done` and the response's `output` carry it.
    fn done(&self) -> Value {
        let id = self.id();
        match self {
            Item::Reasoning { deltas } => json!({
                "type": "reasoning",
                "id": id,
                "summary": [summary_part(&deltas.concat())],
                "encrypted_content": REASONING_ENCRYPTED_CONTENT,
            }),
            Item::Message { deltas, status } => json!({
                "type": "message",
                "id": id,
                "status": status,
                "role": "assistant",
                "content": [output_text(&deltas.concat())],
            }),
            Item::FunctionCall { index, call } => {
                function_call(&id, *index, call, &call.arguments(), "completed")
            }
        }
    }
}

fn function_call(id: &str, index: usize, call: &ToolCall, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": openai::tool_call_id(index),
        "name": call.name,
        "arguments": arguments,
        "status": status,
    })
}

/// A message's content part.
fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

/// A reasoning item's summary part.
fn summary_part(text: &str) -> Value {
    json!({ "type": "summary_text", "text": text })
}

fn usage(input_tokens: u64, output_tokens: u64, reasoning_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "input_tokens_details": { "cached_tokens": 0, "cache_write_tokens": 0 },
        "output_tokens": output_tokens,
        "output_tokens_details": { "reasoning_tokens": reasoning_tokens },
        "total_tokens": input_tokens + output_tokens,
    })
}

/// The `response` object in `status` with `output`. Usage is reported once the answer is
/// over, and only when it got to the end of its text (a failed response has none).
fn response(
    id: &str,
    reply: &Reply,
    request: &Request,
    status: Status,
    output: Vec<Value>,
) -> Value {
    let usage = match status {
        Status::Completed | Status::Incomplete => {
            let reasoning_tokens = reply
                .thinking
                .as_ref()
                .map_or(0, |thinking| reply::words(thinking.text));
            usage(reply.input_tokens, reply.output_tokens, reasoning_tokens)
        }
        Status::InProgress | Status::Failed | Status::Cancelled => Value::Null,
    };
    let error = match status {
        Status::Failed => json!({ "code": "server_error", "message": FAILURE_MESSAGE }),
        _ => Value::Null,
    };
    let incomplete_details = match status {
        Status::Incomplete => json!({ "reason": "max_output_tokens" }),
        _ => Value::Null,
    };
    let completed_at = match status {
        Status::Completed => json!(COMPLETED_AT),
        _ => Value::Null,
    };
    // The API reports the tier it served ("default" when asked for "auto").
    let service_tier = match request.echo("service_tier", json!("default")) {
        Value::String(tier) if tier == "auto" => json!("default"),
        tier => tier,
    };
    json!({
        "id": id,
        "object": "response",
        "created_at": CREATED_AT,
        "status": status.name(),
        "background": request.echo("background", json!(false)),
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": request.echo("instructions", Value::Null),
        "max_output_tokens": request.echo("max_output_tokens", Value::Null),
        "max_tool_calls": request.echo("max_tool_calls", Value::Null),
        "model": reply.model,
        "output": output,
        "parallel_tool_calls": request.echo("parallel_tool_calls", json!(true)),
        "previous_response_id": request.echo("previous_response_id", Value::Null),
        "prompt_cache_key": request.echo("prompt_cache_key", Value::Null),
        "reasoning": request.echo("reasoning", json!({ "effort": null, "summary": null })),
        "safety_identifier": request.echo("safety_identifier", Value::Null),
        "service_tier": service_tier,
        "store": request.echo("store", json!(true)),
        "temperature": request.echo("temperature", json!(1.0)),
        "text": request.echo("text", json!({ "format": { "type": "text" }, "verbosity": "medium" })),
        "tool_choice": request.echo("tool_choice", json!("auto")),
        "tools": request.echo("tools", json!([])),
        "top_logprobs": request.echo("top_logprobs", json!(0)),
        "top_p": request.echo("top_p", json!(1.0)),
        "truncation": request.echo("truncation", json!("disabled")),
        "usage": usage,
        "user": request.echo("user", Value::Null),
        "metadata": request.echo("metadata", json!({})),
    })
}

/// The response as it ends: `completed`, or `incomplete` / `failed` in those scenarios, or
/// `status` when given (a cancelled response keeps the output it would have had).
fn final_response(id: &str, reply: &Reply, request: &Request, status: Option<Status>) -> Value {
    let output = items(reply).iter().map(Item::done).collect();
    response(
        id,
        reply,
        request,
        status.unwrap_or(Status::of(reply)),
        output,
    )
}

/// The non-streamed answer: the response object with id `id`.
pub fn response_body(id: &str, reply: &Reply, request: &Request) -> Bytes {
    Bytes::from(final_response(id, reply, request, None).to_string())
}

/// The answer to `POST /v1/responses/{id}/cancel`: the response, in status `cancelled`.
pub fn cancelled_body(id: &str, reply: &Reply, request: &Request) -> Bytes {
    Bytes::from(final_response(id, reply, request, Some(Status::Cancelled)).to_string())
}

/// Whether the mock "has" a response with this id: any `resp_…` id, since it stores nothing.
pub fn is_known_id(id: &str) -> bool {
    id.starts_with("resp_") && id.len() > "resp_".len()
}

/// The `404` body for an id the mock does not have.
pub fn not_found_body(id: &str) -> Bytes {
    let body = openai::error_json(
        "invalid_request_error",
        &format!("Response with id '{id}' not found."),
    );
    Bytes::from(body.to_string())
}

/// The answer to `DELETE /v1/responses/{id}`.
pub fn deleted_body(id: &str) -> Bytes {
    Bytes::from(json!({ "id": id, "object": "response", "deleted": true }).to_string())
}

/// The answer to `POST /v1/responses/input_tokens`: the input tokens the same request would
/// be charged as `usage.input_tokens`.
pub fn input_tokens_body(request: &Request) -> Bytes {
    let body =
        json!({ "object": "response.input_tokens", "input_tokens": request.body.input_tokens });
    Bytes::from(body.to_string())
}

/// The input items every stored response "had", oldest first: id, role, text.
pub const INPUT_ITEMS: [(&str, &str, &str); 2] = [
    ("msg_mock_input_0001", "developer", "You are terse."),
    ("msg_mock_input_0002", "user", "Say hello to the world."),
];

/// Page size of the input items listing when the request gives no `limit`, and its bound.
pub const DEFAULT_INPUT_ITEMS_LIMIT: usize = 20;
const MAX_INPUT_ITEMS_LIMIT: usize = 100;

/// A page of `GET /v1/responses/{id}/input_items`, paginated like the real API: `order`
/// (`desc`, the default, lists the newest first), `limit` (1 to 100, default 20) and `after`
/// (the id of a listed item). The error is a message for a `400`.
pub fn input_items_body(
    limit: Option<&str>,
    order: Option<&str>,
    after: Option<&str>,
) -> Result<Bytes, String> {
    let limit = reply::page_limit(limit, DEFAULT_INPUT_ITEMS_LIMIT, MAX_INPUT_ITEMS_LIMIT)?;
    let mut ordered: Vec<_> = INPUT_ITEMS.iter().collect();
    match order {
        None | Some("desc") => ordered.reverse(),
        Some("asc") => {}
        Some(other) => return Err(format!("order: expected asc or desc, got {other:?}")),
    }
    let start = match after {
        None => 0,
        Some(after) => {
            ordered
                .iter()
                .position(|(id, _, _)| *id == after)
                .ok_or_else(|| format!("after: no input item with id {after}"))?
                + 1
        }
    };
    let end = (start + limit).min(ordered.len());
    let page = &ordered[start..end];
    let data: Vec<Value> = page
        .iter()
        .map(|(id, role, text)| {
            json!({
                "type": "message",
                "id": id,
                "status": "completed",
                "role": role,
                "content": [{ "type": "input_text", "text": text }],
            })
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "first_id": page.first().map(|(id, _, _)| *id),
        "last_id": page.last().map(|(id, _, _)| *id),
        "has_more": end < ordered.len(),
    });
    Ok(Bytes::from(body.to_string()))
}

/// The `id` of every compaction.
pub const COMPACTION_RESPONSE_ID: &str = "resp_mock_compact_0001";
/// The id of the compaction item.
pub const COMPACTION_ID: &str = "cmp_mock_0001";
/// The compaction item's `encrypted_content`.
pub const COMPACTION_ENCRYPTED_CONTENT: &str = "bHV0aGllbiBtb2NrIHVwc3RyZWFtOiB0aGUgZW5jcnlwdGVkIGNvbXBhY3Rpb24gb2YgY21wX21vY2tfMDAwMS4gT3BhcXVlIHRvIGNsaWVudHMsIHdoaWNoIHBhc3MgaXQgYmFjayB2ZXJiYXRpbSBpbiB0aGVpciBuZXh0IHJlcXVlc3Qu";
/// The output tokens a compaction is charged, whatever it compacted.
pub const COMPACTION_OUTPUT_TOKENS: u64 = 16;

/// The answer to `POST /v1/responses/compact`: as the SDK's `CompactedResponse` describes
/// it, the request's user messages (in the input's order, content as `input_text` parts)
/// followed by one compaction item.
pub fn compacted_body(request: &Request) -> Bytes {
    let mut output: Vec<Value> = match request.fields.get("input") {
        Some(Value::String(text)) => vec![user_message(&Value::String(text.clone()))],
        Some(Value::Array(items)) => items
            .iter()
            .filter(|item| item["role"] == "user")
            .map(|item| user_message(&item["content"]))
            .collect(),
        _ => Vec::new(),
    };
    output.push(json!({
        "type": "compaction",
        "id": COMPACTION_ID,
        "encrypted_content": COMPACTION_ENCRYPTED_CONTENT,
    }));
    let body = json!({
        "id": COMPACTION_RESPONSE_ID,
        "object": "response.compaction",
        "created_at": CREATED_AT,
        "output": output,
        "usage": usage(request.body.input_tokens, COMPACTION_OUTPUT_TOKENS, 0),
    });
    Bytes::from(body.to_string())
}

/// A user message item; string content becomes one `input_text` part.
fn user_message(content: &Value) -> Value {
    let content = match content {
        Value::String(text) => json!([{ "type": "input_text", "text": text }]),
        other => other.clone(),
    };
    json!({ "type": "message", "role": "user", "content": content })
}

#[cfg(test)]
mod tests;
