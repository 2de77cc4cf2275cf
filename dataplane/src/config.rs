//! Data plane configuration: every flag has an environment fallback.

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::fail_mode::FailMode;

/// Data plane settings, usable as a standalone command line or flattened
/// into the all-in-one `luthien up`.
#[derive(Clone, Debug, clap::Args)]
pub struct DataPlaneConfig {
    /// Address the provider-compatible HTTP API listens on.
    #[arg(
        long = "listen",
        env = "LUTHIEN_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Control plane gRPC endpoint.
    #[arg(
        long = "control-plane",
        env = "LUTHIEN_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_plane: String,

    /// Upstream base URL for OpenAI-compatible calls (`/chat/completions` is appended).
    #[arg(
        long = "openai-base-url",
        env = "LUTHIEN_OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,

    /// Upstream base URL for Anthropic calls (`/v1/messages` is appended).
    #[arg(
        long = "anthropic-base-url",
        env = "LUTHIEN_ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub anthropic_base_url: String,

    /// OpenAI key used upstream; when unset the client's own credentials are forwarded.
    #[arg(
        long = "openai-api-key",
        env = "OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub openai_api_key: Option<String>,

    /// Anthropic key used upstream; when unset the client's own credentials are forwarded.
    #[arg(
        long = "anthropic-api-key",
        env = "ANTHROPIC_API_KEY",
        hide_env_values = true
    )]
    pub anthropic_api_key: Option<String>,

    /// Key clients must present (`Authorization: Bearer` or `x-api-key`); unset means no client auth.
    #[arg(long = "api-key", env = "LUTHIEN_API_KEY", hide_env_values = true)]
    pub client_api_key: Option<String>,

    /// Behaviour when the control plane is unreachable, times out or errors.
    #[arg(long = "fail-mode", env = "LUTHIEN_FAIL_MODE", value_enum, default_value_t = FailMode::Closed)]
    pub fail_mode: FailMode,

    /// Largest request body accepted, in bytes.
    #[arg(long = "max-body-bytes", env = "LUTHIEN_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest non-streamed upstream response accepted, in bytes.
    #[arg(long = "max-response-bytes", env = "LUTHIEN_MAX_RESPONSE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_response_bytes: usize,

    /// Upstream deadline: for the response headers, for a whole non-streamed
    /// body, and between two frames of a stream (e.g. `600s`, `1500ms`, `2m`).
    #[arg(long = "upstream-timeout", env = "LUTHIEN_UPSTREAM_TIMEOUT", default_value = "600s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Longest the control plane may take to answer one message, keepalives
    /// notwithstanding.
    #[arg(long = "cp-message-timeout", env = "LUTHIEN_CP_MESSAGE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cp_message_timeout: Duration,

    /// Longest the control plane may stay silent while the data plane waits
    /// for an answer; every keepalive restarts it.
    #[arg(long = "cp-inactivity-timeout", env = "LUTHIEN_CP_INACTIVITY_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cp_inactivity_timeout: Duration,

    /// Deadline for connecting to the control plane.
    #[arg(long = "cp-connect-timeout", env = "LUTHIEN_CP_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub cp_connect_timeout: Duration,

    /// Send the call's W3C trace context (`traceparent`, `tracestate`) to
    /// the upstream provider; `false` forwards only what the client sent.
    #[arg(long = "propagate-trace-upstream", env = "LUTHIEN_PROPAGATE_TRACE_UPSTREAM", default_value_t = true, action = clap::ArgAction::Set)]
    pub propagate_trace_upstream: bool,

    /// Pass the provider endpoints that generate nothing (`POST
    /// /v1/messages/count_tokens`, `GET /v1/models`, `GET /v1/models/{id}`)
    /// straight to the provider, without the control plane; `false` answers
    /// them 404 so that no byte bypasses the policies.
    #[arg(long = "auxiliary-endpoints", env = "LUTHIEN_AUXILIARY_ENDPOINTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auxiliary_endpoints: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: DataPlaneConfig,
    }

    #[test]
    fn defaults_match_the_documentation() {
        let cli = Cli::try_parse_from(["luthien-dataplane"]).unwrap();
        let config = cli.config;
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.control_plane, "http://127.0.0.1:50051");
        assert_eq!(config.fail_mode, FailMode::Closed);
        assert_eq!(config.max_body_bytes, 10 * 1024 * 1024);
        assert!(config.propagate_trace_upstream);
        assert!(config.auxiliary_endpoints);
    }

    #[test]
    fn auxiliary_endpoints_can_be_turned_off() {
        let cli =
            Cli::try_parse_from(["luthien-dataplane", "--auxiliary-endpoints", "false"]).unwrap();
        assert!(!cli.config.auxiliary_endpoints);
    }

    #[test]
    fn bad_fail_mode_is_rejected() {
        assert!(Cli::try_parse_from(["luthien-dataplane", "--fail-mode", "maybe"]).is_err());
    }
}
