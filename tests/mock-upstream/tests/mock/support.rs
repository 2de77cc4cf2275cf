//! A minimal HTTP client, SSE splitters, and the request-and-check steps several tests share.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use luthien_mock_upstream::MockUpstream;
use serde_json::Value;

pub const OPENAI: &str = "/v1/chat/completions";
pub const ANTHROPIC: &str = "/v1/messages";
pub const RESPONSES: &str = "/v1/responses";

/// A response, with its body as the frames it arrived in.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub frames: Vec<Bytes>,
}

impl Answer {
    pub fn bytes(&self) -> Vec<u8> {
        self.frames.concat()
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.bytes()).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes()).expect("JSON body")
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    /// The SSE events of the body, each with its terminating blank line; asserts that the
    /// body ends with a complete event.
    pub fn events(&self) -> Vec<String> {
        let text = self.text();
        assert!(text.ends_with("\n\n"), "body ends mid-event: {text:?}");
        text.split_inclusive("\n\n").map(str::to_owned).collect()
    }

    /// Asserts that every body frame is exactly one SSE event. Only meaningful for a paced
    /// stream: without pauses, TCP may cut one server frame across two client reads.
    pub fn assert_one_event_per_frame(&self) {
        for frame in &self.frames {
            let event = std::str::from_utf8(frame).expect("UTF-8 frame");
            assert!(
                event.ends_with("\n\n") && event.matches("\n\n").count() == 1,
                "frame is not one event: {event:?}"
            );
        }
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn request(
    mock: &MockUpstream,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", mock.addr()))
        .header(http::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        // from_bytes so tests can send raw UTF-8 in header values.
        let value = http::HeaderValue::from_bytes(value.as_bytes()).expect("header value");
        builder = builder.header(*name, value);
    }
    builder.body(Full::new(body.into())).expect("request")
}

pub async fn send(
    mock: &MockUpstream,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let response = client()
        .request(request(mock, method, path, headers, body))
        .await
        .expect("response");
    let (parts, mut body) = response.into_parts();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            frames.push(data);
        }
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        frames,
    }
}

pub async fn post(
    mock: &MockUpstream,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Answer {
    send(mock, Method::POST, path, headers, body.to_string()).await
}

pub async fn get(mock: &MockUpstream, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(mock, Method::GET, path, headers, "").await
}

/// The head of a slow stream (100 deltas, 20 ms apart) answering `body` posted to `path`,
/// for a test that hangs up before the end.
pub async fn slow_stream(mock: &MockUpstream, path: &str, body: &Value) -> Response<Incoming> {
    let headers = [("x-mock-delay-ms", "20"), ("x-mock-chunks", "100")];
    client()
        .request(request(
            mock,
            Method::POST,
            path,
            &headers,
            body.to_string(),
        ))
        .await
        .expect("response")
}

/// A fresh mock's answer to `body` posted to `path` with `headers`, checked to be a `200` of
/// `content_type`: how each byte-exact test starts.
pub async fn fresh_answer(
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
    content_type: &str,
) -> Answer {
    let mock = MockUpstream::start().await.expect("mock");
    let answer = post(&mock, path, headers, body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), content_type);
    answer
}

/// The non-streamed and the streamed answer to `request(stream)` posted to `path` with
/// `headers`, each checked to be a `200` of its content type, for a test that compares them.
pub async fn whole_and_stream(
    mock: &MockUpstream,
    path: &str,
    headers: &[(&str, &str)],
    request: impl Fn(bool) -> Value,
) -> (Answer, Answer) {
    let whole = post(mock, path, headers, &request(false)).await;
    assert_eq!(whole.status, 200, "{headers:?}");
    assert_eq!(whole.content_type(), "application/json");
    let stream = post(mock, path, headers, &request(true)).await;
    assert_eq!(stream.status, 200, "{headers:?}");
    assert_eq!(stream.content_type(), "text/event-stream");
    (whole, stream)
}

/// Asserts that `request(stream)` posted twice to `path` gets the same bytes twice, in each
/// of `scenarios`, streamed and not.
pub async fn assert_same_bytes(
    mock: &MockUpstream,
    path: &str,
    scenarios: &[&str],
    request: impl Fn(bool) -> Value,
) {
    for scenario in scenarios {
        for stream in [false, true] {
            let headers = [("x-mock-scenario", *scenario)];
            let body = request(stream);
            let first = post(mock, path, &headers, &body).await;
            let second = post(mock, path, &headers, &body).await;
            assert_eq!(first.bytes(), second.bytes(), "{scenario}, stream {stream}");
        }
    }
}

pub fn openai_request(stream: bool, include_usage: bool) -> Value {
    let mut body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": "Say hello to the world." },
        ],
        "stream": stream,
    });
    if include_usage {
        body["stream_options"] = serde_json::json!({ "include_usage": true });
    }
    body
}

pub fn anthropic_request(stream: bool) -> Value {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "You are terse.",
        "messages": [{ "role": "user", "content": "Say hello to the world." }],
        "stream": stream,
    })
}

pub fn responses_request(stream: bool) -> Value {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "instructions": "You are terse.",
        "input": [{ "role": "user", "content": "Say hello to the world." }],
        "stream": stream,
    })
}

/// The `data:` payloads of an OpenAI stream, in order (`[DONE]` kept as a string).
pub fn openai_data(answer: &Answer) -> Vec<String> {
    answer
        .events()
        .into_iter()
        .map(|event| {
            event
                .strip_prefix("data: ")
                .and_then(|rest| rest.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("not an OpenAI event: {event:?}"))
                .to_owned()
        })
        .collect()
}

/// The `(event, data)` pairs of an Anthropic or Responses stream, in order; asserts that the
/// event name matches the data's `type`.
pub fn anthropic_events(answer: &Answer) -> Vec<(String, Value)> {
    answer
        .events()
        .into_iter()
        .map(|event| {
            let (name, data) = event
                .strip_prefix("event: ")
                .and_then(|rest| rest.strip_suffix("\n\n"))
                .and_then(|rest| rest.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an Anthropic event: {event:?}"));
            let data: Value = serde_json::from_str(data).expect("event JSON");
            assert_eq!(data["type"], name, "event name and type differ");
            (name.to_owned(), data)
        })
        .collect()
}
