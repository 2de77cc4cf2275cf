//! The shared tool-call machinery, with an inspector that blocks tools by name.
//!
//! The first group checks, on every tool scenario of the mock provider, that a filtered stream
//! reconstructs to exactly the filtered non-streamed answer (the mock renders both from one
//! reply, so they must agree), and that kept tool calls leave byte-identical. The second group
//! covers shapes the mock never sends, with hand-written events.

use std::sync::Mutex;

use bytes::Bytes;
use luthien_mock_upstream::reply::{Reply, RequestBody};
use luthien_mock_upstream::scenario::{Controls, Scenario};
use luthien_mock_upstream::{
    anthropic as mock_anthropic, openai as mock_openai, responses as mock_responses,
};
use serde_json::json;

use super::*;
use crate::reconstruct::Reconstructor;
use crate::shapes::fixtures::{
    ANTHROPIC_RESPONSE, ANTHROPIC_STREAM, OPENAI_TOOL_RESPONSE, OPENAI_TOOL_STREAM, data_event,
    decode, encode, openai_chunk, openai_chunk_for_choice, openai_usage_chunk, run_stream,
    streamed_text,
};

/// Blocks the tools it names, and text containing `text_word` (when set, text is inspected).
struct BlockNames {
    names: Vec<&'static str>,
    text_word: Option<&'static str>,
    /// Every subject it was asked about: tool name and arguments, or `text:` and the text.
    asked: Mutex<Vec<String>>,
}

