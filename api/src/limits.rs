//! Sizes and HTTP/2 settings that both ends of Luthien's gRPC channels must agree on.
//!
//! A message larger than the receiver's limit fails the call, and a window smaller on one end
//! stalls large bodies, so the data plane, the control plane and the remote-policy client all
//! take them from here.

use std::time::Duration;

/// Largest gRPC message either plane sends or accepts: a request or response body plus its
/// envelope. Bodies above the data plane's `--max-body-bytes` never get this far.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 flow-control window of one stream: a large body crosses in one window.
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;

/// HTTP/2 flow-control window of a whole connection, shared by every call's stream on it.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Interval of HTTP/2 PINGs on idle gRPC connections, so a peer that vanished without a FIN
/// (a killed pod, a dropped NAT entry) is noticed before a call waits on it.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
