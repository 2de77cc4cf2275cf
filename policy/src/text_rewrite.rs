//! What `string_replace` and `regex_redact` share: rewriting text content in requests,
//! responses and streams, and recording what changed. A policy supplies the matcher, a
//! [`TextRewriter`]; [`RewriteCall`] is the whole [`CallPolicy`] around it.
//!
//! # Streams
//!
//! A match may be split across events (`"pass"`, `"word"`), so a stream cannot be rewritten
//! event by event. Each content stream keeps a [`TextRewriter::Buffer`]: the rewriter sends the
//! text that is decided and holds back a tail that could still be (part of) a match, until more
//! text or the end of the stream decides it. An event whose text is all held is dropped when it
//! carries nothing else; one whose text changed is rewritten in place.
//!
//! **Indices.** Content streams are the OpenAI choices (`choices[].index`) and the Anthropic
//! content blocks (`index`), each with its own buffer: choices interleave, and only text of the
//! same stream can continue a match.
//!
//! **Ends.** A stream's held text is flushed when the stream ends: at the OpenAI chunk carrying
//! the choice's `finish_reason`, or the Anthropic `content_block_stop`. When that event carries
//! text of the same stream, the rest is appended to it; otherwise it goes out as a text delta
//! injected just before the event, so the client has all the text before the finish or stop.
//! Anything still held (a stream that never saw its end) is flushed, one text delta per stream,
//! before `[DONE]` / `message_stop` and at the end of the body; OpenAI deltas injected then
//! repeat the envelope (`id`, `model`, …) of the stream's first chunk. The stream's matches are
//! recorded once, after that last flush.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::{Api, CallPolicy, PolicyError, PolicyEvent, RequestVerdict, SseEvent};
use crate::shapes;

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

/// Finds and rewrites matches in text, whole or arriving in pieces; shared by all calls of a
/// policy.
pub trait TextRewriter: Send + Sync + 'static {
    /// One content stream's state: its held text (and what was matched in it).
    type Buffer: Default + Send;
    /// What the record says about a phase's matches (a count, counts per name).
    type Tally: Send;

    /// A tally of no matches.
    fn new_tally(&self) -> Self::Tally;

    /// Rewrites every text of a request the policy searches, counting matches in `tally`.
    fn rewrite_request(&self, api: Api, request: &mut Value, tally: &mut Self::Tally);

    /// Rewrites one complete text, counting matches in `tally`.
    fn rewrite(&self, text: &mut String, tally: &mut Self::Tally);

    /// Adds the next piece of a content stream to its buffer and returns the text now decided,
    /// rewritten. Borrows `piece` when that text is exactly `piece` (which does not mean that
    /// nothing is held).
    fn push<'a>(&self, buffer: &mut Self::Buffer, piece: &'a str) -> Cow<'a, str>;

    /// The content stream ended: returns its held text, rewritten, and adds the matches of the
    /// whole stream to `tally`.
    fn finish(&self, buffer: Self::Buffer, tally: &mut Self::Tally) -> String;

    /// What goes on the call's record for a phase's matches; `None` when there were none.
    fn event(&self, phase: &str, tally: &Self::Tally) -> Option<PolicyEvent>;
}

/// One call of a text-rewriting policy.
pub struct RewriteCall<R: TextRewriter> {
    api: Api,
    rewriter: Arc<R>,
    apply_to: ApplyTo,
    /// Held text per content stream, by OpenAI choice index or Anthropic block index.
    held: BTreeMap<usize, R::Buffer>,
    /// OpenAI: the chunk envelope for text flushed after the last `finish_reason`.
    envelope: Option<Value>,
    /// What the current event's text deltas become, in visiting order; reused across events.
    rewrites: Vec<TextRewrite>,
    /// Policy events not yet handed to the control plane.
    events: Vec<PolicyEvent>,
    /// Matches in content streams already flushed.
    stream_tally: R::Tally,
}

struct TextRewrite {
    /// The content stream the text belongs to.
    index: usize,
    /// The new text, or `None` when it passes unchanged.
    text: Option<String>,
}

impl<R: TextRewriter> RewriteCall<R> {
    pub fn new(api: Api, rewriter: Arc<R>, apply_to: ApplyTo) -> Self {
        Self {
            api,
            stream_tally: rewriter.new_tally(),
            rewriter,
            apply_to,
            held: BTreeMap::new(),
            envelope: None,
            rewrites: Vec::new(),
            events: Vec::new(),
        }
    }
}

#[async_trait]
impl<R: TextRewriter> CallPolicy for RewriteCall<R> {
    async fn on_request(&mut self, request: &mut Value) -> Result<RequestVerdict, PolicyError> {
        if self.apply_to.request() {
            let mut tally = self.rewriter.new_tally();
            self.rewriter.rewrite_request(self.api, request, &mut tally);
            self.record("request", &tally);
        }
        Ok(RequestVerdict::Continue)
    }

