//! `luthien-dataplane`: the provider-compatible proxy, on its own.

use anyhow::Context;
use clap::Parser;
use luthien_dataplane::cli::Cli;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    cli.config.control_plane_token = cli.token.control_plane_token;
    luthien_telemetry::init_service(&cli.log, "luthien-dataplane");
    let listener = tokio::net::TcpListener::bind(cli.config.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", cli.config.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(luthien_telemetry::cancel_on_signal(shutdown.clone()));
    let served = luthien_dataplane::serve(cli.config, listener, shutdown).await;
    luthien_telemetry::shutdown();
    served?;
    Ok(())
}
