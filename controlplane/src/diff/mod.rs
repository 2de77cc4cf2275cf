//! Original-vs-final diff of one recorded call, for the UI's side-by-side view.
//!
//! [`diff_call`] compares the original and the final (policy-transformed) request and
//! response of a call and returns a [`CallDiff`]: a JSON-serializable description the web UI
//! renders as-is. It is built for people, not machines:
//!
//! - `messages[]` (and `tools[]`) are aligned **by content**, so an inserted system message
//!   shows as one insert and every later message stays `equal`, instead of a positional diff
//!   that marks every message replaced ([`messages`]);
//! - changed texts carry word-level segments ([`text`]);
//! - provider-specific fields (system prompt, response text, tool calls, finish reason, usage)
//!   are pulled out of the JSON into their own entries ([`request`], [`response`]);
//! - for tools and machines, an RFC 6902 JSON Patch per half turns the original into the
//!   final ([`patch`]).
//!
//! Diffing is super-linear on hostile inputs (multi-MB prompts, a rewrite of every word), so
//! the whole diff shares one deadline from [`DiffOptions::time_budget`]; past it every step
//! finishes cheaply (a text becomes one delete + one insert, a JSON subtree one `replace`)
//! and [`CallDiff::truncated`] is set. Missing sides (a blocked call has no original
//! response, a running call has no response yet) are fine: that side's content becomes
//! inserts or deletes.

mod messages;
pub use messages::message_text;
mod patch;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod text;

use std::borrow::Cow;
use std::cell::Cell;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use luthien_policy::shapes::Api;

/// Tuning for [`diff_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffOptions {
    /// Wall-clock budget for the whole diff; past it the rest finishes coarsely and the
    /// result is marked [`CallDiff::truncated`].
    pub time_budget: Duration,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            time_budget: Duration::from_millis(200),
        }
    }
}

/// The diff of one call: its request half, its response half and JSON Patches for both.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallDiff {
    pub request: RequestDiff,
    pub response: ResponseDiff,
    pub json_patch: JsonPatches,
    /// Whether the time budget ran out, so some parts are coarser than they could be (a
    /// text shown as one delete + insert, a patch replacing a whole subtree). Still correct.
    pub truncated: bool,
    /// How long the diff took, in milliseconds.
    pub elapsed_ms: f64,
}

/// How a request differs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct RequestDiff {
    /// Whether anything in the request differs (including a side being absent).
    pub changed: bool,
    /// Changed top-level fields other than `messages`, `system` and `tools`.
    pub params: Vec<ParamChange>,
    /// The top-level `system` prompt (Anthropic); `None` when neither side has one.
    pub system: Option<TextChange>,
    /// Every message of either side, aligned by content, in conversation order.
    pub messages: Vec<MessageDiff>,
    /// Every tool of either side, aligned by content, paired by name.
    pub tools: Vec<ToolDiff>,
}

/// How a response differs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ResponseDiff {
    /// Whether anything in the response differs (including a side being absent).
    pub changed: bool,
    /// The assistant text; `None` when neither side has any.
    pub text: Option<TextChange>,
    /// Every tool call of either side, paired by id, then by position.
    pub tool_calls: Vec<ToolCallDiff>,
    /// `choices[0].finish_reason` / `stop_reason`; `None` when neither side has one.
    pub finish_reason: Option<ValueChange>,
    /// `usage`; `None` when neither side has one.
    pub usage: Option<ValueChange>,
    /// Changed fields not covered above.
    pub params: Vec<ParamChange>,
}

/// One changed field. An absent field is `null`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ParamChange {
    /// The field: a top-level key, or a dotted path such as `choices[0].logprobs`.
    pub path: String,
    pub before: Value,
    pub after: Value,
}

/// A text on both sides; `None` for an absent side.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TextChange {
    pub before: Option<String>,
    pub after: Option<String>,
    /// Word-level diff from `before` to `after`; only present when the texts differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<Segment>>,
}

/// A value on both sides; `null` for an absent side.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ValueChange {
    pub before: Value,
    pub after: Value,
}

/// A run of text that is kept, removed or added. Concatenating the `equal` and `delete`
/// segments gives the old text; the `equal` and `insert` segments give the new one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Segment {
    pub op: SegmentOp,
    pub text: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SegmentOp {
    Equal,
    Delete,
    Insert,
}