impl BlockNames {
    fn new(names: &[&'static str]) -> Arc<Self> {
        Arc::new(Self {
            names: names.to_vec(),
            text_word: None,
            asked: Mutex::new(Vec::new()),
        })
    }

    fn with_text(names: &[&'static str], word: &'static str) -> Arc<Self> {
        Arc::new(Self {
            names: names.to_vec(),
            text_word: Some(word),
            asked: Mutex::new(Vec::new()),
        })
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

#[async_trait]
impl Inspector for BlockNames {
    fn inspects_text(&self) -> bool {
        self.text_word.is_some()
    }

    async fn inspect(&self, subject: Subject<'_>) -> Decision {
        match subject {
            Subject::ToolCall(call) => {
                self.asked
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", call.name, call.arguments));
                if !self.names.contains(&call.name.as_str()) {
                    return Decision::keep();
                }
                Decision {
                    replacement: Some(format!("[{} blocked]", call.name)),
                    event: Some(PolicyEvent {
                        action: "blocked".to_owned(),
                        summary: format!("blocked {}", call.name),
                        data: json!({"tool": call.name, "id": call.id}),
                    }),
                }
            }
            Subject::Text(text) => {
                self.asked.lock().unwrap().push(format!("text: {text}"));
                match self.text_word {
                    Some(word) if text.contains(word) => Decision {
                        replacement: Some("[text blocked]".to_owned()),
                        event: Some(PolicyEvent {
                            action: "blocked".to_owned(),
                            summary: "blocked text".to_owned(),
                            data: json!({"target": "text"}),
                        }),
                    },
                    _ => Decision::keep(),
                }
            }
        }
    }
}

fn guard(api: Api, inspector: &Arc<BlockNames>) -> GuardCall {
    GuardCall::new(api, inspector.clone())
}

fn reconstruct(api: Api, events: &[SseEvent]) -> Value {
    let mut reconstructor = Reconstructor::new(api);
    for event in events {
        reconstructor.push(event);
    }
    assert_eq!(reconstructor.skipped(), 0, "{}", encode(events));
    reconstructor.finish().unwrap()
}

fn mock_reply(scenario: Scenario) -> Reply {
    mock_reply_for(Api::OpenAiChat, scenario)
}

/// The mock's reply in `api`, with reasoning (thinking) in the APIs that have it.
fn mock_reply_for(api: Api, scenario: Scenario) -> Reply {
    let controls = Controls {
        scenario,
        ..Controls::default()
    };
    let request = RequestBody {
        model: "mock-model".to_owned(),
        stream: true,
        include_usage: true,
        input_tokens: 7,
    };
    Reply::new(&controls, &request, api != Api::OpenAiChat)
}

fn concat(events: &[Bytes]) -> String {
    events
        .iter()
        .map(|event| String::from_utf8_lossy(event).into_owned())
        .collect()
}

fn mock_stream(api: Api, reply: &Reply) -> String {
    match api {
        Api::OpenAiChat => concat(&mock_openai::stream_events(reply, true)),
        Api::AnthropicMessages => concat(&mock_anthropic::stream_events(reply)),
        Api::OpenAiResponses => concat(&mock_responses::stream_events(
            mock_responses::RESPONSE_ID,
            reply,
            &mock_responses::Request::empty(),
            None,
        )),
    }
}

fn mock_body(api: Api, reply: &Reply) -> Value {
    let body = match api {
        Api::OpenAiChat => mock_openai::completion(reply),
        Api::AnthropicMessages => mock_anthropic::message_body(reply),
        Api::OpenAiResponses => mock_responses::response_body(
            mock_responses::RESPONSE_ID,
            reply,
            &mock_responses::Request::empty(),
        ),
    };
    serde_json::from_slice(&body).unwrap()
}

/// The wire bytes of the events of one tool call in a stream: OpenAI chunks whose tool-call
/// deltas carry `index`, Anthropic events of block `index`.
fn tool_call_bytes(api: Api, events: &[SseEvent], index: u64) -> Vec<Bytes> {
    events
        .iter()
        .filter(|event| {
            let Some(value) = event.json() else {
                return false;
            };
            match api {
                Api::OpenAiChat => {
                    value
                        .pointer("/choices/0/delta/tool_calls/0/index")
                        .and_then(Value::as_u64)
                        == Some(index)
                }
                Api::AnthropicMessages => {
                    value["type"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("content_block"))
                        && value["index"] == index
                }
                Api::OpenAiResponses => value["output_index"] == index,
            }
        })
        .map(SseEvent::to_bytes)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Against the mock provider

#[tokio::test]
async fn filtered_streams_reconstruct_to_the_filtered_non_streamed_answer() {
    let mut checked = 0;
    for api in Api::ALL {
        for scenario in [
            Scenario::Tools,
            Scenario::TextAndTools,
            Scenario::Text,
            Scenario::Thinking,
        ] {
            for blocked in [
                &[][..],
                &["bash"][..],
                &["get_weather"][..],
                &["get_weather", "bash"][..],
            ] {
                let label = format!("{api:?} {scenario:?} blocking {blocked:?}");
                let reply = mock_reply_for(api, scenario);
                let inspector = BlockNames::new(blocked);

                let mut body = mock_body(api, &reply);
                let original = body.clone();
                let mut call = guard(api, &inspector);
                call.on_response(&mut body).await.unwrap();
                let response_events = call.take_events();

                let mut call = guard(api, &inspector);
                let streamed = run_stream(&mut call, &mock_stream(api, &reply)).await;
                let stream_events = call.take_events();
                assert_eq!(reconstruct(api, &streamed), body, "{label}");
                if api == Api::OpenAiResponses {
                    let completed = fixtures::check_sdk_stream(&streamed)
                        .unwrap_or_else(|error| panic!("{label}: {error}"));
                    assert_eq!(completed.as_ref(), Some(&body), "{label}");
                }
                assert_eq!(response_events, stream_events, "{label}");

                let removed = reply
                    .tool_calls
                    .iter()
                    .filter(|call| blocked.contains(&call.name))
                    .count();
                assert_eq!(stream_events.len(), removed, "{label}");
                if removed == 0 {
                    assert_eq!(body, original, "{label}");
                    assert_eq!(encode(&streamed), mock_stream(api, &reply), "{label}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 48);
}

#[tokio::test]
async fn removing_one_of_two_tool_calls_keeps_the_other_byte_for_byte_and_the_finish_reason() {
    let reply = mock_reply(Scenario::Tools);
    for api in Api::ALL {
        let upstream = decode(&mock_stream(api, &reply));
        let inspector = BlockNames::new(&["bash"]);
        let mut call = guard(api, &inspector);
        let out = run_stream(&mut call, &mock_stream(api, &reply)).await;

        // get_weather (index 0) is untouched, every byte of every event.
        let kept = tool_call_bytes(api, &out, 0);
        assert!(!kept.is_empty());
        assert_eq!(kept, tool_call_bytes(api, &upstream, 0), "{api:?}");
        assert!(out[..2].iter().all(|event| !event.is_modified()));

        let text = streamed_text(api, &out);
        assert_eq!(text, "[bash blocked]", "{api:?}");
        let finished = reconstruct(api, &out);
        match api {
            Api::OpenAiChat => {
                assert_eq!(finished["choices"][0]["finish_reason"], "tool_calls");
                let calls = finished["choices"][0]["message"]["tool_calls"]
                    .as_array()
                    .unwrap();
                assert_eq!(calls.len(), 1);
                assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
            }
            Api::AnthropicMessages => {
                assert_eq!(finished["stop_reason"], "tool_use");
                assert_eq!(finished["content"][0]["input"], json!({"city": "Paris"}));
                assert_eq!(
                    finished["content"][1],
                    json!({"type": "text", "text": "[bash blocked]"})
                );
            }
            Api::OpenAiResponses => {
                assert_eq!(finished["status"], "completed");
                let output = finished["output"].as_array().unwrap();
                assert_eq!(output.len(), 2);
                assert_eq!(output[0]["arguments"], r#"{"city":"Paris"}"#);
                assert_eq!(output[1]["type"], "message");
                assert_eq!(output[1]["content"][0]["text"], "[bash blocked]");
                fixtures::check_sdk_stream(&out).unwrap();
            }
        }
        // The bash arguments, split right after the backslash of an escaped quote, reached
        // the inspector whole.
        assert!(
            inspector
                .asked()
                .contains(&r#"bash {"command":"ls -la /tmp && echo \"done\""}"#.to_owned()),
            "{:?}",
            inspector.asked()
        );
    }
}

#[tokio::test]
async fn removing_every_tool_call_rewrites_the_finish_reason() {
    let reply = mock_reply(Scenario::Tools);
    for api in Api::ALL {
        let inspector = BlockNames::new(&["bash", "get_weather"]);
        let mut call = guard(api, &inspector);
        let out = run_stream(&mut call, &mock_stream(api, &reply)).await;
        let finished = reconstruct(api, &out);
        match api {
            Api::OpenAiChat => {
                assert_eq!(finished["choices"][0]["finish_reason"], "stop");
                assert!(
                    finished["choices"][0]["message"]
                        .get("tool_calls")
                        .is_none()
                );
                assert_eq!(
                    finished["choices"][0]["message"]["content"],
                    "[get_weather blocked]\n\n[bash blocked]"
                );
                // The usage chunk and [DONE] still close the stream.
                assert!(out.last().unwrap().is_done());
                assert_eq!(
                    out[out.len() - 2].json().unwrap()["usage"]["prompt_tokens"],
                    7
                );
            }
            Api::AnthropicMessages => {
                assert_eq!(finished["stop_reason"], "end_turn");
                assert_eq!(
                    finished["content"],
                    json!([
                        {"type": "text", "text": "[get_weather blocked]"},
                        {"type": "text", "text": "[bash blocked]"}
                    ])
                );
            }
            Api::OpenAiResponses => {
                // Nothing plays the part of a finish reason: the status stays.
                assert_eq!(finished["status"], "completed");
                let texts: Vec<&Value> = finished["output"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|item| &item["content"][0]["text"])
                    .collect();
                assert_eq!(texts, ["[get_weather blocked]", "[bash blocked]"]);
                fixtures::check_sdk_stream(&out).unwrap();
            }
        }
        assert_eq!(call.take_events().len(), 2);
    }
}

#[tokio::test]
async fn openai_kept_tool_calls_are_renumbered_without_gaps() {
    let reply = mock_reply(Scenario::Tools);
    let inspector = BlockNames::new(&["get_weather"]);
    let mut call = guard(Api::OpenAiChat, &inspector);
    let out = run_stream(&mut call, &mock_stream(Api::OpenAiChat, &reply)).await;
    assert!(tool_call_bytes(Api::OpenAiChat, &out, 1).is_empty());
    let bash = tool_call_bytes(Api::OpenAiChat, &out, 0);
    // Only the index changed.
    let upstream = decode(&mock_stream(Api::OpenAiChat, &reply));
    let original = tool_call_bytes(Api::OpenAiChat, &upstream, 1);
    assert_eq!(bash.len(), original.len());
    for (ours, theirs) in bash.iter().zip(&original) {
        let mut theirs: Value =
            serde_json::from_str(std::str::from_utf8(theirs).unwrap()[6..].trim()).unwrap();
        theirs["choices"][0]["delta"]["tool_calls"][0]["index"] = json!(0);
        let ours: Value =
            serde_json::from_str(std::str::from_utf8(ours).unwrap()[6..].trim()).unwrap();
        assert_eq!(ours, theirs);
    }
}

#[tokio::test]
async fn text_outside_tool_calls_is_not_delayed() {
    for api in Api::ALL {
        let reply = mock_reply(Scenario::TextAndTools);
        let inspector = BlockNames::new(&["get_weather"]);
        let mut call = guard(api, &inspector);
        for event in decode(&mock_stream(api, &reply)) {
            let carries_text = !streamed_text(api, std::slice::from_ref(&event)).is_empty();
            let bytes = event.to_bytes();
            let mut out = Vec::new();
            call.on_event(event, &mut out).await.unwrap();
            if carries_text {
                assert_eq!(out.len(), 1, "{api:?}: text held");
                assert_eq!(out[0].to_bytes(), bytes);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Non-streamed responses in the real APIs' shapes

#[tokio::test]
async fn openai_response_tool_call_removed_and_text_appended() {
    let inspector = BlockNames::new(&["get_weather"]);
    let mut response: Value = serde_json::from_str(OPENAI_TOOL_RESPONSE).unwrap();
    let mut call = guard(Api::OpenAiChat, &inspector);
    call.on_response(&mut response).await.unwrap();
    let message = &response["choices"][0]["message"];
    assert_eq!(message["content"], "Let me check.\n\n[get_weather blocked]");
    assert!(message.get("tool_calls").is_none());
    assert_eq!(message["annotations"], json!([]));
    assert_eq!(response["choices"][0]["finish_reason"], "stop");
    let events = call.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].data,
        json!({"tool": "get_weather", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA"})
    );
    assert!(call.take_events().is_empty());
}

#[tokio::test]
async fn anthropic_response_tool_use_becomes_a_text_block_in_place() {
    let inspector = BlockNames::new(&["get_weather"]);
    let mut response: Value = serde_json::from_str(ANTHROPIC_RESPONSE).unwrap();
    let original = response.clone();
    let mut call = guard(Api::AnthropicMessages, &inspector);
    call.on_response(&mut response).await.unwrap();
    assert_eq!(response["content"][0], original["content"][0]);
    assert_eq!(response["content"][1], original["content"][1]);
    assert_eq!(
        response["content"][2],
        json!({"type": "text", "text": "[get_weather blocked]"})
    );
    assert_eq!(response["stop_reason"], "end_turn");
    assert_eq!(
        inspector.asked(),
        [r#"get_weather {"city":"paris"}"#.to_owned()]
    );
}

#[tokio::test]
async fn responses_without_blocked_calls_are_untouched() {
    let inspector = BlockNames::new(&["bash"]);
    for (api, body) in [
        (Api::OpenAiChat, OPENAI_TOOL_RESPONSE),
        (Api::AnthropicMessages, ANTHROPIC_RESPONSE),
    ] {
        let mut response: Value = serde_json::from_str(body).unwrap();
        let original = response.clone();
        let mut call = guard(api, &inspector);
        call.on_response(&mut response).await.unwrap();
        assert_eq!(response, original);
        assert!(call.take_events().is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Streams in the real APIs' shapes, and shapes the mock never sends

#[tokio::test]
async fn anthropic_stream_with_thinking_text_and_tool_use() {
    let inspector = BlockNames::new(&["get_weather"]);
    let mut call = guard(Api::AnthropicMessages, &inspector);
    let upstream = decode(ANTHROPIC_STREAM);
    let out = run_stream(&mut call, ANTHROPIC_STREAM).await;
    // Thinking, text (with its ping) and message_start pass byte-identical.
    let same = 11;
    assert_eq!(encode(&out[..same]), encode(&upstream[..same]));
    assert!(out[..same].iter().all(|event| !event.is_modified()));
    let rest: Vec<(Option<&str>, Value)> = out[same..]
        .iter()
        .map(|event| {
            (
                event.event_type(),
                event.json().cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        rest,
        [
            (
                Some("content_block_start"),
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}})
            ),
            (
                Some("content_block_delta"),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "[get_weather blocked]"}})
            ),
            (
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 2})
            ),
            (
                Some("message_delta"),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 89}})
            ),
            (Some("message_stop"), json!({"type": "message_stop"})),
        ]
    );
    // The `partial_json` (with its space) was inspected as streamed.
    assert_eq!(
        inspector.asked(),
        [r#"get_weather {"city": "paris"}"#.to_owned()]
    );
}

#[tokio::test]
async fn anthropic_events_behind_a_held_block_wait_for_it() {
    let stream = concat!(
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"bash\",\"input\":{}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"command\\\": \\\"rm -rf /\\\"}\"}}\n\n",
    );
    let inspector = BlockNames::new(&["bash"]);
    let mut call = guard(Api::AnthropicMessages, &inspector);
    let mut out = Vec::new();
    for event in decode(stream) {
        call.on_event(event, &mut out).await.unwrap();
    }
    assert!(out.is_empty(), "nothing passes a held block");
    // The stream is cut before the block stops: it is decided on what arrived.
    call.on_stream_end(&mut out).await.unwrap();
    let types: Vec<&str> = out.iter().filter_map(SseEvent::event_type).collect();
    assert_eq!(
        types,
        [
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "ping"
        ]
    );
    assert_eq!(
        streamed_text(Api::AnthropicMessages, &out),
        "[bash blocked]"
    );
    assert_eq!(
        inspector.asked(),
        [r#"bash {"command": "rm -rf /"}"#.to_owned()]
    );
}

#[tokio::test]
async fn anthropic_tool_use_without_input_deltas_is_inspected_with_its_start_input() {
    let stream = concat!(
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"list_files\",\"input\":{}}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    );
    let inspector = BlockNames::new(&[]);
    let mut call = guard(Api::AnthropicMessages, &inspector);
    let out = run_stream(&mut call, stream).await;
    assert_eq!(encode(&out), stream);
    assert_eq!(inspector.asked(), ["list_files {}".to_owned()]);
}

#[tokio::test]
async fn openai_stream_with_text_and_a_tool_call() {
    let inspector = BlockNames::new(&["get_weather"]);
    let mut call = guard(Api::OpenAiChat, &inspector);
    let out = run_stream(&mut call, OPENAI_TOOL_STREAM).await;
    let finished = reconstruct(Api::OpenAiChat, &out);
    assert_eq!(
        finished["choices"][0]["message"]["content"],
        "Let me check.\n\n[get_weather blocked]"
    );
    assert_eq!(finished["choices"][0]["finish_reason"], "stop");
    assert!(out.last().unwrap().is_done());
    // Role and text went out first, unchanged.
    assert_eq!(encode(&out[..1]), encode(&decode(OPENAI_TOOL_STREAM)[..1]));
}

#[tokio::test]
async fn openai_chunks_with_several_parts_are_split() {
    // Two tool calls in one chunk, then the last arguments with the finish reason.
    let both = openai_chunk(
        json!({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":"}},
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"/a\"}"}},
        ]}),
        None,
    );
    let last = openai_chunk(
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"rm -rf /\"}"}}]}),
        Some("tool_calls"),
    );
    let stream = data_event(&both)
        + &data_event(&last)
        + &data_event(&openai_usage_chunk())
        + "data: [DONE]\n\n";
    let inspector = BlockNames::new(&["bash"]);
    let mut call = guard(Api::OpenAiChat, &inspector);
    let out = run_stream(&mut call, &stream).await;
    let finished = reconstruct(Api::OpenAiChat, &out);
    let message = &finished["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], "[bash blocked]");
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "call_b", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"/a\"}"}}])
    );
    assert_eq!(finished["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        inspector.asked(),
        [
            r#"bash {"command":"rm -rf /"}"#.to_owned(),
            r#"read_file {"path":"/a"}"#.to_owned()
        ]
    );
    // The read_file call went out before the finish chunk, as index 0.
    let finish = out
        .iter()
        .position(|e| {
            e.json()
                .is_some_and(|v| v["choices"][0]["finish_reason"] == "tool_calls")
        })
        .unwrap();
    let read_file = out
        .iter()
        .position(|e| {
            e.json()
                .is_some_and(|v| v["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_b")
        })
        .unwrap();
    assert!(read_file < finish);
    assert_eq!(
        out[read_file].json().unwrap()["choices"][0]["delta"]["tool_calls"][0]["index"],
        0
    );
}

#[tokio::test]
async fn openai_choices_are_decided_separately() {
    let call_delta = |choice: usize, name: &str| {
        openai_chunk_for_choice(
            choice,
            json!({"tool_calls": [{"index": 0, "id": format!("call_{choice}"), "type": "function", "function": {"name": name, "arguments": "{}"}}]}),
            None,
        )
    };
    let stream = data_event(&call_delta(0, "bash"))
        + &data_event(&call_delta(1, "ls"))
        + &data_event(&openai_chunk_for_choice(0, json!({}), Some("tool_calls")))
        + &data_event(&openai_chunk_for_choice(1, json!({}), Some("tool_calls")))
        + "data: [DONE]\n\n";
    let inspector = BlockNames::new(&["bash"]);
    let mut call = guard(Api::OpenAiChat, &inspector);
    let out = run_stream(&mut call, &stream).await;
    let finished = reconstruct(Api::OpenAiChat, &out);
    assert_eq!(finished["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        finished["choices"][0]["message"]["content"],
        "[bash blocked]"
    );
    assert_eq!(finished["choices"][1]["finish_reason"], "tool_calls");
    assert_eq!(
        finished["choices"][1]["message"]["tool_calls"][0]["id"],
        "call_1"
    );
}

#[tokio::test]
async fn openai_stream_error_releases_held_calls_before_the_error() {
    let start = openai_chunk(
        json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "bash", "arguments": "{\"comm"}}]}),
        None,
    );
    let error = json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null}});
    let stream = data_event(&start) + &data_event(&error);
    let inspector = BlockNames::new(&["bash"]);
    let mut call = guard(Api::OpenAiChat, &inspector);
    let out = run_stream(&mut call, &stream).await;
    assert_eq!(out.len(), 2);
    assert_eq!(streamed_text(Api::OpenAiChat, &out[..1]), "[bash blocked]");
    assert_eq!(out[1].json(), Some(&error));
    assert_eq!(inspector.asked(), [r#"bash {"comm"#.to_owned()]);
}

// ---------------------------------------------------------------------------------------
// Text inspection

#[tokio::test]
async fn held_text_is_released_unchanged_or_replaced_whole() {
    for api in Api::ALL {
        let reply = mock_reply(Scenario::TextAndTools);
        // "fox" is split across deltas of 8 characters: only the whole text has it.
        for (word, expected_text) in [
            ("fox", "[text blocked]"),
            (
                "wolf",
                "Hello from the mock upstream. The quick brown fox jumps over the lazy dog.",
            ),
        ] {
            let inspector = BlockNames::with_text(&[], word);
            let mut call = guard(api, &inspector);
            let stream = mock_stream(api, &reply);
            let out = run_stream(&mut call, &stream).await;
            let finished = reconstruct(api, &out);
            let mut body = mock_body(api, &reply);
            guard(api, &inspector).on_response(&mut body).await.unwrap();
            assert_eq!(finished, body, "{api:?} {word}");
            assert_eq!(streamed_text(api, &out), expected_text, "{api:?} {word}");
            if word == "wolf" {
                assert_eq!(encode(&out), stream, "{api:?}: released byte-identical");
            }
            assert_eq!(
                inspector.asked()[0],
                format!(
                    "text: {}",
                    "Hello from the mock upstream. The quick brown fox jumps over the lazy dog."
                )
            );
            // The finish reason stays: the tool call was kept.
            match api {
                Api::OpenAiChat => {
                    assert_eq!(finished["choices"][0]["finish_reason"], "tool_calls")
                }
                Api::AnthropicMessages => assert_eq!(finished["stop_reason"], "tool_use"),
                Api::OpenAiResponses => {
                    let calls = finished["output"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|item| item["type"] == "function_call")
                        .count();
                    assert_eq!(calls, 1);
                    fixtures::check_sdk_stream(&out).unwrap();
                }
            }
        }
    }
}

#[tokio::test]
async fn openai_text_and_tool_call_in_one_chunk_are_held_apart() {
    let chunk = openai_chunk(
        json!({"role": "assistant", "content": "run it", "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
        ]}),
        Some("tool_calls"),
    );
    let stream = data_event(&chunk) + "data: [DONE]\n\n";
    let inspector = BlockNames::with_text(&["bash"], "run");
    let mut call = guard(Api::OpenAiChat, &inspector);
    let out = run_stream(&mut call, &stream).await;
    let finished = reconstruct(Api::OpenAiChat, &out);
    assert_eq!(
        finished["choices"][0]["message"]["content"],
        "[text blocked]\n\n[bash blocked]"
    );
    assert_eq!(finished["choices"][0]["message"]["role"], "assistant");
    assert_eq!(finished["choices"][0]["finish_reason"], "stop");
    assert_eq!(call.take_events().len(), 2);
}

