//! Reconstruction tests.
//!
//! The first group proves, for every scenario of the mock provider, that the reconstructed
//! stream equals the mock's non-streamed answer to the same request. The mock renders both
//! from one `Reply`, so equality means no field is lost or altered. The only exception, an
//! OpenAI stream without `include_usage`, is spelled out where it is made.
//!
//! The second group covers what the mock never sends, with hand-written events in the
//! providers' real wire shapes: several OpenAI choices, refusals, logprobs, redacted
//! thinking, citations, cut-off streams, error events and malformed events.

use bytes::Bytes;
use luthien_mock_upstream::reply::{Reply, RequestBody};
use luthien_mock_upstream::scenario::{Controls, DEFAULT_TEXT, Scenario, Split};
use luthien_mock_upstream::{anthropic as mock_anthropic, openai as mock_openai};
use serde_json::{Value, json};

use super::Reconstructor;
use crate::shapes::Api;
use crate::sse::{SseDecoder, SseEvent};
use luthien_api::TokenUsage;

// ---------------------------------------------------------------------------------------
// Helpers

/// Decodes an SSE body delivered in frames of `frame` bytes (0: one frame), as the proxy
/// receives it, so event boundaries fall anywhere in a frame.
fn decode(body: &[u8], frame: usize) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    let frame = if frame == 0 { body.len().max(1) } else { frame };
    for piece in body.chunks(frame) {
        decoder
            .push(Bytes::copy_from_slice(piece), &mut events)
            .unwrap();
    }
    events.extend(decoder.finish());
    events
}

fn reconstruct(api: Api, events: &[SseEvent]) -> Reconstructor {
    let mut reconstructor = Reconstructor::new(api);
    for event in events {
        reconstructor.push(event);
    }
    reconstructor
}

/// Reconstructs a hand-written SSE body.
fn reconstruct_body(api: Api, body: &str) -> Reconstructor {
    reconstruct(api, &decode(body.as_bytes(), 0))
}

/// One `data:` event (OpenAI).
fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// One named event (Anthropic).
fn event(value: &Value) -> String {
    let name = value["type"].as_str().unwrap_or("unknown");
    format!("event: {name}\ndata: {value}\n\n")
}

fn finish(reconstructor: &Reconstructor) -> Value {
    reconstructor.finish().expect("something was reconstructed")
}

// ---------------------------------------------------------------------------------------
// Against the mock provider

const SCENARIOS: [Scenario; 4] = [
    Scenario::Text,
    Scenario::Tools,
    Scenario::TextAndTools,
    Scenario::Thinking,
];

/// Chunkings from one character per delta to the whole text in one delta.
const SPLITS: [Split; 7] = [
    Split::Size(1),
    Split::Size(3),
    Split::Size(8),
    Split::Size(100_000),
    Split::Count(1),
    Split::Count(7),
    Split::Count(40),
];

/// The default text, and one with multi-byte characters, escapes and a newline, which a
/// reassembly that works on bytes or on escaped JSON would corrupt.
const TEXTS: [&str; 2] = [
    DEFAULT_TEXT,
    "Grüße, 世界 🦀! Line one\nline \"two\" with a back\\slash and a tab\t.",
];

/// Body frame sizes: the whole body at once, and small frames that cut events apart.
const FRAMES: [usize; 2] = [0, 7];

/// One mock request: controls and parsed body.
struct MockCase {
    label: String,
    controls: Controls,
    request: RequestBody,
}

fn mock_cases(include_usage: bool) -> Vec<MockCase> {
    let body = json!({
        "model": "mock-model-x",
        "stream": true,
        "stream_options": { "include_usage": include_usage },
        "system": "You are terse.",
        "messages": [{ "role": "user", "content": "Say hello, then call the tools." }],
    });
    let request = RequestBody::parse(body.to_string().as_bytes()).expect("valid request");
    let mut cases = Vec::new();
    for scenario in SCENARIOS {
        for split in SPLITS {
            for text in TEXTS {
                cases.push(MockCase {
                    label: format!(
                        "{} / {split:?} / {text:.8}… / include_usage {include_usage}",
                        scenario.name()
                    ),
                    controls: Controls {
                        scenario,
                        text: text.to_owned(),
                        split,
                        ..Controls::default()
                    },
                    request: request.clone(),
                });
            }
        }
    }
    cases
}

fn json_of(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).expect("the mock answers JSON")
}

