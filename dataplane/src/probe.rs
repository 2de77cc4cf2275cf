//! What the data plane reads of a request body, and the checks every body gets whatever the
//! chain: UTF-8 (RFC 8259 §8.1), a nesting depth no parser downstream chokes on, and valid
//! JSON for the fields it needs. Public for the fuzz targets (`fuzz/`).

use serde::Deserialize;

/// Deeper than any real request; serde_json itself stops at 128.
pub const MAX_DEPTH: usize = 64;

/// The fields of a request body the data plane needs; everything else is skipped by the
/// parser while it still validates the whole document.
#[derive(Debug, Deserialize)]
pub struct RequestProbe {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    /// The Responses API's name for it.
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

impl RequestProbe {
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The limit on generated tokens, whichever field the API names it by.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_completion_tokens
            .or(self.max_output_tokens)
            .or(self.max_tokens)
    }
}

/// Checks `body` and reads its fields; the error says what is wrong, for a 400.
pub fn probe(body: &[u8]) -> Result<RequestProbe, String> {
    check_json_text(body)?;
    let probe = serde_json::from_slice(body)
        .map_err(|error| format!("request body is not valid JSON for this API: {error}"))?;
    // A derived struct also deserializes from an array, by position: `["gpt-4o", true]`
    // would read as model and stream. Every API takes an object.
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err("request body is not valid JSON for this API: it must be an object".to_owned());
    }
    Ok(probe)
}

/// UTF-8 and the nesting depth: a scan, not a parse (the parse follows).
fn check_json_text(body: &[u8]) -> Result<(), String> {
    if let Err(error) = std::str::from_utf8(body) {
        return Err(format!(
            "request body is not valid UTF-8 (at byte {})",
            error.valid_up_to()
        ));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("request body nests deeper than {MAX_DEPTH} levels"));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_model_and_stream_and_rejects_bad_json() {
        let probe = probe(br#"{"model":"gpt","stream":true,"messages":[{"x":[1,2]}]}"#).unwrap();
        assert_eq!(probe.model(), Some("gpt"));
        assert!(probe.stream());
        for bad in [
            &br#"{"model":"gpt",}"#[..],
            br#"{"model":"gpt"} trailing"#,
            br#"[1,2]"#,
            b"\xff{}",
            // Found by the `request_probe` fuzz target: arrays read as structs by position.
            b"[]",
            br#"["gpt-4o", true]"#,
            b" \n 7",
        ] {
            assert!(super::probe(bad).is_err(), "{bad:?}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(
            super::probe(deep.as_bytes())
                .unwrap_err()
                .contains("deeper")
        );
    }
}
