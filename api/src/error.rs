//! Errors Luthien itself produces, in each API's own format.
//!
//! SDKs parse errors by their provider's format, so an error from either plane — a rejected
//! key, a policy's block, an unreachable upstream, a control plane gone mid-stream — must look
//! exactly like one from the provider, and the same whichever plane answered. This module is
//! the only place that knows those shapes.

use bytes::Bytes;
use serde_json::json;

use crate::Api;

/// The API's error `type` for an HTTP status, e.g. `rate_limit_error` for 429.
///
/// Anthropic's types follow its error reference (`not_found_error`, `request_too_large`,
/// `timeout_error`, `overloaded_error`); OpenAI reports every client error but the key and
/// rate ones as `invalid_request_error`, including an unknown route (404).
pub fn error_type(api: Api, status: u16) -> &'static str {
    match (api, status) {
        (_, 401) => "authentication_error",
        (_, 403) => "permission_error",
        (_, 429) => "rate_limit_error",
        (Api::AnthropicMessages, 404) => "not_found_error",
        (Api::AnthropicMessages, 413) => "request_too_large",
        (Api::AnthropicMessages, 503 | 529) => "overloaded_error",
        (Api::AnthropicMessages, 504) => "timeout_error",
        (Api::OpenAiChat | Api::OpenAiResponses, 503) => "service_unavailable",
        (_, 500..=599) => "api_error",
        _ => "invalid_request_error",
    }
}

/// The JSON error body for `status` in the API's format.
///
/// Errors are JSON even for streamed calls: both APIs answer a failed streaming request with a
/// JSON body and a 4xx/5xx status, and their SDKs read it that way.
pub fn error_body(api: Api, status: u16, message: &str) -> Bytes {
    Bytes::from(error_json(api, error_type(api, status), message).to_string())
}

/// An in-band error event that ends a stream whose first bytes were already sent, when the
/// status can no longer change: OpenAI Chat `data: {"error":{...}}`, Anthropic and OpenAI
/// Responses `event: error`.
///
/// The Responses form carries the fields twice: nested under `error`, as the live API sends
/// them and as the official SDKs detect an error (they raise on any event whose data has an
/// `error` object), and flat (`message`, `code`, `param`), the `ResponseErrorEvent` of the API
/// reference. It has no `sequence_number`: whoever emits it (the data plane) does not read the
/// stream's numbering, and the SDKs raise before they would look at it.
pub fn stream_error_event(api: Api, status: u16, message: &str) -> Bytes {
    let kind = error_type(api, status);
    let body = match api {
        Api::OpenAiResponses => json!({
            "type": "error",
            "error": {"type": kind, "code": null, "message": message, "param": null},
            "code": null,
            "message": message,
            "param": null,
        }),
        Api::OpenAiChat | Api::AnthropicMessages => error_json(api, kind, message),
    }
    .to_string();
    let mut event = String::with_capacity(body.len() + 24);
    if api != Api::OpenAiChat {
        event.push_str("event: error\n");
    }
    event.push_str("data: ");
    event.push_str(&body);
    event.push_str("\n\n");
    Bytes::from(event)
}

fn error_json(api: Api, kind: &str, message: &str) -> serde_json::Value {
    match api {
        Api::OpenAiChat | Api::OpenAiResponses => json!({
            "error": {"message": message, "type": kind, "param": null, "code": null}
        }),
        Api::AnthropicMessages => json!({
            "type": "error",
            "error": {"type": kind, "message": message}
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    /// The whole table: both planes answer through it, so one row here is one promise to
    /// every client of that API.
    #[test]
    fn each_status_has_the_providers_error_type() {
        let rows: &[(u16, &str, &str)] = &[
            // status, OpenAI, Anthropic
            (400, "invalid_request_error", "invalid_request_error"),
            (401, "authentication_error", "authentication_error"),
            (403, "permission_error", "permission_error"),
            (404, "invalid_request_error", "not_found_error"),
            (405, "invalid_request_error", "invalid_request_error"),
            (413, "invalid_request_error", "request_too_large"),
            (422, "invalid_request_error", "invalid_request_error"),
            (429, "rate_limit_error", "rate_limit_error"),
            (431, "invalid_request_error", "invalid_request_error"),
            (500, "api_error", "api_error"),
            (502, "api_error", "api_error"),
            (503, "service_unavailable", "overloaded_error"),
            (504, "api_error", "timeout_error"),
            (529, "api_error", "overloaded_error"),
        ];
        for &(status, openai, anthropic) in rows {
            assert_eq!(error_type(Api::OpenAiChat, status), openai, "{status}");
            assert_eq!(
                error_type(Api::AnthropicMessages, status),
                anthropic,
                "{status}"
            );
            assert_eq!(error_type(Api::OpenAiResponses, status), openai, "{status}");
        }
    }

    #[test]
    fn bodies_have_each_apis_shape() {
        assert_eq!(
            parse(&error_body(Api::OpenAiChat, 429, "slow down")),
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": null}})
        );
        assert_eq!(
            parse(&error_body(
                Api::AnthropicMessages,
                403,
                "blocked by policy"
            )),
            json!({"type": "error", "error": {"type": "permission_error", "message": "blocked by policy"}})
        );
    }

    #[test]
    fn stream_errors_are_complete_sse_events() {
        assert_eq!(
            stream_error_event(Api::OpenAiChat, 500, "x\"y"),
            "data: {\"error\":{\"message\":\"x\\\"y\",\"type\":\"api_error\",\"param\":null,\"code\":null}}\n\n".as_bytes()
        );
        assert_eq!(
            stream_error_event(Api::AnthropicMessages, 503, "gone"),
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"gone\"}}\n\n".as_bytes()
        );
        let event = stream_error_event(Api::OpenAiResponses, 502, "upstream gone");
        let event = std::str::from_utf8(&event).unwrap();
        let data = event
            .strip_prefix("event: error\ndata: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap();
        assert_eq!(
            parse(data.as_bytes()),
            json!({
                "type": "error",
                "error": {"type": "api_error", "code": null, "message": "upstream gone", "param": null},
                "code": null, "message": "upstream gone", "param": null,
            })
        );
    }
}
