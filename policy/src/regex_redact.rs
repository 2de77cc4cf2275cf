//! `regex_redact`: replaces e-mail addresses, phone numbers, card numbers, API keys and
//! user-defined regexes in request and/or response text, streamed or not.
//!
//! ```yaml
//! - type: regex_redact
//!   config:
//!     presets: [emails, phone_numbers, credit_cards, api_keys]
//!     patterns:                          # your own, checked when the file loads
//!       - {name: employee_id, regex: "EMP-[0-9]{6}"}
//!     replacement: "[REDACTED:{name}]"   # default; {name} is the preset or pattern name
//!     apply_to: both                     # request | response | both (default)
//!     max_match_chars: 64                # default; see "Streams" below
//! ```
//!
//! The presets are described in [`presets::Preset`]. When several patterns match, the leftmost
//! match wins, then the longest, then the one listed first (presets before `patterns`).
//!
//! # What is searched
//!
//! - Requests: all message text (see [`crate::shapes`]), and — because secrets reach a model
//!   mostly through tools (a file an agent read, a command's output) — tool data too: Anthropic
//!   `tool_result` contents and `tool_use` inputs, OpenAI `tool_calls[].function.arguments`,
//!   Responses `function_call` arguments and `function_call_output` outputs in `input`.
//!   Inputs and arguments are JSON: only their string values are searched, and arguments are
//!   re-serialised when one changed (arguments that are not valid JSON are searched as text).
//! - Responses, streamed or not: assistant text only. Tool-call arguments a model produces are
//!   left alone: the client runs them, a redacted argument would silently change what runs, and
//!   streamed arguments arrive as JSON fragments. Thinking is never touched (it is signed).
//!
//! # Streams
//!
//! Each content stream (OpenAI choice, Anthropic content block) holds back its last
//! `max_match_chars - 1` characters: every match up to `max_match_chars` long is caught however
//! the text is split into events. A longer match is caught too when its first
//! `max_match_chars` characters already match (an API key: `sk-` and twenty characters), because
//! a match that runs into the end of the received text is held until it ends, up to 1024
//! characters (an `sk-proj-` key is about 160). So keep `max_match_chars` at least as long as
//! the longest e-mail address, phone or card number you must catch and the shortest complete
//! match of a long pattern; 64 covers the presets (but for unusually long e-mail addresses).
//!
//! Held text is flushed when its content stream ends, and anything still held before `[DONE]` /
//! `message_stop` and at the end of the stream (see [`super::text_rewrite`]). The cost is
//! latency: text reaches the client `max_match_chars` characters late; an event whose text is
//! all held is dropped when it carries nothing else.
//!
//! Every phase that redacted something records a `redacted` event with the counts per name —
//! never the matched text.

mod presets;
mod redactor;

use std::borrow::Cow;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub use self::presets::Preset;
use self::redactor::{Counts, Pattern, Redactor, StreamBuffer};
#[cfg(test)] // The tests name it through `super::*`.
use super::SseEvent;
use super::text_rewrite::{ApplyTo, RewriteCall, TextRewriter};
use super::{Api, CallInfo, CallPolicy, FromConfig, Policy, PolicyEvent};
use crate::shapes;

/// The default `replacement`.
pub const DEFAULT_REPLACEMENT: &str = "[REDACTED:{name}]";
/// The default `max_match_chars`.
pub const DEFAULT_MAX_MATCH_CHARS: usize = 64;
/// The largest `max_match_chars` accepted.
const MAX_MAX_MATCH_CHARS: usize = 4096;

/// The `config` of a `regex_redact` policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRedactConfig {
    #[serde(default)]
    pub presets: Vec<Preset>,
    #[serde(default)]
    pub patterns: Vec<PatternConfig>,
    #[serde(default = "default_replacement")]
    pub replacement: String,
    #[serde(default)]
    pub apply_to: ApplyTo,
    #[serde(default = "default_max_match_chars")]
    pub max_match_chars: usize,
}

fn default_replacement() -> String {
    DEFAULT_REPLACEMENT.to_owned()
}

fn default_max_match_chars() -> usize {
    DEFAULT_MAX_MATCH_CHARS
}

/// A user-defined pattern.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    pub name: String,
    pub regex: String,
}

/// Redacts matches of presets and user regexes in text content.
#[derive(Debug)]
pub struct RegexRedact {
    name: String,
    redactor: Arc<Redactor>,
    apply_to: ApplyTo,
}

