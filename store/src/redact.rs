//! What must not, or need not, be stored: credentials in headers are
//! removed, and payload values over a size cap are replaced by a marked
//! stub. Call [`sanitize_payload`] before an event is built or published;
//! the writer applies it again to every event it stores, so the store never
//! holds a credential even if a caller forgot.
//!
//! Truncation is never silent: a capped value becomes
//! `{"luthien_truncated": true, "original_bytes": N, "preview": "…"}`.

use std::io;

use serde_json::{Map, Value, json};

use crate::events::{Body, CallSummary, EventPayload};

/// Key of the object that replaces a value over the size cap.
pub const TRUNCATED_KEY: &str = "luthien_truncated";
/// Longest preview kept of a truncated value, in bytes of its JSON text.
pub const PREVIEW_BYTES: usize = 1024;

/// Removes credential headers from a headers value, in place, and returns
/// how many were removed. Accepts the shapes headers take in JSON: an object
/// `{name: value}`, or an array of `{"name": …, "value": …}` objects or of
/// `[name, value]` pairs. Anything else is left as is.
pub fn redact_headers(headers: &mut Value) -> usize {
    match headers {
        Value::Object(map) => {
            let before = map.len();
            map.retain(|name, _| !luthien_api::is_credential(name));
            before - map.len()
        }
        Value::Array(items) => {
            let before = items.len();
            items.retain(|item| {
                let name = match item {
                    Value::Object(pair) => pair.get("name").and_then(Value::as_str),
                    Value::Array(pair) => pair.first().and_then(Value::as_str),
                    _ => None,
                };
                !name.is_some_and(luthien_api::is_credential)
            });
            before - items.len()
        }
        _ => 0,
    }
}

/// Replaces `value` by a truncation marker when its JSON text is longer
/// than `max_bytes`; returns whether it did. A marker is never re-capped.
pub fn cap_value(value: &mut Value, max_bytes: usize) -> bool {
    if is_truncation_marker(value) {
        return false;
    }
    let size = json_len(value);
    if size <= max_bytes {
        return false;
    }
    let preview_len = max_bytes.min(PREVIEW_BYTES);
    let preview = match &*value {
        // The text itself, not its JSON quoting.
        Value::String(text) => prefix(text, preview_len).to_owned(),
        other => json_prefix(other, preview_len),
    };
    *value = json!({
        TRUNCATED_KEY: true,
        "original_bytes": size,
        "preview": preview,
    });
    true
}

/// [`cap_value`] for a body kept as text: only a body longer than the cap is parsed.
pub fn cap_body(body: &mut Body, max_bytes: usize) -> bool {
    if body.len() <= max_bytes {
        return false;
    }
    let mut value = body.value();
    if !cap_value(&mut value, max_bytes) {
        return false;
    }
    *body = Body::from(value);
    true
}

/// By-value form of [`redact_headers`].
pub fn strip_secret_headers(mut headers: Value) -> Value {
    redact_headers(&mut headers);
    headers
}

/// By-value form of [`cap_value`].
pub fn cap_payload(mut value: Value, max_bytes: usize) -> Value {
    cap_value(&mut value, max_bytes);
    value
}

/// True for a value that [`cap_value`] produced.
pub fn is_truncation_marker(value: &Value) -> bool {
    value
        .as_object()
        .and_then(|map: &Map<String, Value>| map.get(TRUNCATED_KEY))
        .and_then(Value::as_bool)
        == Some(true)
}

/// Key of the object standing in for a payload `--store-payloads` keeps out of the store.
pub const NOT_STORED_KEY: &str = "luthien_not_stored";

/// Which request and response bodies are stored (`--store-payloads`): where raw prompts must
/// not be kept, `final` stores only what went upstream and what the client received (after a
/// redaction policy, say), `none` no body at all. Metadata, usage and policy events are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoredPayloads {
    /// Original and final, as they were.
    #[default]
    All,
    /// Only the bodies as the client sent them and as upstream answered.
    Original,
    /// Only the bodies as they went upstream and as the client received them.
    Final,
    /// No bodies.
    None,
}

