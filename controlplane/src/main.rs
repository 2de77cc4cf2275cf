//! `luthien-controlplane`: the policy engine, on its own.

use anyhow::Context;
use clap::Parser;
use luthien_controlplane::cli::Cli;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        mut config,
        log,
        token,
    } = Cli::parse();
    luthien_telemetry::init_service(&log, "luthien-controlplane");
    config.control_plane_token = token.control_plane_token;
    // An invalid policy file stops the process before it listens.
    let policies = config.load_policies()?;
    let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on --grpc-listen {}", config.grpc_listen))?;
    let http = luthien_controlplane::server::bind_debug_http(&config)
        .await
        .with_context(|| format!("cannot listen on --http-listen {}", config.http_listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(luthien_telemetry::cancel_on_signal(shutdown.clone()));
    let served = luthien_controlplane::serve(config, policies, grpc, Some(http), shutdown).await;
    luthien_telemetry::shutdown();
    served?;
    Ok(())
}
