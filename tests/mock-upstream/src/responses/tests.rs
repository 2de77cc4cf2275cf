//! The Responses renderer, on its events before framing (`stream::events`); the framing,
//! and the routes around the renderer, are tested over HTTP in `tests/mock/responses.rs`.

use serde_json::{Value, json};

use super::*;
use crate::scenario::{Controls, Scenario, Split};

const SCENARIOS: [Scenario; 6] = [
    Scenario::Text,
    Scenario::Tools,
    Scenario::TextAndTools,
    Scenario::Thinking,
    Scenario::Incomplete,
    Scenario::Failed,
];

/// The splits each scenario is streamed with: several characters, one, and a count.
const SPLITS: [Split; 3] = [Split::Size(8), Split::Size(1), Split::Count(5)];

/// An event's name and its data.
type Event = (&'static str, Value);

fn request(stream: bool) -> Request {
    let body = json!({
        "model": "gpt-4o-mini",
        "instructions": "You are terse.",
        "input": [
            { "role": "user", "content": "Say hello to the world." },
            { "type": "message", "role": "user",
              "content": [{ "type": "input_text", "text": "Then stop." }] },
        ],
        "tools": [{ "type": "function", "name": "get_weather", "parameters": {} }],
        "temperature": 0.5,
        "stream": stream,
    });
    Request::parse(body.to_string().as_bytes()).expect("valid request")
}

fn reply(scenario: Scenario, split: Split, request: &Request) -> Reply {
    let controls = Controls {
        scenario,
        split,
        ..Controls::default()
    };
    Reply::new(&controls, &request.body, true)
}

/// The non-streamed response `RESPONSE_ID`, as JSON.
fn body(reply: &Reply, request: &Request) -> Value {
    serde_json::from_slice(&response_body(RESPONSE_ID, reply, request)).expect("JSON")
}

/// The streamed response `RESPONSE_ID`.
fn events(reply: &Reply, request: &Request) -> Vec<Event> {
    stream::events(RESPONSE_ID, reply, request)
}

/// The events of the streamed answer to [`request`] in `scenario`.
fn streamed(scenario: Scenario, split: Split) -> Vec<Event> {
    let request = request(true);
    events(&reply(scenario, split, &request), &request)
}

#[test]
fn the_terminal_response_is_the_non_streamed_body() {
    for scenario in SCENARIOS {
        for split in SPLITS {
            let request = request(true);
            let reply = reply(scenario, split, &request);
            let events = events(&reply, &request);
            let (name, last) = events.last().expect("events");
            let expected = match scenario {
                Scenario::Failed => "response.failed",
                Scenario::Incomplete => "response.incomplete",
                _ => "response.completed",
            };
            assert_eq!(*name, expected, "{scenario:?}");
            assert_eq!(
                last["response"],
                body(&reply, &request),
                "{scenario:?} {split:?}"
            );
        }
    }
}

#[test]
fn sequence_numbers_count_from_zero() {
    for scenario in SCENARIOS.into_iter().chain([Scenario::StreamError]) {
        for (expected, (name, data)) in streamed(scenario, Split::Size(3)).iter().enumerate() {
            assert_eq!(data["sequence_number"], expected, "{scenario:?} {name}");
            // `type` then `sequence_number` lead every event.
            let keys: Vec<&String> = data.as_object().expect("object").keys().take(2).collect();
            assert_eq!(keys, ["type", "sequence_number"]);
        }
    }
}

/// The fields each event type must carry, from the SDK's `types/responses/*_event.py`.
fn required_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "response.created"
        | "response.in_progress"
        | "response.completed"
        | "response.incomplete"
        | "response.failed" => &["response"],
        "response.output_item.added" | "response.output_item.done" => &["output_index", "item"],
        "response.content_part.added" | "response.content_part.done" => {
            &["item_id", "output_index", "content_index", "part"]
        }
        "response.output_text.delta" => &[
            "item_id",
            "output_index",
            "content_index",
            "delta",
            "logprobs",
        ],
        "response.output_text.done" => &[
            "item_id",
            "output_index",
            "content_index",
            "text",
            "logprobs",
        ],
        "response.function_call_arguments.delta" => &["item_id", "output_index", "delta"],
        "response.function_call_arguments.done" => &["item_id", "output_index", "arguments"],
        "response.reasoning_summary_part.added" | "response.reasoning_summary_part.done" => {
            &["item_id", "output_index", "summary_index", "part"]
        }
        "response.reasoning_summary_text.delta" => {
            &["item_id", "output_index", "summary_index", "delta"]
        }
        "response.reasoning_summary_text.done" => {
            &["item_id", "output_index", "summary_index", "text"]
        }
        "error" => &["error"],
        other => panic!("unexpected event type {other}"),
    }
}

