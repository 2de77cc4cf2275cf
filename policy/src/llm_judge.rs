//! `llm_judge`: asks an LLM whether each tool call (and optionally the assistant's text) breaks
//! the rules, and removes it when the judge says so.
//!
//! ```yaml
//! - type: llm_judge
//!   name: judge
//!   config:
//!     base_url: https://api.openai.com/v1     # OpenAI-compatible; /chat/completions is appended
//!     model: gpt-4o-mini
//!     api_key_env: JUDGE_API_KEY              # or api_key: "sk-…"; neither for a local judge
//!     rules: |
//!       Never delete files outside the project directory.
//!       Never send credentials to the network.
//!     threshold: 0.5        # block when score >= threshold (default 0.5)
//!     timeout: 5s           # per judge request (default 5s)
//!     on_error: block       # block (default) | allow, when the judge fails or times out
//!     judge_text: false     # also judge the assistant's text (default false)
//!     tools: ["bash", "write_*"]   # judge only these tools (default: every tool call)
//!     headers: {x-team: agents}    # sent with every judge request
//!     # prompt_template, text_prompt_template, replacement_text, text_replacement_text: below
//! ```
//!
//! Each tool call is held until complete (see [`super::tool_calls`]), then the judge gets one
//! `POST {base_url}/chat/completions` with `temperature: 0`, `response_format: json_object`, a
//! fixed system message asking for `{"violation": bool, "score": 0..1, "explanation": str}`,
//! and `prompt_template` rendered as the user message. The answer's `choices[0].message.content`
//! is read leniently: the JSON object may be wrapped in prose or a code fence, `violation` may
//! be a boolean or `"true"`/`"false"`, `score` a number or numeric string (clamped to 0..1; when
//! absent it is 1 for a violation and 0 otherwise). A subject is blocked when `score >=
//! threshold`, unless the judge said `violation: false`. An answer without either field, a
//! non-2xx status or a timeout is a judge error, handled by `on_error`. The tool calls of one
//! OpenAI choice are judged concurrently.
//!
//! It works the same on the three APIs the gateway serves (OpenAI Chat Completions, Anthropic
//! Messages, OpenAI Responses): what is judged is a tool call — Responses `function_call` and
//! `custom_tool_call` items included, with the custom tool's free-text `input` as
//! `{arguments}` — or, with `judge_text`, a whole text (an Anthropic `text` block, an OpenAI
//! choice's text, one `output_text` part of a Responses `message` item). A Responses item is
//! judged when its `response.output_item.done` arrives (the parts of one message
//! concurrently); a blocked one is replaced in the stream and in every copy the stream repeats
//! (see [`super::tool_calls`]). The judge itself is always asked over Chat Completions,
//! whatever API the judged call uses.
//!
//! Templates: `prompt_template` and `text_prompt_template` may use `{tool_name}`, `{arguments}`
//! (compact JSON), `{text}` and `{rules}` (what does not apply is empty);
//! `replacement_text` `{name}`, `{explanation}` and `{score}`; `text_replacement_text`
//! `{explanation}` and `{score}`. A judge error under `on_error: block` uses the replacement
//! with the explanation "the policy judge was unavailable" (the error itself goes to the log and
//! the policy event, not to the client).
//!
//! Every block is recorded as a `blocked` policy event with the tool, score, threshold and the
//! judge's explanation; a judge error under `on_error: allow` as `judge_failed`.
//!
//! The judge's time is spent inside a policy hook, so the control plane sends keepalives while
//! it waits; but the data plane's per-message timeout (`cp-message-timeout`, 30 s by default)
//! still bounds a whole decision, so keep `timeout` well below it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};

use super::tool_calls::{Decision, GuardCall, Inspector, Subject, Template, ToolNames};
use super::{CallInfo, CallPolicy, FromConfig, Policy, PolicyEvent};

/// The system message of every judge request.
pub const SYSTEM_PROMPT: &str = "You are a strict policy judge for an AI agent. You are shown \
one action of the agent and the rules it must follow. Answer with a single JSON object and \
nothing else: {\"violation\": true or false, \"score\": a number from 0 to 1 saying how likely \
the action breaks the rules, \"explanation\": \"one short sentence\"}.";

/// The default `prompt_template` (tool calls).
pub const DEFAULT_PROMPT_TEMPLATE: &str = "Rules:\n{rules}\n\nThe agent wants to call the tool \
`{tool_name}` with these arguments:\n{arguments}\n\nDoes this tool call break the rules?";

/// The default `text_prompt_template` (assistant text, with `judge_text: true`).
pub const DEFAULT_TEXT_PROMPT_TEMPLATE: &str = "Rules:\n{rules}\n\nThe agent answers the user with this text:\n{text}\n\nDoes this text break the rules?";

