//! Serving the control plane: its settings, the gRPC server with health and
//! reflection, and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use luthien_proto::v1::control_plane_server::ControlPlaneServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::policy::Chain;
use crate::service::{CallSettings, ControlPlaneService};

/// Largest gRPC message accepted or sent; request and response bodies
/// travel whole, so this must exceed the data plane's body limits.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long shutdown waits for calls in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Control plane settings, usable standalone or flattened into `luthien up`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControlPlaneConfig {
    /// Address the gRPC services (ControlPlane, health, reflection) listen on.
    #[arg(
        long = "grpc-listen",
        env = "LUTHIEN_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: SocketAddr,

    /// YAML file with the policy chain; without it every call runs `noop`.
    #[arg(long = "policy-config", env = "LUTHIEN_POLICY_CONFIG")]
    pub policy_config: Option<PathBuf>,

    /// Interval between keepalives while a policy works on a decision.
    #[arg(long = "keepalive-interval", env = "LUTHIEN_KEEPALIVE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

impl ControlPlaneConfig {
    /// Loads the policy chain named by the configuration (or the default).
    pub fn load_chain(&self) -> Result<Chain, ConfigError> {
        match &self.policy_config {
            Some(path) => config::load_chain_file(path),
            None => Ok(Chain::default()),
        }
    }
}

/// Serves the control plane on `listener` with `chain` until `shutdown` is
/// cancelled, then waits (bounded) for calls in flight.
pub async fn serve(
    config: ControlPlaneConfig,
    chain: Chain,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    tracing::info!(
        grpc_listen = %listener.local_addr()?,
        policies = ?chain.policy_names(),
        observe_only = chain.read_only(),
        "control plane listening"
    );
    let service = ControlPlaneService::new(
        chain,
        CallSettings {
            keepalive_interval: config.keepalive_interval,
            start_timeout: Duration::from_secs(10),
        },
    );
    let calls = service.calls().clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ControlPlaneServer<ControlPlaneService>>()
        .await;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let control_plane = ControlPlaneServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(16 * 1024))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(control_plane)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await?;

    calls.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, calls.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = calls.len(),
            "shutdown grace period over; abandoning calls"
        );
    }
    Ok(())
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(luthien_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
