//! Responses reconstruction: every scenario of the mock provider rebuilds to the stream's own
//! terminal `response` (which equals the non-streamed answer), and hand-written events cover
//! what the mock never sends.

use bytes::Bytes;
use luthien_mock_upstream::reply::Reply;
use luthien_mock_upstream::responses::{self as mock, Request};
use luthien_mock_upstream::scenario::{Controls, Scenario, Split};
use serde_json::{Value, json};

use crate::reconstruct::Reconstructor;
use crate::shapes::Api;
use crate::sse::{SseDecoder, SseEvent};

fn decode(body: &[u8], frame: usize) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    for piece in body.chunks(if frame == 0 { body.len().max(1) } else { frame }) {
        decoder
            .push(Bytes::copy_from_slice(piece), &mut events)
            .unwrap();
    }
    events.extend(decoder.finish());
    events
}

fn reconstruct(events: &[SseEvent]) -> Reconstructor {
    let mut reconstructor = Reconstructor::new(Api::OpenAiResponses);
    events.iter().for_each(|event| reconstructor.push(event));
    reconstructor
}

fn request() -> Request {
    let body = json!({
        "model": "gpt-5", "stream": true, "instructions": "Be terse.",
        "input": [{"role": "user", "content": "Say hello, then call the tools."}],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {}}],
    });
    Request::parse(body.to_string().as_bytes()).unwrap()
}

fn mock_stream(scenario: Scenario, split: Split, text: &str) -> (Vec<SseEvent>, Value) {
    let controls = Controls {
        scenario,
        split,
        text: text.to_owned(),
        ..Controls::default()
    };
    let request = request();
    let reply = Reply::new(&controls, &request.body, true);
    let events = mock::stream_events(mock::RESPONSE_ID, &reply, &request, None).concat();
    let whole =
        serde_json::from_slice(&mock::response_body(mock::RESPONSE_ID, &reply, &request)).unwrap();
    (decode(&events, 0), whole)
}

