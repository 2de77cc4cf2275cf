//! The answer to one request, independent of the wire format it is rendered in.
//!
//! Both the streaming and the non-streaming renderer of each API read the same [`Reply`],
//! which is what guarantees that a stream reassembles to exactly the non-streamed answer
//! (same text, tool calls, thinking, stop reason and usage). Everything here is a pure
//! function of the request, so the same request always yields the same bytes.

use serde_json::{Map, Value};

use crate::scenario::{Controls, DEFAULT_CHUNK_SIZE, Scenario, Split};

/// A tool call the mock makes, with the arguments already cut into the fragments a stream
/// sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolCall {
    pub name: &'static str,
    /// Concatenated, these are the arguments as a JSON text.
    pub argument_fragments: &'static [&'static str],
}

impl ToolCall {
    /// The complete arguments, as a JSON text.
    pub fn arguments(&self) -> String {
        self.argument_fragments.concat()
    }
}

/// The tool calls of the `tools` scenario; `text_and_tools` uses the first one.
///
/// The fragments are written out by hand so that the splits are deliberately awkward: the
/// `bash` arguments are cut twice right after the backslash of an escaped quote (`\` | `"`),
/// which breaks any reassembly that tries to parse or unescape fragments on their own.
pub const TOOL_CALLS: [ToolCall; 2] = [
    ToolCall {
        name: "get_weather",
        // {"city":"Paris"}
        argument_fragments: &[r#"{""#, "city", r#"":""#, "Par", r#"is"}"#],
    },
    ToolCall {
        name: "bash",
        // {"command":"ls -la /tmp && echo \"done\""}
        argument_fragments: &[
            r#"{"comm"#,
            r#"and":"#,
            r#""ls -la"#,
            r#" /tmp && echo \"#,
            r#""done\"#,
            r#"""}"#,
        ],
    },
];

/// The reasoning of the `thinking` scenario (Anthropic's thinking block, the summary of a
/// Responses reasoning item).
pub const THINKING_TEXT: &str =
    "The user wants a short greeting. I will answer with the configured text, nothing more.";
/// The signature that closes the thinking block (base64 of `mock-signature-0001`).
pub const THINKING_SIGNATURE: &str = "bW9jay1zaWduYXR1cmUtMDAwMQ==";

/// An extended-thinking block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thinking {
    pub text: &'static str,
    pub signature: &'static str,
}

/// The parts of a request body the mock reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBody {
    pub model: String,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    /// A deterministic stand-in for prompt tokens: the number of whitespace-separated words
    /// in every string under `messages` and `system` (Responses: `input` and `instructions`). It depends on the JSON content only,
    /// not on its formatting, so a proxy that re-serializes the body sees the same usage.
    pub input_tokens: u64,
}

/// The model echoed back when the request names none.
pub const DEFAULT_MODEL: &str = "mock-model";

/// Reads a request body that must be a JSON object; the error message is meant for a `400`
/// answer.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err("request body must be a JSON object".to_owned()),
        Err(err) => Err(format!("request body is not valid JSON: {err}")),
    }
}

/// The page size of a listing's `limit` query parameter: `default` when absent, else an
/// integer from 1 to `max`. The error is a message for a `400`.
pub(crate) fn page_limit(limit: Option<&str>, default: usize, max: usize) -> Result<usize, String> {
    match limit {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| format!("limit: must be an integer from 1 to {max}")),
    }
}

impl RequestBody {
    /// Reads a Chat Completions or Messages request body, counting the words under `messages`
    /// and `system`; the error message is meant for a `400` answer.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        Self::from_fields(&parse_object(body)?, &["messages", "system"])
    }

    /// Reads the fields of a request body, counting the words of the strings under the
    /// `counted` fields as its input tokens.
    pub fn from_fields(fields: &Map<String, Value>, counted: &[&str]) -> Result<Self, String> {
        let model = match fields.get("model") {
            None => DEFAULT_MODEL.to_owned(),
            Some(Value::String(model)) => model.clone(),
            Some(_) => return Err("`model` must be a string".to_owned()),
        };
        let stream = optional_bool(fields.get("stream"), "stream")?;
        let include_usage = match fields.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => {
                optional_bool(options.get("include_usage"), "stream_options.include_usage")?
            }
            Some(_) => return Err("`stream_options` must be an object".to_owned()),
        };
        let input_tokens = counted
            .iter()
            .filter_map(|key| fields.get(*key))
            .map(count_words)
            .sum();

        Ok(Self {
            model,
            stream,
            include_usage,
            input_tokens,
        })
    }
}

