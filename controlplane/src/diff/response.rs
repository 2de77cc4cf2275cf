//! The response half: assistant text, tool calls, finish reason (Responses: `status`), usage,
//! other fields.
//!
//! Responses are read in their non-streamed shape (streams are reconstructed before they
//! are recorded). Each side is first flattened into provider-neutral [`Parts`]; everything
//! the parts do not name (ids, model, logprobs, extra choices, thinking blocks…) is kept as
//! `(path, value)` params so no change goes unlisted.

use std::borrow::Cow;

use serde_json::Value;

use super::messages::content_text;
use super::request::{array, field};
use super::text::text_change;
use super::{Budget, Op, ResponseDiff, ToolCall, ToolCallDiff, ValueChange, param_changes};
use luthien_policy::shapes::Api;

/// Anthropic content blocks that are neither text nor tool calls, listed as one param.
const OTHER_BLOCKS: &str = "content (other blocks)";
/// Responses output items that are neither messages nor function calls (reasoning, built-in
/// tool calls), listed as one param.
const OTHER_ITEMS: &str = "output (other items)";

pub(super) fn diff(
    api: Api,
    before: Option<&Value>,
    after: Option<&Value>,
    budget: &Budget,
) -> ResponseDiff {
    let (old, new) = (Parts::read(api, before), Parts::read(api, after));
    let text =
        (old.text.is_some() || new.text.is_some()).then(|| text_change(old.text, new.text, budget));
    ResponseDiff {
        changed: before != after,
        text,
        tool_calls: diff_tool_calls(old.tool_calls, new.tool_calls),
        finish_reason: value_change(old.finish_reason, new.finish_reason),
        usage: value_change(old.usage, new.usage),
        params: param_changes(&old.params, &new.params),
    }
}

/// One side of a response, provider-neutral. An absent side has no parts.
#[derive(Default)]
struct Parts<'a> {
    text: Option<String>,
    tool_calls: Vec<ToolCall>,
    finish_reason: Option<&'a Value>,
    usage: Option<&'a Value>,
    params: Vec<(String, Cow<'a, Value>)>,
}

impl<'a> Parts<'a> {
    fn read(api: Api, body: Option<&'a Value>) -> Self {
        match (api, body) {
            (_, None) => Self::default(),
            (Api::OpenAiChat, Some(body)) => Self::openai(body),
            (Api::AnthropicMessages, Some(body)) => Self::anthropic(body),
            (Api::OpenAiResponses, Some(body)) => Self::responses(body),
        }
    }

    /// `output[]` items: the `output_text` parts of `message` items as paragraphs, function
    /// and custom-tool calls as tool calls (by `call_id`), the `status` as the finish reason;
    /// every other item (reasoning, built-in tools) and each message's other fields are params.
    fn responses(body: &'a Value) -> Self {
        let mut params = fields_except(body, &["output", "status", "usage"], "");
        let mut texts = Vec::new();
        let mut tool_calls = Vec::new();
        let mut others = Vec::new();
        for (position, item) in array(Some(body), "output").iter().enumerate() {
            match item.get("type").and_then(Value::as_str).unwrap_or_default() {
                "message" => {
                    for part in array(Some(item), "content") {
                        match part.get("type").and_then(Value::as_str) {
                            Some("output_text") => texts.extend(string(part.get("text"))),
                            Some("refusal") => texts.extend(string(part.get("refusal"))),
                            _ => others.push(part.clone()),
                        }
                    }
                    params.extend(fields_except(
                        item,
                        &["content"],
                        &format!("output[{position}]."),
                    ));
                }
                "function_call" | "custom_tool_call" => tool_calls.push(ToolCall {
                    id: string(item.get("call_id")),
                    name: string(item.get("name")),
                    arguments: field(Some(item), "arguments")
                        .or_else(|| field(Some(item), "input"))
                        .map_or(Value::Null, parse_arguments),
                }),
                _ => others.push(item.clone()),
            }
        }
        if !others.is_empty() {
            params.push((OTHER_ITEMS.to_owned(), Cow::Owned(Value::Array(others))));
        }
        Self {
            text: (!texts.is_empty()).then(|| texts.join("\n\n")),
            tool_calls,
            finish_reason: field(Some(body), "status"),
            usage: field(Some(body), "usage"),
            params,
        }
    }

    /// `choices[0].message` holds the content; other choices (`n > 1`) are params.
    fn openai(body: &'a Value) -> Self {
        let mut params = fields_except(body, &["choices", "usage"], "");
        let choices = array(Some(body), "choices");
        let choice = choices.first();
        let message = field(choice, "message");
        if let Some(choice) = choice {
            params.extend(fields_except(
                choice,
                &["message", "finish_reason"],
                "choices[0].",
            ));
        }
        if let Some(message) = message {
            params.extend(fields_except(
                message,
                &["content", "refusal", "tool_calls"],
                "choices[0].message.",
            ));
        }
        for (i, other) in choices.iter().enumerate().skip(1) {
            params.push((format!("choices[{i}]"), Cow::Borrowed(other)));
        }

        // A refusal replaces the content, but show both if a body has both.
        let texts: Vec<String> = [field(message, "content"), field(message, "refusal")]
            .into_iter()
            .flatten()
            .filter_map(content_text)
            .collect();
        let tool_calls = array(message, "tool_calls")
            .iter()
            .map(|call| {
                // Function calls carry `function`, custom-tool calls `custom` (`input`).
                let function = call.get("function").or_else(|| call.get("custom"));
                let arguments = field(function, "arguments").or_else(|| field(function, "input"));
                ToolCall {
                    id: string(call.get("id")),
                    name: string(function.and_then(|f| f.get("name"))),
                    arguments: arguments.map_or(Value::Null, parse_arguments),
                }
            })
            .collect();
        Self {
            text: (!texts.is_empty()).then(|| texts.join("\n\n")),
            tool_calls,
            finish_reason: field(choice, "finish_reason"),
            usage: field(Some(body), "usage"),
            params,
        }
    }