    async fn on_response(&mut self, response: &mut Value) -> Result<(), PolicyError> {
        if self.apply_to.response() {
            let mut tally = self.rewriter.new_tally();
            shapes::for_each_response_text(self.api, response, |text| {
                self.rewriter.rewrite(text, &mut tally);
            });
            self.record("response", &tally);
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
        if shapes::is_stream_terminator(self.api, &event) {
            self.flush_all(event.json(), out);
            self.rewrite_final_texts(&mut event);
            self.record_stream();
            out.push(event);
            return Ok(());
        }
        let Some(value) = event.json() else {
            out.push(event);
            return Ok(());
        };
        if self.envelope.is_none() {
            self.envelope = shapes::stream_envelope(self.api, value);
        }
        self.run_text_deltas(value);
        self.flush_ended_streams(value, out);
        self.rewrite_final_texts(&mut event);

        if self.apply_rewrites(&mut event) {
            out.push(event);
        }
        Ok(())
    }

    async fn on_stream_end(&mut self, out: &mut Vec<SseEvent>) -> Result<(), PolicyError> {
        self.flush_all(None, out);
        self.record_stream();
        Ok(())
    }
}

impl<R: TextRewriter> RewriteCall<R> {
    /// Puts the stream's matches on the record, once.
    fn record_stream(&mut self) {
        let tally = std::mem::replace(&mut self.stream_tally, self.rewriter.new_tally());
        self.record("streamed response", &tally);
    }

    fn record(&mut self, phase: &str, tally: &R::Tally) {
        self.events.extend(self.rewriter.event(phase, tally));
    }