/// The fields the SDK's `Response` model requires (no default), plus `status` and `usage`.
const RESPONSE_FIELDS: [&str; 10] = [
    "id",
    "object",
    "created_at",
    "model",
    "output",
    "parallel_tool_calls",
    "tool_choice",
    "tools",
    "status",
    "usage",
];

#[test]
fn every_event_is_well_formed() {
    for scenario in SCENARIOS.into_iter().chain([Scenario::StreamError]) {
        let request = request(true);
        let reply = reply(scenario, Split::Size(5), &request);
        for (name, data) in events(&reply, &request) {
            let fields = data.as_object().expect("object");
            let mut expected = vec!["type", "sequence_number"];
            expected.extend(required_fields(name));
            let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
            keys.sort_unstable();
            expected.sort_unstable();
            assert_eq!(keys, expected, "{scenario:?} {name}");

            if let Some(response) = fields.get("response") {
                for field in RESPONSE_FIELDS {
                    assert!(response.get(field).is_some(), "{name} lacks {field}");
                }
                assert_eq!(response["object"], "response");
                assert_eq!(response["id"], RESPONSE_ID);
                assert_eq!(response["model"], "gpt-4o-mini");
                assert_eq!(response["instructions"], "You are terse.");
                assert_eq!(response["temperature"], 0.5);
                assert_eq!(response["tools"], request.fields["tools"]);
                if name == "response.created" || name == "response.in_progress" {
                    assert_eq!(response["status"], "in_progress");
                    assert_eq!(response["output"], json!([]));
                    assert_eq!(response["usage"], Value::Null);
                }
            }
            if name.ends_with(".delta") {
                assert!(
                    data["delta"]
                        .as_str()
                        .is_some_and(|delta| !delta.is_empty()),
                    "{name}"
                );
            }
            if name == "response.output_item.added" {
                let item = &data["item"];
                match item["type"].as_str() {
                    Some("message") => {
                        assert_eq!(item["status"], "in_progress");
                        assert_eq!(item["content"], json!([]));
                    }
                    Some("function_call") => {
                        assert_eq!(item["status"], "in_progress");
                        assert_eq!(item["arguments"], "");
                    }
                    Some("reasoning") => assert_eq!(item["summary"], json!([])),
                    other => panic!("unexpected item type {other:?}"),
                }
            }
            if name == "response.content_part.added" {
                assert_eq!(data["part"], output_text(""));
            }
            if name == "response.reasoning_summary_part.added" {
                assert_eq!(data["part"], summary_part(""));
            }
        }
    }
}

/// Where `encrypted_content` appears in the stream: the names of those events.
fn encrypted_content_carriers(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter(|(_, data)| data.to_string().contains("encrypted_content"))
        .map(|(name, _)| *name)
        .collect()
}

#[test]
fn encrypted_content_is_only_in_finished_items() {
    let events = streamed(Scenario::Thinking, Split::Size(8));
    assert_eq!(
        encrypted_content_carriers(&events),
        ["response.output_item.done", "response.completed"]
    );
    let (_, done) = events
        .iter()
        .find(|(name, data)| {
            *name == "response.output_item.done" && data["item"]["type"] == "reasoning"
        })
        .expect("reasoning done");
    assert_eq!(
        done["item"]["encrypted_content"],
        REASONING_ENCRYPTED_CONTENT
    );
    assert_eq!(
        done["item"]["summary"][0]["text"],
        crate::reply::THINKING_TEXT
    );

    // Without reasoning, nothing is encrypted.
    let events = streamed(Scenario::Text, Split::Size(8));
    assert!(encrypted_content_carriers(&events).is_empty());
}