impl FromConfig for RegexRedact {
    const KIND: &'static str = "regex_redact";
    type Config = RegexRedactConfig;

    fn from_config(name: String, config: RegexRedactConfig) -> Result<Self, String> {
        Ok(Self {
            name,
            redactor: Arc::new(compile(
                config.presets,
                config.patterns,
                &config.replacement,
                config.max_match_chars,
            )?),
            apply_to: config.apply_to,
        })
    }
}

/// Validates the configuration and compiles it. Errors start with the offending key.
fn compile(
    presets: Vec<Preset>,
    user_patterns: Vec<PatternConfig>,
    replacement: &str,
    max_match_chars: usize,
) -> Result<Redactor, String> {
    if presets.is_empty() && user_patterns.is_empty() {
        return Err(
            "presets: give at least one preset or pattern (presets: [emails, \
                    phone_numbers, credit_cards, api_keys], or patterns: [{name, regex}])"
                .to_owned(),
        );
    }
    if !(1..=MAX_MAX_MATCH_CHARS).contains(&max_match_chars) {
        return Err(format!(
            "max_match_chars: must be between 1 and {MAX_MAX_MATCH_CHARS}"
        ));
    }
    let mut names: Vec<String> = Vec::new();
    let mut patterns = Vec::new();
    for (position, preset) in presets.into_iter().enumerate() {
        if names.iter().any(|name| name == preset.name()) {
            return Err(format!(
                "presets[{position}]: {} is listed twice",
                preset.name()
            ));
        }
        let (regex, validate) = preset.pattern();
        let regex = Regex::new(regex)
            .map_err(|error| format!("presets[{position}]: {}", regex_error(&error)))?;
        patterns.push(Pattern {
            name: names.len(),
            regex,
            validate,
        });
        names.push(preset.name().to_owned());
    }
    for (position, PatternConfig { name, regex }) in user_patterns.into_iter().enumerate() {
        if name.trim().is_empty() {
            return Err(format!("patterns[{position}].name: must not be empty"));
        }
        if names.contains(&name) {
            return Err(format!(
                "patterns[{position}].name: {name:?} is already used by a preset or an earlier \
                 pattern"
            ));
        }
        let compiled = Regex::new(&regex).map_err(|error| {
            format!(
                "patterns[{position}].regex: pattern {name:?} is not a valid regex: {}",
                regex_error(&error)
            )
        })?;
        if compiled.is_match("") {
            return Err(format!(
                "patterns[{position}].regex: pattern {name:?} matches the empty string"
            ));
        }
        patterns.push(Pattern {
            name: names.len(),
            regex: compiled,
            validate: None,
        });
        names.push(name);
    }
    let replacements = names
        .iter()
        .map(|name| replacement.replace("{name}", name))
        .collect();
    Ok(Redactor::new(
        patterns,
        names,
        replacements,
        max_match_chars,
    ))
}

/// A regex error on one line: the regex crate's syntax errors span several, with a caret
/// under the offending position; its last line says what is wrong.
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    match text
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
    {
        Some(reason) => reason.to_owned(),
        None => text.lines().map(str::trim).collect::<Vec<_>>().join(" "),
    }
}

impl Policy for RegexRedact {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_only(&self) -> bool {
        false
    }

    fn transforms_responses(&self) -> bool {
        self.apply_to.response()
    }

    fn inspects_requests(&self) -> bool {
        self.apply_to.request()
    }

    fn start_call(&self, call: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(RewriteCall::new(
            call.api,
            Arc::clone(&self.redactor),
            self.apply_to,
        ))
    }
}

/// The tally is the matches per name.
impl TextRewriter for Redactor {
    type Buffer = StreamBuffer;
    type Tally = Counts;

    fn new_tally(&self) -> Counts {
        self.new_counts()
    }

    /// Text and tool data (see the module docs).
    fn rewrite_request(&self, api: Api, request: &mut Value, counts: &mut Counts) {
        let mut visit = |text: &mut String| self.rewrite(text, counts);
        shapes::for_each_request_text(api, request, &mut visit);
        for_each_request_tool_text(api, request, &mut visit);
    }

    fn rewrite(&self, text: &mut String, counts: &mut Counts) {
        self.redact_all(text, counts);
    }

