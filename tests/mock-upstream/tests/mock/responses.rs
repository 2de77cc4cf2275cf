//! The OpenAI Responses format over HTTP: exact structure, stream == non-stream, the
//! auxiliary endpoints, and the scenarios that only make sense here.

use std::time::Duration;

use http::Method;
use luthien_mock_upstream::MockUpstream;
use luthien_mock_upstream::reply::Reply;
use luthien_mock_upstream::responses::{self, RESPONSE_ID, Request};
use luthien_mock_upstream::scenario::{Controls, Scenario};
use serde_json::{Value, json};

use crate::support::{
    ANTHROPIC, OPENAI, RESPONSES, anthropic_events, anthropic_request, assert_same_bytes,
    fresh_answer, get, openai_request, post, responses_request, send, slow_stream,
    whole_and_stream,
};

const SCENARIOS: [&str; 6] = [
    "text",
    "tools",
    "text_and_tools",
    "thinking",
    "incomplete",
    "failed",
];

#[tokio::test]
async fn non_stream_text_is_byte_exact() {
    let answer = fresh_answer(
        RESPONSES,
        &[("x-mock-text", "Hi there")],
        &responses_request(false),
        "application/json",
    )
    .await;
    assert_eq!(
        answer.text(),
        concat!(
            r#"{"id":"resp_mock_0001","object":"response","created_at":1700000000,"#,
            r#""status":"completed","background":false,"completed_at":1700000001,"#,
            r#""error":null,"incomplete_details":null,"instructions":"You are terse.","#,
            r#""max_output_tokens":null,"max_tool_calls":null,"model":"gpt-4o-mini","#,
            r#""output":[{"type":"message","id":"msg_mock_0001","status":"completed","#,
            r#""role":"assistant","content":[{"type":"output_text","text":"Hi there","#,
            r#""annotations":[],"logprobs":[]}]}],"parallel_tool_calls":true,"#,
            r#""previous_response_id":null,"prompt_cache_key":null,"#,
            r#""reasoning":{"effort":null,"summary":null},"safety_identifier":null,"#,
            r#""service_tier":"default","store":true,"temperature":1.0,"#,
            r#""text":{"format":{"type":"text"},"verbosity":"medium"},"tool_choice":"auto","#,
            r#""tools":[],"top_logprobs":0,"top_p":1.0,"truncation":"disabled","#,
            r#""usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":0,"#,
            r#""cache_write_tokens":0},"output_tokens":2,"#,
            r#""output_tokens_details":{"reasoning_tokens":0},"total_tokens":11},"#,
            r#""user":null,"metadata":{}}"#
        )
    );
}

#[tokio::test]
async fn stream_ends_with_the_non_stream_answer() {
    let mock = MockUpstream::start().await.expect("mock");
    for scenario in SCENARIOS {
        for chunking in [("x-mock-chunk-size", "3"), ("x-mock-chunks", "7")] {
            let headers = [("x-mock-scenario", scenario), chunking];
            let (whole, stream) =
                whole_and_stream(&mock, RESPONSES, &headers, responses_request).await;
            assert!(!stream.text().contains("[DONE]"));

            let events = anthropic_events(&stream);
            for (position, (_, data)) in events.iter().enumerate() {
                assert_eq!(data["sequence_number"], position, "{scenario}");
            }
            let (name, last) = events.last().expect("events");
            assert!(name.starts_with("response."), "{scenario}: {name}");
            assert_eq!(last["response"], whole.json(), "{scenario}");
        }
    }
    assert_eq!(mock.completed_streams(), SCENARIOS.len() * 2);
}

#[tokio::test]
async fn function_calls_match_the_chat_tool_calls() {
    let mock = MockUpstream::start().await.expect("mock");
    let headers = [("x-mock-scenario", "tools")];
    let responses = post(&mock, RESPONSES, &headers, &responses_request(false))
        .await
        .json();
    let chat = post(&mock, OPENAI, &headers, &openai_request(false, false))
        .await
        .json();
    let calls = chat["choices"][0]["message"]["tool_calls"]
        .as_array()
        .expect("chat calls");
    let items = responses["output"].as_array().expect("output");
    assert_eq!(items.len(), calls.len());
    for (item, call) in items.iter().zip(calls) {
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["call_id"], call["id"]);
        assert_eq!(item["name"], call["function"]["name"]);
        assert_eq!(item["arguments"], call["function"]["arguments"]);
    }
}

