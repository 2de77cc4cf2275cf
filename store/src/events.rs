//! The one event schema shared by everything that writes or reads call
//! records: the store's writer and reader, the activity bus and the debug
//! API. Writer and reader use these same types, so they cannot drift apart.
//!
//! Payloads are versioned: every stored event carries [`SCHEMA_VERSION`];
//! a reader meeting a newer version than it knows reports it instead of
//! misreading it.

use luthien_api::Api;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::body::Body;

/// Version of [`EventPayload`]'s JSON shape. Bump it on any change that an
/// older reader would misread, and keep reading the older versions.
/// 2: a final body equal to its original is stored as a marker ([`crate::unchanged`]).
pub const SCHEMA_VERSION: u32 = 2;

/// How a call ended, as recorded (mirrors the protocol's `CallOutcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// Started, not ended yet.
    InProgress,
    Completed,
    Blocked,
    ClientGone,
    UpstreamError,
    UpstreamUnreachable,
    UpstreamTimeout,
    ControlPlaneTimeout,
    /// The control plane failed fast (unreachable, closed the stream, broke the protocol).
    ControlPlaneError,
    Rejected,
    /// The data plane vanished without saying how the call ended.
    Abandoned,
    /// The data plane let the call through without policies (fail-open while no control
    /// plane could take it) and reported it afterwards.
    Unpoliced,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::InProgress => "in_progress",
            CallStatus::Completed => "completed",
            CallStatus::Blocked => "blocked",
            CallStatus::ClientGone => "client_gone",
            CallStatus::UpstreamError => "upstream_error",
            CallStatus::UpstreamUnreachable => "upstream_unreachable",
            CallStatus::UpstreamTimeout => "upstream_timeout",
            CallStatus::ControlPlaneTimeout => "control_plane_timeout",
            CallStatus::ControlPlaneError => "control_plane_error",
            CallStatus::Rejected => "rejected",
            CallStatus::Abandoned => "abandoned",
            CallStatus::Unpoliced => "unpoliced",
        }
    }

    pub fn parse(text: &str) -> Option<CallStatus> {
        serde_json::from_value(Value::String(text.to_owned())).ok()
    }
}

/// Part of the schema, defined with the APIs that report it.
pub use luthien_api::TokenUsage;

/// What happened in a call. Stored as JSON with a `type` tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "StoredPayload")]
pub enum EventPayload {
    /// The request as the client sent it and as it went upstream (equal
    /// when no policy changed it). Credentials are never included.
    Request {
        original: Body,
        #[serde(rename = "final")]
        final_: Body,
        /// Non-credential request headers.
        headers: Value,
    },
    /// The response as upstream sent it and as the client received it; for
    /// streams both are reconstructed into the API's non-streamed shape.
    Response {
        original: Option<Body>,
        #[serde(rename = "final")]
        final_: Option<Body>,
        status: CallStatus,
        /// Upstream HTTP status, when there was one.
        upstream_status: Option<u16>,
        /// Why the call did not complete, when it did not.
        detail: Option<String>,
        /// SSE events received from upstream / sent to the client.
        chunks_received: u64,
        chunks_sent: u64,
        time_to_first_chunk_ms: Option<f64>,
        duration_ms: Option<f64>,
        overhead_ms: Option<f64>,
        usage: TokenUsage,
    },
    /// Something a policy wants on the record, e.g. "blocked tool call X".
    Policy {
        policy: String,
        action: String,
        summary: String,
        #[serde(default)]
        data: Value,
    },
}

/// How an [`EventPayload`] is read: every variant's fields side by side, read straight from the
/// stored text. (A tagged enum is read through serde's buffer of parsed values, which cannot
/// hand a [`Body`] its text, and could not read a body this build cannot parse as numbers.)
#[derive(Deserialize)]
struct StoredPayload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    original: Option<Body>,
    #[serde(default, rename = "final")]
    final_: Option<Body>,
    #[serde(default)]
    headers: Value,
    status: Option<CallStatus>,
    #[serde(default)]
    upstream_status: Option<u16>,
    #[serde(default)]
    detail: Option<String>,
    chunks_received: Option<u64>,
    chunks_sent: Option<u64>,
    #[serde(default)]
    time_to_first_chunk_ms: Option<f64>,
    #[serde(default)]
    duration_ms: Option<f64>,
    #[serde(default)]
    overhead_ms: Option<f64>,
    usage: Option<TokenUsage>,
    policy: Option<String>,
    action: Option<String>,
    summary: Option<String>,
    #[serde(default)]
    data: Value,
}

impl TryFrom<StoredPayload> for EventPayload {
    type Error = String;

    fn try_from(stored: StoredPayload) -> Result<Self, String> {
        fn required<T>(field: Option<T>, name: &str) -> Result<T, String> {
            field.ok_or_else(|| format!("missing field `{name}`"))
        }
        // A body that is JSON `null` is stored as `null`, which reads back as no body.
        let null = || Body::from(Value::Null);
        Ok(match stored.kind.as_str() {
            "request" => EventPayload::Request {
                original: stored.original.unwrap_or_else(null),
                final_: stored.final_.unwrap_or_else(null),
                headers: stored.headers,
            },
            "response" => EventPayload::Response {
                original: stored.original,
                final_: stored.final_,
                status: required(stored.status, "status")?,
                upstream_status: stored.upstream_status,
                detail: stored.detail,
                chunks_received: required(stored.chunks_received, "chunks_received")?,
                chunks_sent: required(stored.chunks_sent, "chunks_sent")?,
                time_to_first_chunk_ms: stored.time_to_first_chunk_ms,
                duration_ms: stored.duration_ms,
                overhead_ms: stored.overhead_ms,
                usage: required(stored.usage, "usage")?,
            },
            "policy" => EventPayload::Policy {
                policy: required(stored.policy, "policy")?,
                action: required(stored.action, "action")?,
                summary: required(stored.summary, "summary")?,
                data: stored.data,
            },
            other => {
                return Err(format!(
                    "unknown event type `{other}`, expected `request`, `response` or `policy`"
                ));
            }
        })
    }
}