// ---------------------------------------------------------------------------------------
// Helpers

#[test]
fn templates_fill_known_placeholders_and_reject_unknown_ones() {
    let template = Template::parse(
        "Tool {name} blocked: {rule}. {\"json\": {x}}",
        &["name", "rule", "x"],
    )
    .unwrap();
    assert_eq!(
        template.render(&[("name", "bash"), ("rule", "no-rm"), ("x", "1")]),
        "Tool bash blocked: no-rm. {\"json\": 1}"
    );
    assert_eq!(template.render(&[]), "Tool  blocked: . {\"json\": }");
    let error = Template::parse("{name} {tool}", &["name", "rule"]).unwrap_err();
    assert_eq!(error, "unknown placeholder {tool}; known: {name}, {rule}");
    assert_eq!(
        Template::parse("a { b } {", &[]).unwrap().render(&[]),
        "a { b } {"
    );
}

#[test]
fn tool_name_patterns() {
    let names =
        ToolNames::new(&["bash".to_owned(), "shell*".to_owned(), "fs.?".to_owned()]).unwrap();
    for name in ["bash", "shell", "shell_exec", "fs.a"] {
        assert!(names.matches(name), "{name}");
    }
    for name in ["Bash", "bash2", "my_shell", "fs.ab", "fsxa"] {
        assert!(!names.matches(name), "{name}");
    }
    assert!(ToolNames::new(&[]).is_err());
    assert_eq!(
        ToolNames::new(&["a".to_owned(), String::new()]).unwrap_err(),
        "[1]: must not be empty"
    );
}

