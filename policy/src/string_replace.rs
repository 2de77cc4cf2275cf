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
//! Only text content is searched (see [`crate::shapes`]), never tool-call arguments or thinking.
//! Matching is case-sensitive and leftmost-longest (see [`replacer`]).
//!
//! In a stream a match may be split across events, so each content stream (OpenAI choice,
//! Anthropic content block) holds back text that could be the start of a match, and sends it as
//! soon as it cannot: at most the longest `from` minus one byte is ever held. How held text is
//! flushed is described in [`super::text_rewrite`].

mod replacer;

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use self::replacer::{Replacer, StreamBuffer};
#[cfg(test)] // The tests name it through `super::*`.
use super::SseEvent;
pub use super::text_rewrite::ApplyTo;
use super::text_rewrite::{RewriteCall, TextRewriter};
use super::{Api, CallInfo, CallPolicy, FromConfig, Policy, PolicyEvent};
use crate::shapes;

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

    fn inspects_requests(&self) -> bool {
        self.apply_to.request()
    }

    fn start_call(&self, call: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(RewriteCall::new(
            call.api,
            Arc::clone(&self.replacer),
            self.apply_to,
        ))
    }
}

/// The tally is the number of matches replaced.
impl TextRewriter for Replacer {
    type Buffer = StreamBuffer;
    type Tally = usize;

    fn new_tally(&self) -> usize {
        0
    }

    /// Text content only (see the module docs).
    fn rewrite_request(&self, api: Api, request: &mut Value, count: &mut usize) {
        shapes::for_each_request_text(api, request, |text| self.rewrite(text, count));
    }

    fn rewrite(&self, text: &mut String, count: &mut usize) {
        *count += self.replace_all(text);
    }

    fn push<'a>(&self, buffer: &mut StreamBuffer, piece: &'a str) -> Cow<'a, str> {
        buffer.push(self, piece)
    }

    fn finish(&self, mut buffer: StreamBuffer, count: &mut usize) -> String {
        let rest = buffer.finish(self);
        *count += buffer.replaced();
        rest
    }

    fn event(&self, phase: &str, &count: &usize) -> Option<PolicyEvent> {
        (count > 0).then(|| PolicyEvent {
            action: "replaced".to_owned(),
            summary: format!("replaced {count} occurrence(s) in the {phase}"),
            data: serde_json::json!({ "phase": phase, "count": count }),
        })
    }
}

#[cfg(test)]
mod tests;
