//! `luthien`: the command for local use. `luthien up` runs the control plane
//! and the data plane in one process, wired to each other over loopback.

use clap::{Parser, Subcommand};
use luthien_controlplane::ControlPlaneConfig;
use luthien_dataplane::DataPlaneConfig;
use luthien_telemetry::LogArgs;
use tokio_util::sync::CancellationToken;

/// Luthien: an LLM policy gateway for OpenAI and Anthropic traffic.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane and the data plane in one process. The data
    /// plane connects to this process's control plane; `--control-plane` is
    /// ignored.
    Up {
        #[command(flatten)]
        control_plane: ControlPlaneConfig,
        #[command(flatten)]
        data_plane: DataPlaneConfig,
        #[command(flatten)]
        log: LogArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Up {
        control_plane,
        mut data_plane,
        log,
    } = Cli::parse().command;
    luthien_telemetry::init(&log);
    let chain = control_plane.load_chain()?;
    let grpc_listener = tokio::net::TcpListener::bind(control_plane.grpc_listen).await?;
    let http_listener = luthien_controlplane::server::bind_debug_http(&control_plane).await?;
    data_plane.control_plane = format!("http://{}", grpc_listener.local_addr()?);
    let proxy_listener = tokio::net::TcpListener::bind(data_plane.listen).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(luthien_telemetry::cancel_on_signal(shutdown.clone()));
    let control = tokio::spawn(luthien_controlplane::serve(
        control_plane,
        chain,
        grpc_listener,
        Some(http_listener),
        shutdown.clone(),
    ));
    // The data plane drains first; the control plane keeps serving the
    // streams it still has until they end.
    let data = luthien_dataplane::serve(data_plane, proxy_listener, shutdown.clone()).await;
    shutdown.cancel();
    let control = control.await?;
    data?;
    control?;
    Ok(())
}
