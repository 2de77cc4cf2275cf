//! `tool_call_filter`: removes the tool calls that match a rule and puts a text in their place.
//!
//! ```yaml
//! - type: tool_call_filter
//!   name: no-destructive-shell
//!   config:
//!     rules:
//!       - name: no-rm-rf
//!         tools: ["bash", "shell*"]          # tool-name patterns (* and ?); absent = any tool
//!         arguments_regex: 'rm\s+-[a-zA-Z]*r[a-zA-Z]*f'   # searched in the arguments as JSON
//!       - name: no-etc-writes
//!         tools: [write_file]
//!         arguments_json_path: {path: "$.path", regex: "^/etc/"}
//!     replacement_text: "Tool call {name} was blocked by policy: {rule}"   # the default
//! ```
//!
//! A rule matches a tool call when **all** of the conditions it gives hold (it must give at
//! least one); the first rule that matches, in file order, removes the call:
//!
//! - `tools`: the tool's name matches one of the patterns (`*` any run of characters, `?` one
//!   character, case-sensitive).
//! - `arguments_regex`: the [regex](https://docs.rs/regex) is found in the arguments written as
//!   compact JSON (no spaces between tokens, strings escaped as JSON: a quote inside a string is
//!   `\"`), so the same call reads the same in every API, streamed or not. Arguments that are
//!   not JSON are searched as they are — among them the free-text `input` of a Responses
//!   `custom_tool_call`.
//! - `arguments_json_path`: the [JSONPath](https://www.rfc-editor.org/rfc/rfc9535) `path`
//!   selects at least one value of the parsed arguments, and, when `regex` is given, the regex
//!   is found in one of them (a string as its text, anything else as compact JSON). Arguments
//!   that are not JSON never match.
//!
//! `replacement_text` may use `{name}` (the tool) and `{rule}` (the rule's name). Removal,
//! replacement, streaming and the finish-reason rewrite are described in
//! [`super::tool_calls`]; in the Responses API the rules apply to `function_call` and
//! `custom_tool_call` items, and a removed call becomes a `message` item in its place. Every
//! removal is recorded as a `blocked` policy event naming the tool, the tool call id (Responses:
//! the `call_id`) and the rule.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};
use serde_json_path::JsonPath;

use super::tool_calls::{Decision, GuardCall, Inspector, Subject, Template, ToolCall, ToolNames};
use super::{CallInfo, CallPolicy, FromConfig, Policy, PolicyEvent};

/// The default `replacement_text`.
pub const DEFAULT_REPLACEMENT_TEXT: &str = "Tool call {name} was blocked by policy: {rule}";

/// The `config` of a `tool_call_filter` policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCallFilterConfig {
    pub rules: Vec<RuleConfig>,
    #[serde(default = "default_replacement_text")]
    pub replacement_text: String,
}

fn default_replacement_text() -> String {
    DEFAULT_REPLACEMENT_TEXT.to_owned()
}

/// One rule: every condition given must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub arguments_regex: Option<String>,
    #[serde(default)]
    pub arguments_json_path: Option<JsonPathConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPathConfig {
    pub path: String,
    #[serde(default)]
    pub regex: Option<String>,
}

/// Removes tool calls that match its rules.
pub struct ToolCallFilter {
    name: String,
    inspector: Arc<Filter>,
}

impl FromConfig for ToolCallFilter {
    const KIND: &'static str = "tool_call_filter";
    type Config = ToolCallFilterConfig;