/// The default `replacement_text`.
pub const DEFAULT_REPLACEMENT_TEXT: &str =
    "Tool call {name} was blocked by the LLM judge: {explanation}";

/// The default `text_replacement_text`.
pub const DEFAULT_TEXT_REPLACEMENT_TEXT: &str =
    "This response was blocked by the LLM judge: {explanation}";

/// What the client reads when the judge failed and `on_error` blocks.
const UNAVAILABLE: &str = "the policy judge was unavailable";

/// Largest judge answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Longest explanation put in a replacement text, in characters.
const MAX_EXPLANATION_CHARS: usize = 500;

const PROMPT_FIELDS: &[&str] = &["tool_name", "arguments", "text", "rules"];

/// The `config` of an `llm_judge` policy. (No `Debug`: it may hold an API key.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmJudgeConfig {
    pub base_url: String,
    pub model: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    pub rules: String,
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub judge_text: bool,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    #[serde(default = "default_text_prompt_template")]
    pub text_prompt_template: String,
    #[serde(default = "default_replacement_text")]
    pub replacement_text: String,
    #[serde(default = "default_text_replacement_text")]
    pub text_replacement_text: String,
}

fn default_threshold() -> f64 {
    0.5
}

fn default_timeout() -> String {
    "5s".to_owned()
}

fn default_prompt_template() -> String {
    DEFAULT_PROMPT_TEMPLATE.to_owned()
}

fn default_text_prompt_template() -> String {
    DEFAULT_TEXT_PROMPT_TEMPLATE.to_owned()
}

fn default_replacement_text() -> String {
    DEFAULT_REPLACEMENT_TEXT.to_owned()
}

fn default_text_replacement_text() -> String {
    DEFAULT_TEXT_REPLACEMENT_TEXT.to_owned()
}

/// What happens to a subject when the judge cannot answer.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Remove it (fail closed).
    #[default]
    Block,
    /// Let it through (fail open).
    Allow,
}

impl OnError {
    fn as_str(self) -> &'static str {
        match self {
            OnError::Block => "block",
            OnError::Allow => "allow",
        }
    }
}

/// Removes tool calls (and text) that an LLM judge finds in breach of the rules.
pub struct LlmJudge {
    name: String,
    judge: Arc<Judge>,
}

impl FromConfig for LlmJudge {
    const KIND: &'static str = "llm_judge";
    type Config = LlmJudgeConfig;

    fn from_config(name: String, config: LlmJudgeConfig) -> Result<Self, String> {
        let judge = Judge::new(&name, config)?;
        Ok(Self {
            name,
            judge: Arc::new(judge),
        })
    }
}

impl Policy for LlmJudge {
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
        Box::new(GuardCall::new(call.api, self.judge.clone()))
    }
}

/// The configured judge, shared by every call (with one pooled HTTP client).
struct Judge {
    policy: String,
    client: JudgeClient,
    rules: String,
    threshold: f64,
    on_error: OnError,
    judge_text: bool,
    tools: Option<ToolNames>,
    prompt: Template,
    text_prompt: Template,
    replacement: Template,
    text_replacement: Template,
}

impl Judge {
    fn new(policy: &str, config: LlmJudgeConfig) -> Result<Self, String> {
        if config.model.trim().is_empty() {
            return Err("model: must not be empty".to_owned());
        }
        if config.rules.trim().is_empty() {
            return Err("rules: must not be empty".to_owned());
        }
        if !(0.0..=1.0).contains(&config.threshold) {
            return Err(format!(
                "threshold: {} is not between 0 and 1",
                config.threshold
            ));
        }
        let timeout = humantime::parse_duration(&config.timeout)
            .map_err(|error| format!("timeout: {error}"))?;
        if timeout.is_zero() {
            return Err("timeout: must be more than 0".to_owned());
        }
        let api_key = match (config.api_key, config.api_key_env) {
            (Some(_), Some(_)) => {
                return Err("api_key_env: give api_key or api_key_env, not both".to_owned());
            }
            (Some(key), None) => Some(key),
            (None, Some(variable)) => match std::env::var(&variable) {
                Ok(key) if !key.is_empty() => Some(key),
                _ => {
                    return Err(format!(
                        "api_key_env: environment variable {variable} is not set"
                    ));
                }
            },
            (None, None) => None,
        };
        let mut headers = Vec::new();
        if let Some(key) = api_key {
            let value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "api_key: not a valid header value".to_owned())?;
            headers.push((AUTHORIZATION, value));
        }
        for (name, value) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers.{name}: not a valid header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("headers.{name}: not a valid header value"))?;
            headers.retain(|(existing, _)| *existing != header);
            headers.push((header, value));
        }
        let client = JudgeClient::new(&config.base_url, config.model.clone(), headers, timeout)?;
        let tools = config
            .tools
            .as_deref()
            .map(ToolNames::new)
            .transpose()
            .map_err(|error| format!("tools{error}"))?;
        let template = |key: &str, text: &str, fields: &[&'static str]| {
            Template::parse(text, fields).map_err(|error| format!("{key}: {error}"))
        };
        Ok(Self {
            policy: policy.to_owned(),
            client,
            rules: config.rules,
            threshold: config.threshold,
            on_error: config.on_error,
            judge_text: config.judge_text,
            tools,
            prompt: template("prompt_template", &config.prompt_template, PROMPT_FIELDS)?,
            text_prompt: template(
                "text_prompt_template",
                &config.text_prompt_template,
                PROMPT_FIELDS,
            )?,
            replacement: template(
                "replacement_text",
                &config.replacement_text,
                &["name", "explanation", "score"],
            )?,
            text_replacement: template(
                "text_replacement_text",
                &config.text_replacement_text,
                &["explanation", "score"],
            )?,
        })
    }
}