/// Rebuilds the output from the added items and the deltas, as the SDK's stream state does,
/// checking each event against the item it belongs to.
fn rebuild(events: &[Event]) -> Vec<Value> {
    let mut output: Vec<Value> = Vec::new();
    for (name, data) in events {
        if *name == "response.output_item.added" {
            assert_eq!(
                data["output_index"],
                output.len(),
                "items added out of order"
            );
            output.push(data["item"].clone());
            continue;
        }
        let Some(index) = data["output_index"].as_u64() else {
            continue;
        };
        let item = &mut output[index as usize];
        if let Some(item_id) = data.get("item_id") {
            assert_eq!(item["id"], *item_id, "{name}");
        }
        // A message's text parts are its `content`, a reasoning item's its `summary`.
        let (parts, index_field) = if data.get("summary_index").is_some() {
            ("summary", "summary_index")
        } else {
            ("content", "content_index")
        };
        match *name {
            "response.output_item.done" => {
                assert_eq!(item["id"], data["item"]["id"]);
                *item = data["item"].clone();
            }
            "response.content_part.added" | "response.reasoning_summary_part.added" => {
                add_part(&mut item[parts], data, index_field);
            }
            "response.output_text.delta" | "response.reasoning_summary_text.delta" => {
                append(&mut item[parts][at(data, index_field)]["text"], data);
            }
            "response.function_call_arguments.delta" => append(&mut item["arguments"], data),
            "response.output_text.done" | "response.reasoning_summary_text.done" => {
                assert_eq!(item[parts][at(data, index_field)]["text"], data["text"]);
            }
            "response.content_part.done" | "response.reasoning_summary_part.done" => {
                assert_eq!(item[parts][at(data, index_field)], data["part"]);
            }
            "response.function_call_arguments.done" => {
                assert_eq!(item["arguments"], data["arguments"]);
            }
            _ => {}
        }
    }
    output
}

/// The event's `field`, an index.
fn at(data: &Value, field: &str) -> usize {
    data[field].as_u64().expect(field) as usize
}

/// Adds the event's `part` to `parts`, whose next index its `index_field` must be.
fn add_part(parts: &mut Value, data: &Value, index_field: &str) {
    let parts = parts.as_array_mut().expect("parts");
    assert_eq!(
        at(data, index_field),
        parts.len(),
        "parts added out of order"
    );
    parts.push(data["part"].clone());
}

/// Appends the event's `delta` to the string `text`.
fn append(text: &mut Value, data: &Value) {
    let joined = format!(
        "{}{}",
        text.as_str().expect("text"),
        data["delta"].as_str().expect("delta")
    );
    *text = joined.into();
}

#[test]
fn deltas_rebuild_the_final_output() {
    // A failed response's message is never finished, so there is nothing to rebuild it to.
    for scenario in SCENARIOS.into_iter().filter(|s| *s != Scenario::Failed) {
        for split in SPLITS {
            let events = streamed(scenario, split);
            let (_, last) = events.last().expect("events");
            let final_output = last["response"]["output"].clone();

            // Before `output_item.done` replaces them, the rebuilt items differ from the final
            // ones only in status and encrypted content.
            let added_and_deltas: Vec<Event> = events
                .iter()
                .filter(|(name, _)| *name != "response.output_item.done")
                .cloned()
                .collect();
            let mut partial = rebuild(&added_and_deltas);
            for (rebuilt, done) in partial
                .iter_mut()
                .zip(final_output.as_array().expect("output"))
            {
                if let Some(status) = done.get("status") {
                    rebuilt["status"] = status.clone();
                }
                if let Some(encrypted) = done.get("encrypted_content") {
                    rebuilt["encrypted_content"] = encrypted.clone();
                }
            }
            assert_eq!(
                Value::Array(partial),
                final_output,
                "{scenario:?} {split:?}"
            );
            assert_eq!(Value::Array(rebuild(&events)), final_output, "{scenario:?}");
        }
    }
}

