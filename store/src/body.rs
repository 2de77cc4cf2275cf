//! A recorded request or response body, kept as the JSON text it arrived as.
//!
//! Recording is on every call's path through the control plane, so a body is not built into a
//! tree of `serde_json::Value`s, copied, compared and serialized again on its way to the store:
//! it is checked once, copied once, and its text is written into the stored event as is. The
//! stored shape is the same JSON as a `Value` would give, so the reader reads every schema
//! version; those who need the tree (the diff, replay, the CLI) ask for it with
//! [`Body::value`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// One body as JSON text. Two bodies are equal when they read as the same JSON (PostgreSQL's
/// `jsonb` gives a body back reformatted); [`Body::same_text`] is the cheap test the write path
/// uses.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Body(Box<RawValue>);

impl Body {
    /// The body as it arrived when it is JSON; otherwise (an error page, a truncated body) a
    /// JSON string of its text, so the record never loses it.
    pub fn from_bytes(bytes: &[u8]) -> Body {
        match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw) => Body(raw.to_owned()),
            Err(_) => Body::from(Value::String(String::from_utf8_lossy(bytes).into_owned())),
        }
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Whether the two have the same text: how the write path tells a body no policy changed
    /// (both sides come from the same bytes or the same serializer) without reading either.
    pub fn same_text(&self, other: &Body) -> bool {
        self.json() == other.json()
    }

    /// [`Body::same_text`] for bodies that may be missing (a response never received): two
    /// missing ones are the same.
    pub fn same_text_if_any(a: Option<&Body>, b: Option<&Body>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.same_text(b),
            (a, b) => a.is_none() && b.is_none(),
        }
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.json().len()
    }

    pub fn is_empty(&self) -> bool {
        self.json().is_empty()
    }

    /// The body as a JSON tree. Text this build cannot read as one (a number beyond a double,
    /// say) comes back as a JSON string of itself.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.json()).unwrap_or_else(|_| Value::String(self.json().to_owned()))
    }

    /// Whether the body is a small object with `key: true`: the markers the store puts in place
    /// of a body (truncated, not stored, same as the original). Bodies too long to be one are
    /// not parsed.
    pub(crate) fn is_marker(&self, key: &str, longest: usize) -> bool {
        self.len() <= longest
            && self.json().contains(key)
            && self.value().get(key).and_then(Value::as_bool) == Some(true)
    }
}

impl From<Value> for Body {
    fn from(value: Value) -> Body {
        Body::from(&value)
    }
}

impl From<&Value> for Body {
    fn from(value: &Value) -> Body {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Body(raw),
            // Not reached: a `Value`'s keys are strings and its numbers finite.
            Err(_) => Body::from_bytes(b"null"),
        }
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.same_text(other) || self.value() == other.value()
    }
}

/// A body equals a JSON tree when it reads as that tree.
impl PartialEq<Value> for Body {
    fn eq(&self, other: &Value) -> bool {
        self.value() == *other
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_kept_as_it_arrived() {
        let text = br#"{"model": "m",  "messages": [ {"role":"user","content":"hi"} ]}"#;
        let body = Body::from_bytes(text);
        assert_eq!(body.json().as_bytes(), text);
        assert_eq!(body.value()["messages"][0]["content"], "hi");
        // Written into an event, the text is embedded as it is.
        #[derive(Serialize)]
        struct Event<'a> {
            r#final: &'a Body,
        }
        let event = serde_json::to_string(&Event { r#final: &body }).unwrap();
        assert_eq!(event, format!(r#"{{"final":{}}}"#, body.json()));
        // Equal to the same JSON however it is formatted, as a database may give it back.
        assert_eq!(body, Body::from(body.value()));
        assert!(!body.same_text(&Body::from(body.value())));
        assert_ne!(body, Body::from_bytes(br#"{"model":"m","messages":[]}"#));
    }

    #[test]
    fn a_body_that_is_not_json_is_kept_as_a_string() {
        let body = Body::from_bytes(b"upstream said: <html>502</html>");
        assert_eq!(body.value(), "upstream said: <html>502</html>");
        let body = Body::from_bytes(&[b'{', 0xff, b'}']);
        assert_eq!(body.value(), "{\u{fffd}}");
    }

    #[test]
    fn text_this_build_cannot_parse_is_still_kept() {
        // Valid JSON, but beyond a double: kept as written, read as its text.
        let body = Body::from_bytes(br#"{"n":1e400}"#);
        assert_eq!(body.json(), r#"{"n":1e400}"#);
        assert_eq!(body.value(), r#"{"n":1e400}"#);
    }
}
