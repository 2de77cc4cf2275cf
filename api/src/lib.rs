//! What the provider APIs are to Luthien, in one place for both planes.
//!
//! - [`Api`]: the one type naming a provider API, with its names in metrics, traces, the
//!   debug API's filters and the protocol;
//! - [`error`]: the error bodies, error types and in-band stream errors in each API's format;
//! - [`headers`]: which headers are credentials;
//! - [`request`]: what a request says (its last user message);
//! - [`limits`]: sizes and HTTP/2 settings both ends of a gRPC channel must agree on;
//! - [`time`]: the timestamp unit shared by the protocol and the records;
//! - [`TokenUsage`]: the tokens a provider reported, in one shape for both APIs.
//!
//! Nothing here does I/O; both planes depend on it, so it must stay small and free of any
//! server or database client.

pub mod error;
pub mod headers;
pub mod limits;
pub mod request;
pub mod time;

mod kind;
mod usage;

pub use error::{error_body, error_type, stream_error_event};
pub use headers::is_credential;
pub use kind::{Api, UnknownApi};
pub use usage::TokenUsage;