    /// `content[]` blocks: `text` blocks as paragraphs of their own (a blank line between two,
    /// as the request side shows them), except that blocks carrying `citations` join their
    /// neighbours without a separator (citations split one sentence into several blocks);
    /// `tool_use` (and server `*_tool_use`) as tool calls.
    fn anthropic(body: &'a Value) -> Self {
        let mut params = fields_except(body, &["content", "stop_reason", "usage"], "");
        let mut text: Option<String> = None;
        let mut cited_before = false;
        let mut tool_calls = Vec::new();
        let mut others = Vec::new();
        for block in array(Some(body), "content") {
            match block
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
            {
                "text" => {
                    let Some(block_text) = block.get("text").and_then(Value::as_str) else {
                        continue;
                    };
                    let cited = block
                        .get("citations")
                        .is_some_and(|citations| !citations.is_null());
                    match text.as_mut() {
                        None => text = Some(block_text.to_owned()),
                        Some(text) => {
                            if !cited && !cited_before {
                                text.push_str("\n\n");
                            }
                            text.push_str(block_text);
                        }
                    }
                    cited_before = cited;
                }
                kind if kind == "tool_use" || kind.ends_with("_tool_use") => {
                    tool_calls.push(ToolCall {
                        id: string(block.get("id")),
                        name: string(block.get("name")),
                        arguments: block.get("input").cloned().unwrap_or_default(),
                    });
                }
                _ => others.push(block.clone()),
            }
        }
        if !others.is_empty() {
            params.push((OTHER_BLOCKS.to_owned(), Cow::Owned(Value::Array(others))));
        }
        Self {
            text,
            tool_calls,
            finish_reason: field(Some(body), "stop_reason"),
            usage: field(Some(body), "usage"),
            params,
        }
    }
}

/// The fields of an object except `skip`, as `(prefix + key, value)`.
fn fields_except<'a>(
    object: &'a Value,
    skip: &[&str],
    prefix: &str,
) -> Vec<(String, Cow<'a, Value>)> {
    object
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| !skip.contains(&key.as_str()))
        .map(|(key, value)| (format!("{prefix}{key}"), Cow::Borrowed(value)))
        .collect()
}

fn string(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_owned)
}

/// OpenAI sends arguments as a JSON string; parsed, they diff and display as JSON.
fn parse_arguments(arguments: &Value) -> Value {
    match arguments {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| arguments.clone()),
        other => other.clone(),
    }
}

fn value_change(before: Option<&Value>, after: Option<&Value>) -> Option<ValueChange> {
    (before.is_some() || after.is_some()).then(|| ValueChange {
        before: before.cloned().unwrap_or_default(),
        after: after.cloned().unwrap_or_default(),
    })
}

/// Pairs tool calls by id first (policies usually keep ids), then the leftovers by order.
/// Output: the original's calls in order (equal, change or delete), then new calls.
fn diff_tool_calls(before: Vec<ToolCall>, after: Vec<ToolCall>) -> Vec<ToolCallDiff> {
    let mut partner: Vec<Option<usize>> = vec![None; before.len()];
    let mut taken = vec![false; after.len()];
    for (b, call) in before.iter().enumerate() {
        let Some(id) = &call.id else { continue };
        let found = (0..after.len()).find(|&a| !taken[a] && after[a].id.as_ref() == Some(id));
        if let Some(a) = found {
            partner[b] = Some(a);
            taken[a] = true;
        }
    }
    let mut free = (0..after.len())
        .filter(|&a| !taken[a])
        .collect::<Vec<_>>()
        .into_iter();
    for slot in partner.iter_mut().filter(|slot| slot.is_none()) {
        *slot = free.next();
    }

    let mut after: Vec<Option<ToolCall>> = after.into_iter().map(Some).collect();
    let mut diffs = Vec::new();
    for (call, a) in before.into_iter().zip(partner) {
        let new = a.and_then(|a| after.get_mut(a)).and_then(Option::take);
        let op = match &new {
            None => Op::Delete,
            Some(new) if *new == call => Op::Equal,
            Some(_) => Op::Change,
        };
        diffs.push(tool_call_diff(op, Some(call), new));
    }
    diffs.extend(
        after
            .into_iter()
            .flatten()
            .map(|new| tool_call_diff(Op::Insert, None, Some(new))),
    );
    diffs
}

fn tool_call_diff(op: Op, before: Option<ToolCall>, after: Option<ToolCall>) -> ToolCallDiff {
    let shown = after.as_ref().or(before.as_ref());
    ToolCallDiff {
        op,
        id: shown.and_then(|c| c.id.clone()),
        name: shown.and_then(|c| c.name.clone()),
        before,
        after,
    }
}
