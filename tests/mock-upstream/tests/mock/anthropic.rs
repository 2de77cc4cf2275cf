//! The Anthropic Messages format: exact structure, event order, and stream == non-stream.

use luthien_mock_upstream::MockUpstream;
use serde_json::{Value, json};

use crate::support::{
    ANTHROPIC, anthropic_events, anthropic_request, assert_same_bytes, fresh_answer, post,
    whole_and_stream,
};

const SCENARIOS: [&str; 4] = ["text", "tools", "text_and_tools", "thinking"];

#[tokio::test]
async fn non_stream_text_is_byte_exact() {
    let answer = fresh_answer(
        ANTHROPIC,
        &[("x-mock-text", "Hi there")],
        &anthropic_request(false),
        "application/json",
    )
    .await;
    assert_eq!(
        answer.text(),
        concat!(
            r#"{"id":"msg_mock_0001","type":"message","role":"assistant","#,
            r#""model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi there"}],"#,
            r#""stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":9,"#,
            r#""output_tokens":2,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}"#
        )
    );
}

#[tokio::test]
async fn stream_text_is_byte_exact() {
    let answer = fresh_answer(
        ANTHROPIC,
        &[("x-mock-text", "Hi there"), ("x-mock-chunk-size", "5")],
        &anthropic_request(true),
        "text/event-stream",
    )
    .await;
    let expected = [
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_mock_0001","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}"#,
        r#"event: ping
data: {"type":"ping"}"#,
        r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi th"}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ere"}}"#,
        r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}"#,
        r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}"#,
        r#"event: message_stop
data: {"type":"message_stop"}"#,
    ]
    .map(|event| format!("{event}\n\n"));
    assert_eq!(answer.events(), expected);
}

/// Checks the event order of an Anthropic stream (`message_start`, `ping`, blocks opened,
/// filled and closed one at a time by index, `message_delta`, `message_stop`) and rebuilds the
/// non-streamed message from it.
fn rebuild(events: &[(String, Value)]) -> Value {
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names[..2], ["message_start", "ping"]);
    assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
    assert_eq!(names.iter().filter(|name| **name == "ping").count(), 1);

    let mut message = events[0].1["message"].clone();
    assert_eq!(message["content"], json!([]));
    assert_eq!(message["stop_reason"], Value::Null);

    let mut blocks: Vec<Value> = Vec::new();
    let mut partial_json = String::new();
    let mut open = false;
    for (name, data) in &events[2..events.len() - 2] {
        match name.as_str() {
            "content_block_start" => {
                assert!(!open, "block opened inside another");
                assert_eq!(data["index"], blocks.len());
                open = true;
                partial_json.clear();
                blocks.push(data["content_block"].clone());
            }
            "content_block_delta" => {
                assert!(open, "delta outside a block");
                assert_eq!(data["index"], blocks.len() - 1);
                let block = blocks.last_mut().expect("open block");
                let delta = &data["delta"];
                let append = |block: &mut Value, field: &str, text: &Value| {
                    let joined = format!(
                        "{}{}",
                        block[field].as_str().expect("string field"),
                        text.as_str().expect("string delta")
                    );
                    block[field] = joined.into();
                };
                match delta["type"].as_str().expect("delta type") {
                    "text_delta" => {
                        assert_eq!(block["type"], "text");
                        append(block, "text", &delta["text"]);
                    }
                    "thinking_delta" => {
                        assert_eq!(block["type"], "thinking");
                        assert_eq!(block["signature"], "", "thinking after the signature");
                        append(block, "thinking", &delta["thinking"]);
                    }
                    "signature_delta" => {
                        assert_eq!(block["type"], "thinking");
                        append(block, "signature", &delta["signature"]);
                    }
                    "input_json_delta" => {
                        assert_eq!(block["type"], "tool_use");
                        partial_json.push_str(delta["partial_json"].as_str().expect("json"));
                    }
                    other => panic!("unexpected delta type {other}"),
                }
            }
            "content_block_stop" => {
                assert!(open, "stop outside a block");
                assert_eq!(data["index"], blocks.len() - 1);
                open = false;
                let block = blocks.last_mut().expect("block");
                if block["type"] == "tool_use" {
                    block["input"] = serde_json::from_str(&partial_json).expect("tool input");
                }
            }
            other => panic!("unexpected event {other} between blocks"),
        }
    }
    assert!(!open, "block left open");

    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_sequence"], Value::Null);
    message["content"] = Value::Array(blocks);
    message["stop_reason"] = delta["delta"]["stop_reason"].clone();
    message["usage"]["output_tokens"] = delta["usage"]["output_tokens"].clone();
    message
}