    fn push<'a>(&self, buffer: &mut StreamBuffer, piece: &'a str) -> Cow<'a, str> {
        buffer.push(self, piece)
    }

    fn finish(&self, mut buffer: StreamBuffer, counts: &mut Counts) -> String {
        let rest = buffer.finish(self);
        add_counts(counts, buffer.counts());
        rest
    }

    /// Counts per name, never the text.
    fn event(&self, phase: &str, counts: &Counts) -> Option<PolicyEvent> {
        let total: usize = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let mut by_name = Map::new();
        let mut parts = Vec::new();
        for (name, &count) in self.names().iter().zip(counts) {
            if count > 0 {
                by_name.insert(name.clone(), json!(count));
                parts.push(format!("{name} ×{count}"));
            }
        }
        Some(PolicyEvent {
            action: "redacted".to_owned(),
            summary: format!(
                "redacted {total} match(es) in the {phase}: {}",
                parts.join(", ")
            ),
            data: json!({ "phase": phase, "count": total, "counts": by_name }),
        })
    }
}

fn add_counts(total: &mut Counts, counts: &[usize]) {
    for (total, count) in total.iter_mut().zip(counts) {
        *total += count;
    }
}

/// Calls `visit` on the tool data of a request (see the module docs): Anthropic `tool_result`
/// contents (a string or its `text` blocks) and the string values of `tool_use` inputs; the
/// string values of OpenAI `tool_calls[].function.arguments`; in a Responses `input`, the
/// string values of `function_call` arguments and `function_call_output` outputs (a string or
/// its `input_text` parts). OpenAI `tool` messages are text content, visited by
/// [`shapes::for_each_request_text`].
fn for_each_request_tool_text(api: Api, request: &mut Value, visit: &mut impl FnMut(&mut String)) {
    let conversation = match api {
        Api::OpenAiResponses => "input",
        Api::OpenAiChat | Api::AnthropicMessages => "messages",
    };
    let Some(Value::Array(messages)) = request.get_mut(conversation) else {
        return;
    };
    for message in messages {
        match api {
            Api::OpenAiChat => {
                let Some(Value::Array(calls)) = message.get_mut("tool_calls") else {
                    continue;
                };
                for call in calls {
                    if let Some(Value::String(arguments)) = call.pointer_mut("/function/arguments")
                    {
                        visit_json_text(arguments, visit);
                    }
                }
            }
            Api::OpenAiResponses => match message.get("type").and_then(Value::as_str) {
                Some("function_call") => {
                    if let Some(Value::String(arguments)) = message.get_mut("arguments") {
                        visit_json_text(arguments, visit);
                    }
                }
                Some("function_call_output") => {
                    visit_tool_output(message.get_mut("output"), "input_text", visit);
                }
                _ => {}
            },
            Api::AnthropicMessages => {
                let Some(Value::Array(blocks)) = message.get_mut("content") else {
                    continue;
                };
                for block in blocks {
                    match block.get("type").and_then(Value::as_str) {
                        Some("tool_result") => {
                            visit_tool_output(block.get_mut("content"), "text", visit);
                        }
                        Some("tool_use") => {
                            if let Some(input) = block.get_mut("input") {
                                visit_json_strings(input, visit);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Visits a tool's output: a string, or the `text` of its parts of type `text_type`.
fn visit_tool_output(
    output: Option<&mut Value>,
    text_type: &str,
    visit: &mut impl FnMut(&mut String),
) {
    match output {
        Some(Value::String(text)) => visit(text),
        Some(Value::Array(parts)) => {
            for part in parts {
                if part.get("type").and_then(Value::as_str) != Some(text_type) {
                    continue;
                }
                if let Some(Value::String(text)) = part.get_mut("text") {
                    visit(text);
                }
            }
        }
        _ => {}
    }
}

/// Visits the string values of JSON text (re-serialised only when one changed), or the text
/// itself when it is not JSON.
fn visit_json_text(text: &mut String, visit: &mut impl FnMut(&mut String)) {
    let Ok(mut value) = serde_json::from_str::<Value>(text) else {
        visit(text);
        return;
    };
    let mut changed = false;
    visit_json_strings(&mut value, &mut |string: &mut String| {
        let original = string.clone();
        visit(string);
        changed |= *string != original;
    });
    if changed {
        *text = value.to_string();
    }
}

/// Visits every string value (not the keys) of a JSON value.
fn visit_json_strings(value: &mut Value, visit: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => {
            for item in items {
                visit_json_strings(item, visit);
            }
        }
        Value::Object(fields) => {
            for item in fields.values_mut() {
                visit_json_strings(item, visit);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