impl EventPayload {
    /// The `type` tag, also the `event_type` column.
    pub fn event_type(&self) -> &'static str {
        match self {
            EventPayload::Request { .. } => "request",
            EventPayload::Response { .. } => "response",
            EventPayload::Policy { .. } => "policy",
        }
    }

    /// One line for activity feeds and logs; never a payload.
    pub fn summary(&self) -> String {
        match self {
            EventPayload::Request {
                original, final_, ..
            } => {
                if original.same_text(final_) {
                    "request".to_owned()
                } else {
                    "request (rewritten by policy)".to_owned()
                }
            }
            EventPayload::Response {
                status,
                duration_ms,
                original,
                final_,
                ..
            } => {
                let same = Body::same_text_if_any(original.as_ref(), final_.as_ref());
                let changed = if !same { ", changed by policy" } else { "" };
                match duration_ms {
                    Some(ms) => format!("response {} in {ms:.0} ms{changed}", status.as_str()),
                    None => format!("response {}{changed}", status.as_str()),
                }
            }
            EventPayload::Policy {
                policy, summary, ..
            } => format!("{policy}: {summary}"),
        }
    }
}

/// One event of one call, as written and as read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    pub call_id: String,
    /// 0, 1, 2, … within the call, in the order the control plane saw them.
    pub sequence: u32,
    /// Unix time in microseconds.
    pub timestamp_micros: i64,
    pub schema_version: u32,
    pub payload: EventPayload,
}

/// The calls-table row: what a request log shows for one call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSummary {
    pub call_id: String,
    pub created_at_micros: i64,
    pub completed_at_micros: Option<i64>,
    pub api: Api,
    pub model: String,
    pub stream: bool,
    pub status: CallStatus,
    pub duration_ms: Option<f64>,
    pub time_to_first_chunk_ms: Option<f64>,
    pub usage: TokenUsage,
    pub session_id: Option<String>,
    /// W3C trace id (32 hex digits) of the call's trace, when traced.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// Whether any policy changed the request or the response.
    pub policy_changed: bool,
    /// Instance id of the control plane that recorded the call: calls a control plane that
    /// died left in progress are found by it (see `liveness`).
    #[serde(default)]
    pub control_plane_id: Option<String>,
    /// The start of the last user message as it went upstream ([`PREVIEW_CHARS`] at most),
    /// what a request log lists beside the metadata. Kept only where `--store-payloads` keeps
    /// the final request.
    #[serde(default)]
    pub preview: Option<String>,
    /// The policies that recorded an event for the call, by name, in the order they first did.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// The longest [`CallSummary::preview`], in characters.
pub const PREVIEW_CHARS: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/event_decoder`: without `serde_json/float_roundtrip` this timing read
    /// back one unit in the last place off what was written.
    #[test]
    fn an_event_reads_back_as_written() {
        let stored = r#"{"type":"response","original":null,"final":{"a":0},"status":"completed","upstream_status":200,"detail":null,"chunks_received":1,"chunks_sent":1,"time_to_first_chunk_ms":1154444444444444444444444444444444444440,"duration_ms":2.0,"overhead_ms":0.1,"usage":{"input_tokens":1,"output_tokens":2}}"#;
        let payload: EventPayload = serde_json::from_str(stored).unwrap();
        let written = serde_json::to_string(&payload).unwrap();
        let read: EventPayload = serde_json::from_str(&written).unwrap();
        assert_eq!(read, payload);
    }

    #[test]
    fn bodies_read_back_as_the_text_they_were_stored_as() {
        let stored = r#"{"type":"request","original":{"model": "m", "temperature": 1e400},"final":{"luthien_same_as_original":true},"headers":{}}"#;
        let payload: EventPayload = serde_json::from_str(stored).unwrap();
        let EventPayload::Request {
            original, final_, ..
        } = &payload
        else {
            panic!("a request: {payload:?}");
        };
        assert_eq!(original.json(), r#"{"model": "m", "temperature": 1e400}"#);
        assert_eq!(final_.json(), r#"{"luthien_same_as_original":true}"#);
        assert_eq!(serde_json::to_string(&payload).unwrap(), stored);

        let response: EventPayload = serde_json::from_str(
            r#"{"type":"response","original":null,"final":"text","status":"blocked","chunks_received":0,"chunks_sent":1,"usage":{}}"#,
        )
        .unwrap();
        assert!(matches!(
            response,
            EventPayload::Response { original: None, final_: Some(ref text), status: CallStatus::Blocked, .. } if text.json() == r#""text""#
        ));
        for refused in [
            r#"{"type":"response","original":null,"final":null,"chunks_received":0,"chunks_sent":0,"usage":{}}"#,
            r#"{"type":"rumour","original":null}"#,
            r#"{"original":{}}"#,
        ] {
            assert!(
                serde_json::from_str::<EventPayload>(refused).is_err(),
                "{refused}"
            );
        }
    }
}
