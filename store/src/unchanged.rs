//! Bodies no policy changed are stored once. When a request's or a response's final body
//! equals its original (every call of a read-only chain, most calls of any chain), the writer
//! stores the final as a marker, `{"luthien_same_as_original": true}`, instead of a second
//! copy, and the reader puts the original back in its place. That halves what a call writes,
//! serializes and has the database check. Schema version 2; version 1 rows, which carry
//! both copies, read as they are.

use std::sync::LazyLock;

use crate::events::{Body, EventPayload};

/// Key of the marker that stands in for a final body equal to the original.
pub const SAME_AS_ORIGINAL_KEY: &str = "luthien_same_as_original";

static MARKER: LazyLock<Body> =
    LazyLock::new(|| Body::from(serde_json::json!({ SAME_AS_ORIGINAL_KEY: true })));

fn is_marker(body: &Body) -> bool {
    // PostgreSQL gives the marker back reformatted (`jsonb`), so it is read, not matched.
    body.is_marker(SAME_AS_ORIGINAL_KEY, 64)
}

/// Writer side: replaces a final body equal to its original by the marker.
pub fn fold(payload: &mut EventPayload) {
    match payload {
        EventPayload::Request {
            original, final_, ..
        } if final_.same_text(original) => *final_ = MARKER.clone(),
        EventPayload::Response {
            original: Some(original),
            final_: Some(final_),
            ..
        } if final_.same_text(original) => *final_ = MARKER.clone(),
        _ => {}
    }
}

/// Reader side: puts the original back where the writer left the marker.
pub fn unfold(payload: &mut EventPayload) {
    match payload {
        EventPayload::Request {
            original, final_, ..
        } if is_marker(final_) => final_.clone_from(original),
        EventPayload::Response {
            original: Some(original),
            final_: Some(final_),
            ..
        } if is_marker(final_) => final_.clone_from(original),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CallStatus, TokenUsage};
    use serde_json::{Value, json};

    fn response(original: Value, final_: Value) -> EventPayload {
        EventPayload::Response {
            original: Some(original.into()),
            final_: Some(final_.into()),
            status: CallStatus::Completed,
            upstream_status: Some(200),
            detail: None,
            chunks_received: 1,
            chunks_sent: 1,
            time_to_first_chunk_ms: None,
            duration_ms: Some(1.0),
            overhead_ms: None,
            usage: TokenUsage::default(),
        }
    }

    #[test]
    fn an_unchanged_final_is_stored_as_a_marker_and_read_back_whole() {
        let body = json!({"choices": [{"message": {"content": "hi"}}]});
        let written = response(body.clone(), body.clone());
        let mut stored = written.clone();
        fold(&mut stored);
        let EventPayload::Response { final_, .. } = &stored else {
            unreachable!()
        };
        assert_eq!(
            final_.as_ref().map(Body::value),
            Some(json!({"luthien_same_as_original": true}))
        );
        unfold(&mut stored);
        assert_eq!(stored, written);
    }

    #[test]
    fn a_changed_final_is_stored_as_it_is() {
        let written = response(json!({"text": "hi"}), json!({"text": "HI"}));
        let mut stored = written.clone();
        fold(&mut stored);
        assert_eq!(stored, written);
        unfold(&mut stored);
        assert_eq!(stored, written);
    }

    #[test]
    fn the_marker_is_read_however_the_database_formats_it() {
        let original = json!({"text": "hi"});
        // As PostgreSQL's `jsonb` gives it back.
        let mut stored = response(original.clone(), json!({"luthien_same_as_original": true}));
        if let EventPayload::Response { final_, .. } = &mut stored {
            *final_ = Some(Body::from_bytes(br#"{"luthien_same_as_original": true}"#));
        }
        unfold(&mut stored);
        assert_eq!(stored, response(original.clone(), original.clone()));
        // A body that only mentions the key is a body.
        let mentions = json!({"text": "luthien_same_as_original"});
        let mut stored = response(original.clone(), mentions.clone());
        unfold(&mut stored);
        assert_eq!(stored, response(original, mentions));
    }
}
