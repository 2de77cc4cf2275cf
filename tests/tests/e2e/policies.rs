//! Both APIs × streamed and not × {noop, all_caps, string_replace}, through
//! a real data plane and control plane in front of the mock provider.

use luthien_tests::wire::{
    anthropic_stream_text, anthropic_stream_tool_inputs, events, openai_stream_text,
    openai_stream_tool_arguments,
};
use luthien_tests::{Client, Stack, StackOptions};
use serde_json::{Value, json};

const TEXT: &str = "Hello from the mock upstream. The quick brown fox jumps over the lazy dog.";

fn openai_body(stream: bool) -> String {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
        "messages": [{"role": "user", "content": "Say hello, please."}],
        "x_unknown_field": {"kept": [1, 2.5, "three"]},
    })
    .to_string()
}

fn anthropic_body(stream: bool) -> String {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "stream": stream,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hello, please."}],
    })
    .to_string()
}

const ANTHROPIC_HEADERS: &[(&str, &str)] = &[
    ("anthropic-version", "2023-06-01"),
    ("anthropic-beta", "tools-2024-04-04"),
    ("x-api-key", "sk-ant-client-key"),
];

const OPENAI_HEADERS: &[(&str, &str)] = &[("authorization", "Bearer sk-client-key")];

/// Calls the mock directly and through Luthien with the same request.
async fn both(
    stack: &Stack,
    openai: bool,
    stream: bool,
    extra: &[(&str, &str)],
) -> (luthien_tests::TestResponse, luthien_tests::TestResponse) {
    let client = Client::new();
    let (direct_url, proxy_url, body, base_headers) = if openai {
        (
            stack.direct_openai_url(),
            stack.openai_url(),
            openai_body(stream),
            OPENAI_HEADERS,
        )
    } else {
        (
            stack.direct_anthropic_url(),
            stack.anthropic_url(),
            anthropic_body(stream),
            ANTHROPIC_HEADERS,
        )
    };
    let mut headers = base_headers.to_vec();
    headers.extend_from_slice(extra);
    let direct = client.post(&direct_url, &headers, body.clone()).await;
    let proxied = client.post(&proxy_url, &headers, body).await;
    assert_eq!(direct.status, 200, "direct: {}", direct.text());
    assert_eq!(proxied.status, 200, "proxied: {}", proxied.text());
    assert!(
        proxied.header("x-luthien-call-id").is_some_and(uuid_like),
        "call id header on {:?}",
        proxied.headers
    );
    assert!(proxied.header("x-luthien-overhead-ms").is_some());
    (direct, proxied)
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().filter(|c| *c == '-').count() == 4
}