/// What happened to an element (message, tool, tool call) between the two sides.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Equal,
    Insert,
    Delete,
    /// The same slot (same role / tool name / tool call) with different content.
    Change,
}

/// One message of either side.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MessageDiff {
    pub op: Op,
    /// Index in the original `messages`; `None` for an insert.
    pub before_index: Option<usize>,
    /// Index in the final `messages`; `None` for a delete.
    pub after_index: Option<usize>,
    pub role: Option<String>,
    /// The whole message JSON (tool calls and tool results included); `None` for an insert.
    pub before: Option<Value>,
    /// The whole message JSON; `None` for a delete.
    pub after: Option<Value>,
    /// Word-level diff of the message text; only for [`Op::Change`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<Segment>>,
}

/// One tool definition of either side.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ToolDiff {
    pub op: Op,
    pub name: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// One tool call of either side.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ToolCallDiff {
    pub op: Op,
    pub id: Option<String>,
    pub name: Option<String>,
    pub before: Option<ToolCall>,
    pub after: Option<ToolCall>,
}

/// A tool call in a provider-neutral shape.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: Option<String>,
    pub name: Option<String>,
    /// OpenAI's `arguments` string parsed as JSON when it parses (else the string);
    /// Anthropic's `input`.
    pub arguments: Value,
}

/// RFC 6902 patches that turn the original into the final. An absent side counts as `null`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct JsonPatches {
    pub request: json_patch::Patch,
    pub response: json_patch::Patch,
}

/// Diffs the (original, final) request and response of a call; `None` marks an absent side.
pub fn diff_call(
    api: Api,
    request: (Option<&Value>, Option<&Value>),
    response: (Option<&Value>, Option<&Value>),
    options: &DiffOptions,
) -> CallDiff {
    let start = Instant::now();
    let budget = Budget::new(start, options.time_budget);
    // The parts a person reads come first, so a tight budget is spent on them rather than on
    // the patches, which degrade gracefully to whole-subtree replaces.
    let request_diff = request::diff(request.0, request.1, &budget);
    let response_diff = response::diff(api, response.0, response.1, &budget);
    let json_patch = JsonPatches {
        request: patch::diff(request.0, request.1, &budget),
        response: patch::diff(response.0, response.1, &budget),
    };
    CallDiff {
        request: request_diff,
        response: response_diff,
        json_patch,
        truncated: budget.truncated(),
        elapsed_ms: start.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Lists the `(path, value)` entries whose values differ between the two lists; a missing
/// entry counts as `null`, like in the output.
fn param_changes(
    before: &[(String, Cow<'_, Value>)],
    after: &[(String, Cow<'_, Value>)],
) -> Vec<ParamChange> {
    fn lookup<'v>(list: &'v [(String, Cow<'_, Value>)], path: &str) -> &'v Value {
        list.iter()
            .find(|(p, _)| p == path)
            .map_or(&Value::Null, |(_, value)| value.as_ref())
    }
    let mut changes = Vec::new();
    for (path, value) in before {
        let other = lookup(after, path);
        if value.as_ref() != other {
            changes.push(ParamChange {
                path: path.clone(),
                before: value.as_ref().clone(),
                after: other.clone(),
            });
        }
    }
    for (path, value) in after {
        if !value.is_null() && !before.iter().any(|(p, _)| p == path) {
            changes.push(ParamChange {
                path: path.clone(),
                before: Value::Null,
                after: value.as_ref().clone(),
            });
        }
    }
    changes
}

/// The shared deadline of one [`diff_call`], and whether any step had to cut a corner.
struct Budget {
    deadline: Instant,
    truncated: Cell<bool>,
}

impl Budget {
    fn new(start: Instant, budget: Duration) -> Self {
        // A budget too large to add (Duration::MAX) means "no deadline" in practice.
        let deadline = start
            .checked_add(budget)
            .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(start);
        Self {
            deadline,
            truncated: Cell::new(false),
        }
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Records that a step produced a coarser result than it would have with more time.
    fn mark_truncated(&self) {
        self.truncated.set(true);
    }

    fn truncated(&self) -> bool {
        self.truncated.get()
    }
}
