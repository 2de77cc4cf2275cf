//! A deterministic mock LLM provider for end-to-end tests and benchmarks.
//!
//! [`MockUpstream`] is a real HTTP server speaking the OpenAI Chat Completions
//! (`POST /v1/chat/completions`), OpenAI Responses (`POST /v1/responses`, see [`responses`])
//! and Anthropic Messages (`POST /v1/messages`) wire formats, streaming and not, plus the
//! auxiliary endpoints clients call around them: Anthropic's `POST /v1/messages/count_tokens`,
//! the Responses API's retrieve (also as a stream replay), delete, cancel, input items,
//! `POST /v1/responses/input_tokens` and `POST /v1/responses/compact`, and both providers'
//! `GET /v1/models` and `GET /v1/models/{id}` (Anthropic's format when the request carries
//! `anthropic-version`). Its answers are byte-for-byte deterministic (fixed ids and
//! timestamps, the request's `model` echoed), so a test can call it directly and through the
//! proxy and compare bytes; and the streamed and non-streamed answers to one request carry the
//! same content, so a test can prove that a reassembled stream equals the non-streamed answer
//! (for the Responses API, the stream's terminal `response` is the non-streamed body itself).
//!
//! What to answer is chosen per request through `x-mock-*` headers (see [`scenario`]), so one
//! instance serves many concurrent tests. The handle records every request and counts
//! streams the client abandoned before their end.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let mock = luthien_mock_upstream::MockUpstream::start().await?;
//! let base_url = mock.openai_base_url(); // http://127.0.0.1:PORT/v1
//! // … point the proxy at `base_url`, send requests with `x-mock-scenario: tools` …
//! assert_eq!(mock.abandoned_streams(), 0);
//! # Ok(()) }
//! ```

pub mod anthropic;
mod app;
pub mod openai;
pub mod reply;
pub mod responses;
pub mod scenario;
mod sse;

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::app::Shared;

pub use crate::app::HANG_LIMIT;

/// How a [`MockUpstream`] behaves beyond what the request headers choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockOptions {
    /// Keep every request for [`MockUpstream::requests`]. Turn off under sustained load, where
    /// the list would grow without bound.
    pub record: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self { record: true }
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// The URI path, without the query.
    pub path: String,
    /// The query string, if any (Claude Code, for one, sends `?beta=true`).
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body exactly as received.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body as JSON, or `Value::Null` when it is not valid JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The value of header `name` as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|value| std::str::from_utf8(value.as_bytes()).ok())
    }
}

/// A running mock provider; dropping it stops the server and closes its connections.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl MockUpstream {
    /// Serves on a fresh port of 127.0.0.1, recording requests.
    pub async fn start() -> std::io::Result<MockUpstream> {
        Self::start_with(MockOptions::default()).await
    }

    /// Serves on a fresh port of 127.0.0.1 with `options`.
    pub async fn start_with(options: MockOptions) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        Self::serve_with(listener, options).await
    }

    /// Serves on `listener`, recording requests.
    pub async fn serve(listener: TcpListener) -> std::io::Result<MockUpstream> {
        Self::serve_with(listener, MockOptions::default()).await
    }

    /// Serves on `listener` with `options`, in a task of the current Tokio runtime.
    pub async fn serve_with(
        listener: TcpListener,
        options: MockOptions,
    ) -> std::io::Result<MockUpstream> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(options.record));
        let server = tokio::spawn(accept_loop(listener, app::router(Arc::clone(&shared))));
        Ok(MockUpstream {
            addr,
            shared,
            server,
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, `http://ADDR/v1` (clients append `/chat/completions` or
    /// `/responses`).
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The Anthropic base URL, `http://ADDR` (clients append `/v1/messages`).
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, oldest first (empty when recording is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Streams the client let go of before their last event was written.
    pub fn abandoned_streams(&self) -> usize {
        self.shared.streams.counts().abandoned
    }

    /// Streams whose every event was written.
    pub fn completed_streams(&self) -> usize {
        self.shared.streams.counts().completed
    }

    /// Waits until at least `n` streams were abandoned; `false` if `timeout` passed first.
    pub async fn wait_abandoned(&self, n: usize, timeout: Duration) -> bool {
        self.shared
            .streams
            .wait_for(timeout, |counts| counts.abandoned >= n)
            .await
    }

    /// Waits until at least `n` streams completed; `false` if `timeout` passed first.
    pub async fn wait_completed(&self, n: usize, timeout: Duration) -> bool {
        self.shared
            .streams
            .wait_for(timeout, |counts| counts.completed >= n)
            .await
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .field("record", &self.shared.record)
            .finish_non_exhaustive()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task, and
        // with it the requests running inside (hyper's HTTP/2 request tasks end when their
        // connection is dropped), so even a hanging request is released.
        self.server.abort();
    }
}

/// Accepts connections until aborted. Connections live in a `JoinSet` owned by this task,
/// so that aborting it closes them all instead of leaving them to the client's mercy (unlike
/// `axum::serve`, whose connection tasks outlive it).
async fn accept_loop(listener: TcpListener, router: axum::Router) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(err) => {
                        // Running out of file descriptors is the usual cause; back off briefly
                        // instead of spinning, as hyper and axum do.
                        tracing::warn!(error = %err, "mock upstream: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Events are small writes that must leave at once, not wait for Nagle.
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, "mock upstream: cannot set TCP_NODELAY");
                }
                let builder = builder.clone();
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    if let Err(err) = builder.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(error = %err, "mock upstream: connection ended with an error");
                    }
                });
            }
            // Reap finished connections so the set does not grow under load.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
