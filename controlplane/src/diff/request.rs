//! The request half: parameters, the system prompt, messages and tools.
//!
//! Every API keeps its tools in `tools[]`, and Chat Completions and Anthropic their
//! conversation in `messages[]`, so one reading serves all; OpenAI system prompts are ordinary
//! messages, Anthropic's live in the top-level `system` (a string or an array of text blocks).
//! The Responses API's conversation is `input` (a string, read as one user message, or a list
//! of items whose messages have the same roles and text shapes) and its system prompt
//! `instructions`.

use std::borrow::Cow;

use serde_json::Value;

use super::messages::{content_text, diff_messages, diff_tools};
use super::text::text_change;
use super::{Budget, ParamChange, RequestDiff, TextChange, param_changes};

/// Fields with their own entries in [`RequestDiff`], so not listed in `params`.
const CONTENT_FIELDS: [&str; 5] = ["messages", "system", "tools", "input", "instructions"];

pub(super) fn diff(before: Option<&Value>, after: Option<&Value>, budget: &Budget) -> RequestDiff {
    let mut params = param_changes(&top_level_params(before), &top_level_params(after));
    let system = diff_system(system(before), system(after), budget, &mut params);
    RequestDiff {
        changed: before != after,
        params,
        system,
        messages: diff_messages(&conversation(before), &conversation(after), budget),
        tools: diff_tools(array(before, "tools"), array(after, "tools"), budget),
    }
}

/// The system prompt: Anthropic `system`, Responses `instructions`.
fn system(body: Option<&Value>) -> Option<&Value> {
    field(body, "system").or_else(|| field(body, "instructions"))
}

/// The conversation: `messages`, or a Responses `input` (a string input is one user message).
fn conversation(body: Option<&Value>) -> Cow<'_, [Value]> {
    match field(body, "messages").or_else(|| field(body, "input")) {
        Some(Value::Array(items)) => Cow::Borrowed(items),
        Some(text @ Value::String(_)) => {
            Cow::Owned(vec![serde_json::json!({"role": "user", "content": text})])
        }
        _ => Cow::Borrowed(&[]),
    }
}

/// Every top-level field but the content fields, keyed by name.
fn top_level_params(body: Option<&Value>) -> Vec<(String, Cow<'_, Value>)> {
    body.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(key, _)| !CONTENT_FIELDS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), Cow::Borrowed(value)))
        .collect()
}

/// The system prompt as text. A change that leaves the text alone (say, a moved
/// `cache_control` marker) would be invisible there, so it is listed in `params` instead.
fn diff_system(
    before: Option<&Value>,
    after: Option<&Value>,
    budget: &Budget,
    params: &mut Vec<ParamChange>,
) -> Option<TextChange> {
    if before.is_none() && after.is_none() {
        return None;
    }
    let change = text_change(
        before.and_then(content_text),
        after.and_then(content_text),
        budget,
    );
    if change.before == change.after && before != after {
        params.push(ParamChange {
            path: "system".to_owned(),
            before: before.cloned().unwrap_or_default(),
            after: after.cloned().unwrap_or_default(),
        });
    }
    Some(change)
}

/// A field of a body; an explicit `null` counts as absent.
pub(super) fn field<'a>(body: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    body?.get(key).filter(|v| !v.is_null())
}

/// An array field of a body; empty when absent or not an array.
pub(super) fn array<'a>(body: Option<&'a Value>, key: &str) -> &'a [Value] {
    field(body, key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}