#[test]
fn every_mock_stream_rebuilds_to_its_own_final_response() {
    let texts = [
        "Hello there, general Kenobi.",
        "Grüße, 世界 🦀!\nline \"two\"\t.",
    ];
    let splits = [
        Split::Size(1),
        Split::Size(5),
        Split::Size(100_000),
        Split::Count(9),
    ];
    let scenarios = [
        Scenario::Text,
        Scenario::Tools,
        Scenario::TextAndTools,
        Scenario::Thinking,
        Scenario::Incomplete,
    ];
    let mut checked = 0;
    for scenario in scenarios {
        for split in splits {
            for text in texts {
                let (events, whole) = mock_stream(scenario, split, text);
                let terminal = events.last().unwrap().json().unwrap();
                assert!(
                    matches!(
                        terminal["type"].as_str(),
                        Some("response.completed" | "response.incomplete")
                    ),
                    "{terminal}"
                );
                let body: Vec<u8> = events.iter().flat_map(|event| event.to_bytes()).collect();
                for frame in [0, 7] {
                    let label = format!("{} / {split:?} / frames of {frame}", scenario.name());
                    let rebuilt = reconstruct(&decode(&body, frame));
                    let result = rebuilt.finish().unwrap();
                    assert_eq!(result, terminal["response"], "{label}");
                    assert_eq!(result, whole, "{label}");
                    assert_eq!(rebuilt.skipped(), 0, "{label}");
                    assert_eq!(rebuilt.events_seen(), events.len() as u64, "{label}");
                    assert_eq!(
                        rebuilt.usage().output_tokens,
                        whole["usage"]["output_tokens"].as_u64()
                    );
                    let reason = whole["incomplete_details"]["reason"]
                        .as_str()
                        .unwrap_or("completed");
                    assert_eq!(rebuilt.finish_reasons(), [reason], "{label}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 5 * 4 * 2 * 2);
}

/// Built from the deltas alone — every `.done` event and the terminal response dropped, as
/// when a stream is cut — the items are what the deltas said: the output equals the final
/// one but for the fields only `.done` events carry (statuses, `encrypted_content`).
#[test]
fn the_deltas_alone_rebuild_the_text_arguments_and_summaries() {
    for scenario in [Scenario::TextAndTools, Scenario::Tools, Scenario::Thinking] {
        let (events, whole) = mock_stream(scenario, Split::Size(3), "Hello there, general Kenobi.");
        let partial: Vec<SseEvent> = events
            .into_iter()
            .filter(|event| {
                let kind = event.event_type().unwrap_or_default();
                !kind.ends_with(".done") && kind != "response.completed"
            })
            .collect();
        let result = reconstruct(&partial).finish().unwrap();
        let output = result["output"].as_array().unwrap();
        let expected = whole["output"].as_array().unwrap();
        assert_eq!(output.len(), expected.len(), "{}", scenario.name());
        for (item, expected) in output.iter().zip(expected) {
            assert_eq!(item["type"], expected["type"]);
            assert_eq!(item["id"], expected["id"]);
            match item["type"].as_str().unwrap() {
                "message" => assert_eq!(
                    item["content"][0]["text"],
                    expected["content"][0]["text"],
                    "{}",
                    scenario.name()
                ),
                "function_call" => assert_eq!(item["arguments"], expected["arguments"]),
                "reasoning" => {
                    assert_eq!(item["summary"][0]["text"], expected["summary"][0]["text"]);
                    // Only the done item carries it.
                    assert!(item.get("encrypted_content").is_none());
                }
                other => panic!("unexpected item {other}"),
            }
        }
        assert_eq!(result["status"], "in_progress");
    }
}

#[test]
fn failed_and_errored_streams_keep_what_was_sent_and_why() {
    let (events, _) = mock_stream(
        Scenario::Failed,
        Split::Size(4),
        "Hello there, general Kenobi.",
    );
    let terminal = events.last().unwrap().json().unwrap().clone();
    assert_eq!(terminal["type"], "response.failed");
    let rebuilt = reconstruct(&events);
    assert_eq!(rebuilt.finish().unwrap(), terminal["response"]);
    assert_eq!(rebuilt.finish_reasons(), ["failed"]);

    let (events, _) = mock_stream(
        Scenario::StreamError,
        Split::Size(4),
        "Hello there, general Kenobi.",
    );
    let error = events.last().unwrap().json().unwrap().clone();
    assert_eq!(error["type"], "error");
    let rebuilt = reconstruct(&events);
    let result = rebuilt.finish().unwrap();
    assert_eq!(rebuilt.skipped(), 0);
    assert_eq!(result["error"], error["error"]);
    let text = result["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(
        !text.is_empty() && "Hello there, general Kenobi.".starts_with(text),
        "{text}"
    );
}

fn named(value: Value) -> SseEvent {
    let kind = value["type"].as_str().map(str::to_owned);
    SseEvent::from_json(kind.as_deref(), value)
}

#[test]
fn annotations_refusals_progress_and_unknown_events() {
    let events = [
        json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}}),
        json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": {"type": "web_search_call", "id": "ws_1", "status": "in_progress"}}),
        json!({"type": "response.web_search_call.searching", "sequence_number": 2, "output_index": 0, "item_id": "ws_1"}),
        json!({"type": "response.output_item.done", "sequence_number": 3, "output_index": 0, "item": {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}}}),
        json!({"type": "response.output_item.added", "sequence_number": 4, "output_index": 1, "item": {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "sequence_number": 5, "output_index": 1, "content_index": 0, "item_id": "msg_1", "part": {"type": "output_text", "text": "", "annotations": []}}),
        json!({"type": "response.output_text.delta", "sequence_number": 6, "output_index": 1, "content_index": 0, "item_id": "msg_1", "delta": "See ", "logprobs": [{"token": "See", "logprob": -0.1}]}),
        json!({"type": "response.output_text.delta", "sequence_number": 7, "output_index": 1, "content_index": 0, "item_id": "msg_1", "delta": "this.", "logprobs": []}),
        json!({"type": "response.output_text.annotation.added", "sequence_number": 8, "output_index": 1, "content_index": 0, "item_id": "msg_1", "annotation_index": 0, "annotation": {"type": "url_citation", "url": "https://example.com", "start_index": 0, "end_index": 3, "title": "t"}}),
        json!({"type": "response.content_part.added", "sequence_number": 9, "output_index": 1, "content_index": 1, "item_id": "msg_1", "part": {"type": "refusal", "refusal": ""}}),
        json!({"type": "response.refusal.delta", "sequence_number": 10, "output_index": 1, "content_index": 1, "item_id": "msg_1", "delta": "No."}),
        json!({"type": "response.brand_new_event", "sequence_number": 11}),
        json!({"type": "response.output_text.delta", "sequence_number": 12, "output_index": 7, "content_index": 0, "item_id": "msg_x", "delta": "lost"}),
    ];
    let rebuilt = reconstruct(&events.map(named));
    assert_eq!(rebuilt.skipped(), 2);
    let result = rebuilt.finish().unwrap();
    assert_eq!(
        result["output"],
        json!([
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
            {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": [
                {"type": "output_text", "text": "See this.", "logprobs": [{"token": "See", "logprob": -0.1}],
                 "annotations": [{"type": "url_citation", "url": "https://example.com", "start_index": 0, "end_index": 3, "title": "t"}]},
                {"type": "refusal", "refusal": "No."}
            ]}
        ])
    );
    assert_eq!(result["id"], "resp_1");
    // Field order is the provider's: `output` stays where the lifecycle object had it.
    let keys: Vec<&String> = result.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "object", "status", "output"]);
}

#[test]
fn custom_tools_and_reasoning_text() {
    let events = [
        json!({"type": "response.output_item.added", "sequence_number": 0, "output_index": 0, "item": {"type": "reasoning", "id": "rs_1", "summary": []}}),
        json!({"type": "response.reasoning_text.delta", "sequence_number": 1, "output_index": 0, "content_index": 0, "item_id": "rs_1", "delta": "think"}),
        json!({"type": "response.reasoning_text.delta", "sequence_number": 2, "output_index": 0, "content_index": 0, "item_id": "rs_1", "delta": "ing"}),
        json!({"type": "response.output_item.added", "sequence_number": 3, "output_index": 1, "item": {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1", "name": "shell", "input": ""}}),
        json!({"type": "response.custom_tool_call_input.delta", "sequence_number": 4, "output_index": 1, "item_id": "ctc_1", "delta": "ls "}),
        json!({"type": "response.custom_tool_call_input.delta", "sequence_number": 5, "output_index": 1, "item_id": "ctc_1", "delta": "-la"}),
    ];
    let result = reconstruct(&events.map(named)).finish().unwrap();
    assert_eq!(result["object"], "response");
    assert_eq!(
        result["output"][0]["content"],
        json!([{"type": "reasoning_text", "text": "thinking"}])
    );
    assert_eq!(result["output"][1]["input"], "ls -la");
}