#[test]
fn scenarios_have_the_documented_output() {
    let request = request(false);
    let output = |scenario| body(&reply(scenario, Split::Size(8), &request), &request);
    let types = |body: &Value| -> Vec<Value> {
        let items = body["output"].as_array().expect("output");
        items.iter().map(|item| item["type"].clone()).collect()
    };

    let text = output(Scenario::Text);
    assert_eq!(text["status"], "completed");
    assert_eq!(text["completed_at"], COMPLETED_AT);
    assert_eq!(
        text["output"],
        json!([{
            "type": "message", "id": MESSAGE_ID, "status": "completed", "role": "assistant",
            "content": [{ "type": "output_text", "text": crate::scenario::DEFAULT_TEXT,
                          "annotations": [], "logprobs": [] }],
        }])
    );
    // Every string's words count: 11 under `input` (roles and types too), 3 of `instructions`.
    assert_eq!(text["usage"]["input_tokens"], 14);
    assert_eq!(text["usage"]["output_tokens"], 14);
    assert_eq!(text["usage"]["total_tokens"], 28);

    let tools = output(Scenario::Tools);
    let calls = tools["output"].as_array().expect("output");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0],
        json!({
            "type": "function_call", "id": "fc_mock_0001", "call_id": "call_mock_0001",
            "name": "get_weather", "arguments": r#"{"city":"Paris"}"#, "status": "completed",
        })
    );
    assert_eq!(calls[1]["call_id"], "call_mock_0002");
    assert_eq!(calls[1]["name"], "bash");

    let mixed = output(Scenario::TextAndTools);
    assert_eq!(types(&mixed), ["message", "function_call"]);

    let thinking = output(Scenario::Thinking);
    assert_eq!(types(&thinking), ["reasoning", "message"]);
    let reasoning_tokens = crate::reply::words(crate::reply::THINKING_TEXT);
    assert_eq!(
        thinking["usage"]["output_tokens_details"]["reasoning_tokens"],
        reasoning_tokens
    );

    let incomplete = output(Scenario::Incomplete);
    assert_eq!(incomplete["status"], "incomplete");
    assert_eq!(
        incomplete["incomplete_details"],
        json!({ "reason": "max_output_tokens" })
    );
    assert_eq!(incomplete["output"][0]["status"], "incomplete");
    assert_eq!(incomplete["completed_at"], Value::Null);

    let failed = output(Scenario::Failed);
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"],
        json!({ "code": "server_error", "message": FAILURE_MESSAGE })
    );
    assert_eq!(failed["usage"], Value::Null);
    let partial = failed["output"][0]["content"][0]["text"]
        .as_str()
        .expect("text");
    assert!(!partial.is_empty() && crate::scenario::DEFAULT_TEXT.starts_with(partial));
    assert!(partial.len() < crate::scenario::DEFAULT_TEXT.len());
}

#[test]
fn stream_error_breaks_off_with_a_nested_error() {
    let request = request(true);
    let reply = reply(Scenario::StreamError, Split::Size(8), &request);
    let events = events(&reply, &request);
    let (name, last) = events.last().expect("events");
    assert_eq!(*name, "error");
    assert_eq!(
        *last,
        json!({
            "type": "error",
            "sequence_number": events.len() - 1,
            "error": { "type": "server_error", "code": "server_error", "message": "Overloaded", "param": null },
        })
    );
    let deltas = events
        .iter()
        .filter(|(name, _)| *name == "response.output_text.delta")
        .count();
    assert_eq!(deltas, reply.text_deltas().len().div_ceil(2));
    assert!(
        events
            .iter()
            .all(|(name, _)| !name.starts_with("response.completed"))
    );
}