#[test]
fn openai_streams_reconstruct_to_the_non_streamed_completion() {
    let mut checked = 0;
    for include_usage in [true, false] {
        for case in mock_cases(include_usage) {
            let reply = Reply::new(&case.controls, &case.request, false);
            let mut expected = json_of(&mock_openai::completion(&reply));
            let events = mock_openai::stream_events(&reply, include_usage);
            let expected_usage = TokenUsage {
                input_tokens: expected["usage"]["prompt_tokens"].as_u64(),
                output_tokens: expected["usage"]["completion_tokens"].as_u64(),
            };
            // Exception: without `stream_options.include_usage` OpenAI streams no usage at
            // all, so the reconstruction cannot have the `usage` the non-streamed body has.
            // It must leave the field out rather than invent one.
            if !include_usage {
                expected
                    .as_object_mut()
                    .and_then(|completion| completion.remove("usage"))
                    .expect("the non-streamed completion has usage");
            }
            for frame in FRAMES {
                let reconstructor = reconstruct(Api::OpenAiChat, &decode(&events.concat(), frame));
                let label = format!("{} / frames of {frame}", case.label);
                assert_eq!(finish(&reconstructor), expected, "{label}");
                assert_eq!(reconstructor.skipped(), 0, "{label}");
                assert_eq!(reconstructor.events_seen(), events.len() as u64, "{label}");
                assert_eq!(
                    reconstructor.finish_reasons(),
                    [expected["choices"][0]["finish_reason"].as_str().unwrap()],
                    "{label}"
                );
                let usage = reconstructor.usage();
                if include_usage {
                    assert_eq!(usage, expected_usage, "{label}");
                    assert!(usage.input_tokens.is_some_and(|tokens| tokens > 0));
                } else {
                    assert_eq!(usage, TokenUsage::default(), "{label}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        2 * SCENARIOS.len() * SPLITS.len() * TEXTS.len() * FRAMES.len()
    );
}

#[test]
fn anthropic_streams_reconstruct_to_the_non_streamed_message() {
    let mut checked = 0;
    for case in mock_cases(false) {
        let reply = Reply::new(&case.controls, &case.request, true);
        // No exception: every field of the non-streamed message travels in the stream.
        let expected = json_of(&mock_anthropic::message_body(&reply));
        let events = mock_anthropic::stream_events(&reply);
        for frame in FRAMES {
            let reconstructor =
                reconstruct(Api::AnthropicMessages, &decode(&events.concat(), frame));
            let label = format!("{} / frames of {frame}", case.label);
            assert_eq!(finish(&reconstructor), expected, "{label}");
            assert_eq!(reconstructor.skipped(), 0, "{label}");
            assert_eq!(reconstructor.events_seen(), events.len() as u64, "{label}");
            assert_eq!(
                reconstructor.finish_reasons(),
                [expected["stop_reason"].as_str().unwrap()],
                "{label}"
            );
            // `message_start` says 1 output token; the final count replaces it.
            assert_eq!(
                reconstructor.usage(),
                TokenUsage {
                    input_tokens: expected["usage"]["input_tokens"].as_u64(),
                    output_tokens: expected["usage"]["output_tokens"].as_u64(),
                },
                "{label}"
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        SCENARIOS.len() * SPLITS.len() * TEXTS.len() * FRAMES.len()
    );
}

#[test]
fn scenarios_cover_what_they_claim() {
    // Guards the equality tests against a mock that silently stopped producing the parts
    // under test (an empty answer reconstructs to an empty answer too).
    let request = RequestBody::parse(br#"{"model":"m","stream":true}"#).unwrap();
    let controls = |scenario| Controls {
        scenario,
        ..Controls::default()
    };
    let openai = |scenario| {
        let reply = Reply::new(&controls(scenario), &request, false);
        let events = mock_openai::stream_events(&reply, true);
        finish(&reconstruct(Api::OpenAiChat, &decode(&events.concat(), 0)))
    };
    let anthropic = |scenario| {
        let reply = Reply::new(&controls(scenario), &request, true);
        let events = mock_anthropic::stream_events(&reply);
        finish(&reconstruct(
            Api::AnthropicMessages,
            &decode(&events.concat(), 0),
        ))
    };

    let tools = openai(Scenario::Tools);
    let message = &tools["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(
        message["tool_calls"][1]["function"]["arguments"],
        r#"{"command":"ls -la /tmp && echo \"done\""}"#
    );
    let mixed = openai(Scenario::TextAndTools);
    assert_eq!(mixed["choices"][0]["message"]["content"], DEFAULT_TEXT);
    assert_eq!(mixed["choices"][0]["finish_reason"], "tool_calls");

    let thinking = anthropic(Scenario::Thinking);
    assert_eq!(thinking["content"][0]["type"], "thinking");
    assert_eq!(
        thinking["content"][0]["signature"],
        luthien_mock_upstream::reply::THINKING_SIGNATURE
    );
    let tools = anthropic(Scenario::Tools);
    assert_eq!(
        tools["content"][1]["input"],
        json!({"command": "ls -la /tmp && echo \"done\""})
    );
    assert_eq!(tools["stop_reason"], "tool_use");
}

#[test]
fn mock_stream_errors_keep_the_partial_answer_and_the_error() {
    let request = RequestBody::parse(br#"{"model":"m","stream":true}"#).unwrap();
    let controls = Controls {
        scenario: Scenario::StreamError,
        text: "abcdefghij".to_owned(),
        split: Split::Size(2),
        ..Controls::default()
    };

    let reply = Reply::new(&controls, &request, false);
    let events = mock_openai::stream_events(&reply, true);
    let openai = reconstruct(Api::OpenAiChat, &decode(&events.concat(), 0));
    let completion = finish(&openai);
    assert_eq!(completion["choices"][0]["message"]["content"], "abcdef");
    assert_eq!(completion["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(completion["error"]["type"], "overloaded_error");
    assert_eq!(openai.skipped(), 0);
    assert!(openai.finish_reasons().is_empty());

    let reply = Reply::new(&controls, &request, true);
    let events = mock_anthropic::stream_events(&reply);
    let anthropic = reconstruct(Api::AnthropicMessages, &decode(&events.concat(), 0));
    let message = finish(&anthropic);
    assert_eq!(
        message["content"],
        json!([{"type": "text", "text": "abcdef"}])
    );
    assert_eq!(message["stop_reason"], Value::Null);
    assert_eq!(
        message["error"],
        json!({"type": "overloaded_error", "message": "Overloaded"})
    );
    assert_eq!(anthropic.skipped(), 0);
    // Only `message_start` has reported usage: the input, and 1 output token so far.
    assert_eq!(anthropic.usage().output_tokens, Some(1));
}

#[test]
fn events_rewritten_by_a_policy_reconstruct_like_wire_events() {
    // The client side of a call sees events a policy re-serialised (`SseEvent::from_json`)
    // or rebuilt; they must count exactly like wire events.
    let request = RequestBody::parse(br#"{"model":"m","stream":true}"#).unwrap();
    let controls = Controls {
        scenario: Scenario::TextAndTools,
        ..Controls::default()
    };
    let reply = Reply::new(&controls, &request, true);
    let wire = decode(&mock_anthropic::stream_events(&reply).concat(), 0);
    let rebuilt: Vec<SseEvent> = wire
        .iter()
        .map(|event| SseEvent::from_json(event.event_type(), event.json().unwrap().clone()))
        .collect();
    let mut parsed = Reconstructor::new(Api::AnthropicMessages);
    for event in &wire {
        parsed.push_json(event.event_type(), event.json().unwrap());
    }
    let expected = finish(&reconstruct(Api::AnthropicMessages, &wire));
    assert_eq!(
        finish(&reconstruct(Api::AnthropicMessages, &rebuilt)),
        expected
    );
    assert_eq!(finish(&parsed), expected);
    assert_eq!(parsed.events_seen(), wire.len() as u64);
}

// ---------------------------------------------------------------------------------------
// OpenAI fixtures

/// A chunk with OpenAI's envelope around `choices`.
fn chunk(choices: Value) -> Value {
    json!({
        "id": "chatcmpl-AbC123",
        "object": "chat.completion.chunk",
        "created": 1_727_000_000,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_50cad350e4",
        "choices": choices,
        "usage": null,
    })
}

fn delta(index: u64, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({ "index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason })
}

#[test]
fn openai_two_choices_interleaved_with_logprobs_and_usage() {
    let logprob =
        |token: &str| json!({"token": token, "logprob": -0.1, "bytes": null, "top_logprobs": []});
    let with_logprobs = |index, content: &str| {
        json!({
            "index": index,
            "delta": { "content": content },
            "logprobs": { "content": [logprob(content)], "refusal": null },
            "finish_reason": null,
        })
    };
    let body = [
        chunk(json!([delta(
            0,
            json!({"role": "assistant", "content": "", "refusal": null}),
            None
        )])),
        chunk(json!([delta(
            1,
            json!({"role": "assistant", "content": "", "refusal": null}),
            None
        )])),
        chunk(json!([with_logprobs(1, "Bon")])),
        chunk(json!([with_logprobs(0, "Hel")])),
        chunk(json!([with_logprobs(0, "lo")])),
        chunk(json!([with_logprobs(1, "jour")])),
        chunk(json!([delta(1, json!({}), Some("stop"))])),
        chunk(json!([delta(0, json!({}), Some("length"))])),
        json!({
            "id": "chatcmpl-AbC123", "object": "chat.completion.chunk", "created": 1_727_000_000,
            "model": "gpt-4o-2024-08-06", "service_tier": "default",
            "system_fingerprint": "fp_50cad350e4", "choices": [],
            "usage": {
                "prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "obfuscation": "q9Lx",
        }),
    ]
    .iter()
    .map(data)
    .collect::<String>()
        + "data: [DONE]\n\n";

    let reconstructor = reconstruct_body(Api::OpenAiChat, &body);
    let choice = |index: u64, content: &str, tokens: [&str; 2], finish_reason: &str| {
        json!({
            "index": index,
            "message": { "role": "assistant", "content": content, "refusal": null },
            "logprobs": { "content": [logprob(tokens[0]), logprob(tokens[1])], "refusal": null },
            "finish_reason": finish_reason,
        })
    };
    assert_eq!(
        finish(&reconstructor),
        json!({
            "id": "chatcmpl-AbC123",
            "object": "chat.completion",
            "created": 1_727_000_000,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                choice(0, "Hello", ["Hel", "lo"], "length"),
                choice(1, "Bonjour", ["Bon", "jour"], "stop"),
            ],
            "usage": {
                "prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_50cad350e4",
        })
    );
    assert_eq!(reconstructor.finish_reasons(), ["length", "stop"]);
    assert_eq!(
        reconstructor.usage(),
        TokenUsage {
            input_tokens: Some(12),
            output_tokens: Some(4)
        }
    );
    assert_eq!(reconstructor.events_seen(), 10);
    assert_eq!(reconstructor.skipped(), 0);
}

#[test]
fn openai_refusal() {
    let body = [
        chunk(json!([delta(
            0,
            json!({"role": "assistant", "content": null, "refusal": ""}),
            None
        )])),
        chunk(json!([delta(0, json!({"refusal": "I'm sorry, "}), None)])),
        chunk(json!([delta(
            0,
            json!({"refusal": "I can't help with that."}),
            None
        )])),
        chunk(json!([delta(0, json!({}), Some("stop"))])),
    ]
    .iter()
    .map(data)
    .collect::<String>();
    let completion = finish(&reconstruct_body(Api::OpenAiChat, &body));
    assert_eq!(
        completion["choices"][0]["message"],
        json!({"role": "assistant", "content": null, "refusal": "I'm sorry, I can't help with that."})
    );
}

#[test]
fn openai_parallel_tool_calls_in_one_chunk_and_legacy_function_call() {
    let call = |index, id: Option<&str>, name: Option<&str>, arguments: &str| {
        let mut call = json!({"index": index, "function": {"arguments": arguments}});
        if let Some(id) = id {
            call["id"] = json!(id);
            call["type"] = json!("function");
        }
        if let Some(name) = name {
            call["function"]["name"] = json!(name);
        }
        call
    };
    let body = [
        chunk(json!([delta(
            0,
            json!({"role": "assistant", "content": null}),
            None
        )])),
        chunk(json!([delta(
            0,
            json!({"tool_calls": [
                call(0, Some("call_a"), Some("get_weather"), ""),
                call(1, Some("call_b"), Some("get_time"), "{\"tz\""),
            ]}),
            None
        )])),
        chunk(json!([delta(
            0,
            json!({"tool_calls": [call(1, None, None, ":\"UTC\"}")]}),
            None
        )])),
        chunk(json!([delta(
            0,
            json!({"tool_calls": [call(0, None, None, "{\"city\":\"Oslo\"}")]}),
            None
        )])),
        chunk(json!([delta(0, json!({}), Some("tool_calls"))])),
    ]
    .iter()
    .map(data)
    .collect::<String>();
    let completion = finish(&reconstruct_body(Api::OpenAiChat, &body));
    assert_eq!(
        completion["choices"][0]["message"],
        json!({
            "role": "assistant",
            "content": null,
            "refusal": null,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"arguments": "{\"city\":\"Oslo\"}", "name": "get_weather"}},
                {"id": "call_b", "type": "function", "function": {"arguments": "{\"tz\":\"UTC\"}", "name": "get_time"}},
            ],
        })
    );

    // The deprecated `functions` API streams one `function_call` the same way.
    let body = [
        chunk(json!([delta(0, json!({"role": "assistant", "content": null, "function_call": {"name": "lookup", "arguments": ""}}), None)])),
        chunk(json!([delta(0, json!({"function_call": {"arguments": "{\"q\":"}}), None)])),
        chunk(json!([delta(0, json!({"function_call": {"arguments": "1}"}}), None)])),
        chunk(json!([delta(0, json!({}), Some("function_call"))])),
    ]
    .iter()
    .map(data)
    .collect::<String>();
    let completion = finish(&reconstruct_body(Api::OpenAiChat, &body));
    assert_eq!(
        completion["choices"][0]["message"]["function_call"],
        json!({"name": "lookup", "arguments": "{\"q\":1}"})
    );
}

#[test]
fn openai_compatible_tool_calls_without_index_or_type() {
    // Some OpenAI-compatible servers omit `index` and `type`; ids tell the calls apart.
    let body = [
        json!({"id": "x", "choices": [{"delta": {"role": "assistant", "tool_calls": [{"id": "t1", "function": {"name": "a", "arguments": "{}"}}]}}]}),
        json!({"id": "x", "choices": [{"delta": {"tool_calls": [{"id": "t2", "function": {"name": "b", "arguments": "{\"k\""}}]}}]}),
        json!({"id": "x", "choices": [{"delta": {"tool_calls": [{"function": {"arguments": ":1}"}}]}}]}),
        json!({"id": "x", "choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
    ]
    .iter()
    .map(data)
    .collect::<String>();
    let completion = finish(&reconstruct_body(Api::OpenAiChat, &body));
    assert_eq!(
        completion["choices"][0]["message"]["tool_calls"],
        json!([
            {"id": "t1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"id": "t2", "type": "function", "function": {"name": "b", "arguments": "{\"k\":1}"}},
        ])
    );
}

#[test]
fn openai_unknown_fields_are_kept_and_stream_only_fields_dropped() {
    let body = [
        // Azure opens with a prompt-filter chunk whose envelope fields are blank.
        json!({"id": "", "object": "", "created": 0, "model": "", "choices": [],
               "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}),
        json!({"id": "chatcmpl-z", "object": "chat.completion.chunk", "created": 1_727_000_001,
               "model": "gpt-4o-mini", "obfuscation": "aB3",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "reasoning_content": "Think"},
                            "finish_reason": null, "content_filter_results": {}}]}),
        json!({"id": "chatcmpl-z", "object": "chat.completion.chunk", "created": 1_727_000_001,
               "model": "gpt-4o-mini", "obfuscation": "Zq",
               "choices": [{"index": 0, "delta": {"content": "Hi", "reasoning_content": "ing."},
                            "finish_reason": null,
                            "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}]}),
        json!({"id": "chatcmpl-z", "object": "chat.completion.chunk", "created": 1_727_000_001,
               "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "content_filter_results": {}}]}),
    ]
    .iter()
    .map(data)
    .collect::<String>();
    let completion = finish(&reconstruct_body(Api::OpenAiChat, &body));
    assert_eq!(
        completion,
        json!({
            "id": "chatcmpl-z",
            "object": "chat.completion",
            "created": 1_727_000_001,
            "model": "gpt-4o-mini",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "refusal": null, "reasoning_content": "Thinking."},
                "logprobs": null,
                "finish_reason": "stop",
                "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}},
            }],
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
        })
    );
}

#[test]
fn openai_stream_cut_off_mid_way() {
    let body = [
        chunk(json!([delta(0, json!({"role": "assistant", "content": ""}), None)])),
        chunk(json!([delta(0, json!({"content": "The answer is"}), None)])),
        chunk(json!([delta(0, json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":"}}]}), None)])),
    ]
    .iter()
    .map(data)
    .collect::<String>();
    // The last event is cut in the middle of its data line.
    let body = body + "data: {\"id\":\"chatcmpl-AbC123\",\"choi";
    let reconstructor = reconstruct_body(Api::OpenAiChat, &body);
    let completion = finish(&reconstructor);
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["content"], "The answer is");
    // Arguments are a string in this API: the fragment is kept as it came.
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":"
    );
    assert_eq!(choice["finish_reason"], Value::Null);
    assert!(completion.get("usage").is_none());
    assert!(reconstructor.finish_reasons().is_empty());
    assert_eq!(reconstructor.events_seen(), 4);
    assert_eq!(reconstructor.skipped(), 1, "the truncated event");
}

#[test]
fn openai_error_event_is_recorded() {
    let body = data(&chunk(json!([delta(
        0,
        json!({"role": "assistant", "content": "Par"}),
        None
    )])))
        + &data(
            &json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
        );
    let reconstructor = reconstruct_body(Api::OpenAiChat, &body);
    let completion = finish(&reconstructor);
    assert_eq!(completion["choices"][0]["message"]["content"], "Par");
    assert_eq!(completion["error"]["type"], "server_error");
    assert_eq!(reconstructor.skipped(), 0);

    // An error alone still yields a record.
    let alone = reconstruct_body(
        Api::OpenAiChat,
        &data(&json!({"error": {"message": "overloaded", "type": "server_error"}})),
    );
    assert_eq!(
        finish(&alone),
        json!({"object": "chat.completion", "choices": [], "error": {"message": "overloaded", "type": "server_error"}})
    );
}

#[test]
fn openai_malformed_events_are_skipped_and_counted() {
    let body = [
        data(&chunk(json!([delta(
            0,
            json!({"role": "assistant", "content": "A"}),
            None
        )]))),
        "data: {\"choices\": [{\"delta\": {\"content\": \"lost\"\n\n".to_owned(),
        "data: not json at all\n\n".to_owned(),
        data(&json!([1, 2, 3])),
        data(&chunk(json!("not a list"))),
        // Partly malformed: the good choice counts, the event is counted as skipped.
        data(&chunk(json!([delta(0, json!({"content": "B"}), None), 42]))),
        data(&chunk(json!([delta(0, json!({"content": 7}), None)]))),
        ": keep-alive comment\n\n".to_owned(),
        data(&chunk(json!([delta(
            0,
            json!({"content": "C"}),
            Some("stop")
        )]))),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let reconstructor = reconstruct_body(Api::OpenAiChat, &body);
    assert_eq!(
        finish(&reconstructor)["choices"][0]["message"]["content"],
        "ABC"
    );
    assert_eq!(reconstructor.skipped(), 6);
    assert_eq!(
        reconstructor.events_seen(),
        9,
        "the comment is not an event"
    );
}

// ---------------------------------------------------------------------------------------
// Anthropic fixtures

fn message_start() -> Value {
    json!({
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": 472,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 2,
                "service_tier": "standard",
            },
            "container": null,
        },
    })
}

fn block_start(index: u64, block: Value) -> Value {
    json!({"type": "content_block_start", "index": index, "content_block": block})
}

fn block_delta(index: u64, delta: Value) -> Value {
    json!({"type": "content_block_delta", "index": index, "delta": delta})
}

fn block_stop(index: u64) -> Value {
    json!({"type": "content_block_stop", "index": index})
}

fn message_delta(stop_reason: &str, usage: Value) -> Value {
    json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": usage})
}

fn anthropic_body(events: &[Value]) -> String {
    events.iter().map(event).collect()
}

#[test]
fn anthropic_redacted_thinking_and_thinking_with_tool_use() {
    let body = anthropic_body(&[
        message_start(),
        json!({"type": "ping"}),
        block_start(
            0,
            json!({"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"}),
        ),
        block_stop(0),
        block_start(
            1,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
        ),
        block_delta(
            1,
            json!({"type": "thinking_delta", "thinking": "Need the weather, "}),
        ),
        block_delta(
            1,
            json!({"type": "thinking_delta", "thinking": "so call the tool."}),
        ),
        block_delta(
            1,
            json!({"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}),
        ),
        block_stop(1),
        block_start(
            2,
            json!({"type": "tool_use", "id": "toolu_01T1x", "name": "get_weather", "input": {}}),
        ),
        block_delta(2, json!({"type": "input_json_delta", "partial_json": ""})),
        block_delta(
            2,
            json!({"type": "input_json_delta", "partial_json": "{\"location\": \"San Fra"}),
        ),
        block_delta(
            2,
            json!({"type": "input_json_delta", "partial_json": "ncisco, CA\", \"unit\": \"fahrenheit\"}"}),
        ),
        block_stop(2),
        block_start(
            3,
            json!({"type": "tool_use", "id": "toolu_01T2y", "name": "get_time", "input": {}}),
        ),
        block_stop(3),
        message_delta("tool_use", json!({"output_tokens": 89})),
        json!({"type": "message_stop"}),
    ]);
    let reconstructor = reconstruct_body(Api::AnthropicMessages, &body);
    assert_eq!(
        finish(&reconstructor),
        json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"},
                {"type": "thinking", "thinking": "Need the weather, so call the tool.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
                {"type": "tool_use", "id": "toolu_01T1x", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "fahrenheit"}},
                // No input streamed: the `{}` of `content_block_start` stands.
                {"type": "tool_use", "id": "toolu_01T2y", "name": "get_time", "input": {}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {
                "input_tokens": 472,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 89,
                "service_tier": "standard",
            },
            "container": null,
        })
    );
    assert_eq!(reconstructor.finish_reasons(), ["tool_use"]);
    assert_eq!(reconstructor.skipped(), 0);
    assert_eq!(reconstructor.events_seen(), 18);
}

#[test]
fn anthropic_citations_deltas() {
    let citation = |text: &str, start: u64| {
        json!({"type": "char_location", "cited_text": text, "document_index": 0,
               "document_title": "Example Document", "start_char_index": start,
               "end_char_index": start + text.len() as u64})
    };
    let body = anthropic_body(&[
        message_start(),
        block_start(0, json!({"type": "text", "text": ""})),
        block_delta(
            0,
            json!({"type": "text_delta", "text": "According to the document, "}),
        ),
        block_stop(0),
        // With citations the block starts with an empty list (or none; both work).
        block_start(1, json!({"type": "text", "text": "", "citations": []})),
        block_delta(
            1,
            json!({"type": "citations_delta", "citation": citation("The grass is green.", 0)}),
        ),
        block_delta(
            1,
            json!({"type": "text_delta", "text": "the grass is green"}),
        ),
        block_delta(
            1,
            json!({"type": "citations_delta", "citation": citation("The sky is blue.", 20)}),
        ),
        block_delta(
            1,
            json!({"type": "text_delta", "text": " and the sky is blue."}),
        ),
        block_stop(1),
        block_start(2, json!({"type": "text", "text": ""})),
        block_delta(
            2,
            json!({"type": "citations_delta", "citation": citation("Water is wet.", 37)}),
        ),
        block_delta(2, json!({"type": "text_delta", "text": " Water is wet."})),
        block_stop(2),
        message_delta("end_turn", json!({"output_tokens": 30})),
        json!({"type": "message_stop"}),
    ]);
    let message = finish(&reconstruct_body(Api::AnthropicMessages, &body));
    assert_eq!(
        message["content"],
        json!([
            {"type": "text", "text": "According to the document, "},
            {"type": "text", "text": "the grass is green and the sky is blue.",
             "citations": [citation("The grass is green.", 0), citation("The sky is blue.", 20)]},
            {"type": "text", "text": " Water is wet.", "citations": [citation("Water is wet.", 37)]},
        ])
    );
}

#[test]
fn anthropic_server_tools_unknown_blocks_and_deltas_are_kept() {
    let search_result = json!({"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01",
        "content": [{"type": "web_search_result", "title": "Weather", "url": "https://example.com",
                     "encrypted_content": "Eo8BCioIAhgB", "page_age": null}]});
    let body = anthropic_body(&[
        message_start(),
        block_start(
            0,
            json!({"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {}}),
        ),
        block_delta(
            0,
            json!({"type": "input_json_delta", "partial_json": "{\"query\": \"weather"}),
        ),
        block_delta(
            0,
            json!({"type": "input_json_delta", "partial_json": " paris\"}"}),
        ),
        block_stop(0),
        block_start(1, search_result.clone()),
        block_stop(1),
        block_start(2, json!({"type": "compaction", "content": ""})),
        block_delta(
            2,
            json!({"type": "compaction_delta", "content": "Summary so far"}),
        ),
        block_delta(2, json!({"type": "compaction_delta", "content": "."})),
        block_stop(2),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null, "container": {"id": "c1"}},
               "usage": {"input_tokens": 480, "output_tokens": 55, "cache_read_input_tokens": null,
                         "server_tool_use": {"web_search_requests": 1}},
               "context_management": {"applied_edits": []}}),
        json!({"type": "message_stop"}),
    ]);
    let reconstructor = reconstruct_body(Api::AnthropicMessages, &body);
    let message = finish(&reconstructor);
    assert_eq!(
        message["content"],
        json!([
            {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "weather paris"}},
            search_result,
            {"type": "compaction", "content": "Summary so far."},
        ])
    );
    assert_eq!(message["container"], json!({"id": "c1"}));
    assert_eq!(message["context_management"], json!({"applied_edits": []}));
    // Usage fields are replaced one by one; a `null` does not erase a count.
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 480, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
               "output_tokens": 55, "service_tier": "standard",
               "server_tool_use": {"web_search_requests": 1}})
    );
    assert_eq!(
        reconstructor.usage(),
        TokenUsage {
            input_tokens: Some(480),
            output_tokens: Some(55)
        }
    );
    assert_eq!(reconstructor.skipped(), 0);
}

#[test]
fn anthropic_output_tokens_take_the_latest_count() {
    let body = anthropic_body(&[
        message_start(),
        block_start(0, json!({"type": "text", "text": "Hi"})),
        block_stop(0),
        message_delta("max_tokens", json!({"output_tokens": 10})),
        message_delta("max_tokens", json!({"output_tokens": 12})),
        json!({"type": "message_stop"}),
    ]);
    let reconstructor = reconstruct_body(Api::AnthropicMessages, &body);
    assert_eq!(reconstructor.usage().output_tokens, Some(12));
    // The initial text of `content_block_start` is kept.
    assert_eq!(finish(&reconstructor)["content"][0]["text"], "Hi");
}

#[test]
fn anthropic_stream_cut_off_mid_way() {
    let body = anthropic_body(&[
        message_start(),
        block_start(0, json!({"type": "text", "text": ""})),
        block_delta(0, json!({"type": "text_delta", "text": "Let me check"})),
        block_stop(0),
        block_start(
            1,
            json!({"type": "tool_use", "id": "toolu_9", "name": "bash", "input": {}}),
        ),
        block_delta(
            1,
            json!({"type": "input_json_delta", "partial_json": "{\"command\": \"ls"}),
        ),
    ]);
    let reconstructor = reconstruct_body(Api::AnthropicMessages, &body);
    let message = finish(&reconstructor);
    assert_eq!(
        message["content"],
        json!([
            {"type": "text", "text": "Let me check"},
            // The input never completed: kept as the raw text, and counted.
            {"type": "tool_use", "id": "toolu_9", "name": "bash", "input": "{\"command\": \"ls"},
        ])
    );
    assert_eq!(message["stop_reason"], Value::Null);
    assert_eq!(message["usage"]["output_tokens"], 2);
    assert!(reconstructor.finish_reasons().is_empty());
    assert_eq!(reconstructor.skipped(), 1);
    // `finish` does not consume: asking again gives the same answer.
    assert_eq!(finish(&reconstructor), message);

    // Input that is still malformed at its `content_block_stop` is counted there, once.
    let body = anthropic_body(&[
        message_start(),
        block_start(
            0,
            json!({"type": "tool_use", "id": "toolu_9", "name": "bash", "input": {}}),
        ),
        block_delta(
            0,
            json!({"type": "input_json_delta", "partial_json": "{\"command\": "}),
        ),
        block_stop(0),
    ]);
    let reconstructor = reconstruct_body(Api::AnthropicMessages, &body);
    assert_eq!(
        finish(&reconstructor)["content"][0]["input"],
        "{\"command\": "
    );
    assert_eq!(reconstructor.skipped(), 1);
}

#[test]
fn anthropic_error_event_is_recorded() {
    let body = anthropic_body(&[
        message_start(),
        block_start(0, json!({"type": "text", "text": ""})),
        block_delta(0, json!({"type": "text_delta", "text": "Partial"})),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]);
    let reconstructor = reconstruct_body(Api::AnthropicMessages, &body);
    let message = finish(&reconstructor);
    assert_eq!(message["content"][0]["text"], "Partial");
    assert_eq!(
        message["error"],
        json!({"type": "overloaded_error", "message": "Overloaded"})
    );
    assert_eq!(reconstructor.skipped(), 0);
}

#[test]
fn anthropic_malformed_and_unknown_events_are_skipped_and_counted() {
    let body = [
        event(&message_start()),
        event(&block_start(0, json!({"type": "text", "text": ""}))),
        event(&block_delta(0, json!({"type": "text_delta", "text": "One"}))),
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_de\n\n".to_owned(),
        // A delta for a block that never started, one without text, one without an index.
        event(&block_delta(5, json!({"type": "text_delta", "text": "lost"}))),
        event(&block_delta(0, json!({"type": "text_delta"}))),
        event(&json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}})),
        event(&json!({"type": "some_future_event", "index": 0})),
        event(&json!("just a string")),
        event(&block_delta(0, json!({"type": "text_delta", "text": " two"}))),
        event(&block_stop(0)),
        "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
        event(&message_delta("end_turn", json!({"output_tokens": 3}))),
        event(&json!({"type": "message_stop"})),
    ]
    .concat();
    let reconstructor = reconstruct_body(Api::AnthropicMessages, &body);
    assert_eq!(finish(&reconstructor)["content"][0]["text"], "One two");
    assert_eq!(reconstructor.skipped(), 6);
    assert_eq!(reconstructor.events_seen(), 14);
}

