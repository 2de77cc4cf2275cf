//! `luthien-controlplane`: the policy engine, on its own.

use anyhow::Context;
use clap::Parser;
use luthien_controlplane::ControlPlaneConfig;
use luthien_telemetry::{ChannelTokenArgs, LogArgs};
use tokio_util::sync::CancellationToken;

/// Luthien control plane: runs the policy chain on every call the data
/// planes stream to it.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ControlPlaneConfig,
    #[command(flatten)]
    token: ChannelTokenArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    cli.config.control_plane_token = cli.token.control_plane_token;
    luthien_telemetry::init_service(&cli.log, "luthien-controlplane");
    // An invalid policy file stops the process before it listens.
    let policies = cli.config.load_policies()?;
    let grpc = tokio::net::TcpListener::bind(cli.config.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on --grpc-listen {}", cli.config.grpc_listen))?;
    let http = luthien_controlplane::server::bind_debug_http(&cli.config)
        .await
        .with_context(|| format!("cannot listen on --http-listen {}", cli.config.http_listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(luthien_telemetry::cancel_on_signal(shutdown.clone()));
    let served =
        luthien_controlplane::serve(cli.config, policies, grpc, Some(http), shutdown).await;
    luthien_telemetry::shutdown();
    served?;
    Ok(())
}
