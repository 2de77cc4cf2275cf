//! `tool_call_filter` and `llm_judge` through a real data plane and control plane in front of
//! the mock provider, in both APIs, streamed and not. The mock's `tools` scenario answers with
//! two tool calls: `get_weather` {"city":"Paris"} and `bash` `ls -la /tmp && echo "done"`, whose
//! arguments are streamed split right after the backslash of an escaped quote.
//!
//! The judge is a second mock provider: its non-streamed chat completion answers with the text
//! of `x-mock-text`, which the judge's `headers` config sets, so each test scripts the verdict.

use std::sync::Arc;
use std::time::Duration;

use luthien_store::events::EventPayload;
use luthien_store::{Store, StoreOptions};
use luthien_tests::databases::TestDatabase;
use luthien_tests::wire::{
    anthropic_stream_text, anthropic_stream_tool_inputs, events, openai_stream_text,
    openai_stream_tool_arguments,
};
use luthien_tests::{Client, MockUpstream, Stack, StackOptions, TestResponse, wait};
use serde_json::{Value, json};

const VIOLATION: &str = r#"{"violation": true, "score": 0.9, "explanation": "deletes files"}"#;
const FINE: &str = r#"{"violation": false, "score": 0.05, "explanation": "harmless"}"#;

const FILTER_BASH: &str = r#"
policies:
  - type: tool_call_filter
    name: no-ls
    config:
      rules:
        - name: no-ls-la
          tools: [bash, "shell*"]
          arguments_regex: 'ls\s+-la'
"#;

const FILTER_ALL: &str = r#"
policies:
  - type: tool_call_filter
    config:
      rules:
        - {name: no-bash, tools: [bash]}
        - {name: no-weather, arguments_json_path: {path: "$.city", regex: "^Paris$"}}
      replacement_text: "[{name} removed: {rule}]"
"#;

const BASH_REPLACEMENT: &str = "Tool call bash was blocked by policy: no-ls-la";
const WEATHER_ARGUMENTS: &str = r#"{"city":"Paris"}"#;

fn request_body(openai: bool, stream: bool) -> String {
    if openai {
        json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
            "messages": [{"role": "user", "content": "What's the weather, and what's in /tmp?"}],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}
            ],
        })
    } else {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": "What's the weather, and what's in /tmp?"}],
            "tools": [
                {"name": "get_weather", "input_schema": {"type": "object"}},
                {"name": "bash", "input_schema": {"type": "object"}}
            ],
        })
    }
    .to_string()
}

fn headers(openai: bool, scenario: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut headers = vec![("x-mock-scenario", scenario)];
    if openai {
        headers.push(("authorization", "Bearer sk-client"));
    } else {
        headers.push(("x-api-key", "sk-ant-client"));
        headers.push(("anthropic-version", "2023-06-01"));
    }
    headers
}

/// The same request to the mock directly and through the stack.
async fn both(
    stack: &Stack,
    openai: bool,
    stream: bool,
    scenario: &'static str,
) -> (TestResponse, TestResponse) {
    let client = Client::new();
    let (direct_url, proxy_url) = if openai {
        (stack.direct_openai_url(), stack.openai_url())
    } else {
        (stack.direct_anthropic_url(), stack.anthropic_url())
    };
    let headers = headers(openai, scenario);
    let body = request_body(openai, stream);
    let direct = client.post(&direct_url, &headers, body.clone()).await;
    let proxied = client.post(&proxy_url, &headers, body).await;
    assert_eq!(direct.status, 200, "direct: {}", direct.text());
    assert_eq!(proxied.status, 200, "proxied: {}", proxied.text());
    (direct, proxied)
}

/// What a client assembles from an answer: text, tool calls as (name, arguments JSON text),
/// finish reason.
#[derive(Debug, PartialEq)]
struct Answer {
    text: String,
    tool_calls: Vec<(String, String)>,
    finish_reason: String,
}

