//! The message the activity bus carries: a small, versioned, one-line view
//! of one call event. It is broadcast to dashboards and, in Redis mode, to
//! every control plane sharing the Redis, so it never carries a payload.

use luthien_api::Api;
use serde::{Deserialize, Serialize};

use luthien_store::events::{CallEvent, EventPayload};

/// Version of [`ActivityMessage`]'s JSON shape, sent as its `v` field. Bump
/// it on any change an older reader would misread; readers skip messages
/// newer than they know (control planes of different versions may share a
/// Redis during a rolling upgrade).
pub const ACTIVITY_VERSION: u32 = 1;

/// Longest summary sent, in characters. Feeds show one line, and a policy's
/// free-text summary must not turn the bus into a payload channel.
pub const MAX_SUMMARY_CHARS: usize = 200;

/// One event of one call, as live-activity consumers see it.
///
/// `event_type` and `status` are plain strings rather than the enums of
/// [`luthien_store::events`] so that a reader survives a newer writer adding a
/// variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityMessage {
    /// Shape version, [`ACTIVITY_VERSION`] when written by this build.
    pub v: u32,
    pub call_id: String,
    /// Position of the event within its call (0, 1, 2, …), so consumers can
    /// order a call's events even when they arrive through different paths.
    pub sequence: u32,
    /// `request`, `response`, `policy`, … (the event's `type` tag).
    pub event_type: String,
    pub model: String,
    /// `openai`, `anthropic` or `openai_responses`.
    pub api: Api,
    /// Unix time of the event in microseconds.
    pub timestamp_micros: i64,
    /// One line, at most [`MAX_SUMMARY_CHARS`] characters; never a payload.
    pub summary: String,
    /// How the call ended, on `response` events (`completed`, `blocked`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Instance id of the control plane that published the message. Set by
    /// [`ActivityBus::publish`](super::ActivityBus::publish), whatever the
    /// caller put there, so it cannot be spoofed by accident.
    #[serde(default)]
    pub control_plane: String,
}

impl ActivityMessage {
    /// The activity view of `event`, a call to `model` through `api`.
    /// `control_plane` is left empty: the bus stamps it on publish.
    pub fn from_event(event: &CallEvent, model: &str, api: Api) -> ActivityMessage {
        ActivityMessage {
            v: ACTIVITY_VERSION,
            call_id: event.call_id.clone(),
            sequence: event.sequence,
            event_type: event.payload.event_type().to_owned(),
            model: model.to_owned(),
            api,
            timestamp_micros: event.timestamp_micros,
            summary: one_line(&event.payload.summary(), MAX_SUMMARY_CHARS),
            status: status_of(&event.payload),
            control_plane: String::new(),
        }
    }

    /// Whether this build understands the message's shape.
    pub fn is_supported_version(&self) -> bool {
        self.v <= ACTIVITY_VERSION
    }
}

fn status_of(payload: &EventPayload) -> Option<String> {
    match payload {
        EventPayload::Response { status, .. } => Some(status.as_str().to_owned()),
        EventPayload::Request { .. } | EventPayload::Policy { .. } => None,
    }
}

/// Collapses whitespace (newlines included) to single spaces and cuts the
/// text to `max_chars` characters, marking the cut with `…`.
fn one_line(text: &str, max_chars: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max_chars {
        return collapsed;
    }
    let mut cut: String = collapsed
        .chars()
        .take(max_chars.saturating_sub(1))
        .collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use luthien_store::events::{CallStatus, SCHEMA_VERSION, TokenUsage};

    fn event(payload: EventPayload) -> CallEvent {
        CallEvent {
            call_id: "call-1".to_owned(),
            sequence: 2,
            timestamp_micros: 1_700_000_000_000_000,
            schema_version: SCHEMA_VERSION,
            payload,
        }
    }

    fn response(status: CallStatus) -> EventPayload {
        EventPayload::Response {
            original: Some(json!({"secret": "payload"}).into()),
            final_: Some(json!({"secret": "payload"}).into()),
            status,
            upstream_status: Some(200),
            detail: None,
            chunks_received: 0,
            chunks_sent: 0,
            time_to_first_chunk_ms: None,
            duration_ms: Some(12.0),
            overhead_ms: None,
            usage: TokenUsage::default(),
        }
    }

    #[test]
    fn response_event_becomes_a_one_line_message_with_status() {
        let message = ActivityMessage::from_event(
            &event(response(CallStatus::Blocked)),
            "gpt-4o",
            luthien_api::Api::OpenAiChat,
        );
        assert_eq!(message.v, ACTIVITY_VERSION);
        assert_eq!(message.call_id, "call-1");
        assert_eq!(message.sequence, 2);
        assert_eq!(message.event_type, "response");
        assert_eq!(message.status.as_deref(), Some("blocked"));
        assert_eq!(message.summary, "response blocked in 12 ms");
        assert_eq!(message.control_plane, "");
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["v"], 1);
        assert!(!json.to_string().contains("secret"), "{json}");
    }

    #[test]
    fn request_event_has_no_status_and_omits_it_from_json() {
        let payload = EventPayload::Request {
            original: json!({"messages": []}).into(),
            final_: json!({"messages": []}).into(),
            headers: json!({}),
        };
        let message = ActivityMessage::from_event(
            &event(payload),
            "claude",
            luthien_api::Api::AnthropicMessages,
        );
        assert_eq!(message.event_type, "request");
        assert_eq!(message.status, None);
        let json = serde_json::to_value(&message).unwrap();
        assert!(json.get("status").is_none(), "{json}");
    }

    #[test]
    fn long_multi_line_policy_summary_is_cut_to_one_line() {
        let payload = EventPayload::Policy {
            policy: "judge".to_owned(),
            action: "block".to_owned(),
            summary: format!("line one\nline two\t{}", "é".repeat(500)),
            data: json!(null),
        };
        let message =
            ActivityMessage::from_event(&event(payload), "m", luthien_api::Api::OpenAiChat);
        assert!(!message.summary.contains('\n'));
        assert!(message.summary.starts_with("judge: line one line two é"));
        assert_eq!(message.summary.chars().count(), MAX_SUMMARY_CHARS);
        assert!(message.summary.ends_with('…'));
    }

    #[test]
    fn reader_accepts_unknown_fields_and_flags_newer_versions() {
        let text = r#"{"v":2,"call_id":"c","sequence":0,"event_type":"future","model":"m",
            "api":"openai","timestamp_micros":1,"summary":"s","new_field":true}"#;
        let message: ActivityMessage = serde_json::from_str(text).unwrap();
        assert!(!message.is_supported_version());
        assert_eq!(message.control_plane, "");
    }
}
