//! A plain HTTP client for tests: sends a request and keeps the response's
//! status, headers and exact body bytes (and, for streams, each frame).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A response as the client saw it.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<binary>")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Asserts an OpenAI-format error (`{"error": {"message", "type", …}}`) with `status` whose
    /// message mentions `needle`.
    pub fn assert_openai_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        let message = body["error"]["message"]
            .as_str()
            .expect("OpenAI error shape");
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
        assert!(body["error"]["type"].is_string());
        assert_eq!(self.header("content-type"), Some("application/json"));
    }

    /// Asserts an Anthropic-format error (`{"type": "error", "error": {…}}`) with `status`
    /// whose message mentions `needle`.
    pub fn assert_anthropic_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        assert_eq!(body["type"], "error", "Anthropic error shape: {body}");
        let message = body["error"]["message"]
            .as_str()
            .expect("Anthropic error shape");
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request and returns the response with its body still unread.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> http::Response<Incoming> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body.into()))
            .expect("valid test request");
        tokio::time::timeout(Duration::from_secs(30), self.inner.request(request))
            .await
            .expect("response headers within 30 s")
            .expect("request sent")
    }

    /// POSTs JSON and reads the whole response.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let response = self.send("POST", url, &all, body).await;
        read(response).await
    }

    /// POSTs JSON and keeps each body frame as it arrived.
    pub async fn post_frames(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (TestResponse, Vec<Bytes>) {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let response = self.send("POST", url, &all, body).await;
        let (parts, mut incoming) = response.into_parts();
        let mut frames = Vec::new();
        let mut body = BytesMut::new();
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), incoming.frame())
            .await
            .expect("next frame within 30 s")
        {
            if let Ok(data) = frame.expect("body frame").into_data() {
                body.extend_from_slice(&data);
                frames.push(data);
            }
        }
        let response = TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.freeze(),
        };
        (response, frames)
    }
}

/// POSTs JSON sent as `chunks` without a `content-length` (chunked transfer encoding), as
/// a client streaming its body would, and reads the whole response.
pub async fn post_chunked(url: &str, headers: &[(&str, &str)], chunks: Vec<Bytes>) -> TestResponse {
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|chunk| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk))),
    );
    let mut request = Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::StreamBody::new(frames))
        .expect("valid test request");
    let response = HyperClient::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .expect("request sent");
    read(response).await
}

/// Reads a whole response.
pub async fn read(response: http::Response<Incoming>) -> TestResponse {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30 s")
        .expect("body read")
        .to_bytes();
    TestResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
