//! `all_caps`: upper-cases the assistant's text in responses, streamed or not.
//!
//! A demonstration transform that makes a policy's effect obvious. It touches only text
//! content (see [`crate::shapes`]): tool-call arguments and thinking keep their exact bytes, and a
//! stream event whose text is already upper case passes through unparsed-and-unchanged. It
//! records an `upper_cased` event per response (once per stream) when it changed something.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{
    Api, CallInfo, CallPolicy, FromConfig, NoConfig, Policy, PolicyError, PolicyEvent, SseEvent,
};
use crate::shapes;

/// Upper-cases response text; requests pass unchanged.
#[derive(Debug)]
pub struct AllCaps {
    name: String,
}

impl FromConfig for AllCaps {
    const KIND: &'static str = "all_caps";
    type Config = NoConfig;

    fn from_config(name: String, _: NoConfig) -> Result<Self, String> {
        Ok(Self { name })
    }
}

impl Policy for AllCaps {
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
        Box::new(AllCapsCall {
            api: call.api,
            changed_stream_events: 0,
            events: Vec::new(),
        })
    }
}

struct AllCapsCall {
    api: Api,
    /// Stream events whose text was upper-cased, recorded at the stream's end.
    changed_stream_events: u64,
    events: Vec<PolicyEvent>,
}

impl AllCapsCall {
    fn record(&mut self, summary: String, data: Value) {
        self.events.push(PolicyEvent {
            action: "upper_cased".to_owned(),
            summary,
            data,
        });
    }
}

#[async_trait]
impl CallPolicy for AllCapsCall {
    async fn on_response(&mut self, response: &mut Value) -> Result<(), PolicyError> {
        let mut changed = 0u64;
        shapes::for_each_response_text(self.api, response, |text| {
            if !is_upper_case(text) {
                *text = text.to_uppercase();
                changed += 1;
            }
        });
        if changed > 0 {
            let summary = format!("upper-cased {changed} text part(s) of the response");
            self.record(summary, json!({ "texts": changed }));
        }
        Ok(())
    }

