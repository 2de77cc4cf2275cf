//! `string_replace`: literal find-and-replace in request and/or response text.
//!
//! ```yaml
//! - type: string_replace
//!   name: redact-foo
//!   config:
//!     replacements: [{from: foo, to: "[redacted]"}]
//!     apply_to: both   # request | response | both (default)
//! ```
//!
//! Only text content is searched (see [`crate::api`]), never tool-call arguments or thinking.
//! Matching is case-sensitive and leftmost-longest (see [`replacer`]).
//!
//! In a stream a match may be split across events, so each content stream (OpenAI choice,
//! Anthropic content block) keeps a small buffer: text is sent as soon as it cannot be the
//! start of a match, and at most the longest `from` minus one byte is ever held. Held text is
//! flushed when its content stream ends — as an injected text delta just before the OpenAI
//! chunk carrying the choice's `finish_reason`, or before the Anthropic `content_block_stop` —
//! and, for anything still held, before `[DONE]` / `message_stop` and at the end of the stream.
//! An event whose text is all held is dropped when it carries nothing else.

mod replacer;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use self::replacer::{Replacer, StreamBuffer};
use super::{
    Api, CallInfo, CallPolicy, FromConfig, Policy, PolicyError, PolicyEvent, RequestVerdict,
    SseEvent,
};
use crate::api;

/// The `config` of a `string_replace` policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringReplaceConfig {
    pub replacements: Vec<Replacement>,
    #[serde(default)]
    pub apply_to: ApplyTo,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    pub from: String,
    pub to: String,
}

/// Which side of the call a policy rewrites.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApplyTo {
    Request,
    Response,
    #[default]
    Both,
}

impl ApplyTo {
    pub fn request(self) -> bool {
        matches!(self, Self::Request | Self::Both)
    }

    pub fn response(self) -> bool {
        matches!(self, Self::Response | Self::Both)
    }
}

/// Replaces literal strings in text content.
#[derive(Debug)]
pub struct StringReplace {
    name: String,
    replacer: Arc<Replacer>,
    apply_to: ApplyTo,
}

impl FromConfig for StringReplace {
    const KIND: &'static str = "string_replace";
    type Config = StringReplaceConfig;

    fn from_config(name: String, config: StringReplaceConfig) -> Result<Self, String> {
        let pairs = config
            .replacements
            .into_iter()
            .map(|Replacement { from, to }| (from, to))
            .collect();
        Ok(Self {
            name,
            replacer: Arc::new(Replacer::new(pairs)?),
            apply_to: config.apply_to,
        })
    }
}

impl Policy for StringReplace {
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

    fn start_call(&self, call: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(StringReplaceCall {
            api: call.api,
            replacer: Arc::clone(&self.replacer),
            apply_to: self.apply_to,
            held: BTreeMap::new(),
            envelope: None,
            rewrites: Vec::new(),
            events: Vec::new(),
            stream_replacements: 0,
        })
    }
}

struct StringReplaceCall {
    api: Api,
    replacer: Arc<Replacer>,
    apply_to: ApplyTo,
    /// Held text per content stream, by OpenAI choice index or Anthropic block index.
    held: BTreeMap<usize, StreamBuffer>,
    /// OpenAI: the chunk envelope for text flushed after the last `finish_reason`.
    envelope: Option<Value>,
    /// What the current event's text deltas become, in visiting order; reused across events.
    rewrites: Vec<TextRewrite>,
    /// Policy events not yet handed to the control plane.
    events: Vec<PolicyEvent>,
    /// Matches replaced in content streams already flushed.
    stream_replacements: usize,
}

struct TextRewrite {
    /// The content stream the text belongs to.
    index: usize,
    /// The new text, or `None` when it passes unchanged.
    text: Option<String>,
}

#[async_trait]
impl CallPolicy for StringReplaceCall {
    async fn on_request(&mut self, request: &mut Value) -> Result<RequestVerdict, PolicyError> {
        if self.apply_to.request() {
            let mut count = 0;
            api::for_each_request_text(self.api, request, |text| {
                count += self.replacer.replace_all(text);
            });
            self.record("request", count);
        }
        Ok(RequestVerdict::Continue)
    }

    async fn on_response(&mut self, response: &mut Value) -> Result<(), PolicyError> {
        if self.apply_to.response() {
            let mut count = 0;
            api::for_each_response_text(self.api, response, |text| {
                count += self.replacer.replace_all(text);
            });
            self.record("response", count);
        }
        Ok(())
    }