impl StoredPayloads {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredPayloads::All => "all",
            StoredPayloads::Original => "original",
            StoredPayloads::Final => "final",
            StoredPayloads::None => "none",
        }
    }

    fn keeps(self, side: Side) -> bool {
        matches!(
            (self, side),
            (StoredPayloads::All, _)
                | (StoredPayloads::Original, Side::Original)
                | (StoredPayloads::Final, Side::Final)
        )
    }

    /// What stands in for a body this setting keeps out.
    fn marker(self, side: Side) -> Value {
        let side = match side {
            Side::Original => "original",
            Side::Final => "final",
        };
        json!({
            NOT_STORED_KEY: true,
            "side": side,
            "setting": format!("--store-payloads {}", self.as_str()),
        })
    }
}

impl std::str::FromStr for StoredPayloads {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [
            StoredPayloads::All,
            StoredPayloads::Original,
            StoredPayloads::Final,
            StoredPayloads::None,
        ]
        .into_iter()
        .find(|setting| setting.as_str() == text)
        .ok_or_else(|| format!("`{text}`: use all, original, final or none"))
    }
}

#[derive(Clone, Copy)]
enum Side {
    Original,
    Final,
}

/// True for a body that stands in for one `--store-payloads` kept out.
pub fn is_not_stored_marker(body: &Body) -> bool {
    body.is_marker(NOT_STORED_KEY, 256)
}

/// What [`sanitize_payload`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sanitized {
    pub headers_removed: usize,
    pub values_truncated: usize,
}

/// The calls-table row: its preview of the final request goes where that request goes.
pub fn sanitize_summary(call: &mut CallSummary, stored: StoredPayloads) {
    if !stored.keeps(Side::Final) {
        call.preview = None;
    }
}

/// Removes credential headers from a request event, replaces the bodies `stored` keeps out by
/// a marker and, with a cap, each payload value (request/response original and final, policy
/// data) larger than `max_payload_bytes` by a truncation marker.
pub fn sanitize_payload(
    payload: &mut EventPayload,
    max_payload_bytes: Option<usize>,
    stored: StoredPayloads,
) -> Sanitized {
    let withhold = |body: &mut Body, side: Side| {
        if !stored.keeps(side) {
            *body = Body::from(stored.marker(side));
        }
    };
    match payload {
        EventPayload::Request {
            original, final_, ..
        } => {
            withhold(original, Side::Original);
            withhold(final_, Side::Final);
        }
        EventPayload::Response {
            original, final_, ..
        } => {
            original
                .iter_mut()
                .for_each(|value| withhold(value, Side::Original));
            final_
                .iter_mut()
                .for_each(|value| withhold(value, Side::Final));
        }
        EventPayload::Policy { .. } => {}
    }
    let mut done = Sanitized::default();
    let mut cap = |body: &mut Body| {
        if let Some(max) = max_payload_bytes
            && cap_body(body, max)
        {
            done.values_truncated += 1;
        }
    };
    let mut headers_removed = 0;
    match payload {
        EventPayload::Request {
            original,
            final_,
            headers,
        } => {
            headers_removed = redact_headers(headers);
            cap(original);
            cap(final_);
        }
        EventPayload::Response {
            original, final_, ..
        } => {
            original.iter_mut().for_each(&mut cap);
            final_.iter_mut().for_each(&mut cap);
        }
        EventPayload::Policy { data, .. } => {
            if let Some(max) = max_payload_bytes
                && cap_value(data, max)
            {
                done.values_truncated += 1;
            }
        }
    }
    done.headers_removed = headers_removed;
    done
}