fn optional_bool(value: Option<&Value>, name: &str) -> Result<bool, String> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(format!("`{name}` must be a boolean")),
    }
}

pub(crate) fn count_words(value: &Value) -> u64 {
    match value {
        Value::String(text) => words(text),
        Value::Array(items) => items.iter().map(count_words).sum(),
        Value::Object(fields) => fields.values().map(count_words).sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

pub(crate) fn words(text: &str) -> u64 {
    // A usize count always fits in a u64 on supported targets.
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// The answer, before it is rendered in an API's wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub model: String,
    /// Comes first in the answer (Anthropic and Responses).
    pub thinking: Option<Thinking>,
    /// `None` when the answer is tool calls only (OpenAI then sends `content: null`).
    pub text: Option<String>,
    pub split: Split,
    pub tool_calls: &'static [ToolCall],
    /// The stream breaks off with an error event after part of the text.
    pub fails_mid_stream: bool,
    /// The answer stops after part of the text with a failed status (Responses only; the
    /// renderers of the other APIs never see it).
    pub failed: bool,
    /// The answer hit the output token limit: the text is all there is, but it is reported as
    /// cut off (finish reason `length`, stop reason `max_tokens`, status `incomplete`).
    pub truncated: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Reply {
    /// Builds the answer to `request`; `with_thinking` says whether the API has thinking
    /// blocks or reasoning items (the OpenAI chat format has none).
    pub fn new(controls: &Controls, request: &RequestBody, with_thinking: bool) -> Self {
        let scenario = controls.scenario;
        let text = match scenario {
            Scenario::Tools => None,
            _ => Some(match controls.split {
                Split::Count(count) => repeat_to_length(&controls.text, count),
                Split::Size(_) => controls.text.clone(),
            }),
        };
        let tool_calls: &'static [ToolCall] = match scenario {
            Scenario::Tools => &TOOL_CALLS,
            Scenario::TextAndTools => &TOOL_CALLS[..1],
            _ => &[],
        };
        let thinking = (with_thinking && scenario == Scenario::Thinking).then_some(Thinking {
            text: THINKING_TEXT,
            signature: THINKING_SIGNATURE,
        });

        let output_tokens = text.as_deref().map_or(0, words)
            + thinking.as_ref().map_or(0, |thinking| words(thinking.text))
            + tool_calls
                .iter()
                .map(|call| 1 + words(&call.arguments()))
                .sum::<u64>();

        Self {
            model: request.model.clone(),
            thinking,
            text,
            split: controls.split,
            tool_calls,
            fails_mid_stream: scenario == Scenario::StreamError,
            failed: scenario == Scenario::Failed,
            truncated: scenario == Scenario::Incomplete,
            input_tokens: request.input_tokens,
            output_tokens,
        }
    }

    /// The text as the stream's content deltas.
    pub fn text_deltas(&self) -> Vec<&str> {
        self.text
            .as_deref()
            .map_or_else(Vec::new, |text| split_text(text, self.split))
    }

    /// The reasoning as the stream's thinking deltas. `x-mock-chunks` is about the text, so
    /// only an explicit chunk size applies here.
    pub fn thinking_deltas(&self) -> Vec<&'static str> {
        let size = match self.split {
            Split::Size(size) => size,
            Split::Count(_) => DEFAULT_CHUNK_SIZE,
        };
        self.thinking.as_ref().map_or_else(Vec::new, |thinking| {
            split_text(thinking.text, Split::Size(size))
        })
    }

    /// How many of `total` content deltas a failing answer gets through before its error:
    /// the first half, so the client has already seen part of the answer.
    pub fn deltas_before_error(total: usize) -> usize {
        total.div_ceil(2)
    }
}

/// Repeats `text` (joined by spaces) until it has at least `chars` characters, so that it can
/// be cut into that many non-empty deltas.
fn repeat_to_length(text: &str, chars: usize) -> String {
    let len = text.chars().count();
    if len == 0 || len >= chars {
        return text.to_owned();
    }
    // k copies joined by single spaces have k * (len + 1) - 1 characters.
    let copies = (chars + 1).div_ceil(len + 1);
    vec![text; copies].join(" ")
}

/// Cuts `text` into deltas on character boundaries (never inside a multi-byte character).
pub fn split_text(text: &str, split: Split) -> Vec<&str> {
    let total = text.chars().count();
    if total == 0 {
        return Vec::new();
    }
    // Every delta carries `base` characters, the first `longer` ones one more (the last
    // delta of a `Size` split simply runs out of text early).
    let (count, base, longer) = match split {
        Split::Size(size) => {
            let size = size.max(1);
            (total.div_ceil(size), size, 0)
        }
        Split::Count(count) => {
            let count = count.clamp(1, total);
            (count, total / count, total % count)
        }
    };

    let mut deltas = Vec::with_capacity(count);
    let mut rest = text;
    for index in 0..count {
        let length = base + usize::from(index < longer);
        let end = rest
            .char_indices()
            .nth(length)
            .map_or(rest.len(), |(offset, _)| offset);
        let (delta, tail) = rest.split_at(end);
        deltas.push(delta);
        rest = tail;
    }
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_fragments_make_valid_json_and_split_an_escape() {
        for call in TOOL_CALLS {
            let parsed: Value = serde_json::from_str(&call.arguments()).expect("valid arguments");
            assert!(parsed.is_object());
        }
        assert_eq!(TOOL_CALLS[0].arguments(), r#"{"city":"Paris"}"#);
        assert_eq!(
            TOOL_CALLS[1].arguments(),
            r#"{"command":"ls -la /tmp && echo \"done\""}"#
        );
        let fragments = TOOL_CALLS[1].argument_fragments;
        assert!(
            fragments
                .windows(2)
                .any(|pair| pair[0].ends_with('\\') && pair[1].starts_with('"'))
        );
    }

    #[test]
    fn split_by_size_respects_char_boundaries() {
        let text = "héllo wörld 🦀🦀🦀";
        let deltas = split_text(text, Split::Size(4));
        assert_eq!(deltas, ["héll", "o wö", "rld ", "🦀🦀🦀"]);
        assert_eq!(deltas.concat(), text);
    }

    #[test]
    fn split_by_count_gives_exactly_that_many() {
        let text = "abcdefghij";
        let deltas = split_text(text, Split::Count(3));
        assert_eq!(deltas, ["abcd", "efg", "hij"]);
        assert_eq!(split_text(text, Split::Count(10)).len(), 10);
        assert!(split_text("", Split::Count(3)).is_empty());
        assert!(split_text("", Split::Size(3)).is_empty());
    }

    #[test]
    fn short_text_is_repeated_to_reach_the_chunk_count() {
        for chunks in [1, 5, 11, 12, 13, 100, 1000] {
            let text = repeat_to_length("hello world", chunks);
            let deltas = split_text(&text, Split::Count(chunks));
            assert_eq!(deltas.len(), chunks, "for {chunks} chunks");
            assert!(deltas.iter().all(|delta| !delta.is_empty()));
            assert_eq!(deltas.concat(), text);
        }
        assert_eq!(repeat_to_length("ab", 5), "ab ab");
    }

    #[test]
    fn request_body_is_read_strictly() {
        let body = RequestBody::parse(
            br#"{"model":"gpt-x","stream":true,"stream_options":{"include_usage":true},
                "messages":[{"role":"user","content":"one two three"}]}"#,
        )
        .expect("valid body");
        assert_eq!(
            body,
            RequestBody {
                model: "gpt-x".to_owned(),
                stream: true,
                include_usage: true,
                input_tokens: 4,
            }
        );
        assert!(RequestBody::parse(b"{").is_err());
        assert!(RequestBody::parse(b"[]").is_err());
        assert!(RequestBody::parse(br#"{"stream":"yes"}"#).is_err());
        assert!(RequestBody::parse(br#"{"model":7}"#).is_err());
    }
}
