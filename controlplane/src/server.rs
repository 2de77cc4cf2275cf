//! Serving the control plane: its settings, the gRPC server (ControlPlane,
//! Debug, health, reflection), the debug HTTP server, and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use luthien_proto::admin::v1::debug_service_server::DebugServiceServer;
use luthien_proto::admin::v1::policies_service_server::PoliciesServiceServer;
use luthien_proto::dataplane::v1::control_plane_service_server::ControlPlaneServiceServer;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

use crate::activity::{ActivityBus, ActivityError};
use crate::debug::auth::AdminKey;
use crate::debug::grpc::{self, DebugGrpc, PoliciesGrpc};
use crate::debug::{self, DebugService};
use crate::metrics::{self, MetricsSources};
use crate::policy_source::PolicySource;
use crate::probes;
use crate::recorder::Recording;
use crate::service::{CallSettings, ControlPlaneService};
use crate::tls::{ServerTls, TlsArgs};
use luthien_api::limits;
use luthien_policy::Chain;
use luthien_policy::config::ConfigError;
use luthien_store::redact::StoredPayloads;
use luthien_store::{
    RetentionHandle, RetentionOptions, Store, StoreError, StoreOptions, WriterHandle,
    WriterOptions, spawn_retention, spawn_writer,
};

/// Once the gRPC server has stopped, how long shutdown waits for each of: the calls' last
/// work (recording their end), remote policy streams, and the event writer's drain.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Control plane settings, usable standalone or flattened into `luthien up`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControlPlaneConfig {
    /// Address the gRPC services (ControlPlane, health, reflection) listen on.
    #[arg(
        long = "grpc-listen",
        env = "LUTHIEN_GRPC_LISTEN",
        default_value = "127.0.0.1:50051",
        value_parser = luthien_telemetry::listen_address
    )]
    pub grpc_listen: SocketAddr,

    /// YAML file with the policy chain; without it every call runs `noop`.
    #[arg(long = "policy-config", env = "LUTHIEN_POLICY_CONFIG")]
    pub policy_config: Option<PathBuf>,

    /// Interval between keepalives while a policy works on a decision.
    #[arg(long = "keepalive-interval", env = "LUTHIEN_KEEPALIVE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// Largest unfinished SSE event held while reassembling a stream, in bytes. Past it, a
    /// transformed stream ends with an in-band error and an observed one stops being
    /// reconstructed; the call's record says which.
    #[arg(long = "max-sse-event-bytes", env = "LUTHIEN_MAX_SSE_EVENT_BYTES", default_value_t = luthien_policy::sse::DEFAULT_MAX_EVENT_BYTES)]
    pub max_sse_event_bytes: usize,

    /// Event store: `sqlite://FILE` (created if missing) or `postgres://…`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://luthien.db"
    )]
    pub database_url: String,

    /// Keep no call records (activity is still published).
    #[arg(long = "no-store", env = "LUTHIEN_NO_STORE")]
    pub no_store: bool,

    /// Do not run the event-store migrations at start-up.
    #[arg(long = "skip-migrations", env = "LUTHIEN_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// Records the event queue holds before new ones are dropped (and counted).
    #[arg(
        long = "event-queue-capacity",
        env = "LUTHIEN_EVENT_QUEUE_CAPACITY",
        default_value_t = 10_000
    )]
    pub event_queue_capacity: usize,

    /// Cap on each stored payload (request/response body) in bytes; larger
    /// ones are replaced by a marked, truncated preview.
    #[arg(long = "max-payload-bytes", env = "LUTHIEN_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,

    /// Which request and response bodies are stored: `all`, `original` (as the client sent
    /// them and upstream answered), `final` (as they went upstream and reached the client,
    /// after any redaction) or `none`. What is kept out is marked in the record.
    #[arg(
        long = "store-payloads",
        env = "LUTHIEN_STORE_PAYLOADS",
        default_value = "all"
    )]
    pub store_payloads: StoredPayloads,

    /// Delete stored calls (and their events) older than this, e.g. `30d`
    /// or `72h`, in small batches in the background; unset keeps them forever.
    #[arg(long = "retention", env = "LUTHIEN_RETENTION", value_parser = parse_retention)]
    pub retention: Option<Duration>,

    /// How often retention looks for calls older than `--retention`.
    #[arg(long = "retention-interval", env = "LUTHIEN_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_retention_interval)]
    pub retention_interval: Duration,

    /// On SIGTERM, how long calls in flight (streams included) get to end before they are
    /// cut; new calls go to other control planes meanwhile. Then the event writer gets 10 s
    /// to drain.
    #[arg(long = "shutdown-grace", env = "LUTHIEN_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// A call still in progress this long after it started, on a control plane that has not
    /// been alive for as long (no heartbeat), is marked `abandoned`: that control plane died
    /// before the call ended.
    #[arg(long = "abandon-after", env = "LUTHIEN_ABANDON_AFTER", default_value = "60s", value_parser = parse_retention_interval)]
    pub abandon_after: Duration,

    /// Redis for the live activity stream (channel `luthien:activity`);
    /// without it activity stays in this process.
    #[arg(long = "redis-url", env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Address of the debug HTTP API and web UI (`/debug/...`), the probes and `/metrics`.
    /// Without an admin key the debug routes answer loopback clients only.
    #[arg(
        long = "http-listen",
        env = "LUTHIEN_HTTP_LISTEN",
        default_value = "127.0.0.1:8081",
        value_parser = luthien_telemetry::listen_address
    )]
    pub http_listen: SocketAddr,

    /// Key the debug API requires (`authorization: Bearer <key>`); without
    /// one, debug endpoints are served on loopback only.
    #[arg(long = "admin-key", env = "LUTHIEN_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Link from a call to its trace, e.g. a Grafana Explore URL: `{trace_id}`
    /// is replaced by the call's W3C trace id, `{call_id}` by its call id.
    #[arg(long = "trace-url-template", env = "LUTHIEN_TRACE_URL_TEMPLATE")]
    pub trace_url_template: Option<String>,

    /// Require the admin key on `/metrics` (by default open, as Prometheus expects).
    #[arg(
        long = "metrics-require-admin-key",
        env = "LUTHIEN_METRICS_REQUIRE_ADMIN_KEY"
    )]
    pub metrics_require_admin_key: bool,

    /// Require the admin key on gRPC reflection (by default open, so grpcurl works without it).
    #[arg(
        long = "reflection-require-admin-key",
        env = "LUTHIEN_REFLECTION_REQUIRE_ADMIN_KEY"
    )]
    pub reflection_require_admin_key: bool,

    /// Serve the data-plane protocol on a non-loopback address without a
    /// `--control-plane-token` or `--tls-client-ca`: anyone who reaches the port can then run
    /// calls and write records.
    #[arg(long = "insecure", env = "LUTHIEN_INSECURE")]
    pub insecure: bool,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// `--control-plane-token` (`luthien_telemetry::ChannelTokenArgs`), required on every
    /// call stream when set.
    #[arg(skip)]
    pub control_plane_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("activity bus: {0}")]
    Activity(#[from] ActivityError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "refusing to serve the data-plane protocol on {0} without --control-plane-token or --tls-client-ca: anyone who reaches the port could run calls and write records (pass --insecure to accept that)"
    )]
    Unauthenticated(SocketAddr),
    #[error("TLS: {0}")]
    Tls(String),
}

