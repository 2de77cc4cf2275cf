//! Errors the data plane answers itself, as HTTP responses in the client API's format.
//!
//! The API type and the error shapes are `luthien-api`'s, shared with the control plane, so a
//! client sees the same error whichever plane produced it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
pub use luthien_api::Api;

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
        luthien_api::error_body(self.api, self.status.as_u16(), &self.message)
    }

    /// An in-band SSE error event, for failures after response bytes were
    /// sent and the status can no longer change.
    pub fn stream_event(&self) -> Bytes {
        luthien_api::stream_error_event(self.api, self.status.as_u16(), &self.message)
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