#[test]
fn anthropic_without_message_start_still_has_the_message_shape() {
    let body = anthropic_body(&[
        block_start(0, json!({"type": "text", "text": ""})),
        block_delta(0, json!({"type": "text_delta", "text": "orphan"})),
    ]);
    assert_eq!(
        finish(&reconstruct_body(Api::AnthropicMessages, &body)),
        json!({"type": "message", "role": "assistant",
               "content": [{"type": "text", "text": "orphan"}],
               "stop_reason": null, "stop_sequence": null})
    );
}

// ---------------------------------------------------------------------------------------
// Both

#[test]
fn nothing_seen_gives_none() {
    for api in [Api::OpenAiChat, Api::AnthropicMessages] {
        let empty = Reconstructor::new(api);
        assert_eq!(empty.finish(), None);
        assert_eq!(empty.usage(), TokenUsage::default());
        assert!(empty.finish_reasons().is_empty());
        assert_eq!((empty.events_seen(), empty.skipped()), (0, 0));

        let noise = reconstruct_body(
            api,
            ": comment\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\ndata: [DONE]\n\n",
        );
        if api == Api::AnthropicMessages {
            assert_eq!(noise.finish(), None, "pings carry nothing");
        }
        assert_eq!(noise.events_seen(), 2);

        let garbage = reconstruct_body(api, "data: {{{\n\n");
        assert_eq!(garbage.finish(), None);
        assert_eq!(garbage.skipped(), 1);
    }
}
