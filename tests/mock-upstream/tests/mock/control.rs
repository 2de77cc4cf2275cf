//! Control headers, errors, recording, pacing, abandonment and shutdown.

use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use luthien_mock_upstream::{MockOptions, MockUpstream};
use serde_json::{Value, json};

use crate::support::{
    ANTHROPIC, OPENAI, anthropic_events, anthropic_request, client, openai_data, openai_request,
    post, request, send, slow_stream,
};

#[tokio::test]
async fn forced_status_uses_each_api_error_shape() {
    let mock = MockUpstream::start().await.expect("mock");
    let cases = [
        (429, "rate_limit_error"),
        (500, "api_error"),
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (529, "overloaded_error"),
    ];
    for (status, kind) in cases {
        let code = status.to_string();
        let headers = [("x-mock-status", code.as_str())];

        let openai = post(&mock, OPENAI, &headers, &openai_request(true, false)).await;
        assert_eq!(openai.status, status);
        assert_eq!(openai.content_type(), "application/json");
        let error = openai.json();
        assert_eq!(
            error["error"]
                .as_object()
                .map(|error| error.keys().cloned().collect::<Vec<_>>()),
            Some(vec![
                "message".into(),
                "type".into(),
                "param".into(),
                "code".into()
            ])
        );
        assert_eq!(error["error"]["type"], kind);
        assert!(error["error"]["message"].is_string());
        assert_eq!(error["error"]["param"], Value::Null);
        assert_eq!(error["error"]["code"], Value::Null);

        let anthropic = post(&mock, ANTHROPIC, &headers, &anthropic_request(false)).await;
        assert_eq!(anthropic.status, status);
        let error = anthropic.json();
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], kind);
        assert!(error["error"]["message"].is_string());
    }
    // No stream was started for any of them.
    assert_eq!(mock.completed_streams() + mock.abandoned_streams(), 0);
}

#[tokio::test]
async fn bad_control_headers_are_a_clear_400() {
    let mock = MockUpstream::start().await.expect("mock");
    let cases = [
        ("x-mock-scenario", "nope"),
        ("x-mock-chunk-size", "0"),
        ("x-mock-chunks", "many"),
        ("x-mock-delay-ms", "-1"),
        ("x-mock-status", "204"),
    ];
    for (name, value) in cases {
        let openai = post(
            &mock,
            OPENAI,
            &[(name, value)],
            &openai_request(false, false),
        )
        .await;
        assert_eq!(openai.status, 400, "{name}: {value}");
        let message = openai.json()["error"]["message"].clone();
        assert!(
            message
                .as_str()
                .is_some_and(|message| message.contains(name)),
            "{message}"
        );

        let anthropic = post(
            &mock,
            ANTHROPIC,
            &[(name, value)],
            &anthropic_request(false),
        )
        .await;
        assert_eq!(anthropic.status, 400, "{name}: {value}");
        assert_eq!(
            anthropic.json()["error"]["type"],
            "invalid_request_error",
            "{name}"
        );
    }
}