#[tokio::test]
async fn stream_rebuilds_to_the_non_stream_answer() {
    let mock = MockUpstream::start().await.expect("mock");
    for scenario in SCENARIOS {
        let headers = [("x-mock-scenario", scenario)];
        let (whole, stream) = whole_and_stream(&mock, ANTHROPIC, &headers, anthropic_request).await;
        assert_eq!(
            rebuild(&anthropic_events(&stream)),
            whole.json(),
            "{scenario}"
        );
    }
}

#[tokio::test]
async fn scenarios_have_the_documented_blocks() {
    let mock = MockUpstream::start().await.expect("mock");
    let block_types = |message: &Value| -> Vec<String> {
        message["content"]
            .as_array()
            .expect("content")
            .iter()
            .map(|block| block["type"].as_str().expect("type").to_owned())
            .collect()
    };
    let cases = [
        ("text", vec!["text"], "end_turn"),
        ("tools", vec!["tool_use", "tool_use"], "tool_use"),
        ("text_and_tools", vec!["text", "tool_use"], "tool_use"),
        ("thinking", vec!["thinking", "text"], "end_turn"),
    ];
    for (scenario, types, stop_reason) in cases {
        let message = post(
            &mock,
            ANTHROPIC,
            &[("x-mock-scenario", scenario)],
            &anthropic_request(false),
        )
        .await
        .json();
        assert_eq!(block_types(&message), types, "{scenario}");
        assert_eq!(message["stop_reason"], stop_reason, "{scenario}");
    }

    let tools = post(
        &mock,
        ANTHROPIC,
        &[("x-mock-scenario", "tools")],
        &anthropic_request(false),
    )
    .await
    .json();
    assert_eq!(
        tools["content"],
        json!([
            { "type": "tool_use", "id": "toolu_mock_0001", "name": "get_weather",
              "input": { "city": "Paris" } },
            { "type": "tool_use", "id": "toolu_mock_0002", "name": "bash",
              "input": { "command": "ls -la /tmp && echo \"done\"" } },
        ])
    );

    let thinking = post(
        &mock,
        ANTHROPIC,
        &[("x-mock-scenario", "thinking")],
        &anthropic_request(false),
    )
    .await
    .json();
    assert!(
        !thinking["content"][0]["signature"]
            .as_str()
            .expect("signature")
            .is_empty()
    );
}

#[tokio::test]
async fn stream_error_breaks_off_in_band() {
    let mock = MockUpstream::start().await.expect("mock");
    let headers = [("x-mock-scenario", "stream_error")];
    let stream = post(&mock, ANTHROPIC, &headers, &anthropic_request(true)).await;
    assert_eq!(stream.status, 200);
    let events = stream.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
        )
    );
    let names: Vec<String> = anthropic_events(&stream)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"]);
    assert_eq!(names[3], "content_block_delta");
    assert!(!names.contains(&"message_stop".to_owned()));

    let whole = post(&mock, ANTHROPIC, &headers, &anthropic_request(false)).await;
    assert_eq!(whole.status, 529);
    assert_eq!(
        whole.json(),
        json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } })
    );
}

#[tokio::test]
async fn same_request_same_bytes() {
    let mock = MockUpstream::start().await.expect("mock");
    assert_same_bytes(&mock, ANTHROPIC, &SCENARIOS, anthropic_request).await;
}