fn response_text(openai: bool, stream: bool, body: &[u8]) -> String {
    match (openai, stream) {
        (true, true) => openai_stream_text(body),
        (false, true) => anthropic_stream_text(body),
        (true, false) => {
            let json: Value = serde_json::from_slice(body).unwrap();
            json["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        }
        (false, false) => {
            let json: Value = serde_json::from_slice(body).unwrap();
            json["content"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|block| block["type"] == "text")
                .map(|block| block["text"].as_str().unwrap())
                .collect()
        }
    }
}

#[tokio::test]
async fn noop_passes_every_byte_through_untouched() {
    let stack = Stack::start(StackOptions::yaml("policies: [{type: noop}]")).await;
    for openai in [true, false] {
        for stream in [false, true] {
            for scenario in ["text", "tools", "text_and_tools", "thinking"] {
                let (direct, proxied) =
                    both(&stack, openai, stream, &[("x-mock-scenario", scenario)]).await;
                assert_eq!(
                    direct.body, proxied.body,
                    "openai={openai} stream={stream} scenario={scenario}"
                );
                assert_eq!(
                    direct.header("content-type"),
                    proxied.header("content-type")
                );
            }
        }
    }
    // What reached upstream is what the client sent, unknown fields and
    // provider headers included; credentials are the client's own.
    let requests = stack.mock.requests();
    let proxied_openai = requests
        .iter()
        .filter(|request| request.path.ends_with("/chat/completions"))
        .nth(1)
        .unwrap();
    assert_eq!(proxied_openai.body, openai_body(false).as_bytes());
    assert_eq!(
        proxied_openai.headers["authorization"],
        "Bearer sk-client-key"
    );
    let proxied_anthropic = requests
        .iter()
        .filter(|request| request.path.ends_with("/v1/messages"))
        .nth(1)
        .unwrap();
    assert_eq!(proxied_anthropic.headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        proxied_anthropic.headers["anthropic-beta"],
        "tools-2024-04-04"
    );
    assert_eq!(proxied_anthropic.headers["x-api-key"], "sk-ant-client-key");
}

#[tokio::test]
async fn all_caps_upper_cases_text_in_both_apis_streamed_and_not() {
    let stack = Stack::start(StackOptions::yaml("policies: [{type: all_caps}]")).await;
    for openai in [true, false] {
        for stream in [false, true] {
            let (direct, proxied) =
                both(&stack, openai, stream, &[("x-mock-chunk-size", "5")]).await;
            assert_eq!(response_text(openai, stream, &direct.body), TEXT);
            assert_eq!(
                response_text(openai, stream, &proxied.body),
                TEXT.to_uppercase(),
                "openai={openai} stream={stream}"
            );
            if stream {
                // Same events in the same order: only text changed.
                let direct_events = events(&direct.body);
                let proxied_events = events(&proxied.body);
                assert_eq!(direct_events.len(), proxied_events.len());
                for (a, b) in direct_events.iter().zip(&proxied_events) {
                    assert_eq!(a.event, b.event);
                }
                if openai {
                    assert_eq!(proxied_events.last().unwrap().data, "[DONE]");
                    let usage = &proxied_events[proxied_events.len() - 2].json();
                    assert!(
                        usage["usage"]["total_tokens"].as_u64().is_some(),
                        "usage chunk kept"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn all_caps_never_touches_tool_arguments_or_thinking() {
    let stack = Stack::start(StackOptions::yaml("policies: [{type: all_caps}]")).await;
    // Streamed tool calls: arguments byte-identical, split mid-escape included.
    let (direct, proxied) = both(&stack, true, true, &[("x-mock-scenario", "tools")]).await;
    let arguments = openai_stream_tool_arguments(&proxied.body);
    assert_eq!(arguments, openai_stream_tool_arguments(&direct.body));
    assert_eq!(arguments.len(), 2);
    for argument in &arguments {
        serde_json::from_str::<Value>(argument).expect("tool arguments are whole JSON");
    }
    let (direct, proxied) = both(&stack, false, true, &[("x-mock-scenario", "tools")]).await;
    assert_eq!(
        anthropic_stream_tool_inputs(&proxied.body),
        anthropic_stream_tool_inputs(&direct.body)
    );

    // Non-streamed tool calls.
    let (direct, proxied) = both(
        &stack,
        true,
        false,
        &[("x-mock-scenario", "text_and_tools")],
    )
    .await;
    let (direct, proxied) = (direct.json(), proxied.json());
    assert_eq!(
        direct["choices"][0]["message"]["tool_calls"],
        proxied["choices"][0]["message"]["tool_calls"]
    );
    assert_eq!(
        proxied["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_uppercase()
    );

    // Anthropic thinking and its signature stay as they were.
    let (direct, proxied) = both(&stack, false, false, &[("x-mock-scenario", "thinking")]).await;
    let (direct, proxied) = (direct.json(), proxied.json());
    assert_eq!(direct["content"][0]["type"], "thinking");
    assert_eq!(direct["content"][0], proxied["content"][0]);
    assert_eq!(
        proxied["content"][1]["text"],
        direct["content"][1]["text"]
            .as_str()
            .unwrap()
            .to_uppercase()
    );
}

#[tokio::test]
async fn string_replace_catches_matches_split_across_chunks() {
    let stack = Stack::start(StackOptions::yaml(
        r#"
policies:
  - type: string_replace
    config:
      replacements:
        - {from: "quick brown fox", to: "slow red panda"}
        - {from: "lazy", to: "sleepy"}
      apply_to: response
"#,
    ))
    .await;
    let expected = TEXT
        .replace("quick brown fox", "slow red panda")
        .replace("lazy", "sleepy");
    for openai in [true, false] {
        for stream in [false, true] {
            // Three characters per delta: every pattern spans several events.
            let (_, proxied) = both(&stack, openai, stream, &[("x-mock-chunk-size", "3")]).await;
            assert_eq!(
                response_text(openai, stream, &proxied.body),
                expected,
                "openai={openai} stream={stream}"
            );
        }
    }
}

#[tokio::test]
async fn string_replace_rewrites_requests_before_upstream() {
    let stack = Stack::start(StackOptions::yaml(
        r#"
policies:
  - type: string_replace
    config:
      replacements: [{from: "hello", to: "goodbye"}]
      apply_to: request
"#,
    ))
    .await;
    let client = Client::new();
    let response = client
        .post(&stack.openai_url(), OPENAI_HEADERS, openai_body(false))
        .await;
    assert_eq!(response.status, 200);
    let response = client
        .post(
            &stack.anthropic_url(),
            ANTHROPIC_HEADERS,
            anthropic_body(false),
        )
        .await;
    assert_eq!(response.status, 200);
    let requests = stack.mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].json()["messages"][0]["content"],
        "Say goodbye, please."
    );
    assert_eq!(
        requests[0].json()["x_unknown_field"],
        json!({"kept": [1, 2.5, "three"]})
    );
    assert_eq!(
        requests[1].json()["messages"][0]["content"],
        "Say goodbye, please."
    );
    assert_eq!(requests[1].json()["system"], "Be brief.");
}

#[tokio::test]
async fn chains_apply_in_order() {
    // Response events flow through the chain in reverse: string_replace
    // (listed last) sees the upstream text first, then all_caps upper-cases
    // the result.
    let stack = Stack::start(StackOptions::yaml(
        r#"
policies:
  - type: all_caps
  - type: string_replace
    config:
      replacements: [{from: "fox", to: "cat"}]
"#,
    ))
    .await;
    for stream in [false, true] {
        let (_, proxied) = both(&stack, true, stream, &[("x-mock-chunk-size", "2")]).await;
        assert_eq!(
            response_text(true, stream, &proxied.body),
            TEXT.replace("fox", "cat").to_uppercase()
        );
    }
}