    async fn on_stream_end(&mut self, _out: &mut Vec<SseEvent>) -> Result<(), PolicyError> {
        let changed = std::mem::take(&mut self.changed_stream_events);
        if changed > 0 {
            let summary = format!("upper-cased the text of {changed} stream event(s)");
            self.record(summary, json!({ "stream_events": changed }));
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
        // Look before rewriting: `json_mut` would re-serialise the event even if nothing changed.
        // The whole texts a Responses stream repeats after the deltas are upper-cased too.
        let has_lower_case = event.json().is_some_and(|value| {
            let mut found = false;
            shapes::for_each_stream_text(self.api, value, |_, text| found |= !is_upper_case(text));
            shapes::for_each_stream_final_text(self.api, value, |text| {
                found |= !is_upper_case(text)
            });
            found
        });
        if has_lower_case && let Some(value) = event.json_mut() {
            shapes::for_each_stream_text_mut(self.api, value, |_, text| upper_case_in_place(text));
            shapes::for_each_stream_final_text_mut(self.api, value, upper_case_in_place);
            self.changed_stream_events += 1;
        }
        out.push(event);
        Ok(())
    }
}

/// True when upper-casing would not change `text` (which is not the same as "has no lower-case
/// letter": `ß` becomes `SS`, and title-case letters change too).
fn is_upper_case(text: &str) -> bool {
    text.chars().all(|c| {
        let mut upper = c.to_uppercase();
        upper.next() == Some(c) && upper.next().is_none()
    })
}

fn upper_case_in_place(text: &mut String) {
    if !is_upper_case(text) {
        *text = text.to_uppercase();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::fixtures::*;
    use serde_json::json;

    fn call(api: Api) -> Box<dyn CallPolicy> {
        let policy = AllCaps::from_config("all_caps".to_owned(), NoConfig {}).unwrap();
        policy.start_call(&CallInfo::new("c1", api, "m", true))
    }

    #[tokio::test]
    async fn leaves_requests_alone() {
        let mut request = openai_request();
        let verdict = call(Api::OpenAiChat)
            .on_request(&mut request)
            .await
            .unwrap();
        assert!(matches!(verdict, crate::RequestVerdict::Continue));
        assert_eq!(request, openai_request());
    }

    #[tokio::test]
    async fn upper_cases_response_text_but_not_tool_arguments_or_thinking() {
        let mut openai: Value = serde_json::from_str(OPENAI_TOOL_RESPONSE).unwrap();
        let mut policy = call(Api::OpenAiChat);
        policy.on_response(&mut openai).await.unwrap();
        assert_eq!(openai["choices"][0]["message"]["content"], "LET ME CHECK.");
        let events = policy.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].action, "upper_cased");
        assert_eq!(events[0].data, json!({"texts": 1}));
        // Already upper case: nothing changed, nothing recorded.
        policy.on_response(&mut openai).await.unwrap();
        assert!(policy.take_events().is_empty());
        assert_eq!(
            openai["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"paris\"}"
        );

        let mut anthropic: Value = serde_json::from_str(ANTHROPIC_RESPONSE).unwrap();
        call(Api::AnthropicMessages)
            .on_response(&mut anthropic)
            .await
            .unwrap();
        assert_eq!(
            anthropic["content"][0]["thinking"],
            "the user wants weather"
        );
        assert_eq!(anthropic["content"][1]["text"], "LET ME CHECK.");
        assert_eq!(anthropic["content"][2]["input"], json!({"city": "paris"}));
    }

    #[tokio::test]
    async fn openai_stream_upper_cases_text_and_keeps_tool_call_chunks_byte_identical() {
        let input = decode(OPENAI_TOOL_STREAM);
        let output = run_stream(call(Api::OpenAiChat).as_mut(), OPENAI_TOOL_STREAM).await;
        assert_eq!(output.len(), input.len());
        assert_eq!(streamed_text(Api::OpenAiChat, &output), "LET ME CHECK.");
        assert!(output[0].is_modified());
        assert_eq!(
            output[0].json().unwrap()["choices"][0]["delta"]["role"],
            "assistant"
        );
        for (sent, received) in output.iter().zip(&input).skip(1) {
            assert!(!sent.is_modified());
            assert_eq!(sent.to_bytes(), received.to_bytes());
        }
    }

    #[tokio::test]
    async fn anthropic_stream_upper_cases_text_deltas_only() {
        let input = decode(ANTHROPIC_STREAM);
        let mut policy = call(Api::AnthropicMessages);
        let output = run_stream(policy.as_mut(), ANTHROPIC_STREAM).await;
        let changed = output.iter().filter(|event| event.is_modified()).count() as u64;
        let events = policy.take_events();
        assert_eq!(events.len(), 1, "one event for the whole stream");
        assert_eq!(events[0].data, json!({"stream_events": changed}));
        assert_eq!(output.len(), input.len());
        assert_eq!(
            streamed_text(Api::AnthropicMessages, &output),
            "LET ME CHECK THE WEATHER. ONE MOMENT."
        );
        for (sent, received) in output.iter().zip(&input) {
            let is_text_delta = received
                .json()
                .and_then(|v| v.pointer("/delta/type"))
                .and_then(Value::as_str)
                == Some("text_delta");
            assert_eq!(sent.is_modified(), is_text_delta, "{:?}", received.data());
            if !is_text_delta {
                assert_eq!(sent.to_bytes(), received.to_bytes());
            }
        }
    }

    #[test]
    fn upper_case_detection_follows_to_uppercase() {
        assert!(is_upper_case("HELLO, WORLD! 123"));
        assert!(!is_upper_case("STRAßE"));
        assert!(!is_upper_case("Hello"));
    }
}