#[tokio::test]
async fn stream_error_breaks_off_with_a_nested_error_event() {
    let mock = MockUpstream::start().await.expect("mock");
    let headers = [("x-mock-scenario", "stream_error")];
    let stream = post(&mock, RESPONSES, &headers, &responses_request(true)).await;
    assert_eq!(stream.status, 200);
    let events = anthropic_events(&stream);
    assert_eq!(events.last().expect("events").0, "error");
    // The stream is the renderer's, whose unit tests pin the error event's shape.
    let request = Request::parse(responses_request(true).to_string().as_bytes()).expect("valid");
    let controls = Controls {
        scenario: Scenario::StreamError,
        ..Controls::default()
    };
    let reply = Reply::new(&controls, &request.body, true);
    let rendered = responses::stream_events(RESPONSE_ID, &reply, &request, None);
    assert_eq!(stream.bytes(), rendered.concat());

    let whole = post(&mock, RESPONSES, &headers, &responses_request(false)).await;
    assert_eq!(whole.status, 503);
    assert_eq!(whole.json()["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn incomplete_applies_to_every_api_and_failed_only_to_responses() {
    let mock = MockUpstream::start().await.expect("mock");
    let incomplete = [("x-mock-scenario", "incomplete")];
    let chat = post(&mock, OPENAI, &incomplete, &openai_request(false, false)).await;
    assert_eq!(chat.json()["choices"][0]["finish_reason"], "length");
    let anthropic = post(&mock, ANTHROPIC, &incomplete, &anthropic_request(false)).await;
    assert_eq!(anthropic.json()["stop_reason"], "max_tokens");
    let anthropic = post(&mock, ANTHROPIC, &incomplete, &anthropic_request(true)).await;
    let (_, delta) = anthropic_events(&anthropic)
        .into_iter()
        .find(|(name, _)| name == "message_delta")
        .expect("message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");

    let failed = [("x-mock-scenario", "failed")];
    let chat = post(&mock, OPENAI, &failed, &openai_request(true, false)).await;
    assert_eq!(chat.status, 400);
    assert_eq!(chat.json()["error"]["type"], "invalid_request_error");
    let anthropic = post(&mock, ANTHROPIC, &failed, &anthropic_request(true)).await;
    assert_eq!(anthropic.status, 400);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(
        mock.completed_streams(),
        1,
        "only the Anthropic incomplete stream"
    );
}

#[tokio::test]
async fn errors_use_the_openai_shape() {
    let mock = MockUpstream::start().await.expect("mock");
    let forced = post(
        &mock,
        RESPONSES,
        &[("x-mock-status", "429")],
        &responses_request(true),
    )
    .await;
    assert_eq!(forced.status, 429);
    assert_eq!(forced.json()["error"]["type"], "rate_limit_error");
    assert_eq!(forced.json()["error"]["code"], Value::Null);

    let bad_json = send(&mock, Method::POST, RESPONSES, &[], "{").await;
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.json()["error"]["type"], "invalid_request_error");
    let bad_input = post(&mock, RESPONSES, &[], &json!({ "input": 1 })).await;
    assert_eq!(bad_input.status, 400);
    let got = get(&mock, RESPONSES, &[]).await;
    assert_eq!(got.status, 405);
    assert_eq!(got.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn stored_responses_are_retrieved_replayed_and_cancelled() {
    let mock = MockUpstream::start().await.expect("mock");
    let headers = [("x-mock-scenario", "text_and_tools")];
    let path = "/v1/responses/resp_abc";

    let retrieved = get(&mock, path, &headers).await;
    assert_eq!(retrieved.status, 200);
    let retrieved = retrieved.json();
    assert_eq!(retrieved["id"], "resp_abc");
    assert_eq!(retrieved["model"], "mock-model");
    let created = post(&mock, RESPONSES, &headers, &responses_request(false))
        .await
        .json();
    assert_eq!(retrieved["output"], created["output"]);

    let replay = get(&mock, &format!("{path}?stream=true"), &headers).await;
    assert_eq!(replay.content_type(), "text/event-stream");
    let events = anthropic_events(&replay);
    assert_eq!(events.last().expect("events").1["response"], retrieved);
    let resumed = get(
        &mock,
        &format!("{path}?stream=true&starting_after=4"),
        &headers,
    )
    .await;
    let resumed = anthropic_events(&resumed);
    assert_eq!(resumed[0].1["sequence_number"], 5);
    assert_eq!(resumed[..], events[5..]);

    let cancelled = send(&mock, Method::POST, &format!("{path}/cancel"), &[], "").await;
    assert_eq!(cancelled.status, 200);
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert_eq!(cancelled.json()["id"], "resp_abc");

    let deleted = send(&mock, Method::DELETE, path, &[], "").await;
    assert_eq!(
        deleted.text(),
        r#"{"id":"resp_abc","object":"response","deleted":true}"#
    );

    for (method, bad) in [
        (Method::GET, "/v1/responses/nope"),
        (Method::DELETE, "/v1/responses/nope"),
        (Method::POST, "/v1/responses/nope/cancel"),
        (Method::GET, "/v1/responses/nope/input_items"),
    ] {
        let missing = send(&mock, method, bad, &[], "").await;
        assert_eq!(missing.status, 404, "{bad}");
        assert_eq!(
            missing.text(),
            r#"{"error":{"message":"Response with id 'nope' not found.","type":"invalid_request_error","param":null,"code":null}}"#
        );
    }
    for query in ["stream=maybe", "stream=true&starting_after=-1"] {
        let bad = get(&mock, &format!("{path}?{query}"), &[]).await;
        assert_eq!(bad.status, 400, "{query}");
    }
    let put = send(&mock, Method::PUT, path, &[], "").await;
    assert_eq!(put.status, 405);
}

#[tokio::test]
async fn input_items_tokens_and_compaction() {
    let mock = MockUpstream::start().await.expect("mock");
    let items = get(
        &mock,
        "/v1/responses/resp_abc/input_items?order=asc&limit=1",
        &[],
    )
    .await;
    assert_eq!(items.status, 200);
    assert_eq!(
        items.text(),
        concat!(
            r#"{"object":"list","data":[{"type":"message","id":"msg_mock_input_0001","#,
            r#""status":"completed","role":"developer","content":[{"type":"input_text","#,
            r#""text":"You are terse."}]}],"first_id":"msg_mock_input_0001","#,
            r#""last_id":"msg_mock_input_0001","has_more":true}"#
        )
    );
    let bad = get(&mock, "/v1/responses/resp_abc/input_items?limit=0", &[]).await;
    assert_eq!(bad.status, 400);

    let counted = post(
        &mock,
        "/v1/responses/input_tokens",
        &[],
        &responses_request(false),
    )
    .await;
    assert_eq!(
        counted.text(),
        r#"{"object":"response.input_tokens","input_tokens":9}"#
    );

    let compacted = post(
        &mock,
        "/v1/responses/compact",
        &[],
        &json!({ "model": "gpt-4o-mini", "input": "Say hello." }),
    )
    .await;
    assert_eq!(compacted.status, 200);
    let compacted = compacted.json();
    assert_eq!(compacted["object"], "response.compaction");
    assert_eq!(
        compacted["output"][0],
        json!({ "type": "message", "role": "user",
                "content": [{ "type": "input_text", "text": "Say hello." }] })
    );
    assert_eq!(compacted["output"][1]["type"], "compaction");
    assert_eq!(compacted["usage"]["input_tokens"], 2);

    let forced = post(
        &mock,
        "/v1/responses/compact",
        &[("x-mock-status", "500")],
        &json!({}),
    )
    .await;
    assert_eq!(forced.status, 500);
    assert_eq!(forced.json()["error"]["type"], "api_error");

    let paths: Vec<String> = mock
        .requests()
        .into_iter()
        .map(|request| request.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/responses/resp_abc/input_items",
            "/v1/responses/resp_abc/input_items",
            "/v1/responses/input_tokens",
            "/v1/responses/compact",
            "/v1/responses/compact",
        ]
    );
}

#[tokio::test]
async fn same_request_same_bytes_and_abandonment_is_counted() {
    let mock = MockUpstream::start().await.expect("mock");
    assert_same_bytes(&mock, RESPONSES, &SCENARIOS, responses_request).await;

    let response = slow_stream(&mock, RESPONSES, &responses_request(true)).await;
    drop(response);
    assert!(mock.wait_abandoned(1, Duration::from_secs(5)).await);
}
