//! The data plane's client edge under slow, greedy and odd clients: slow-loris connections are
//! cut while real calls go on, the connection and call caps hold, an oversized body is read
//! before the 413 so a client that writes everything first still reads it, request heads too
//! large get a 431 in the client's format, and the other parties' credentials stay home.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use luthien_dataplane::config::EdgeLimits;
use luthien_tests::{Client, Stack, StackOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPENAI: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const OPENAI_STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn address(stack: &Stack) -> String {
    stack.proxy.trim_start_matches("http://").to_owned()
}

/// Slow-loris clients trickle a request head one byte at a time. With every connection slot
/// taken by them, a real call waits in the backlog, and gets through once the header timeout
/// has cut them; the slow connections are closed, not served.
#[tokio::test]
async fn slow_loris_connections_are_cut_and_real_calls_go_on() {
    let stack = Stack::start(StackOptions {
        edge: EdgeLimits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(600),
            ..EdgeLimits::default()
        },
        ..StackOptions::default()
    })
    .await;
    let address = address(&stack);
    let head =
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(&head[..10]).await.unwrap();
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        // One more byte a second on each, as a slow-loris does; count who got cut.
        let mut cut = 0;
        for byte in &head[10..14] {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for stream in &mut slow {
                let _ = stream.write_all(&[*byte]).await;
            }
        }
        for stream in &mut slow {
            let mut buffer = [0u8; 256];
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
                // Closed without an answer, or hyper's 408 for a head that never came.
                Ok(Ok(0)) | Ok(Err(_)) => cut += 1,
                Ok(Ok(n)) if buffer[..n].starts_with(b"HTTP/1.1 408") => cut += 1,
                other => panic!("slow connection not cut: {other:?}"),
            }
        }
        cut
    });
    let started = Instant::now();
    let response = Client::new().post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the real call waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        trickle.await.unwrap(),
        8,
        "every slow-loris connection is cut"
    );
}

/// Past `--max-concurrent-calls`, a call gets a 503 in its API's format, with a call id; a
/// stream holds its slot until it ends.
#[tokio::test]
async fn calls_past_the_cap_get_a_503_in_their_format() {
    let stack = Stack::start(StackOptions {
        edge: EdgeLimits {
            max_concurrent_calls: 1,
            ..EdgeLimits::default()
        },
        ..StackOptions::default()
    })
    .await;
    let url = stack.openai_url();
    let slow = tokio::spawn(async move {
        let headers = [("x-mock-chunks", "10"), ("x-mock-delay-ms", "100")];
        Client::new().post(&url, &headers, OPENAI_STREAM).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = Client::new()
        .post(&stack.anthropic_url(), &[], OPENAI)
        .await;
    refused.assert_anthropic_error(503, "too many calls in progress");
    assert!(refused.header("x-luthien-call-id").is_some());
    assert_eq!(slow.await.unwrap().status, 200);
    let after = Client::new().post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(
        after.status,
        200,
        "the slot is free again: {}",
        after.text()
    );
}

/// A client that writes its whole body before reading (Python's `http.client` does) reads
/// the 413, instead of a broken pipe from a connection closed under it.
#[tokio::test]
async fn an_oversized_body_written_first_still_gets_its_413() {
    let stack = Stack::start(StackOptions {
        max_body_bytes: 64 * 1024,
        ..StackOptions::default()
    })
    .await;
    let address = address(&stack);
    let response = tokio::task::spawn_blocking(move || {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(4 * 1024 * 1024)
        );
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream
            .write_all(body.as_bytes())
            .expect("the whole body is accepted (read and discarded)");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("x-luthien-call-id"), "{response}");
    let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(stack.mock.requests().is_empty());
}

/// A body that trickles in slower than `--body-read-timeout` is a 408.
#[tokio::test]
async fn a_body_slower_than_the_timeout_is_a_408() {
    let stack = Stack::start(StackOptions {
        edge: EdgeLimits {
            body_read_timeout: Duration::from_millis(500),
            ..EdgeLimits::default()
        },
        ..StackOptions::default()
    })
    .await;
    let mut stream = TcpStream::connect(address(&stack)).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        OPENAI.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&OPENAI.as_bytes()[..5]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "answered and closed within the timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"type\":\"error\""),
        "Anthropic's format: {answer}"
    );
}