#[test]
fn normalized_arguments_are_compact_json() {
    let call = ToolCall {
        id: None,
        name: "x".to_owned(),
        arguments: "{\"a\": [1, 2], \"b\": \"caf\\u00e9 \\\"q\\\"\"}".to_owned(),
    };
    assert_eq!(
        call.normalized_arguments(),
        r#"{"a":[1,2],"b":"café \"q\""}"#
    );
    let cut = ToolCall {
        arguments: "{\"a\": ".to_owned(),
        ..call
    };
    assert_eq!(cut.normalized_arguments(), "{\"a\": ");
    assert!(cut.parsed_arguments().is_none());
}

// ---------------------------------------------------------------------------------------
// OpenAI Responses
//
// Every filtered stream is also run through `check_sdk_stream`, which enforces what the
// openai SDK's stream accumulator raises on.

mod responses {
    use super::*;
    use crate::tool_calls::fixtures::{
        RESPONSE_ID, StreamBuilder, check_sdk_stream, custom_tool_call, function_call, message,
        reasoning, response_object,
    };

    const API: Api = Api::OpenAiResponses;
    const WEATHER_ARGUMENTS: &str = r#"{"city":"Paris"}"#;
    const BASH_ARGUMENTS: &str = r#"{"command":"ls -la /tmp && echo \"done\""}"#;
    const BASH_ID: &str = "fc_68af0b1d4e5f8196b1c2d3e4f5a6b7c80c4ae15eaec1d1f4";
    const BASH_MESSAGE_ID: &str = "msg_luthien_68af0b1d4e5f8196b1c2d3e4f5a6b7c80c4ae15eaec1d1f4";
    const ENCRYPTED: &str = "gAAAAABor1sQ3v0n-Xo8iK9yQ2ZkzW1pT4cJ7hE_r6LmNfUaVbDgS0_=";

