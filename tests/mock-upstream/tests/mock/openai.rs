//! The OpenAI Chat Completions format: exact structure, and stream == non-stream.

use luthien_mock_upstream::MockUpstream;
use serde_json::{Map, Value, json};

use crate::support::{
    OPENAI, assert_same_bytes, fresh_answer, openai_data, openai_request, post, whole_and_stream,
};

const SCENARIOS: [&str; 4] = ["text", "tools", "text_and_tools", "thinking"];

#[tokio::test]
async fn non_stream_text_is_byte_exact() {
    let answer = fresh_answer(
        OPENAI,
        &[("x-mock-text", "Hi there")],
        &openai_request(false, false),
        "application/json",
    )
    .await;
    assert_eq!(
        answer.text(),
        concat!(
            r#"{"id":"chatcmpl-mock-0001","object":"chat.completion","created":1700000000,"#,
            r#""model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","#,
            r#""content":"Hi there","refusal":null},"logprobs":null,"finish_reason":"stop"}],"#,
            r#""usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12},"#,
            r#""system_fingerprint":"fp_mock"}"#
        )
    );
}

#[tokio::test]
async fn stream_text_is_byte_exact() {
    let answer = fresh_answer(
        OPENAI,
        &[("x-mock-text", "Hi there"), ("x-mock-chunk-size", "5")],
        &openai_request(true, true),
        "text/event-stream",
    )
    .await;
    let head = r#"{"id":"chatcmpl-mock-0001","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_mock","choices":"#;
    let expected = [
        format!(
            r#"data: {head}[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
        ),
        format!(
            r#"data: {head}[{{"index":0,"delta":{{"content":"Hi th"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
        ),
        format!(
            r#"data: {head}[{{"index":0,"delta":{{"content":"ere"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
        ),
        format!(
            r#"data: {head}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}"#
        ),
        format!(
            r#"data: {head}[],"usage":{{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}}}"#
        ),
        "data: [DONE]".to_owned(),
    ]
    .map(|event| event + "\n\n");
    assert_eq!(answer.events(), expected);
}

/// Checks the chunk sequence of an OpenAI stream and rebuilds the non-streamed
/// `choices[0]` (message and finish reason) and usage from it.
fn rebuild(data: &[String], include_usage: bool) -> (Value, Option<Value>) {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).expect("chunk JSON"))
        .collect();

    let mut content: Option<String> = None;
    let mut calls: Vec<Map<String, Value>> = Vec::new();
    let mut finish_reason = Value::Null;
    let mut usage = None;
    for (position, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["id"], "chatcmpl-mock-0001");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["created"], 1_700_000_000);
        assert_eq!(chunk["model"], "gpt-4o-mini");
        assert_eq!(
            chunk.get("usage").is_some(),
            include_usage,
            "usage key presence in {chunk}"
        );
        let choices = chunk["choices"].as_array().expect("choices");
        if choices.is_empty() {
            // The usage chunk: only with include_usage, last, after the finish chunk.
            assert!(include_usage);
            assert_eq!(position, chunks.len() - 1);
            assert!(!finish_reason.is_null(), "usage chunk before finish chunk");
            usage = Some(chunk["usage"].clone());
            continue;
        }
        if include_usage {
            assert_eq!(chunk["usage"], Value::Null);
        }
        assert!(
            finish_reason.is_null(),
            "a chunk with choices after the finish chunk"
        );
        let choice = &choices[0];
        assert_eq!(choices.len(), 1);
        assert_eq!(choice["index"], 0);
        let delta = choice["delta"].as_object().expect("delta");
        if position == 0 {
            assert_eq!(delta["role"], "assistant");
            assert!(delta.contains_key("content"));
        } else {
            assert!(!delta.contains_key("role"));
        }
        if !choice["finish_reason"].is_null() {
            assert!(delta.is_empty(), "finish chunk delta must be empty");
            finish_reason = choice["finish_reason"].clone();
            continue;
        }
        if let Some(Value::String(text)) = delta.get("content") {
            content.get_or_insert_with(String::new).push_str(text);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().expect("tool call index") as usize;
            if index == calls.len() {
                // The first delta of a call carries id, type, name and empty arguments.
                assert_eq!(call["type"], "function");
                assert_eq!(call["function"]["arguments"], "");
                let mut rebuilt = Map::new();
                rebuilt.insert("id".into(), call["id"].clone());
                rebuilt.insert("type".into(), call["type"].clone());
                rebuilt.insert(
                    "function".into(),
                    json!({ "name": call["function"]["name"], "arguments": "" }),
                );
                calls.push(rebuilt);
            } else {
                assert_eq!(index, calls.len() - 1, "tool call deltas out of order");
                assert!(call.get("id").is_none());
                let fragment = call["function"]["arguments"].as_str().expect("fragment");
                let function = calls[index]["function"].as_object_mut().expect("function");
                let mut arguments = function["arguments"].as_str().unwrap_or("").to_owned();
                arguments.push_str(fragment);
                function.insert("arguments".into(), arguments.into());
            }
        }
    }
    assert!(!finish_reason.is_null(), "no finish chunk");
    assert_eq!(usage.is_some(), include_usage);

    let mut message = json!({ "role": "assistant", "content": content, "refusal": null });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls.into_iter().map(Value::Object).collect());
    }
    let choice = json!({
        "index": 0,
        "message": message,
        "logprobs": null,
        "finish_reason": finish_reason,
    });
    (choice, usage)
}

