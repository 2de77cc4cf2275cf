//! The provider APIs the data plane serves, and errors in each API's own shape.
//!
//! Clients are SDKs that parse errors by their provider's format, so every
//! error Luthien itself produces is rendered the way that provider would.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use luthien_proto::v1::ApiKind;

/// A provider API served by the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions`.
    OpenAiChat,
    /// Anthropic `POST /v1/messages`.
    AnthropicMessages,
}

impl Api {
    /// The `api` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::AnthropicMessages => "anthropic_messages",
        }
    }

    /// `gen_ai.provider.name` of the OpenTelemetry GenAI conventions.
    pub fn provider(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai",
            Api::AnthropicMessages => "anthropic",
        }
    }

    pub fn kind(self) -> ApiKind {
        match self {
            Api::OpenAiChat => ApiKind::OpenaiChat,
            Api::AnthropicMessages => ApiKind::AnthropicMessages,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai",
            Api::AnthropicMessages => "anthropic",
        }
    }

    /// Guesses the API of a request whose path does not name it (an
    /// unknown route, `/v1/models`): Anthropic's SDKs send
    /// `anthropic-version` and their key as `x-api-key`, OpenAI's neither.
    /// Also picks the provider of the auxiliary endpoints both APIs share.
    pub fn guess(path: &str, headers: &axum::http::HeaderMap) -> Api {
        if headers.contains_key("anthropic-version")
            || headers.contains_key("x-api-key")
            || path.ends_with("/messages")
            || path.contains("/messages/")
        {
            Api::AnthropicMessages
        } else {
            Api::OpenAiChat
        }
    }
}

/// An error answered by Luthien itself (not passed through from upstream).
#[derive(Debug)]
pub struct ApiError {
    pub api: Api,
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(api: Api, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            api,
            status,
            message: message.into(),
        }
    }

    /// The JSON body in the API's own error format.
    pub fn body(&self) -> Bytes {
        let body = match self.api {
            Api::OpenAiChat => serde_json::json!({
                "error": {
                    "message": self.message,
                    "type": openai_error_type(self.status),
                    "param": null,
                    "code": null,
                }
            }),
            Api::AnthropicMessages => serde_json::json!({
                "type": "error",
                "error": {
                    "type": anthropic_error_type(self.status),
                    "message": self.message,
                }
            }),
        };
        Bytes::from(body.to_string())
    }

    /// An in-band SSE error event, for failures after response bytes were
    /// sent and the status can no longer change.
    pub fn stream_event(&self) -> Bytes {
        let body = self.body();
        let mut event = Vec::with_capacity(body.len() + 32);
        if self.api == Api::AnthropicMessages {
            event.extend_from_slice(b"event: error\n");
        }
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&body);
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

fn openai_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 405 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 => "service_unavailable",
        _ => "api_error",
    }
}

fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_errors_have_the_openai_shape() {
        let error = ApiError::new(Api::OpenAiChat, StatusCode::PAYLOAD_TOO_LARGE, "too big");
        let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
        assert_eq!(body["error"]["message"], "too big");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["param"].is_null());
    }

    #[test]
    fn anthropic_errors_have_the_anthropic_shape() {
        let error = ApiError::new(Api::AnthropicMessages, StatusCode::NOT_FOUND, "no route");
        let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "not_found_error");
        assert_eq!(body["error"]["message"], "no route");
    }

    #[test]
    fn guess_recognises_anthropic_requests() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(Api::guess("/v1/models", &headers), Api::OpenAiChat);
        assert_eq!(
            Api::guess("/v1/messages/count_tokens", &headers),
            Api::AnthropicMessages
        );
        headers.insert("x-api-key", HeaderValue::from_static("sk-ant"));
        assert_eq!(Api::guess("/v1/models", &headers), Api::AnthropicMessages);
        headers.clear();
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        assert_eq!(Api::guess("/v1/models", &headers), Api::AnthropicMessages);
    }

    #[test]
    fn stream_error_events_are_complete_sse_events() {
        let error = ApiError::new(
            Api::AnthropicMessages,
            StatusCode::SERVICE_UNAVAILABLE,
            "gone",
        );
        let event = error.stream_event();
        assert!(event.starts_with(b"event: error\ndata: {"));
        assert!(event.ends_with(b"}\n\n"));
        let openai = ApiError::new(Api::OpenAiChat, StatusCode::SERVICE_UNAVAILABLE, "gone");
        assert!(openai.stream_event().starts_with(b"data: {\"error\""));
    }
}
