//! Bad input, upstream failures and client authentication: every error is a
//! clear message in the client's own API format, with the call id header.

use std::time::Duration;

use luthien_tests::{Client, Stack, StackOptions};
use serde_json::json;

const OPENAI: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const ANTHROPIC: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn malformed_json_is_a_400_in_each_api_format() {
    let stack = Stack::start(StackOptions::default()).await;
    let client = Client::new();
    let response = client
        .post(
            &stack.openai_url(),
            &[],
            r#"{"model": "gpt", "messages": [}"#,
        )
        .await;
    response.assert_openai_error(400, "not valid JSON");
    assert!(response.header("x-luthien-call-id").is_some());
    let response = client
        .post(&stack.anthropic_url(), &[], "not json at all")
        .await;
    response.assert_anthropic_error(400, "not valid JSON");
    let response = client
        .post(
            &stack.openai_url(),
            &[],
            r#"{"model":"gpt","stream":"yes"}"#,
        )
        .await;
    response.assert_openai_error(400, "not valid JSON");
    assert!(stack.mock.requests().is_empty(), "nothing reached upstream");
}

#[tokio::test]
async fn oversized_bodies_are_a_413() {
    let stack = Stack::start(StackOptions {
        max_body_bytes: 1024,
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    let big = json!({"model": "gpt", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let response = client.post(&stack.openai_url(), &[], big.to_string()).await;
    response.assert_openai_error(413, "1024 bytes");
    let response = client
        .post(&stack.anthropic_url(), &[], big.to_string())
        .await;
    response.assert_anthropic_error(413, "1024 bytes");

    // Without a content-length (chunked), the limit still holds.
    let response = luthien_tests::client::post_chunked(
        &stack.openai_url(),
        &[],
        vec![bytes::Bytes::from(vec![b' '; 512]); 8],
    )
    .await;
    response.assert_openai_error(413, "1024 bytes");
    assert!(stack.mock.requests().is_empty());
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_in_the_likely_api_format() {
    let stack = Stack::start(StackOptions::default()).await;
    let client = Client::new();
    let response = client
        .post(&format!("{}/v1/embeddings", stack.proxy), &[], "{}")
        .await;
    response.assert_openai_error(404, "/v1/embeddings");
    let response = luthien_tests::client::read(
        client
            .send(
                "GET",
                &stack.anthropic_url(),
                &[("anthropic-version", "2023-06-01")],
                "",
            )
            .await,
    )
    .await;
    response.assert_anthropic_error(405, "use POST");
    let health = luthien_tests::client::read(
        client
            .send("GET", &format!("{}/health", stack.proxy), &[], "")
            .await,
    )
    .await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn upstream_errors_pass_through_with_their_status_and_body() {
    let stack = Stack::start(StackOptions::default()).await;
    let client = Client::new();
    for (status, openai) in [("429", true), ("500", true), ("400", false), ("529", false)] {
        let (url, direct, body, extra) = if openai {
            (
                stack.openai_url(),
                stack.direct_openai_url(),
                OPENAI,
                ("x-unused", "1"),
            )
        } else {
            (
                stack.anthropic_url(),
                stack.direct_anthropic_url(),
                ANTHROPIC,
                ("anthropic-version", "2023-06-01"),
            )
        };
        let headers = [("x-mock-status", status), extra];
        let expected = client.post(&direct, &headers, body).await;
        let proxied = client.post(&url, &headers, body).await;
        assert_eq!(proxied.status.as_str(), status);
        assert_eq!(
            proxied.body, expected.body,
            "error body passed through untouched"
        );
        assert!(proxied.header("x-luthien-call-id").is_some());
    }
    // Streaming requests get the same treatment: the error is JSON, not SSE.
    let stream_body = r#"{"model":"gpt","stream":true,"messages":[]}"#;
    let proxied = client
        .post(
            &stack.openai_url(),
            &[("x-mock-status", "503")],
            stream_body,
        )
        .await;
    assert_eq!(proxied.status, 503);
    assert!(proxied.json()["error"]["message"].is_string());
}

#[tokio::test]
async fn unreachable_upstream_is_a_502() {
    let dead = luthien_tests::stack::unused_address().await;
    let stack = Stack::start(StackOptions {
        upstream_override: Some(format!("http://{dead}")),
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    client
        .post(&stack.openai_url(), &[], OPENAI)
        .await
        .assert_openai_error(502, "unreachable");
    client
        .post(&stack.anthropic_url(), &[], ANTHROPIC)
        .await
        .assert_anthropic_error(502, "unreachable");
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let stack = Stack::start(StackOptions {
        upstream_timeout: Duration::from_millis(300),
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    let hang = [("x-mock-scenario", "hang")];
    client
        .post(&stack.openai_url(), &hang, OPENAI)
        .await
        .assert_openai_error(504, "in time");
    client
        .post(&stack.anthropic_url(), &hang, ANTHROPIC)
        .await
        .assert_anthropic_error(504, "in time");
}

#[tokio::test]
async fn client_key_is_required_when_configured_and_never_forwarded() {
    let stack = Stack::start(StackOptions {
        client_api_key: Some("luthien-secret".into()),
        openai_api_key: Some("sk-provider".into()),
        anthropic_api_key: Some("sk-ant-provider".into()),
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    let response = client.post(&stack.openai_url(), &[], OPENAI).await;
    response.assert_openai_error(401, "API key");
    let response = client
        .post(&stack.anthropic_url(), &[("x-api-key", "wrong")], ANTHROPIC)
        .await;
    response.assert_anthropic_error(401, "API key");
    assert!(stack.mock.requests().is_empty());

    let response = client
        .post(
            &stack.openai_url(),
            &[("authorization", "Bearer luthien-secret")],
            OPENAI,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let response = client
        .post(
            &stack.anthropic_url(),
            &[("x-api-key", "luthien-secret")],
            ANTHROPIC,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let requests = stack.mock.requests();
    assert_eq!(requests[0].headers["authorization"], "Bearer sk-provider");
    assert_eq!(requests[1].headers["x-api-key"], "sk-ant-provider");
    for request in &requests {
        for value in request.headers.values() {
            assert!(!value.as_bytes().windows(14).any(|w| w == b"luthien-secret"));
        }
    }
}