#[async_trait]
impl Inspector for Judge {
    fn inspects_text(&self) -> bool {
        self.judge_text
    }

    async fn inspect(&self, subject: Subject<'_>) -> Decision {
        let (prompt, target) = match subject {
            Subject::ToolCall(call) => {
                if self
                    .tools
                    .as_ref()
                    .is_some_and(|tools| !tools.matches(&call.name))
                {
                    return Decision::keep();
                }
                let arguments = call.normalized_arguments();
                let prompt = self.prompt.render(&[
                    ("tool_name", &call.name),
                    ("arguments", &arguments),
                    ("text", ""),
                    ("rules", &self.rules),
                ]);
                (prompt, Target::ToolCall(&call.name, call.id.as_deref()))
            }
            Subject::Text(text) => {
                if !self.judge_text {
                    return Decision::keep();
                }
                let prompt = self.text_prompt.render(&[
                    ("tool_name", ""),
                    ("arguments", ""),
                    ("text", text),
                    ("rules", &self.rules),
                ]);
                (prompt, Target::Text)
            }
        };
        match self.client.ask(prompt).await {
            Ok(verdict) if verdict.blocks(self.threshold) => self.block(target, &verdict),
            Ok(_) => Decision::keep(),
            Err(error) => {
                tracing::warn!(policy = %self.policy, %error, on_error = self.on_error.as_str(), "LLM judge failed");
                self.judge_failed(target, &error)
            }
        }
    }
}

/// What was judged, for replacement texts and events.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// Tool name and call id.
    ToolCall(&'a str, Option<&'a str>),
    Text,
}

impl Judge {
    fn replacement_for(&self, target: Target<'_>, explanation: &str, score: &str) -> String {
        match target {
            Target::ToolCall(name, _) => self.replacement.render(&[
                ("name", name),
                ("explanation", explanation),
                ("score", score),
            ]),
            Target::Text => self
                .text_replacement
                .render(&[("explanation", explanation), ("score", score)]),
        }
    }

    fn block(&self, target: Target<'_>, verdict: &Verdict) -> Decision {
        let explanation: String = verdict
            .explanation
            .chars()
            .take(MAX_EXPLANATION_CHARS)
            .collect();
        let score = format!("{:.2}", verdict.score);
        let (summary, mut data) = match target {
            Target::ToolCall(name, id) => (
                format!("judge blocked tool call `{name}` (score {score}): {explanation}"),
                json!({"tool": name, "tool_call_id": id}),
            ),
            Target::Text => (
                format!("judge blocked the response text (score {score}): {explanation}"),
                json!({"target": "text"}),
            ),
        };
        data["score"] = json!(verdict.score);
        data["threshold"] = json!(self.threshold);
        data["violation"] = json!(verdict.violation);
        data["explanation"] = json!(verdict.explanation);
        Decision {
            replacement: Some(self.replacement_for(target, &explanation, &score)),
            event: Some(PolicyEvent {
                action: "blocked".to_owned(),
                summary,
                data,
            }),
        }
    }

    fn judge_failed(&self, target: Target<'_>, error: &str) -> Decision {
        let (what, mut data) = match target {
            Target::ToolCall(name, id) => (
                format!("tool call `{name}`"),
                json!({"tool": name, "tool_call_id": id}),
            ),
            Target::Text => ("the response text".to_owned(), json!({"target": "text"})),
        };
        data["judge_error"] = json!(error);
        data["on_error"] = json!(self.on_error.as_str());
        match self.on_error {
            OnError::Block => Decision {
                replacement: Some(self.replacement_for(target, UNAVAILABLE, "")),
                event: Some(PolicyEvent {
                    action: "blocked".to_owned(),
                    summary: format!("judge failed ({error}); {what} blocked (on_error: block)"),
                    data,
                }),
            },
            OnError::Allow => Decision {
                replacement: None,
                event: Some(PolicyEvent {
                    action: "judge_failed".to_owned(),
                    summary: format!("judge failed ({error}); {what} allowed (on_error: allow)"),
                    data,
                }),
            },
        }
    }
}