    fn take_events(&mut self) -> Vec<PolicyEvent> {
        std::mem::take(&mut self.events)
    }

    async fn on_event(
        &mut self,
        mut event: SseEvent,
        out: &mut Vec<SseEvent>,
    ) -> Result<(), PolicyError> {
        if !self.apply_to.response() {
            out.push(event);
            return Ok(());
        }
        if api::is_stream_terminator(self.api, &event) {
            self.flush_all(out);
            self.record_stream();
            out.push(event);
            return Ok(());
        }
        let Some(value) = event.json() else {
            out.push(event);
            return Ok(());
        };
        if self.envelope.is_none() {
            self.envelope = api::stream_envelope(self.api, value);
        }
        self.run_text_deltas(value);
        self.flush_ended_streams(value, out);

        if self.apply_rewrites(&mut event) {
            out.push(event);
        }
        Ok(())
    }

    async fn on_stream_end(&mut self, out: &mut Vec<SseEvent>) -> Result<(), PolicyError> {
        self.flush_all(out);
        self.record_stream();
        Ok(())
    }
}

impl StringReplaceCall {
    /// Puts the stream's replacements on the record, once.
    fn record_stream(&mut self) {
        let count = std::mem::take(&mut self.stream_replacements);
        self.record("streamed response", count);
    }

    /// Puts the replacements of a whole request or response on the call's record.
    fn record(&mut self, phase: &str, count: usize) {
        if count > 0 {
            self.events.push(PolicyEvent {
                action: "replaced".to_owned(),
                summary: format!("replaced {count} occurrence(s) in the {phase}"),
                data: serde_json::json!({ "phase": phase, "count": count }),
            });
        }
    }

    /// Feeds the event's text deltas to their streams' buffers, recording in `rewrites` what
    /// each becomes.
    fn run_text_deltas(&mut self, event: &Value) {
        self.rewrites.clear();
        let Self {
            api,
            replacer,
            held,
            rewrites,
            ..
        } = self;
        api::for_each_stream_text(*api, event, |index, text| {
            let certain = held.entry(index).or_default().push(replacer, text);
            let text = match certain {
                Cow::Borrowed(_) => None,
                Cow::Owned(new_text) => Some(new_text),
            };
            rewrites.push(TextRewrite { index, text });
        });
    }

    /// Flushes the buffers of the content streams this event ends. The flushed text follows
    /// the stream's text in this event when it has some, else it goes out as a text delta
    /// injected just before the event.
    fn flush_ended_streams(&mut self, event: &Value, out: &mut Vec<SseEvent>) {
        let Self {
            api,
            replacer,
            held,
            rewrites,
            stream_replacements,
            ..
        } = self;
        api::for_each_content_end(*api, event, |index| {
            let Some(mut buffer) = held.remove(&index) else {
                return;
            };
            let rest = buffer.finish(replacer);
            *stream_replacements += buffer.replaced();
            if rest.is_empty() {
                return;
            }
            // A text that passed unchanged left nothing held, so `rest` always has a rewrite
            // to join when the event has text for this stream.
            match rewrites.iter_mut().find(|rewrite| rewrite.index == index) {
                Some(TextRewrite {
                    text: Some(text), ..
                }) => text.push_str(&rest),
                _ => out.push(api::text_delta_event(*api, Some(event), index, rest)),
            }
        });
    }

    /// Writes the recorded rewrites into the event. Returns false when nothing is left to send:
    /// all of its text is held and it carries nothing else.
    fn apply_rewrites(&mut self, event: &mut SseEvent) -> bool {
        if self.rewrites.iter().all(|rewrite| rewrite.text.is_none()) {
            return true;
        }
        let Some(value) = event.json_mut() else {
            return true;
        };
        let mut rewrites = self.rewrites.drain(..);
        api::for_each_stream_text_mut(self.api, value, |_, text| {
            if let Some(TextRewrite {
                text: Some(new_text),
                ..
            }) = rewrites.next()
            {
                *text = new_text;
            }
        });
        !api::is_empty_text_delta(self.api, value)
    }

    /// Sends everything still held, one text delta per content stream.
    fn flush_all(&mut self, out: &mut Vec<SseEvent>) {
        for (index, mut buffer) in std::mem::take(&mut self.held) {
            let rest = buffer.finish(&self.replacer);
            self.stream_replacements += buffer.replaced();
            if !rest.is_empty() {
                out.push(api::text_delta_event(
                    self.api,
                    self.envelope.as_ref(),
                    index,
                    rest,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
