//! Policies: the code that inspects and rewrites calls, and everything it reads calls with.
//!
//! A [`Policy`] is configured once (from the YAML file, [`config`]) and shared by every
//! call; for each call it creates a [`CallPolicy`] that owns the call's state
//! (e.g. the sliding buffer of `string_replace`). A [`Chain`] runs an ordered
//! list of policies: requests flow through it in order, responses and stream
//! events in reverse order, like layers of middleware.
//!
//! Policies read bodies through [`shapes`] (each API's JSON, never converted), streams through
//! [`sse`] (events reassembled from frames, wire bytes kept until changed), and
//! [`reconstruct`] rebuilds a stream into its non-streamed response. The crate knows nothing
//! of gRPC sessions, storage or the data plane; its metrics are handed to it
//! ([`PolicyMetrics`]).

pub mod all_caps;
pub mod block;
pub mod chain;
pub mod config;
pub mod llm_judge;
mod metrics;
pub mod noop;
pub mod reconstruct;
pub mod regex_redact;
pub mod remote;
pub mod server;
pub mod shapes;
pub mod sse;
pub mod string_replace;
pub mod text_rewrite;
pub mod tool_call_filter;
pub mod tool_calls;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use luthien_proto::common::v1::Header;
use luthien_telemetry::propagation::W3cContext;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::task::TaskTracker;

pub use chain::{CallChain, Chain};
pub use luthien_api::Api;
pub use metrics::PolicyMetrics;
pub use sse::SseEvent;

/// What the control plane knows about a call when it starts.
#[derive(Clone, Debug)]
pub struct CallInfo {
    pub call_id: String,
    pub api: Api,
    pub model: String,
    pub stream: bool,
    /// Non-credential request headers as the data plane forwarded them
    /// (shared: every policy of the chain sees the same list).
    pub headers: Arc<[Header]>,
    /// W3C context of the data plane's call span (empty when untraced).
    pub trace: W3cContext,
}

impl CallInfo {
    /// A call without headers or trace context (replays, tests).
    pub fn new(
        call_id: impl Into<String>,
        api: Api,
        model: impl Into<String>,
        stream: bool,
    ) -> Self {
        Self {
            call_id: call_id.into(),
            api,
            model: model.into(),
            stream,
            headers: Arc::from([]),
            trace: W3cContext::default(),
        }
    }
}

/// A policy's answer to a request.
#[derive(Debug)]
pub enum RequestVerdict {
    /// Forward the (possibly rewritten) request upstream.
    Continue,
    /// Answer the client directly; upstream is never called.
    Respond(ImmediateResponse),
}

/// A complete response produced by a policy, already in the client's API
/// format (SSE when the call is streamed, JSON otherwise).
#[derive(Clone, Debug)]
pub struct ImmediateResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    /// Why the call was answered without upstream (logged and recorded).
    pub reason: String,
}

/// A policy failed on a call. In the request phase the call is rejected; in
/// the response phase the original passes through and the error is logged.
#[derive(Debug, thiserror::Error)]
#[error("policy `{policy}` failed: {message}")]
pub struct PolicyError {
    pub policy: String,
    pub message: String,
}

impl PolicyError {
    pub fn new(policy: &str, message: impl Into<String>) -> Self {
        Self {
            policy: policy.to_owned(),
            message: message.into(),
        }
    }
}

/// Something a policy wants on the call's record, e.g. "blocked tool call
/// X": stored with the call and shown next to its diff.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyEvent {
    /// A short machine-readable verb, e.g. `replaced`, `blocked`.
    pub action: String,
    /// One line for people.
    pub summary: String,
    /// Details (never secrets).
    pub data: Value,
}

/// A configured policy, shared by all calls.
pub trait Policy: Send + Sync + 'static {
    /// The `type` of the policy in the YAML file, e.g. `all_caps`.
    fn kind(&self) -> &'static str;
    /// The policy's `name` in the YAML file, or its kind.
    fn name(&self) -> &str;
    /// True when the policy never changes a request, response or event.
    /// A chain of read-only policies runs its calls in observe mode.
    fn read_only(&self) -> bool;
    /// True when the policy may change responses or stream events. A chain
    /// in which no policy does (e.g. only request blocks) runs the response
    /// in observe mode: no per-chunk round trip.
    fn transforms_responses(&self) -> bool {
        !self.read_only()
    }
    /// True when the policy's request hook may change, block or record the
    /// request. When no policy of a chain does, the control plane answers
    /// the request at once without parsing it (requests of agents run to
    /// hundreds of kilobytes).
    fn inspects_requests(&self) -> bool {
        !self.read_only()
    }
    /// Creates the per-call state.
    fn start_call(&self, call: &CallInfo) -> Box<dyn CallPolicy>;
    /// Tasks the policy runs beyond its calls (a remote server's stream finishing after the
    /// call it served), each bounded in time; shutdown waits for them.
    fn background_tasks(&self) -> Option<&TaskTracker> {
        None
    }
    /// Adds counters of the policy's own to the metrics its chain reports into.
    fn register_metrics(&self, _metrics: &PolicyMetrics) {}
}

/// One policy's state for one call. Every hook has a pass-through default.
#[async_trait]
pub trait CallPolicy: Send {
    /// The request body (parsed JSON in the call's API format). Mutate it in
    /// place to rewrite the request.
    async fn on_request(&mut self, _request: &mut Value) -> Result<RequestVerdict, PolicyError> {
        Ok(RequestVerdict::Continue)
    }

    /// A complete non-streamed 2xx response body. Mutate it in place.
    async fn on_response(&mut self, _response: &mut Value) -> Result<(), PolicyError> {
        Ok(())
    }

    /// One SSE event of a streamed response. Push 0..N events to `out`:
    /// nothing holds or drops it, several inject events.
    async fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut Vec<SseEvent>,
    ) -> Result<(), PolicyError> {
        out.push(event);
        Ok(())
    }

    /// The upstream stream ended; flush anything held into `out`.
    async fn on_stream_end(&mut self, _out: &mut Vec<SseEvent>) -> Result<(), PolicyError> {
        Ok(())
    }

    /// Hands over the events recorded since the last call; the control
    /// plane asks after every phase.
    fn take_events(&mut self) -> Vec<PolicyEvent> {
        Vec::new()
    }
}

/// A policy type the YAML file can name; each one is registered in [`crate::config`].
pub trait FromConfig: Policy + Sized {
    /// The `type` that selects the policy in the file; [`Policy::kind`] returns it too.
    const KIND: &'static str;
    /// The policy's `config` mapping; an absent `config` deserialises from an empty mapping.
    /// Mark it `#[serde(deny_unknown_fields)]` so a misspelt key is an error, not a silent no-op.
    type Config: DeserializeOwned;
    /// Builds the policy named `name`. An `Err` starts with the offending key's path within
    /// `config`, e.g. `replacements[1].from: must not be empty`.
    fn from_config(name: String, config: Self::Config) -> Result<Self, String>;
}

/// The `config` of a policy that takes none: any key in it is an error.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}
