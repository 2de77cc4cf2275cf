//! Data plane configuration: every flag has an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
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
        default_value = "127.0.0.1:8080",
        value_parser = luthien_telemetry::listen_address
    )]
    pub listen: SocketAddr,

    /// Control planes, comma-separated: `http://ADDRESS:PORT`, `http://NAME:PORT` (every
    /// address of NAME, e.g. a Kubernetes headless Service), `dns://SERVER/NAME:PORT` (asking
    /// that DNS server); `https://` with --control-plane-ca.
    #[arg(
        long = "control-plane",
        env = "LUTHIEN_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_plane: String,

    /// How often the names in --control-plane are resolved again (and the TLS files read
    /// again), so that control planes that come and go are followed.
    #[arg(long = "control-plane-resolve-interval", env = "LUTHIEN_CONTROL_PLANE_RESOLVE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub control_plane_resolve_interval: Duration,

    /// Other control planes a call may move to when the chosen one cannot take it (refused,
    /// unreachable, leaving), before anything went upstream.
    #[arg(
        long = "control-plane-retries",
        env = "LUTHIEN_CONTROL_PLANE_RETRIES",
        default_value_t = 2
    )]
    pub control_plane_retries: usize,

    #[command(flatten)]
    pub control_plane_tls: ControlPlaneTls,

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

    /// Pass the provider endpoints that generate nothing new (`POST
    /// /v1/messages/count_tokens`, `GET /v1/models`, `GET /v1/models/{id}`, the
    /// Responses API's stored responses) straight to the provider, without the
    /// control plane; `false` answers them 404 so that no byte bypasses the
    /// policies.
    #[arg(long = "auxiliary-endpoints", env = "LUTHIEN_AUXILIARY_ENDPOINTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auxiliary_endpoints: bool,

    /// When the control plane's chain does not inspect requests, send each request upstream
    /// at the same time as its call opens on the control plane instead of after its request
    /// decision; `false` always waits for the decision (no request is sent in the window after
    /// a reload to a chain that inspects requests).
    #[arg(long = "send-before-decision", env = "LUTHIEN_SEND_BEFORE_DECISION", default_value_t = true, action = clap::ArgAction::Set)]
    pub send_before_decision: bool,

    /// On SIGTERM, how long the data plane keeps accepting calls after `/readyz` turned false,
    /// so that load balancers notice before it stops.
    #[arg(long = "drain-delay", env = "LUTHIEN_DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// Then, how long calls in flight (streams included) get to finish before the process
    /// exits anyway.
    #[arg(long = "drain-timeout", env = "LUTHIEN_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Memory kept for calls let through without policies (fail-open while no control plane
    /// took them) until a control plane records them; past it, new ones are dropped and
    /// counted. Each body is kept up to 256 KiB.
    #[arg(long = "unpoliced-spool-bytes", env = "LUTHIEN_UNPOLICED_SPOOL_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub unpoliced_spool_bytes: usize,

    #[command(flatten)]
    pub edge: EdgeLimits,

    /// `--control-plane-token` (`luthien_telemetry::ChannelTokenArgs`), presented on every call
    /// stream.
    #[arg(skip)]
    pub control_plane_token: Option<String>,
}

/// TLS to the control planes; the files are read again every --control-plane-resolve-interval,
/// so a rotated certificate is used by new connections without a restart.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ControlPlaneTls {
    /// CA certificate (PEM) the control planes' certificates are checked against; setting it
    /// turns TLS on for the control-plane channel.
    #[arg(long = "control-plane-ca", env = "LUTHIEN_CONTROL_PLANE_CA")]
    pub ca: Option<PathBuf>,

    /// Client certificate chain (PEM) presented to the control planes, for those that require
    /// one (`--tls-client-ca` there); with --control-plane-key.
    #[arg(long = "control-plane-cert", env = "LUTHIEN_CONTROL_PLANE_CERT")]
    pub cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long = "control-plane-key", env = "LUTHIEN_CONTROL_PLANE_KEY")]
    pub key: Option<PathBuf>,
}

/// What a client may hold of the data plane: the bounds that keep slow or hostile clients
/// from starving the others.
#[derive(Clone, Debug, clap::Args)]
pub struct EdgeLimits {
    /// Open client connections at most; past it, new connections wait in the listen backlog.
    /// Far above the idle keep-alive connections a busy client pool holds.
    #[arg(
        long = "max-connections",
        env = "LUTHIEN_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: usize,

    /// Calls in progress at most (streams included); past it, a 503 in the client's format.
    #[arg(
        long = "max-concurrent-calls",
        env = "LUTHIEN_MAX_CONCURRENT_CALLS",
        default_value_t = 4_096
    )]
    pub max_concurrent_calls: usize,

    /// Time a connection gets to send a request's head, counted from when it is ready for one:
    /// accepted, or idle after a response. So it is also the idle keep-alive timeout.
    #[arg(long = "header-read-timeout", env = "LUTHIEN_HEADER_READ_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Time a client gets to send a whole request body (a 10 MiB body at 1 MiB/s fits).
    #[arg(long = "body-read-timeout", env = "LUTHIEN_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,

    /// Request headers at most, in count and in total bytes of names and values; past either,
    /// a 431 in the client's format.
    #[arg(
        long = "max-headers",
        env = "LUTHIEN_MAX_HEADERS",
        default_value_t = 100
    )]
    pub max_headers: usize,
    #[arg(long = "max-header-bytes", env = "LUTHIEN_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Client headers forwarded upstream although they carry another party's credentials
    /// (`cookie`, `proxy-authorization`, `api-key`, `x-goog-api-key`); comma-separated.
    #[arg(
        long = "forward-headers",
        env = "LUTHIEN_FORWARD_HEADERS",
        value_delimiter = ','
    )]
    pub forward_headers: Vec<String>,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent_calls: 4_096,
            header_read_timeout: Duration::from_secs(20),
            body_read_timeout: Duration::from_secs(30),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            forward_headers: Vec::new(),
        }
    }
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
        let edge = config.edge;
        let documented = EdgeLimits::default();
        assert_eq!(edge.max_connections, documented.max_connections);
        assert_eq!(edge.max_concurrent_calls, documented.max_concurrent_calls);
        assert_eq!(edge.header_read_timeout, documented.header_read_timeout);
        assert_eq!(edge.body_read_timeout, documented.body_read_timeout);
        assert_eq!(
            (edge.max_headers, edge.max_header_bytes),
            (documented.max_headers, documented.max_header_bytes)
        );
        assert!(edge.forward_headers.is_empty());
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