/// Too many or too large request headers: a 431 in the client's format with a call id, not
/// hyper's bare one.
#[tokio::test]
async fn oversized_request_heads_get_a_431_in_the_clients_format() {
    let stack = Stack::start(StackOptions::default()).await;
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("x-extra-{i}"), "v".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let response = Client::new().post(&stack.openai_url(), &many, OPENAI).await;
    response.assert_openai_error(431, "(at most 100 headers");
    assert!(response.header("x-luthien-call-id").is_some());

    let large = "v".repeat(100 * 1024);
    let response = Client::new()
        .post(&stack.anthropic_url(), &[("x-large", &large)], OPENAI)
        .await;
    response.assert_anthropic_error(431, "request headers too large");
    assert!(stack.mock.requests().is_empty());
}

/// Unknown routes and methods answer in the likely API's format with a call id.
#[tokio::test]
async fn route_errors_carry_a_call_id() {
    let stack = Stack::start(StackOptions::default()).await;
    let client = Client::new();
    let missing = luthien_tests::client::read(
        client
            .send(
                "POST",
                &format!("{}/v1/embeddings", stack.proxy),
                &[],
                OPENAI,
            )
            .await,
    )
    .await;
    missing.assert_openai_error(404, "no route");
    assert!(missing.header("x-luthien-call-id").is_some());
    let wrong = luthien_tests::client::read(
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
    wrong.assert_anthropic_error(405, "use POST");
    assert!(wrong.header("x-luthien-call-id").is_some());
}

/// Invalid UTF-8 and absurd nesting are refused even when no policy reads requests (a noop
/// chain forwards request bodies unparsed).
#[tokio::test]
async fn bodies_are_checked_whatever_the_chain() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut invalid = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":""#.to_vec();
    invalid.extend_from_slice(&[0xff, 0xfe]);
    invalid.extend_from_slice(br#""}]}"#);
    let response = Client::new().post(&stack.openai_url(), &[], invalid).await;
    response.assert_openai_error(400, "not valid UTF-8");

    let deep = format!(
        r#"{{"model":"gpt-4o-mini","messages":[],"metadata":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let response = Client::new().post(&stack.anthropic_url(), &[], deep).await;
    response.assert_anthropic_error(400, "nests deeper than");

    // Brackets inside strings are text, not nesting.
    let brackets =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[".repeat(500)}]});
    let response = Client::new()
        .post(&stack.openai_url(), &[], brackets.to_string())
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        stack.mock.requests().len(),
        1,
        "only the valid body went upstream"
    );
}

/// `bearer` works as well as `Bearer`; other parties' credentials are not forwarded unless
/// `--forward-headers` names them.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_foreign_credentials_stay_home() {
    let stack = Stack::start(StackOptions {
        client_api_key: Some("luthien-key".into()),
        edge: EdgeLimits {
            forward_headers: vec!["x-goog-api-key".into()],
            ..EdgeLimits::default()
        },
        ..StackOptions::default()
    })
    .await;
    let headers = [
        ("authorization", "bearer luthien-key"),
        ("cookie", "session=abc"),
        ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
        ("api-key", "azure-key"),
        ("x-goog-api-key", "google-key"),
        ("x-team", "blue"),
    ];
    let response = Client::new()
        .post(&stack.openai_url(), &headers, OPENAI)
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let upstream = &stack.mock.requests()[0].headers;
    for withheld in ["cookie", "proxy-authorization", "api-key", "authorization"] {
        assert!(
            upstream.get(withheld).is_none(),
            "{withheld} reached upstream"
        );
    }
    assert_eq!(
        upstream["x-goog-api-key"], "google-key",
        "configured to pass"
    );
    assert_eq!(upstream["x-team"], "blue");
    let wrong = Client::new()
        .post(
            &stack.openai_url(),
            &[("authorization", "bearer nope")],
            OPENAI,
        )
        .await;
    wrong.assert_openai_error(401, "invalid API key");
}