/// `--retention`: a humantime duration, never zero (which would delete
/// every call as soon as it is stored).
fn parse_retention(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text).map_err(|e| e.to_string())? {
        zero if zero.is_zero() => Err(
            "a retention of zero would delete every call as soon as it is stored; \
             use a positive age such as 30d, or leave --retention unset to keep calls forever"
                .to_owned(),
        ),
        age => Ok(age),
    }
}

/// `--retention-interval`: a humantime duration, never zero (a busy loop).
fn parse_retention_interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text).map_err(|e| e.to_string())? {
        zero if zero.is_zero() => {
            Err("the retention interval must be longer than zero, e.g. 10m".to_owned())
        }
        interval => Ok(interval),
    }
}

impl ControlPlaneConfig {
    /// Loads the policy chain named by the configuration (or the default
    /// `noop`); a file-backed chain hot-reloads once served.
    pub fn load_policies(&self) -> Result<PolicySource, ConfigError> {
        match &self.policy_config {
            Some(path) => PolicySource::from_file(path),
            None => Ok(PolicySource::fixed(Chain::default())),
        }
    }
}

/// Serves the control plane's gRPC services on `grpc` and, when given, the
/// debug HTTP API and UI on `http`, until `shutdown` is cancelled; then waits
/// (bounded) for calls in flight and drains the event store.
pub async fn serve(
    config: ControlPlaneConfig,
    policies: impl Into<PolicySource>,
    grpc: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let grpc_address = grpc.local_addr()?;
    let channel_token = ChannelToken::new(config.control_plane_token.as_deref());
    let tls = ServerTls::load(&config.tls).map_err(ServeError::Tls)?;
    let client_certificates = tls
        .as_ref()
        .is_some_and(|tls| tls.requires_client_certificates());
    if !channel_token.is_set() && !client_certificates && !grpc_address.ip().is_loopback() {
        if !config.insecure {
            return Err(ServeError::Unauthenticated(grpc_address));
        }
        tracing::warn!(grpc_listen = %grpc_address, "--insecure: the data-plane protocol is served without authentication");
    }
    let policies = policies.into();
    let chain = policies.chain();
    // This process, as the records and the liveness table know it.
    let instance: Arc<str> = uuid::Uuid::now_v7().to_string().into();
    tracing::info!(
        instance = %instance,
        grpc_listen = %grpc_address,
        tls = tls.is_some(),
        client_certificates,
        token = channel_token.is_set(),
        policies = ?chain.policy_names(),
        observe_only = chain.read_only(),
        "control plane listening"
    );
    policies.spawn_reloader(shutdown.clone());
    let (recording, store, writer) = start_recording(&config, &instance, &shutdown).await?;
    let retention = start_retention(&config, store.as_ref(), &shutdown);
    let liveness = store.clone().map(|store| {
        crate::liveness::spawn(
            store,
            Arc::clone(&instance),
            config.abandon_after,
            shutdown.clone(),
        )
    });
    let admin_key = AdminKey::new(config.admin_key.clone());
    let recording_sink = recording.sink().cloned();
    let activity = recording.activity().clone();
    let readiness = probes::Readiness::new(store.clone());
    let debug = DebugService::new(
        store,
        recording.activity().clone(),
        policies.clone(),
        config.trace_url_template.clone(),
    );
    let service = ControlPlaneService::new(
        policies.clone(),
        CallSettings {
            keepalive_interval: config.keepalive_interval,
            start_timeout: Duration::from_secs(10),
            max_sse_event_bytes: config.max_sse_event_bytes,
        },
        recording,
    );
    let calls = service.calls().clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ControlPlaneServiceServer<ControlPlaneService>>()
        .await;
    // Debug data is never open by accident: without an admin key the Debug
    // RPCs are only served when the gRPC port is on loopback.
    let debug_served = admin_key.is_set() || grpc_address.ip().is_loopback();
    let reflection_v1 = reflection(debug_served).build_v1()?;
    let reflection_v1alpha = reflection(debug_served).build_v1alpha()?;
    // Either open or behind the admin key (`--reflection-require-admin-key`); the two arms
    // are different types, so each is an optional service.
    let guard_reflection = config.reflection_require_admin_key && admin_key.is_set();
    let (open_v1, open_v1alpha, guarded_v1, guarded_v1alpha) = if guard_reflection {
        let guard = grpc::interceptor(admin_key.clone());
        (
            None,
            None,
            Some(InterceptedService::new(reflection_v1, guard.clone())),
            Some(InterceptedService::new(reflection_v1alpha, guard)),
        )
    } else {
        (Some(reflection_v1), Some(reflection_v1alpha), None, None)
    };
    let control_plane = ControlPlaneServiceServer::new(service)
        .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(limits::MAX_MESSAGE_BYTES);
    let control_plane = InterceptedService::new(control_plane, channel_token.interceptor());

    let (debug_grpc, policies_grpc) = if debug_served {
        if !admin_key.is_set() {
            tracing::info!("no admin key: the Debug API is served on loopback only");
        }
        (
            Some(DebugServiceServer::with_interceptor(
                DebugGrpc::new(debug.clone()),
                grpc::interceptor(admin_key.clone()),
            )),
            Some(PoliciesServiceServer::with_interceptor(
                PoliciesGrpc::new(debug.clone()),
                grpc::interceptor(admin_key.clone()),
            )),
        )
    } else {
        tracing::warn!(
            grpc_listen = %grpc_address,
            "no admin key and a non-loopback gRPC address: the Debug and Policies gRPC services are off; set LUTHIEN_ADMIN_KEY to serve them"
        );
        (None, None)
    };

    let http_task = match http {
        Some(listener) => {
            let address = listener.local_addr()?;
            tracing::info!(
                http_listen = %address,
                ui = %format!("http://{address}/debug"),
                admin_key = admin_key.is_set(),
                "debug HTTP API and UI listening"
            );
            let mut metrics = metrics::router(MetricsSources {
                sink: recording_sink.clone(),
                activity: activity.clone(),
                calls: calls.clone(),
            });
            if config.metrics_require_admin_key {
                metrics = debug::http::behind_admin_key(metrics, admin_key.clone());
            }
            let app = debug::http::router(debug, admin_key)
                .merge(metrics)
                .merge(probes::router(readiness.clone()));
            let shutdown = shutdown.clone();
            Some(tokio::spawn(async move {
                let listener = listener.tap_io(|stream| {
                    let _ = stream.set_nodelay(true);
                });
                // The peer address decides who reaches the debug routes without an admin key.
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            }))
        }
        None => None,
    };

    let stop_serving = CancellationToken::new();
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(limits::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(limits::CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(Some(limits::HTTP2_KEEPALIVE_INTERVAL))
        .max_concurrent_streams(Some(16 * 1024))
        .add_service(health_service)
        .add_optional_service(open_v1)
        .add_optional_service(open_v1alpha)
        .add_optional_service(guarded_v1)
        .add_optional_service(guarded_v1alpha)
        .add_service(control_plane)
        .add_optional_service(debug_grpc)
        .add_optional_service(policies_grpc);
    let stopped = stop_serving.clone().cancelled_owned();
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        Some(tls) => {
            tls.spawn_reloader(shutdown.clone());
            let incoming = tls.incoming(grpc, stop_serving.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        // Set per accepted socket: the builder's `tcp_nodelay` does not reach a listener
        // handed in, and Nagle + delayed ACK would add ~40 ms to every reply.
        None => Box::pin(router.serve_with_incoming_shutdown(
            TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stopped,
        )),
    };
    // On shutdown: not ready and NOT_SERVING first, so that data planes send new calls
    // elsewhere, then GOAWAY; the server ends once every connection has closed (data planes
    // close theirs when their last stream ends), or when `--shutdown-grace` is over, and then
    // closes what is left (long-lived streams: activity tails). Waiting for the connections,
    // not for the calls, is what keeps a stream that arrived with the GOAWAY from being cut.
    let shutdown_grace = config.shutdown_grace;
    let leaving = async {
        shutdown.cancelled().await;
        readiness.stop();
        health
            .set_not_serving::<ControlPlaneServiceServer<ControlPlaneService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        tracing::info!("shutting down: NOT_SERVING, refusing new streams");
        stop_serving.cancel();
        tokio::time::sleep(shutdown_grace).await;
    };
    tokio::select! {
        served = server => served?,
        () = leaving => tracing::warn!("--shutdown-grace over with gRPC streams still open; closing them"),
    }
    calls.close();
    if tokio::time::timeout(DRAIN_GRACE, calls.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = calls.len(),
            "calls still running after the gRPC server stopped; abandoning them"
        );
    }
    if !policies.chain().wait_background(DRAIN_GRACE).await {
        tracing::warn!("shutdown grace period over; abandoning remote policy streams");
    }
    if let Some(liveness) = liveness {
        // Already stopping: its token is `shutdown`.
        let _ = liveness.await;
    }
    if let Some(retention) = retention {
        // Already stopping (its token is a child of `shutdown`); a batch in
        // flight is rolled back, so this is quick.
        let stats = retention.shutdown().await;
        tracing::debug!(
            deleted_calls = stats.deleted_calls,
            failed_runs = stats.failed_runs,
            "event store retention stopped"
        );
    }
    if let Some(writer) = writer {
        let report = writer.shutdown(DRAIN_GRACE).await;
        tracing::info!(
            written = report.stats.written,
            dropped = report.stats.dropped,
            lost = report.lost,
            "event store drained"
        );
    }
    if let Some(task) = http_task
        && let Ok(Err(error)) = task.await
    {
        tracing::warn!(%error, "debug HTTP server stopped with an error");
    }
    Ok(())
}

/// Binds the debug HTTP address. Without an admin key the debug routes answer loopback
/// clients only (the probes and metrics answer everyone); the log says so when the address is
/// reachable from elsewhere.
pub async fn bind_debug_http(config: &ControlPlaneConfig) -> std::io::Result<TcpListener> {
    let address = config.http_listen;
    let has_key = config
        .admin_key
        .as_deref()
        .is_some_and(|key| !key.is_empty());
    if !has_key && !address.ip().is_loopback() {
        tracing::warn!(
            http_listen = %address,
            "no admin key: the debug API and UI answer loopback clients only (probes and metrics answer everyone); set LUTHIEN_ADMIN_KEY to reach them from elsewhere"
        );
    }
    TcpListener::bind(address).await
}

/// Opens the event store and its writer (unless disabled) and the activity
/// bus. The writer drains after the calls, so their last records land.
async fn start_recording(
    config: &ControlPlaneConfig,
    instance: &Arc<str>,
    shutdown: &CancellationToken,
) -> Result<(Recording, Option<Store>, Option<WriterHandle>), ServeError> {
    let activity = match &config.redis_url {
        Some(url) => ActivityBus::redis(url, shutdown.child_token())?,
        None => ActivityBus::in_process(),
    };
    if config.no_store {
        tracing::info!("event store disabled; calls are not recorded");
        return Ok((Recording::new(None, activity), None, None));
    }
    let options = StoreOptions {
        migrate: !config.skip_migrations,
        ..StoreOptions::default()
    };
    let store = Store::open(&config.database_url, options).await?;
    tracing::info!(backend = store.backend(), "event store open");
    let writer_options = WriterOptions {
        queue_capacity: config.event_queue_capacity,
        max_payload_bytes: config.max_payload_bytes,
        stored_payloads: config.store_payloads,
        metrics: Arc::clone(&crate::metrics::global().store),
        ..WriterOptions::default()
    };
    // The writer gets its own token: it must outlive the calls and drain
    // after them, under `WriterHandle::shutdown`'s deadline.
    let (sink, writer) = spawn_writer(store.clone(), writer_options, CancellationToken::new());
    Ok((
        Recording::new(Some(sink), activity).with_control_plane_id(Arc::clone(instance)),
        Some(store),
        Some(writer),
    ))
}

/// Starts deleting old calls when `--retention` is set and there is a store.
fn start_retention(
    config: &ControlPlaneConfig,
    store: Option<&Store>,
    shutdown: &CancellationToken,
) -> Option<RetentionHandle> {
    let max_age = config.retention?;
    let Some(store) = store else {
        tracing::info!("--retention is set but the event store is disabled; nothing to delete");
        return None;
    };
    let options = RetentionOptions {
        metrics: Arc::clone(&crate::metrics::global().store),
        ..RetentionOptions::new(max_age, config.retention_interval)
    };
    tracing::info!(
        backend = store.backend(),
        retention = %humantime::format_duration(options.max_age),
        interval = %humantime::format_duration(options.interval),
        batch_size = options.batch_size,
        "event store retention on: older calls are deleted in batches"
    );
    Some(spawn_retention(store.clone(), options, shutdown.clone()))
}

/// Reflection over the services this control plane serves, and only those: the protos also
/// describe `PolicyService`, which remote policy servers implement, not the control plane.
fn reflection(debug_served: bool) -> tonic_reflection::server::Builder<'static> {
    use tonic::server::NamedService;
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(luthien_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(ControlPlaneServiceServer::<ControlPlaneService>::NAME)
        .with_service_name(
            tonic_health::pb::health_server::HealthServer::<tonic_health::server::HealthService>::NAME,
        )
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection");
    if debug_served {
        builder = builder
            .with_service_name(DebugServiceServer::<DebugGrpc>::NAME)
            .with_service_name(PoliciesServiceServer::<PoliciesGrpc>::NAME);
    }
    builder
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: ControlPlaneConfig,
    }

    fn parse(args: &[&str]) -> Result<ControlPlaneConfig, clap::Error> {
        Cli::try_parse_from(std::iter::once("cp").chain(args.iter().copied())).map(|cli| cli.config)
    }

    #[test]
    fn retention_is_off_by_default_and_takes_humantime_durations() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.retention, None);
        assert_eq!(config.retention_interval, Duration::from_secs(600));
        let config = parse(&["--retention", "30d", "--retention-interval", "90s"]).unwrap();
        assert_eq!(config.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(config.retention_interval, Duration::from_secs(90));
        let config = parse(&["--retention", "72h"]).unwrap();
        assert_eq!(config.retention, Some(Duration::from_secs(72 * 3_600)));
    }

    #[test]
    fn zero_or_garbage_retention_is_refused_with_a_clear_error() {
        for zero in ["0s", "0d", "0"] {
            let error = parse(&["--retention", zero]).unwrap_err().to_string();
            assert!(error.contains("retention of zero"), "{zero}: {error}");
            assert!(error.contains("leave --retention unset"), "{error}");
        }
        let error = parse(&["--retention-interval", "0m"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("longer than zero"), "{error}");
        assert!(parse(&["--retention", "a month"]).is_err());
    }
}

/// The data planes' tokens (`--control-plane-token`, comma-separated: any of them is
/// accepted, so a rotation adds the new one, moves the data planes to it, then drops the old),
/// checked on every call stream.
#[derive(Clone)]
struct ChannelToken(Arc<[Arc<str>]>);

impl ChannelToken {
    fn new(tokens: Option<&str>) -> Self {
        Self(
            luthien_telemetry::channel_tokens(tokens.unwrap_or_default())
                .map(Arc::from)
                .collect(),
        )
    }

    fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// Refuses a stream without the token, before any of its messages is read.
    fn interceptor(self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |request: Request<()>| {
            if self.0.is_empty() {
                return Ok(request);
            }
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .and_then(luthien_api::headers::bearer_token)
                .map(str::as_bytes);
            // Every token is compared, in constant time each, so the time taken does not say
            // which one came close.
            let accepted = presented.is_some_and(|token| {
                self.0.iter().fold(false, |any, expected| {
                    any | bool::from(token.ct_eq(expected.as_bytes()))
                })
            });
            if accepted {
                return Ok(request);
            }
            let peer = request.remote_addr();
            tracing::warn!(
                ?peer,
                "call stream refused: missing or wrong control-plane token"
            );
            Err(Status::unauthenticated(
                "the control plane needs `authorization: Bearer <control-plane token>`",
            ))
        }
    }
}