/// The judge's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub violation: Option<bool>,
    /// 0..=1.
    pub score: f64,
    pub explanation: String,
}

impl Verdict {
    /// True when the subject must go: `score >= threshold`, unless the judge said it is no
    /// violation.
    pub fn blocks(&self, threshold: f64) -> bool {
        self.violation != Some(false) && self.score >= threshold
    }
}

/// Reads the judge's verdict from the assistant content of its answer: the JSON object alone,
/// in a code fence, or inside prose (from the first `{` to the last `}`).
pub fn parse_verdict(content: &str) -> Result<Verdict, String> {
    let trimmed = content.trim();
    let object = serde_json::from_str::<Value>(trimmed)
        .ok()
        .filter(Value::is_object)
        .or_else(|| {
            let start = trimmed.find('{')?;
            let end = trimmed.rfind('}')?;
            serde_json::from_str::<Value>(trimmed.get(start..=end)?)
                .ok()
                .filter(Value::is_object)
        })
        .ok_or_else(|| {
            format!(
                "the judge's answer is not a JSON object: {}",
                excerpt(trimmed)
            )
        })?;
    let violation = match object.get("violation") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(flag)) => Some(*flag),
        Some(Value::String(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" => Some(true),
            "false" | "no" => Some(false),
            _ => return Err(format!("the judge's violation {text:?} is not a boolean")),
        },
        Some(Value::Number(number)) => Some(number.as_f64().is_some_and(|n| n != 0.0)),
        Some(other) => return Err(format!("the judge's violation {other} is not a boolean")),
    };
    let score = match object.get("score") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => number.as_f64(),
        Some(Value::String(text)) => Some(
            text.trim()
                .parse::<f64>()
                .map_err(|_| format!("the judge's score {text:?} is not a number"))?,
        ),
        Some(other) => return Err(format!("the judge's score {other} is not a number")),
    };
    let score = match (score, violation) {
        (Some(score), _) if score.is_nan() => {
            return Err("the judge's score is not a number".to_owned());
        }
        (Some(score), _) => score.clamp(0.0, 1.0),
        (None, Some(true)) => 1.0,
        (None, Some(false)) => 0.0,
        (None, None) => {
            return Err(format!(
                "the judge's answer has neither violation nor score: {}",
                excerpt(trimmed)
            ));
        }
    };
    let explanation = match object.get("explanation") {
        Some(Value::String(text)) => text.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    Ok(Verdict {
        violation,
        score,
        explanation,
    })
}

/// The start of a text, for error messages.
fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX).collect();
    cut.push('…');
    cut
}

/// An OpenAI-compatible chat completions client with one connection pool.
struct JudgeClient {
    http: HttpClient,
    url: Uri,
    model: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl JudgeClient {
    fn new(
        base_url: &str,
        model: String,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let url: Uri = url
            .parse()
            .map_err(|error| format!("base_url: {base_url:?} is not a URL: {error}"))?;
        if url.host().is_none() {
            return Err(format!("base_url: {base_url:?} has no host"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let builder = || {
            let mut builder = Client::builder(TokioExecutor::new());
            builder.pool_idle_timeout(Duration::from_secs(90));
            builder
        };
        let http = match url.scheme_str() {
            Some("http") => HttpClient::Plain(builder().build(connector)),
            Some("https") => {
                connector.enforce_http(false);
                let tls = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_native_roots()
                    .map_err(|error| format!("base_url: no TLS root certificates: {error}"))?
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(connector);
                HttpClient::Tls(builder().build(tls))
            }
            _ => return Err(format!("base_url: {base_url:?} is not an http(s) URL")),
        };
        Ok(Self {
            http,
            url,
            model,
            headers,
            timeout,
        })
    }

    /// Asks the judge; any failure (including the timeout) is an error message.
    async fn ask(&self, prompt: String) -> Result<Verdict, String> {
        let body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0,
            "response_format": {"type": "json_object"},
        });
        let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let exchange = async {
            let response = match &self.http {
                HttpClient::Plain(client) => client.request(request).await,
                HttpClient::Tls(client) => client.request(request).await,
            }
            .map_err(|error| format!("judge request failed: {error}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|error| format!("reading the judge's answer failed: {error}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "the judge did not answer within {}",
                    humantime::format_duration(self.timeout)
                )
            })??;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(format!("the judge answered {status}: {}", excerpt(&text)));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|_| format!("the judge's answer is not JSON: {}", excerpt(&text)))?;
        let content = answer
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!(
                    "the judge's answer has no message content: {}",
                    excerpt(&text)
                )
            })?;
        parse_verdict(content)
    }
}

#[cfg(test)]
mod tests;