    fn from_config(name: String, config: ToolCallFilterConfig) -> Result<Self, String> {
        if config.rules.is_empty() {
            return Err("rules: must not be empty".to_owned());
        }
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(config.rules.len());
        for (index, rule) in config.rules.into_iter().enumerate() {
            let at = |key: &str, error: String| format!("rules[{index}].{key}{error}");
            if rule.name.trim().is_empty() {
                return Err(at("name", ": must not be empty".to_owned()));
            }
            if !names.insert(rule.name.clone()) {
                return Err(at(
                    "name",
                    format!(": {:?} is used by an earlier rule", rule.name),
                ));
            }
            if rule.tools.is_none()
                && rule.arguments_regex.is_none()
                && rule.arguments_json_path.is_none()
            {
                return Err(format!(
                    "rules[{index}]: give at least one of tools, arguments_regex, arguments_json_path"
                ));
            }
            let tools = rule
                .tools
                .as_deref()
                .map(ToolNames::new)
                .transpose()
                .map_err(|error| at("tools", error))?;
            let arguments = rule
                .arguments_regex
                .as_deref()
                .map(|pattern| compile(pattern).map_err(|error| at("arguments_regex", error)))
                .transpose()?;
            let json_path = match rule.arguments_json_path {
                None => None,
                Some(JsonPathConfig { path, regex }) => {
                    let parsed = JsonPath::parse(&path)
                        .map_err(|error| at("arguments_json_path.path", format!(": {error}")))?;
                    let regex = regex
                        .as_deref()
                        .map(|pattern| {
                            compile(pattern).map_err(|error| at("arguments_json_path.regex", error))
                        })
                        .transpose()?;
                    Some(PathCondition {
                        path: parsed,
                        regex,
                    })
                }
            };
            rules.push(Rule {
                name: rule.name,
                tools,
                arguments,
                json_path,
            });
        }
        let replacement = Template::parse(&config.replacement_text, &["name", "rule"])
            .map_err(|error| format!("replacement_text: {error}"))?;
        Ok(Self {
            name,
            inspector: Arc::new(Filter { rules, replacement }),
        })
    }
}

/// A regex from the file; the error starts with `: ` to follow the key.
fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err(": must not be empty".to_owned());
    }
    Regex::new(pattern).map_err(|error| format!(": {error}"))
}

impl Policy for ToolCallFilter {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_only(&self) -> bool {
        false
    }

    fn inspects_requests(&self) -> bool {
        false
    }

    fn start_call(&self, call: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(GuardCall::new(call.api, self.inspector.clone()))
    }
}

struct Filter {
    rules: Vec<Rule>,
    replacement: Template,
}

struct Rule {
    name: String,
    tools: Option<ToolNames>,
    arguments: Option<Regex>,
    json_path: Option<PathCondition>,
}

struct PathCondition {
    path: JsonPath,
    regex: Option<Regex>,
}

impl Rule {
    fn matches(&self, call: &ToolCall) -> bool {
        if let Some(tools) = &self.tools
            && !tools.matches(&call.name)
        {
            return false;
        }
        if let Some(regex) = &self.arguments
            && !regex.is_match(&call.normalized_arguments())
        {
            return false;
        }
        if let Some(condition) = &self.json_path {
            let Some(arguments) = call.parsed_arguments() else {
                return false;
            };
            let nodes = condition.path.query(&arguments);
            let found = match &condition.regex {
                None => !nodes.is_empty(),
                Some(regex) => nodes.iter().any(|node| match node {
                    Value::String(text) => regex.is_match(text),
                    other => regex.is_match(&other.to_string()),
                }),
            };
            if !found {
                return false;
            }
        }
        true
    }
}

#[async_trait]
impl Inspector for Filter {
    async fn inspect(&self, subject: Subject<'_>) -> Decision {
        let Subject::ToolCall(call) = subject else {
            return Decision::keep();
        };
        let Some(rule) = self.rules.iter().find(|rule| rule.matches(call)) else {
            return Decision::keep();
        };
        Decision {
            replacement: Some(
                self.replacement
                    .render(&[("name", &call.name), ("rule", &rule.name)]),
            ),
            event: Some(PolicyEvent {
                action: "blocked".to_owned(),
                summary: format!("removed tool call `{}` (rule `{}`)", call.name, rule.name),
                data: json!({"tool": call.name, "tool_call_id": call.id, "rule": rule.name}),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