    fn weather() -> Value {
        function_call(
            "fc_68af0b1a2b3c8196a0b1c2d3e4f5a6b70c4ae15eaec1d1f4",
            "call_Wz2xqPL8cEJ3pY4yH1mB0kTn",
            "get_weather",
            WEATHER_ARGUMENTS,
        )
    }

    fn bash() -> Value {
        function_call(
            BASH_ID,
            "call_7hGfR2sVdK9qL0mN3bX5cZ1a",
            "bash",
            BASH_ARGUMENTS,
        )
    }

    /// The message that replaces a blocked call.
    fn replacement(id: &str, text: &str) -> Value {
        json!({"id": id, "type": "message", "status": "completed", "content": [
            {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        ], "role": "assistant"})
    }

    /// Runs a stream through a guard and checks the result as the SDK would; returns what the
    /// client got, the final response and the policy events.
    async fn run(
        inspector: &Arc<BlockNames>,
        stream: &str,
    ) -> (Vec<SseEvent>, Value, Vec<PolicyEvent>) {
        let mut call = guard(API, inspector);
        let out = run_stream(&mut call, stream).await;
        let completed = check_sdk_stream(&out)
            .unwrap_or_else(|error| panic!("{error}\n{}", encode(&out)))
            .unwrap_or(Value::Null);
        (out, completed, call.take_events())
    }

    /// The non-streamed answer listing `items`, filtered.
    async fn filtered_body(
        inspector: &Arc<BlockNames>,
        items: &[Value],
    ) -> (Value, Vec<PolicyEvent>) {
        let mut body = response_object("completed", items);
        let mut call = guard(API, inspector);
        call.on_response(&mut body).await.unwrap();
        (body, call.take_events())
    }

    fn types(events: &[SseEvent]) -> Vec<&str> {
        events.iter().filter_map(SseEvent::event_type).collect()
    }

    fn sequence_numbers(events: &[SseEvent]) -> Vec<u64> {
        events
            .iter()
            .map(|event| event.json().unwrap()["sequence_number"].as_u64().unwrap())
            .collect()
    }

    /// The events of output item `index`.
    fn item_events(events: &[SseEvent], index: u64) -> Vec<SseEvent> {
        events
            .iter()
            .filter(|event| {
                event
                    .json()
                    .is_some_and(|value| value["output_index"] == index)
            })
            .cloned()
            .collect()
    }

    const MESSAGE_EVENTS: [&str; 6] = [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ];

    /// The check refuses what the SDK raises on: an item never finished, an index added
    /// twice, an event for an item never added, an identity that changes, and copies that
    /// disagree with the deltas.
    #[test]
    fn the_sdk_check_refuses_inconsistent_streams() {
        let events = decode(&StreamBuilder::complete(
            &[message("msg_1", "hi"), bash()],
            3,
        ));
        assert!(check_sdk_stream(&events).unwrap().is_some());
        let without = |kind: &str, index: u64| -> Vec<SseEvent> {
            events
                .iter()
                .filter(|event| {
                    let value = event.json().unwrap();
                    !(value["type"] == kind && value["output_index"] == index)
                })
                .cloned()
                .collect()
        };
        let error = |events: &[SseEvent]| check_sdk_stream(events).unwrap_err();
        // An item never done is accepted when the final output lists it, not otherwise.
        let mut unfinished = without("response.output_item.done", 1);
        assert!(check_sdk_stream(&unfinished).is_ok());
        let last = unfinished.len() - 1;
        unfinished[last].json_mut().unwrap()["response"]["output"][1]["call_id"] =
            json!("call_other");
        assert!(error(&unfinished).contains("unfinished output items"));
        assert!(
            error(&without("response.output_item.added", 1))
                .contains("before receiving its output item")
        );
        assert!(error(&without("response.content_part.added", 0)).contains("no output_text part"));
        let mut twice = events.clone();
        twice.insert(3, events[2].clone());
        assert!(error(&twice).contains("Duplicate response output index 0"));
        let mut changed = events.clone();
        let done = changed.len() - 2;
        changed[done].json_mut().unwrap()["item"]["call_id"] = json!("call_other");
        assert!(
            error(&changed).contains("identity changed"),
            "{}",
            error(&changed)
        );
        let last = events.len() - 1;
        let mut leaked = events.clone();
        leaked[last].json_mut().unwrap()["response"]["output"][0]["content"][0]["text"] =
            json!("other");
        assert!(error(&leaked).contains("repeats"));
        let mut renamed = events;
        renamed[2].json_mut().unwrap()["item"]["id"] = json!("msg_2");
        assert!(error(&renamed).contains("item_id"));
    }

    #[tokio::test]
    async fn removing_one_of_two_calls_replaces_it_in_place_streamed_and_not() {
        let items = [weather(), bash()];
        let stream = StreamBuilder::complete(&items, 5);
        let upstream = decode(&stream);
        let inspector = BlockNames::new(&["bash"]);
        let (out, completed, events) = run(&inspector, &stream).await;

        // The lifecycle events and the get_weather call pass byte for byte.
        assert_eq!(encode(&out[..2]), encode(&upstream[..2]));
        let kept = item_events(&out, 0);
        assert_eq!(encode(&kept), encode(&item_events(&upstream, 0)));
        assert!(kept.iter().all(|event| !event.is_modified()));

        // bash is gone, a whole message stands at its output_index.
        let wire = encode(&out);
        assert!(
            !wire.contains("ls -la") && !wire.contains(BASH_ID),
            "{wire}"
        );
        let replaced = item_events(&out, 1);
        assert_eq!(types(&replaced), MESSAGE_EVENTS);
        let message = replacement(BASH_MESSAGE_ID, "[bash blocked]");
        assert_eq!(replaced[5].json().unwrap()["item"], message);
        assert_eq!(
            replaced[0].json().unwrap(),
            &json!({"type": "response.output_item.added", "sequence_number": upstream_number(&upstream, 1, 0),
                "output_index": 1, "item": {"id": BASH_MESSAGE_ID, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}})
        );
        assert_eq!(streamed_text(API, &out), "[bash blocked]");

        // Sequence numbers: the provider's, the injected events taking the removed ones'.
        let removed = sequence_numbers(&item_events(&upstream, 1));
        assert_eq!(sequence_numbers(&replaced), removed[..6]);
        let numbers = sequence_numbers(&out);
        assert!(
            numbers.windows(2).all(|pair| pair[0] <= pair[1]),
            "{numbers:?}"
        );
        assert_eq!(numbers.last(), sequence_numbers(&upstream).last());

        // response.completed lists the message in the call's place; nothing else changed.
        assert_eq!(completed["output"], json!([weather(), message]));
        assert_eq!(completed["status"], "completed");
        let mut expected = response_object("completed", &items);
        expected["output"][1] = message.clone();
        assert_eq!(completed, expected);

        // The non-streamed answer is filtered the same way, with the same events.
        let (body, body_events) = filtered_body(&inspector, &items).await;
        assert_eq!(body, completed);
        assert_eq!(events, body_events);
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].data,
            json!({"tool": "bash", "id": "call_7hGfR2sVdK9qL0mN3bX5cZ1a"})
        );
        // The arguments were inspected whole (their deltas split the escaped quotes).
        assert_eq!(
            inspector.asked(),
            [
                format!("get_weather {WEATHER_ARGUMENTS}"),
                format!("bash {BASH_ARGUMENTS}"),
                format!("get_weather {WEATHER_ARGUMENTS}"),
                format!("bash {BASH_ARGUMENTS}"),
            ]
        );
        assert_eq!(reconstruct(API, &out), body);
    }

    fn upstream_number(upstream: &[SseEvent], index: u64, position: usize) -> u64 {
        sequence_numbers(&item_events(upstream, index))[position]
    }

    #[tokio::test]
    async fn removing_every_call_leaves_the_status_completed() {
        let items = [weather(), bash()];
        let stream = StreamBuilder::complete(&items, 7);
        let inspector = BlockNames::new(&["bash", "get_weather"]);
        let (out, completed, events) = run(&inspector, &stream).await;
        assert_eq!(events.len(), 2);
        assert_eq!(
            completed["output"],
            json!([
                replacement(
                    "msg_luthien_68af0b1a2b3c8196a0b1c2d3e4f5a6b70c4ae15eaec1d1f4",
                    "[get_weather blocked]"
                ),
                replacement(BASH_MESSAGE_ID, "[bash blocked]"),
            ])
        );
        // Nothing in the format says "tool calls follow": status and details stay.
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["incomplete_details"], Value::Null);
        assert_eq!(completed["usage"]["output_tokens"], 142);
        assert_eq!(
            streamed_text(API, &out),
            "[get_weather blocked][bash blocked]"
        );
        assert_eq!(types(&item_events(&out, 0)), MESSAGE_EVENTS);
        assert_eq!(types(&item_events(&out, 1)), MESSAGE_EVENTS);
        let (body, _) = filtered_body(&inspector, &items).await;
        assert_eq!(body, completed);
        assert_eq!(reconstruct(API, &out), body);
    }

    #[tokio::test]
    async fn text_before_a_call_is_not_delayed_and_text_after_it_waits_for_it() {
        let intro = message(
            "msg_68af0b19f0e48196a9b8c7d6e5f4a3b20c4ae15eaec1d1f4",
            "Let me check the weather.",
        );
        let outro = message(
            "msg_68af0b1ff0e48196a9b8c7d6e5f4a3b20c4ae15eaec1d1f4",
            "Done.",
        );
        let items = [intro.clone(), weather(), outro.clone()];
        let stream = StreamBuilder::complete(&items, 6);
        let inspector = BlockNames::new(&["get_weather"]);
        let mut call = guard(API, &inspector);
        let mut out = Vec::new();
        let mut held = 0;
        for event in decode(&stream) {
            let value = event.json().unwrap().clone();
            let bytes = event.to_bytes();
            let before = out.len();
            call.on_event(event, &mut out).await.unwrap();
            match value["output_index"].as_u64() {
                // The message before the call leaves at once, unchanged.
                Some(0) => {
                    assert_eq!(out.len(), before + 1);
                    assert_eq!(out[before].to_bytes(), bytes);
                }
                // The call is held until its output_item.done, then replaced.
                Some(1) if value["type"] == "response.output_item.done" => {
                    assert_eq!(types(&out[before..]), MESSAGE_EVENTS);
                }
                Some(1) => {
                    assert_eq!(out.len(), before);
                    held += 1;
                }
                _ => {}
            }
        }
        call.on_stream_end(&mut out).await.unwrap();
        assert!(held > 2);
        let completed = check_sdk_stream(&out).unwrap().unwrap();
        assert_eq!(
            completed["output"],
            json!([
                intro,
                replacement(
                    "msg_luthien_68af0b1a2b3c8196a0b1c2d3e4f5a6b70c4ae15eaec1d1f4",
                    "[get_weather blocked]"
                ),
                outro
            ])
        );
        assert_eq!(
            streamed_text(API, &out),
            "Let me check the weather.[get_weather blocked]Done."
        );
        // The text after the call passed unchanged once the call was decided.
        assert_eq!(
            encode(&item_events(&out, 2)),
            encode(&item_events(&decode(&stream), 2))
        );
    }

    #[tokio::test]
    async fn reasoning_items_pass_untouched() {
        let thought = reasoning(
            "rs_68af0b16c1d48196aa6b4f3e2d1c0b9a0c4ae15eaec1d1f4",
            ENCRYPTED,
        );
        let items = [thought.clone(), bash()];
        let stream = StreamBuilder::complete(&items, 4);
        let upstream = decode(&stream);
        let inspector = BlockNames::new(&["bash"]);
        let (out, completed, _) = run(&inspector, &stream).await;
        let passed = item_events(&out, 0);
        assert_eq!(encode(&passed), encode(&item_events(&upstream, 0)));
        assert!(passed.iter().all(|event| !event.is_modified()));
        assert_eq!(completed["output"][0], thought);
        assert_eq!(completed["output"][0]["encrypted_content"], ENCRYPTED);
        assert_eq!(completed["output"][1]["type"], "message");
        let (body, _) = filtered_body(&inspector, &items).await;
        assert_eq!(body["output"][0], thought);
        assert_eq!(body, completed);
    }

    #[tokio::test]
    async fn kept_calls_leave_byte_identical() {
        let items = [
            reasoning(
                "rs_68af0b16c1d48196aa6b4f3e2d1c0b9a0c4ae15eaec1d1f4",
                ENCRYPTED,
            ),
            message(
                "msg_68af0b19f0e48196a9b8c7d6e5f4a3b20c4ae15eaec1d1f4",
                "Checking.",
            ),
            weather(),
            custom_tool_call(
                "ctc_68af0b2a",
                "call_c1",
                "apply_patch",
                "*** Begin Patch\n*** End Patch",
            ),
            bash(),
        ];
        let stream = StreamBuilder::complete(&items, 3);
        let inspector = BlockNames::new(&["deploy"]);
        let (out, completed, events) = run(&inspector, &stream).await;
        assert_eq!(encode(&out), stream);
        assert!(out.iter().all(|event| !event.is_modified()));
        assert_eq!(completed, response_object("completed", &items));
        assert!(events.is_empty());
        let (body, _) = filtered_body(&inspector, &items).await;
        assert_eq!(body, response_object("completed", &items));
        assert_eq!(
            inspector.asked()[..3],
            [
                format!("get_weather {WEATHER_ARGUMENTS}"),
                "apply_patch *** Begin Patch\n*** End Patch".to_owned(),
                format!("bash {BASH_ARGUMENTS}"),
            ]
        );
    }

    #[tokio::test]
    async fn custom_tool_calls_are_removed_too() {
        let patch = custom_tool_call(
            "ctc_68af0b2a",
            "call_c1",
            "apply_patch",
            "*** Begin Patch\n*** Delete File: /etc/passwd\n*** End Patch",
        );
        let items = [patch];
        let stream = StreamBuilder::complete(&items, 9);
        let inspector = BlockNames::new(&["apply_patch"]);
        let (out, completed, events) = run(&inspector, &stream).await;
        assert!(!encode(&out).contains("passwd"));
        assert_eq!(
            completed["output"],
            json!([replacement("msg_luthien_68af0b2a", "[apply_patch blocked]")])
        );
        assert_eq!(events[0].data["id"], "call_c1");
        let (body, _) = filtered_body(&inspector, &items).await;
        assert_eq!(body, completed);
    }

    /// A stream cut inside the bash call (after its added event and two argument deltas).
    fn cut_stream() -> StreamBuilder {
        let mut builder = StreamBuilder::new();
        builder
            .item(0, &weather(), 50)
            .item_until(1, &bash(), 10, 3);
        builder
    }

    #[tokio::test]
    async fn a_call_cut_off_is_decided_on_what_arrived() {
        let partial = r#"{"command":"ls -la /"#;
        let mut failed_call = bash();
        failed_call["status"] = json!("incomplete");
        failed_call["arguments"] = json!(partial);
        let endings: [(&str, Option<&str>); 4] = [
            ("end of body", None),
            ("response.failed", Some("response.failed")),
            ("response.incomplete", Some("response.incomplete")),
            ("error", Some("error")),
        ];
        for (label, ending) in endings {
            let mut builder = cut_stream();
            match ending {
                Some("error") => {
                    builder.event("error", json!({"code": "server_error", "message": "The server had an error.", "param": null}));
                }
                Some(kind) => {
                    builder.terminal(kind, &[weather(), failed_call.clone()]);
                }
                None => {}
            }
            let stream = builder.build();
            let upstream = decode(&stream);
            let inspector = BlockNames::new(&["bash"]);
            let mut call = guard(API, &inspector);
            let mut out = Vec::new();
            for event in decode(&stream) {
                call.on_event(event, &mut out).await.unwrap();
            }
            if ending.is_none() {
                // Held until the body ends.
                assert!(item_events(&out, 1).is_empty(), "{label}");
                call.on_stream_end(&mut out).await.unwrap();
            }
            check_sdk_stream(&out).unwrap_or_else(|error| panic!("{label}: {error}"));
            assert_eq!(
                inspector.asked().last().unwrap(),
                &format!("bash {partial}"),
                "{label}"
            );
            assert_eq!(types(&item_events(&out, 1)), MESSAGE_EVENTS, "{label}");
            let wire = encode(&out);
            assert!(!wire.contains("ls -la"), "{label}: {wire}");
            // The replacement comes before the event that ended the stream, which passes
            // (its copy of the call replaced).
            let last = out.last().unwrap();
            match ending {
                None => assert_eq!(last.event_type(), Some("response.output_item.done")),
                Some("error") => assert_eq!(last.to_bytes(), upstream.last().unwrap().to_bytes()),
                Some(kind) => {
                    assert_eq!(last.event_type(), Some(kind));
                    let output = &last.json().unwrap()["response"]["output"];
                    assert_eq!(output[0], weather(), "{label}");
                    assert_eq!(
                        output[1],
                        replacement(BASH_MESSAGE_ID, "[bash blocked]"),
                        "{label}"
                    );
                }
            }
            assert_eq!(call.take_events().len(), 1, "{label}");
        }
    }

    /// Some OpenAI-compatible servers send a call's arguments whole in `output_item.added`,
    /// without deltas.
    #[tokio::test]
    async fn arguments_sent_whole_in_the_added_item_are_inspected() {
        let mut builder = StreamBuilder::new();
        builder.event(
            "response.output_item.added",
            json!({"output_index": 0, "item": bash()}),
        );
        let stream = builder.build();
        let inspector = BlockNames::new(&["bash"]);
        let (out, _, _) = run(&inspector, &stream).await;
        assert_eq!(inspector.asked(), [format!("bash {BASH_ARGUMENTS}")]);
        assert_eq!(types(&out[2..]), MESSAGE_EVENTS);

        builder.event(
            "response.output_item.done",
            json!({"output_index": 0, "item": bash()}),
        );
        builder.terminal("response.completed", &[bash()]);
        let stream = builder.build();
        let inspector = BlockNames::new(&[]);
        let (out, completed, _) = run(&inspector, &stream).await;
        assert_eq!(encode(&out), stream);
        assert_eq!(completed["output"][0], bash());
        assert_eq!(inspector.asked(), [format!("bash {BASH_ARGUMENTS}")]);
    }

    /// The mock's streams that end early (`response.failed`, `response.incomplete`, an
    /// `error` event) with the message held for a text inspector: kept, they pass byte for
    /// byte; blocked, the text is replaced in what was sent and in the terminal event's copy.
    #[tokio::test]
    async fn mock_streams_ending_early_release_the_held_text() {
        for scenario in [
            Scenario::Failed,
            Scenario::Incomplete,
            Scenario::StreamError,
        ] {
            let reply = mock_reply_for(API, scenario);
            let stream = mock_stream(API, &reply);
            let inspector = BlockNames::with_text(&[], "wolf");
            let (out, _, _) = run(&inspector, &stream).await;
            assert_eq!(encode(&out), stream, "{scenario:?}");
            assert_eq!(inspector.asked().len(), 1, "{scenario:?}");

            let inspector = BlockNames::with_text(&[], "Hello");
            let (out, _, events) = run(&inspector, &stream).await;
            assert_eq!(events.len(), 1, "{scenario:?}");
            let wire = encode(&out);
            assert!(!wire.contains("Hello"), "{scenario:?}: {wire}");
            assert_eq!(streamed_text(API, &out), "[text blocked]", "{scenario:?}");
            let last = out.last().unwrap().json().unwrap();
            if let Some(output) = last["response"]["output"].as_array() {
                assert_eq!(
                    output[0]["content"][0]["text"], "[text blocked]",
                    "{scenario:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_call_only_the_terminal_event_lists_is_inspected_there() {
        let mut builder = StreamBuilder::new();
        builder.terminal("response.completed", &[bash()]);
        let inspector = BlockNames::new(&["bash"]);
        let (out, completed, events) = run(&inspector, &builder.build()).await;
        assert_eq!(out.len(), 3);
        assert_eq!(
            completed["output"],
            json!([replacement(BASH_MESSAGE_ID, "[bash blocked]")])
        );
        assert_eq!(events.len(), 1);
        assert_eq!(completed["id"], RESPONSE_ID);
    }

    #[tokio::test]
    async fn judged_text_is_replaced_in_every_copy() {
        let text = "The quick brown fox jumps over the lazy dog.";
        let answer = message("msg_68af0b19f0e48196a9b8c7d6e5f4a3b20c4ae15eaec1d1f4", text);
        let items = [answer.clone(), bash()];
        let stream = StreamBuilder::complete(&items, 8);
        // "fox" is split across deltas: only the whole text has it.
        let inspector = BlockNames::with_text(&[], "fox");
        let (out, completed, events) = run(&inspector, &stream).await;
        let wire = encode(&out);
        for word in ["quick", "fox", "lazy"] {
            assert!(!wire.contains(word), "{word} leaked: {wire}");
        }
        assert_eq!(streamed_text(API, &out), "[text blocked]");
        let blocked = json!([{"type": "output_text", "annotations": [], "logprobs": [], "text": "[text blocked]"}]);
        let message_events = item_events(&out, 0);
        assert_eq!(types(&message_events), MESSAGE_EVENTS, "one delta left");
        for event in &message_events {
            let value = event.json().unwrap();
            match value["type"].as_str().unwrap() {
                "response.output_text.done" => assert_eq!(value["text"], "[text blocked]"),
                "response.content_part.done" => assert_eq!(value["part"], blocked[0]),
                "response.output_item.done" => assert_eq!(value["item"]["content"], blocked),
                _ => {}
            }
        }
        assert_eq!(completed["output"][0]["content"], blocked);
        assert_eq!(completed["output"][0]["id"], answer["id"]);
        // The bash call was kept, byte for byte.
        assert_eq!(
            encode(&item_events(&out, 1)),
            encode(&item_events(&decode(&stream), 1))
        );
        assert_eq!(completed["output"][1], bash());
        assert_eq!(events.len(), 1);
        assert_eq!(inspector.asked()[0], format!("text: {text}"));

        let (body, _) = filtered_body(&inspector, &items).await;
        assert_eq!(body, completed);
        assert_eq!(reconstruct(API, &out), body);

        // Text the inspector keeps passes byte-identical.
        let inspector = BlockNames::with_text(&[], "wolf");
        let (out, _, events) = run(&inspector, &stream).await;
        assert_eq!(encode(&out), stream);
        assert!(events.is_empty());
    }

    #[tokio::test]
    async fn judged_text_and_a_call_blocked_together() {
        let answer = message(
            "msg_68af0b19f0e48196a9b8c7d6e5f4a3b20c4ae15eaec1d1f4",
            "I will run rm now.",
        );
        let items = [answer, bash()];
        let stream = StreamBuilder::complete(&items, 4);
        let inspector = BlockNames::with_text(&["bash"], "rm");
        let (out, completed, events) = run(&inspector, &stream).await;
        assert_eq!(streamed_text(API, &out), "[text blocked][bash blocked]");
        assert_eq!(
            completed["output"][0]["content"][0]["text"],
            "[text blocked]"
        );
        assert_eq!(
            completed["output"][1],
            replacement(BASH_MESSAGE_ID, "[bash blocked]")
        );
        assert_eq!(events.len(), 2);
        let (body, _) = filtered_body(&inspector, &items).await;
        assert_eq!(body, completed);
    }

    #[tokio::test]
    async fn a_replaced_text_loses_its_annotations_and_logprobs() {
        let id = "msg_68af0b19f0e48196a9b8c7d6e5f4a3b20c4ae15eaec1d1f4";
        let text = "See the fox at https://example.com/fox.";
        let annotation = json!({"type": "url_citation", "start_index": 15, "end_index": 38, "title": "Fox", "url": "https://example.com/fox"});
        let logprob =
            json!({"token": "See", "logprob": -0.1, "bytes": [83, 101, 101], "top_logprobs": []});
        let mut answer = message(id, text);
        answer["content"][0]["annotations"] = json!([annotation]);
        answer["content"][0]["logprobs"] = json!([logprob]);
        let mut builder = StreamBuilder::new();
        builder
            .event("response.output_item.added", json!({"output_index": 0, "item": {"id": id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}}))
            .event("response.content_part.added", json!({"item_id": id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}}))
            .event("response.output_text.delta", json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": "See the fox", "logprobs": [logprob]}))
            .event("response.output_text.delta", json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": " at https://example.com/fox.", "logprobs": []}))
            .event("response.output_text.annotation.added", json!({"item_id": id, "output_index": 0, "content_index": 0, "annotation_index": 0, "annotation": annotation}))
            .event("response.output_text.done", json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": [logprob]}))
            .event("response.content_part.done", json!({"item_id": id, "output_index": 0, "content_index": 0, "part": answer["content"][0]}))
            .event("response.output_item.done", json!({"output_index": 0, "item": answer}))
            .terminal("response.completed", &[answer.clone()]);
        let inspector = BlockNames::with_text(&[], "fox");
        let (out, completed, _) = run(&inspector, &builder.build()).await;
        let wire = encode(&out);
        assert!(
            !wire.contains("example.com") && !wire.contains("-0.1"),
            "{wire}"
        );
        assert_eq!(types(&out[2..8]), MESSAGE_EVENTS);
        assert_eq!(
            completed["output"][0]["content"],
            json!([{"type": "output_text", "annotations": [], "logprobs": [], "text": "[text blocked]"}])
        );
    }
}
