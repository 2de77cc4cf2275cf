//! `remote-policy-example --listen 127.0.0.1:7000 --allowed-dir /workspace`

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use remote_policy_example::guard::Guard;
use tokio::net::TcpListener;

/// A Luthien remote policy server that removes tool calls touching paths outside a directory.
#[derive(Debug, Parser)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Tool calls may only touch paths inside this directory.
    #[arg(long, default_value = "/workspace")]
    allowed_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        allowed_dir = %args.allowed_dir.display(),
        "path-guard policy server listening"
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    remote_policy_example::serve(listener, Guard::new(args.allowed_dir), shutdown).await?;
    Ok(())
}