#[tokio::test]
async fn stream_rebuilds_to_the_non_stream_answer() {
    let mock = MockUpstream::start().await.expect("mock");
    for scenario in SCENARIOS {
        for include_usage in [false, true] {
            let headers = [("x-mock-scenario", scenario)];
            // Usage is asked for (or not) only in the stream.
            let request = |stream| openai_request(stream, stream && include_usage);
            let (whole, stream) = whole_and_stream(&mock, OPENAI, &headers, request).await;
            let whole = whole.json();

            let (choice, usage) = rebuild(&openai_data(&stream), include_usage);
            assert_eq!(choice, whole["choices"][0], "{scenario}");
            if let Some(usage) = usage {
                assert_eq!(usage, whole["usage"], "{scenario}");
            }
        }
    }
}

#[tokio::test]
async fn tool_scenarios_have_the_documented_calls() {
    let mock = MockUpstream::start().await.expect("mock");
    let tools = post(
        &mock,
        OPENAI,
        &[("x-mock-scenario", "tools")],
        &openai_request(false, false),
    )
    .await
    .json();
    let choice = &tools["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "call_mock_0001");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().expect("args"))
            .expect("JSON arguments");
    assert_eq!(arguments, json!({ "city": "Paris" }));
    assert_eq!(calls[1]["id"], "call_mock_0002");
    assert_eq!(calls[1]["function"]["name"], "bash");

    // One argument fragment ends inside an escape sequence: `\` now, `"` next.
    let stream = post(
        &mock,
        OPENAI,
        &[("x-mock-scenario", "tools")],
        &openai_request(true, false),
    )
    .await;
    let fragments: Vec<String> = openai_data(&stream)
        .iter()
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| {
            let chunk: Value = serde_json::from_str(data).ok()?;
            chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        fragments.iter().any(|fragment| fragment.ends_with('\\')),
        "{fragments:?}"
    );

    let mixed = post(
        &mock,
        OPENAI,
        &[("x-mock-scenario", "text_and_tools")],
        &openai_request(false, false),
    )
    .await
    .json();
    let message = &mixed["choices"][0]["message"];
    assert_eq!(
        message["content"],
        luthien_mock_upstream::scenario::DEFAULT_TEXT
    );
    assert_eq!(message["tool_calls"].as_array().map(Vec::len), Some(1));
    assert_eq!(mixed["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn stream_error_breaks_off_in_band() {
    let mock = MockUpstream::start().await.expect("mock");
    let headers = [("x-mock-scenario", "stream_error")];
    let stream = post(&mock, OPENAI, &headers, &openai_request(true, true)).await;
    assert_eq!(stream.status, 200);
    let data = openai_data(&stream);
    assert!(!data.contains(&"[DONE]".to_owned()));
    let last: Value = serde_json::from_str(data.last().expect("events")).expect("JSON");
    assert_eq!(
        last,
        json!({ "error": {
            "message": "Overloaded", "type": "overloaded_error", "param": null, "code": null,
        }})
    );
    // Part of the text came through before the error.
    let first: Value = serde_json::from_str(&data[1]).expect("JSON");
    assert!(first["choices"][0]["delta"]["content"].is_string());
    assert_eq!(mock.completed_streams(), 1);

    let whole = post(&mock, OPENAI, &headers, &openai_request(false, false)).await;
    assert_eq!(whole.status, 503);
    assert_eq!(whole.json()["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn same_request_same_bytes() {
    let mock = MockUpstream::start().await.expect("mock");
    let request = |stream| openai_request(stream, true);
    assert_same_bytes(&mock, OPENAI, &SCENARIOS, request).await;
}