/// Length of `value`'s JSON text, without building the text.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The first `max` bytes (at a char boundary) of `value`'s JSON text,
/// serializing no further than that.
fn json_prefix(value: &Value, max: usize) -> String {
    struct Prefix {
        buf: Vec<u8>,
        max: usize,
    }
    impl io::Write for Prefix {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self.max - self.buf.len();
            self.buf.extend_from_slice(&buf[..buf.len().min(room)]);
            if buf.len() > room {
                // Stops the serializer: the rest is not needed.
                return Err(io::Error::other("preview full"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut out = Prefix {
        buf: Vec::with_capacity(max),
        max,
    };
    let _ = serde_json::to_writer(&mut out, value);
    match String::from_utf8(out.buf) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            String::from_utf8(bytes).unwrap_or_default()
        }
    }
}

/// `text` cut to at most `max` bytes at a char boundary.
fn prefix(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CallStatus, TokenUsage};

    #[test]
    fn credential_headers_are_removed_from_every_shape() {
        let mut object = json!({
            "Authorization": "Bearer sk-1",
            "x-api-key": "sk-2",
            "api-key": "sk-3",
            "cookie": "a=b",
            "set-cookie": "c=d",
            "x-goog-api-key": "g",
            "x-auth-token": "t",
            "openai-secret": "s",
            "proxy-authorization": "p",
            "anthropic-version": "2023-06-01",
            "user-agent": "claude-cli",
            "content-type": "application/json",
        });
        assert_eq!(redact_headers(&mut object), 9);
        assert_eq!(
            object,
            json!({
                "anthropic-version": "2023-06-01",
                "user-agent": "claude-cli",
                "content-type": "application/json",
            })
        );

        let mut pairs = json!([
            {"name": "X-Api-Key", "value": "sk"},
            {"name": "accept", "value": "*/*"},
            ["Cookie", "a=b"],
            ["anthropic-beta", "x"],
        ]);
        assert_eq!(redact_headers(&mut pairs), 2);
        assert_eq!(
            pairs,
            json!([{"name": "accept", "value": "*/*"}, ["anthropic-beta", "x"]])
        );

        let mut other = json!("authorization: x");
        assert_eq!(redact_headers(&mut other), 0);
    }

    #[test]
    fn large_values_become_marked_stubs() {
        let big = json!({"messages": [{"role": "user", "content": "é".repeat(5000)}]});
        let size = serde_json::to_string(&big).unwrap().len();
        let mut value = big.clone();
        assert!(cap_value(&mut value, 100));
        assert_eq!(value[TRUNCATED_KEY], json!(true));
        assert_eq!(value["original_bytes"], json!(size));
        let preview = value["preview"].as_str().unwrap();
        assert!(preview.len() <= 100);
        assert!(preview.starts_with(r#"{"messages":[{"role":"user","content":"éé"#));
        // A marker is not capped again, and small values are untouched.
        let marker = value.clone();
        assert!(!cap_value(&mut value, 10));
        assert_eq!(value, marker);
        let mut small = json!({"a": 1});
        assert!(!cap_value(&mut small, 7));
        assert_eq!(small, json!({"a": 1}));
        // Strings preview their text, cut at a char boundary.
        let mut text = json!("ab".to_owned() + &"é".repeat(2000));
        assert!(cap_value(&mut text, 5));
        assert_eq!(text["preview"], json!("abé"));
        // Exactly at the cap is kept.
        let mut exact = json!("abc");
        assert!(!cap_value(&mut exact, 5));
    }

    #[test]
    fn sanitize_covers_each_payload() {
        let body = json!({"model": "m", "input": "x".repeat(300)});
        let mut request = EventPayload::Request {
            original: body.clone().into(),
            final_: json!({"model": "m"}).into(),
            headers: json!({"authorization": "Bearer x", "accept": "*/*"}),
        };
        let done = sanitize_payload(&mut request, Some(200), StoredPayloads::All);
        assert_eq!(
            done,
            Sanitized {
                headers_removed: 1,
                values_truncated: 1
            }
        );
        let EventPayload::Request {
            original,
            final_,
            headers,
        } = &request
        else {
            unreachable!()
        };
        assert!(is_truncation_marker(&original.value()));
        assert_eq!(final_, &json!({"model": "m"}));
        assert_eq!(headers, &json!({"accept": "*/*"}));

        let mut response = EventPayload::Response {
            original: Some(body.clone().into()),
            final_: None,
            status: CallStatus::Completed,
            upstream_status: Some(200),
            detail: None,
            chunks_received: 0,
            chunks_sent: 0,
            time_to_first_chunk_ms: None,
            duration_ms: None,
            overhead_ms: None,
            usage: TokenUsage::default(),
        };
        assert_eq!(
            sanitize_payload(&mut response, Some(200), StoredPayloads::All).values_truncated,
            1
        );

        let mut policy = EventPayload::Policy {
            policy: "p".into(),
            action: "a".into(),
            summary: "s".into(),
            data: body.clone(),
        };
        // Without a cap only headers are touched.
        assert_eq!(
            sanitize_payload(&mut policy, None, StoredPayloads::All),
            Sanitized::default()
        );
        assert_eq!(
            sanitize_payload(&mut policy, Some(200), StoredPayloads::All).values_truncated,
            1
        );
    }
}