#[test]
fn a_replay_resumes_after_starting_after() {
    let request = Request::empty();
    let reply = reply(Scenario::TextAndTools, Split::Size(8), &request);
    let all = stream_events("resp_x", &reply, &request, None);
    for after in [0_u64, 5, 1000] {
        let resumed = stream_events("resp_x", &reply, &request, Some(after));
        let skip = usize::try_from(after + 1).expect("small").min(all.len());
        assert_eq!(resumed, all[skip..], "after {after}");
    }
}

#[test]
fn request_fields_are_checked_and_echoed() {
    let bad = [
        json!({ "input": 3 }),
        json!({ "instructions": ["x"] }),
        json!({ "tools": {} }),
        json!({ "include": "reasoning.encrypted_content" }),
        json!({ "metadata": [] }),
        json!({ "stream": "yes" }),
        json!({ "model": 1 }),
    ];
    for body in bad {
        assert!(
            Request::parse(body.to_string().as_bytes()).is_err(),
            "{body}"
        );
    }
    assert!(Request::parse(b"[]").is_err());

    let request = Request::parse(br#"{"input":"one two three","service_tier":"auto","metadata":{"k":"v"},"tool_choice":"required"}"#)
        .expect("valid");
    assert_eq!(request.body.input_tokens, 3);
    let reply = reply(Scenario::Text, Split::Size(8), &request);
    let body: Value =
        serde_json::from_slice(&response_body("resp_y", &reply, &request)).expect("JSON");
    assert_eq!(body["id"], "resp_y");
    assert_eq!(body["model"], "mock-model");
    assert_eq!(body["service_tier"], "default");
    assert_eq!(body["metadata"], json!({ "k": "v" }));
    assert_eq!(body["tool_choice"], "required");
    assert_eq!(body["instructions"], Value::Null);
    assert_eq!(
        body["text"],
        json!({ "format": { "type": "text" }, "verbosity": "medium" })
    );
}

#[test]
fn input_items_are_paginated() {
    let page = |limit, order, after| -> Value {
        serde_json::from_slice(&input_items_body(limit, order, after).expect("valid"))
            .expect("JSON")
    };
    let all = page(None, None, None);
    assert_eq!(all["object"], "list");
    assert_eq!(
        all["first_id"], "msg_mock_input_0002",
        "newest first by default"
    );
    assert_eq!(all["last_id"], "msg_mock_input_0001");
    assert_eq!(all["has_more"], false);
    assert_eq!(all["data"][0]["content"][0]["type"], "input_text");

    let first = page(Some("1"), Some("asc"), None);
    assert_eq!(first["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(first["has_more"], true);
    let next = page(Some("1"), Some("asc"), Some("msg_mock_input_0001"));
    assert_eq!(next["first_id"], "msg_mock_input_0002");
    assert_eq!(next["has_more"], false);

    assert!(input_items_body(Some("0"), None, None).is_err());
    assert!(input_items_body(None, Some("up"), None).is_err());
    assert!(input_items_body(None, None, Some("msg_nope")).is_err());
}

#[test]
fn compaction_keeps_the_user_messages() {
    let request = request(false);
    let body: Value = serde_json::from_slice(&compacted_body(&request)).expect("JSON");
    assert_eq!(body["object"], "response.compaction");
    let output = body["output"].as_array().expect("output");
    assert_eq!(output.len(), 3);
    assert_eq!(
        output[0],
        json!({ "type": "message", "role": "user",
                "content": [{ "type": "input_text", "text": "Say hello to the world." }] })
    );
    assert_eq!(output[1]["content"][0]["text"], "Then stop.");
    assert_eq!(output[2]["type"], "compaction");
    assert_eq!(output[2]["encrypted_content"], COMPACTION_ENCRYPTED_CONTENT);
    assert_eq!(body["usage"]["input_tokens"], request.body.input_tokens);

    let counted: Value = serde_json::from_slice(&input_tokens_body(&request)).expect("JSON");
    assert_eq!(
        counted,
        json!({ "object": "response.input_tokens", "input_tokens": 14 })
    );
}