    /// Feeds the event's text deltas to their streams' buffers, recording in `rewrites` what
    /// each becomes.
    fn run_text_deltas(&mut self, event: &Value) {
        self.rewrites.clear();
        let Self {
            api,
            rewriter,
            held,
            rewrites,
            ..
        } = self;
        shapes::for_each_stream_text(*api, event, |index, text| {
            let certain = rewriter.push(held.entry(index).or_default(), text);
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
            rewriter,
            held,
            rewrites,
            stream_tally,
            ..
        } = self;
        shapes::for_each_content_end(*api, event, |index| {
            let Some(buffer) = held.remove(&index) else {
                return;
            };
            let rest = rewriter.finish(buffer, stream_tally);
            if rest.is_empty() {
                return;
            }
            match rewrites.iter_mut().find(|rewrite| rewrite.index == index) {
                Some(TextRewrite {
                    text: Some(text), ..
                }) => text.push_str(&rest),
                Some(rewrite) => {
                    // The event's text passed unchanged while text stayed held: send both.
                    let mut text = String::new();
                    shapes::for_each_stream_text(*api, event, |text_index, piece| {
                        if text_index == index {
                            text.push_str(piece);
                        }
                    });
                    text.push_str(&rest);
                    rewrite.text = Some(text);
                }
                None => out.push(shapes::text_delta_event(*api, Some(event), index, rest)),
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
        shapes::for_each_stream_text_mut(self.api, value, |_, text| {
            if let Some(TextRewrite {
                text: Some(new_text),
                ..
            }) = rewrites.next()
            {
                *text = new_text;
            }
        });
        !shapes::is_empty_text_delta(self.api, value)
    }

    /// Sends everything still held, one text delta per content stream, before `next` (the
    /// terminator, when there is one).
    fn flush_all(&mut self, next: Option<&Value>, out: &mut Vec<SseEvent>) {
        let envelope = self.envelope.as_ref().or(next);
        for (index, buffer) in std::mem::take(&mut self.held) {
            let rest = self.rewriter.finish(buffer, &mut self.stream_tally);
            if !rest.is_empty() {
                out.push(shapes::text_delta_event(self.api, envelope, index, rest));
            }
        }
    }

    /// Rewrites the whole copies of texts the event repeats (Responses' `.done` events and
    /// final response) as a whole: the same rewrite the deltas got piece by piece. Their
    /// matches were counted in the deltas, so they are not counted again.
    fn rewrite_final_texts(&self, event: &mut SseEvent) {
        let mut uncounted = self.rewriter.new_tally();
        let mut rewritten = Vec::new();
        if let Some(value) = event.json() {
            shapes::for_each_stream_final_text(self.api, value, |text| {
                let mut copy = text.to_owned();
                self.rewriter.rewrite(&mut copy, &mut uncounted);
                rewritten.push((copy != text).then_some(copy));
            });
        }
        // Only an event whose text changes is re-serialised.
        if rewritten.iter().all(Option::is_none) {
            return;
        }
        if let Some(value) = event.json_mut() {
            let mut rewritten = rewritten.into_iter();
            shapes::for_each_stream_final_text_mut(self.api, value, |text| {
                if let Some(Some(new_text)) = rewritten.next() {
                    *text = new_text;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::shapes::fixtures::*;

    /// Holds each piece of a content stream back until the next one arrives; the tally counts
    /// the bytes still held when streams end.
    struct Delay;

    impl TextRewriter for Delay {
        type Buffer = String;
        type Tally = usize;

        fn new_tally(&self) -> usize {
            0
        }

        fn rewrite_request(&self, api: Api, request: &mut Value, tally: &mut usize) {
            shapes::for_each_request_text(api, request, |text| self.rewrite(text, tally));
        }

        fn rewrite(&self, text: &mut String, tally: &mut usize) {
            text.make_ascii_uppercase();
            *tally += 1;
        }

        fn push<'a>(&self, held: &mut String, piece: &'a str) -> Cow<'a, str> {
            let previous = std::mem::replace(held, piece.to_owned());
            if previous == piece {
                Cow::Borrowed(piece)
            } else {
                Cow::Owned(previous)
            }
        }

        fn finish(&self, held: String, tally: &mut usize) -> String {
            *tally += held.len();
            held
        }

        fn event(&self, phase: &str, &tally: &usize) -> Option<PolicyEvent> {
            (tally > 0).then(|| PolicyEvent {
                action: "delayed".to_owned(),
                summary: phase.to_owned(),
                data: json!(tally),
            })
        }
    }

    fn call(api: Api, apply_to: ApplyTo) -> RewriteCall<Delay> {
        RewriteCall::new(api, Arc::new(Delay), apply_to)
    }

    /// Each OpenAI chunk as `index:text`, with ` stop` when it finishes its choice.
    fn describe(events: &[SseEvent]) -> Vec<String> {
        events
            .iter()
            .map(|event| {
                let Some(choice) = event.json().and_then(|value| value.pointer("/choices/0"))
                else {
                    return event.data().to_owned();
                };
                let text = choice.pointer("/delta/content").and_then(Value::as_str);
                let stop = if choice["finish_reason"].is_null() {
                    ""
                } else {
                    " stop"
                };
                format!("{}:{}{stop}", choice["index"], text.unwrap_or(""))
            })
            .collect()
    }

    fn chunk(index: usize, text: &str, finish_reason: Option<&str>) -> String {
        data_event(&openai_chunk_for_choice(
            index,
            json!({"content": text}),
            finish_reason,
        ))
    }

    #[tokio::test]
    async fn each_choice_is_held_apart_and_flushed_before_its_end_or_the_terminator() {
        let stream = [
            chunk(0, "a1", None),
            chunk(1, "b1", None),
            chunk(0, "a2", None),
            data_event(&openai_chunk_for_choice(0, json!({}), Some("stop"))),
            chunk(1, "b2", None),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let mut call = call(Api::OpenAiChat, ApplyTo::Both);
        let output = run_stream(&mut call, &stream).await;
        // The first piece of each choice is all held: its chunk is dropped. Choice 1 never
        // finishes: its rest goes out before `[DONE]`, in the stream's envelope.
        assert_eq!(
            describe(&output),
            ["0:a1", "0:a2", "0: stop", "1:b1", "1:b2", "[DONE]"]
        );
        assert_eq!(
            output[4].json().unwrap()["id"],
            "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
        );
        // Recorded once, though both `[DONE]` and the end of the body flush.
        let events = call.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].summary, "streamed response");
        assert_eq!(events[0].data, 4);
    }

    #[tokio::test]
    async fn the_rest_follows_the_text_of_the_chunk_that_ends_the_choice() {
        // Rewritten text, and text that passes unchanged while some stays held.
        for (first, second, sent) in [("a", "b", "0:ab stop"), ("a", "a", "0:aa stop")] {
            let stream = chunk(0, first, None) + &chunk(0, second, Some("stop"));
            let output = run_stream(&mut call(Api::OpenAiChat, ApplyTo::Both), &stream).await;
            assert_eq!(describe(&output), [sent]);
        }
    }

    #[tokio::test]
    async fn anthropic_rest_goes_out_before_content_block_stop() {
        let stream = anthropic_text_stream(&["x", "y"]);
        let output = run_stream(&mut call(Api::AnthropicMessages, ApplyTo::Both), &stream).await;
        let types: Vec<&str> = output.iter().filter_map(SseEvent::event_type).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(output[3].json().unwrap()["delta"]["text"], "y");
        assert_eq!(streamed_text(Api::AnthropicMessages, &output), "xy");

        let output = run_stream(&mut call(Api::AnthropicMessages, ApplyTo::Request), &stream).await;
        assert_eq!(encode(&output), stream);
    }

    #[tokio::test]
    async fn whole_bodies_are_rewritten_on_the_configured_sides() {
        let mut request = json!({"messages": [{"role": "user", "content": "hi"}]});
        let mut response = json!({"choices": [{"index": 0, "message": {"content": "yo"}}]});
        let mut call = call(Api::OpenAiChat, ApplyTo::Request);
        call.on_request(&mut request).await.unwrap();
        call.on_response(&mut response).await.unwrap();
        assert_eq!(request["messages"][0]["content"], "HI");
        assert_eq!(response["choices"][0]["message"]["content"], "yo");
        let events = call.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].summary, "request");
    }
}