#[tokio::test]
async fn malformed_json_is_a_400_in_the_api_format() {
    let mock = MockUpstream::start().await.expect("mock");
    let openai = send(&mock, Method::POST, OPENAI, &[], "{\"model\":").await;
    assert_eq!(openai.status, 400);
    assert_eq!(openai.json()["error"]["type"], "invalid_request_error");

    let anthropic = send(&mock, Method::POST, ANTHROPIC, &[], "not json").await;
    assert_eq!(anthropic.status, 400);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn chunk_count_gives_exactly_that_many_deltas() {
    let mock = MockUpstream::start().await.expect("mock");
    for chunks in [1_usize, 7, 200] {
        let count = chunks.to_string();
        let headers = [("x-mock-chunks", count.as_str())];

        let stream = post(&mock, OPENAI, &headers, &openai_request(true, false)).await;
        let contents: Vec<String> = openai_data(&stream)
            .iter()
            .filter(|data| *data != "[DONE]")
            .filter_map(|data| {
                let chunk: Value = serde_json::from_str(data).ok()?;
                let delta = &chunk["choices"][0]["delta"];
                // The role chunk's empty content is not a content delta.
                (delta.get("role").is_none())
                    .then(|| delta["content"].as_str().map(str::to_owned))
                    .flatten()
            })
            .collect();
        assert_eq!(contents.len(), chunks);
        assert!(contents.iter().all(|content| !content.is_empty()));
        let whole = post(&mock, OPENAI, &headers, &openai_request(false, false)).await;
        assert_eq!(
            whole.json()["choices"][0]["message"]["content"],
            contents.concat()
        );

        let stream = post(&mock, ANTHROPIC, &headers, &anthropic_request(true)).await;
        let deltas = anthropic_events(&stream)
            .iter()
            .filter(|(name, _)| name == "content_block_delta")
            .count();
        assert_eq!(deltas, chunks);
    }
}

#[tokio::test]
async fn text_is_split_on_character_boundaries() {
    let mock = MockUpstream::start().await.expect("mock");
    let text = "Grüße aus Köln 🦀 — ça va?";
    let headers = [("x-mock-text", text), ("x-mock-chunk-size", "3")];
    let stream = post(&mock, ANTHROPIC, &headers, &anthropic_request(true)).await;
    let deltas: Vec<String> = anthropic_events(&stream)
        .iter()
        .filter_map(|(_, data)| data["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert!(deltas.iter().all(|delta| delta.chars().count() <= 3));
    assert_eq!(deltas.concat(), text);

    let whole = post(&mock, OPENAI, &headers, &openai_request(false, false)).await;
    assert_eq!(whole.json()["choices"][0]["message"]["content"], text);
}

#[tokio::test]
async fn each_event_is_its_own_frame_and_paced() {
    let mock = MockUpstream::start().await.expect("mock");
    let headers = [("x-mock-delay-ms", "20"), ("x-mock-chunks", "5")];
    let started = Instant::now();
    let stream = post(&mock, ANTHROPIC, &headers, &anthropic_request(true)).await;
    // message_start, ping, block start, 5 deltas, block stop, message_delta, message_stop.
    assert_eq!(stream.events().len(), 11);
    assert_eq!(stream.frames.len(), 11);
    stream.assert_one_event_per_frame();
    assert!(started.elapsed() >= Duration::from_millis(10 * 20));
}

#[tokio::test]
async fn abandoned_and_completed_streams_are_counted() {
    let mock = MockUpstream::start().await.expect("mock");
    post(&mock, OPENAI, &[], &openai_request(true, false)).await;
    assert!(mock.wait_completed(1, Duration::from_secs(5)).await);
    assert_eq!(mock.completed_streams(), 1);
    assert_eq!(mock.abandoned_streams(), 0);

    // Read the first event of a slow stream, then hang up.
    let mut body = slow_stream(&mock, OPENAI, &openai_request(true, false))
        .await
        .into_body();
    let first = body.frame().await.expect("a frame").expect("frame");
    let first = first.into_data().expect("data frame");
    assert!(first.starts_with(b"data: {"), "{first:?}");
    drop(body);

    assert!(mock.wait_abandoned(1, Duration::from_secs(5)).await);
    assert_eq!(mock.abandoned_streams(), 1);
    assert_eq!(mock.completed_streams(), 1);
    assert!(!mock.wait_abandoned(2, Duration::from_millis(50)).await);
}

#[tokio::test]
async fn hang_sends_nothing_and_drop_closes_it() {
    let mock = MockUpstream::start().await.expect("mock");
    let pending = tokio::spawn(client().request(request(
        &mock,
        Method::POST,
        ANTHROPIC,
        &[("x-mock-scenario", "hang")],
        anthropic_request(true).to_string(),
    )));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "hang answered");
    assert_eq!(mock.requests().len(), 1, "the request was received");

    drop(mock);
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("dropping the mock closes the connection")
        .expect("task");
    assert!(outcome.is_err(), "no response is expected: {outcome:?}");
}

#[tokio::test]
async fn drop_stops_the_server() {
    let mock = MockUpstream::start().await.expect("mock");
    let addr = mock.addr();
    drop(mock);
    // Give the aborted task a moment to drop its listener.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn requests_are_recorded_verbatim() {
    let mock = MockUpstream::start().await.expect("mock");
    let body = "{ \"model\": \"claude-x\",\n  \"messages\": [] }";
    send(
        &mock,
        Method::POST,
        "/v1/messages?beta=true",
        &[("x-api-key", "secret"), ("x-mock-text", "ok")],
        body,
    )
    .await;
    post(&mock, OPENAI, &[], &json!({ "model": "gpt-x" })).await;

    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, Method::POST);
    assert_eq!(requests[0].path, "/v1/messages");
    assert_eq!(requests[0].query.as_deref(), Some("beta=true"));
    assert_eq!(requests[0].header("x-api-key"), Some("secret"));
    assert_eq!(requests[0].body, body.as_bytes());
    assert_eq!(requests[0].json()["model"], "claude-x");
    assert_eq!(requests[1].path, OPENAI);
    assert_eq!(requests[1].json(), json!({ "model": "gpt-x" }));
}

#[tokio::test]
async fn recording_can_be_turned_off() {
    let mock = MockUpstream::start_with(MockOptions { record: false })
        .await
        .expect("mock");
    let answer = post(&mock, OPENAI, &[], &openai_request(true, true)).await;
    assert_eq!(answer.status, 200);
    assert!(mock.requests().is_empty());
    assert!(mock.wait_completed(1, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn base_urls_and_other_routes() {
    let mock = MockUpstream::start().await.expect("mock");
    assert_eq!(mock.openai_base_url(), format!("http://{}/v1", mock.addr()));
    assert_eq!(mock.anthropic_base_url(), format!("http://{}", mock.addr()));

    let get = send(&mock, Method::GET, OPENAI, &[], "").await;
    assert_eq!(get.status, 405);
    assert_eq!(get.json()["error"]["type"], "invalid_request_error");

    let missing = send(&mock, Method::POST, "/v1/embeddings", &[], "{}").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "not_found_error");

    let health = send(&mock, Method::GET, "/health", &[], "").await;
    assert_eq!(health.status, 200);
    // Health checks are not provider traffic and stay out of the record.
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn http2_prior_knowledge_works_and_drop_releases_hangs() {
    let mock = MockUpstream::start().await.expect("mock");
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();

    let response = h2
        .request(request(
            &mock,
            Method::POST,
            OPENAI,
            &[],
            openai_request(true, false).to_string(),
        ))
        .await
        .expect("response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));

    let pending = tokio::spawn(h2.request(request(
        &mock,
        Method::POST,
        OPENAI,
        &[("x-mock-scenario", "hang")],
        openai_request(false, false).to_string(),
    )));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "hang answered");
    drop(mock);
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("dropping the mock ends the HTTP/2 request")
        .expect("task");
    assert!(outcome.is_err(), "no response is expected: {outcome:?}");
}