fn answer(openai: bool, stream: bool, body: &[u8]) -> Answer {
    match (openai, stream) {
        (true, false) => {
            let json: Value = serde_json::from_slice(body).unwrap();
            let choice = &json["choices"][0];
            Answer {
                text: choice["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                tool_calls: choice["message"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|call| {
                        (
                            call["function"]["name"].as_str().unwrap().to_owned(),
                            call["function"]["arguments"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect(),
                finish_reason: choice["finish_reason"].as_str().unwrap().to_owned(),
            }
        }
        (false, false) => {
            let json: Value = serde_json::from_slice(body).unwrap();
            let blocks = json["content"].as_array().unwrap();
            Answer {
                text: blocks
                    .iter()
                    .filter(|block| block["type"] == "text")
                    .map(|block| block["text"].as_str().unwrap())
                    .collect(),
                tool_calls: blocks
                    .iter()
                    .filter(|block| block["type"] == "tool_use")
                    .map(|block| {
                        (
                            block["name"].as_str().unwrap().to_owned(),
                            block["input"].to_string(),
                        )
                    })
                    .collect(),
                finish_reason: json["stop_reason"].as_str().unwrap().to_owned(),
            }
        }
        (true, true) => {
            let events = events(body);
            assert_eq!(events.last().unwrap().data, "[DONE]");
            let chunks: Vec<Value> = events[..events.len() - 1]
                .iter()
                .map(|event| event.json())
                .collect();
            let mut names = Vec::new();
            for chunk in &chunks {
                for call in chunk["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(name) = call["function"]["name"].as_str() {
                        let index = call["index"].as_u64().unwrap() as usize;
                        assert_eq!(index, names.len(), "tool call indices without gaps");
                        names.push(name.to_owned());
                    }
                }
            }
            let finish_reason = chunks
                .iter()
                .find_map(|chunk| chunk["choices"][0]["finish_reason"].as_str())
                .unwrap()
                .to_owned();
            Answer {
                text: openai_stream_text(body),
                tool_calls: names
                    .into_iter()
                    .zip(openai_stream_tool_arguments(body))
                    .collect(),
                finish_reason,
            }
        }
        (false, true) => {
            let events = events(body);
            let json: Vec<Value> = events.iter().map(|event| event.json()).collect();
            // Blocks start in index order, each stopped before the next starts.
            let mut open = None;
            let mut next = 0;
            for event in &json {
                match event["type"].as_str().unwrap() {
                    "content_block_start" => {
                        assert_eq!(open, None);
                        assert_eq!(event["index"], next);
                        open = Some(next);
                        next += 1;
                    }
                    "content_block_delta" => {
                        assert_eq!(Some(event["index"].clone()), open.map(Value::from))
                    }
                    "content_block_stop" => {
                        assert_eq!(Some(event["index"].clone()), open.map(Value::from));
                        open = None;
                    }
                    _ => {}
                }
            }
            assert_eq!(json.last().unwrap()["type"], "message_stop");
            let names: Vec<String> = json
                .iter()
                .filter(|event| {
                    event["type"] == "content_block_start"
                        && event["content_block"]["type"] == "tool_use"
                })
                .map(|event| event["content_block"]["name"].as_str().unwrap().to_owned())
                .collect();
            let finish_reason = json
                .iter()
                .find_map(|event| event["delta"]["stop_reason"].as_str())
                .unwrap()
                .to_owned();
            Answer {
                text: anthropic_stream_text(body),
                tool_calls: names
                    .into_iter()
                    .zip(anthropic_stream_tool_inputs(body))
                    .collect(),
                finish_reason,
            }
        }
    }
}

fn compact(json: &str) -> String {
    serde_json::from_str::<Value>(json).unwrap().to_string()
}

/// The wire bytes of the events of tool call / block 0 in a stream.
fn first_tool_call_events(openai: bool, body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    text.split_inclusive("\n\n")
        .filter(|raw| {
            if openai {
                raw.contains("\"tool_calls\":[{\"index\":0")
            } else {
                raw.contains("\"index\":0") && raw.contains("content_block")
            }
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn tool_call_filter_removes_bash_and_keeps_get_weather_byte_for_byte() {
    let stack = Stack::start(StackOptions::yaml(FILTER_BASH)).await;
    for openai in [true, false] {
        for stream in [false, true] {
            let context = format!("openai={openai} stream={stream}");
            let (direct, proxied) = both(&stack, openai, stream, "tools").await;
            let before = answer(openai, stream, &direct.body);
            assert_eq!(before.tool_calls.len(), 2, "{context}");
            let after = answer(openai, stream, &proxied.body);

            // get_weather is intact; bash is gone; the replacement stands in its place.
            assert_eq!(after.tool_calls.len(), 1, "{context}: {after:?}");
            assert_eq!(after.tool_calls[0], before.tool_calls[0], "{context}");
            assert_eq!(after.tool_calls[0].0, "get_weather");
            assert_eq!(compact(&after.tool_calls[0].1), WEATHER_ARGUMENTS);
            assert_eq!(after.text, BASH_REPLACEMENT, "{context}");
            assert!(!proxied.text().contains("ls -la"), "{context}");
            // One of two removed: the agent still has a tool call to run.
            assert_eq!(after.finish_reason, before.finish_reason, "{context}");
            assert!(
                ["tool_calls", "tool_use"].contains(&after.finish_reason.as_str()),
                "{context}"
            );

            if stream {
                // Every event of the kept tool call left exactly as upstream sent it.
                let kept = first_tool_call_events(openai, &proxied.body);
                assert!(kept.len() >= 5, "{context}: {kept:?}");
                assert_eq!(
                    kept,
                    first_tool_call_events(openai, &direct.body),
                    "{context}"
                );
            } else if openai {
                let (direct, proxied) = (direct.json(), proxied.json());
                assert_eq!(
                    proxied["choices"][0]["message"]["tool_calls"][0],
                    direct["choices"][0]["message"]["tool_calls"][0]
                );
                assert_eq!(proxied["usage"], direct["usage"]);
            } else {
                let (direct, proxied) = (direct.json(), proxied.json());
                assert_eq!(proxied["content"][0], direct["content"][0]);
                assert_eq!(
                    proxied["content"][1],
                    json!({"type": "text", "text": BASH_REPLACEMENT})
                );
            }
        }
    }
    // A call without tool calls passes untouched.
    for openai in [true, false] {
        for stream in [false, true] {
            let (direct, proxied) = both(&stack, openai, stream, "text").await;
            assert_eq!(direct.body, proxied.body);
        }
    }
}

#[tokio::test]
async fn removing_every_tool_call_rewrites_the_finish_reason() {
    let stack = Stack::start(StackOptions::yaml(FILTER_ALL)).await;
    for openai in [true, false] {
        for stream in [false, true] {
            let context = format!("openai={openai} stream={stream}");
            let (_, proxied) = both(&stack, openai, stream, "tools").await;
            let after = answer(openai, stream, &proxied.body);
            assert_eq!(after.tool_calls, [], "{context}");
            let expected_reason = if openai { "stop" } else { "end_turn" };
            assert_eq!(after.finish_reason, expected_reason, "{context}");
            let separator = if openai { "\n\n" } else { "" };
            assert_eq!(
                after.text,
                format!("[get_weather removed: no-weather]{separator}[bash removed: no-bash]"),
                "{context}"
            );
            if openai && stream {
                // The usage chunk still follows the finish reason.
                let events = events(&proxied.body);
                let usage = events[events.len() - 2].json();
                assert!(
                    usage["usage"]["total_tokens"].as_u64().is_some(),
                    "{context}"
                );
            }
        }
    }
    // Text before the tool call is kept, the call removed, the reason rewritten.
    for openai in [true, false] {
        for stream in [false, true] {
            let context = format!("text_and_tools openai={openai} stream={stream}");
            let (direct, proxied) = both(&stack, openai, stream, "text_and_tools").await;
            let before = answer(openai, stream, &direct.body);
            let after = answer(openai, stream, &proxied.body);
            let separator = if openai { "\n\n" } else { "" };
            assert_eq!(
                after.text,
                format!(
                    "{}{separator}[get_weather removed: no-weather]",
                    before.text
                ),
                "{context}"
            );
            assert_eq!(after.tool_calls, [], "{context}");
            assert!(
                ["stop", "end_turn"].contains(&after.finish_reason.as_str()),
                "{context}"
            );
        }
    }
}

#[tokio::test]
async fn removals_are_recorded_as_policy_events() {
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..StackOptions::yaml(FILTER_BASH)
    })
    .await;
    let store = Store::open(
        &database.url,
        StoreOptions {
            migrate: false,
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open store");
    for stream in [false, true] {
        let (_, proxied) = both(&stack, false, stream, "tools").await;
        let call_id = proxied.header("x-luthien-call-id").unwrap().to_owned();
        let (_, events) = wait::ended_call(&store, &call_id).await;
        let blocked: Vec<(String, String, Value)> = events
            .into_iter()
            .filter_map(|event| match event.payload {
                EventPayload::Policy {
                    policy,
                    action,
                    data,
                    ..
                } => Some((policy, action, data)),
                _ => None,
            })
            .collect();
        assert_eq!(blocked.len(), 1, "stream={stream}: {blocked:?}");
        let (policy, action, data) = &blocked[0];
        assert_eq!((policy.as_str(), action.as_str()), ("no-ls", "blocked"));
        assert_eq!(data["tool"], "bash");
        assert_eq!(data["rule"], "no-ls-la");
        assert_eq!(data["tool_call_id"], "toolu_mock_0002");
    }
}

/// A stack whose `llm_judge` asks `judge` (judging only `bash`), with `extra` config lines.
async fn judged_stack(judge: &MockUpstream, answer: &str, extra: &str) -> Stack {
    judged_stack_with(
        judge,
        &json!({"x-mock-text": answer}),
        extra,
        StackOptions::default(),
    )
    .await
}

async fn judged_stack_with(
    judge: &MockUpstream,
    headers: &Value,
    extra: &str,
    options: StackOptions,
) -> Stack {
    let yaml = format!(
        r#"
policies:
  - type: llm_judge
    name: judge
    config:
      base_url: {base_url}
      model: judge-model
      api_key: sk-judge
      rules: Never run shell commands that touch /tmp.
      tools: [bash]
      threshold: 0.5
      headers: {headers}
{extra}
"#,
        base_url = judge.openai_base_url(),
    );
    Stack::start(StackOptions {
        control_plane: luthien_tests::stack::ControlPlane::Yaml(yaml),
        ..options
    })
    .await
}

#[tokio::test]
async fn llm_judge_blocks_a_violation_with_its_explanation() {
    let judge = Arc::new(MockUpstream::start().await.unwrap());
    let stack = judged_stack(&judge, VIOLATION, "").await;
    let mut judged = 0;
    for openai in [true, false] {
        for stream in [false, true] {
            let context = format!("openai={openai} stream={stream}");
            let (direct, proxied) = both(&stack, openai, stream, "tools").await;
            let before = answer(openai, stream, &direct.body);
            let after = answer(openai, stream, &proxied.body);
            assert_eq!(after.tool_calls, before.tool_calls[..1], "{context}");
            assert_eq!(
                after.text, "Tool call bash was blocked by the LLM judge: deletes files",
                "{context}"
            );
            assert_eq!(after.finish_reason, before.finish_reason, "{context}");
            judged += 1;
        }
    }
    // Only bash was judged, once per call, with the judge's credentials and the bash
    // arguments whole (the stream split them inside an escape).
    let requests = judge.requests();
    assert_eq!(requests.len(), judged);
    for request in &requests {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.header("authorization"), Some("Bearer sk-judge"));
        let body = request.json();
        assert_eq!(body["model"], "judge-model");
        let prompt = body["messages"][1]["content"].as_str().unwrap();
        assert!(prompt.contains("Never run shell commands that touch /tmp."));
        assert!(
            prompt.contains(r#"{"command":"ls -la /tmp && echo \"done\""}"#),
            "{prompt}"
        );
    }
}

#[tokio::test]
async fn llm_judge_lets_an_innocent_call_through_untouched() {
    let judge = Arc::new(MockUpstream::start().await.unwrap());
    let stack = judged_stack(&judge, FINE, "      judge_text: true").await;
    for openai in [true, false] {
        for stream in [false, true] {
            for scenario in ["tools", "text_and_tools"] {
                let (direct, proxied) = both(&stack, openai, stream, scenario).await;
                assert_eq!(
                    direct.body, proxied.body,
                    "openai={openai} stream={stream} {scenario}"
                );
            }
        }
    }
    // tools: bash; text_and_tools: the text (get_weather is not in `tools`).
    assert_eq!(judge.requests().len(), 8);
}

#[tokio::test]
async fn a_hanging_judge_blocks_or_allows_as_on_error_says() {
    let judge = Arc::new(MockUpstream::start().await.unwrap());
    let hang = json!({"x-mock-scenario": "hang"});
    let blocking = judged_stack_with(
        &judge,
        &hang,
        "      timeout: 300ms\n      on_error: block",
        StackOptions::default(),
    )
    .await;
    // The judge times out after longer than the data plane's inactivity timeout: the
    // control plane's keepalives carry the call through.
    let allowing = judged_stack_with(
        &judge,
        &hang,
        "      timeout: 1500ms\n      on_error: allow",
        StackOptions {
            cp_inactivity_timeout: Duration::from_millis(700),
            ..StackOptions::default()
        },
    )
    .await;
    for openai in [true, false] {
        for stream in [false, true] {
            let context = format!("openai={openai} stream={stream}");
            let (direct, proxied) = both(&blocking, openai, stream, "tools").await;
            let before = answer(openai, stream, &direct.body);
            let after = answer(openai, stream, &proxied.body);
            assert_eq!(after.tool_calls, before.tool_calls[..1], "{context}");
            assert_eq!(
                after.text,
                "Tool call bash was blocked by the LLM judge: the policy judge was unavailable",
                "{context}"
            );

            let started = std::time::Instant::now();
            let (direct, proxied) = both(&allowing, openai, stream, "tools").await;
            assert!(
                started.elapsed() >= Duration::from_millis(1500),
                "{context}"
            );
            assert_eq!(direct.body, proxied.body, "{context}");
        }
    }
}
