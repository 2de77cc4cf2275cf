//! `mock-upstream`: the mock LLM provider as a standalone server, for benchmarks and manual
//! testing. It logs its address at start-up and nothing per request at `info` level, so that
//! logging does not distort measurements.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use luthien_mock_upstream::{MockOptions, MockUpstream};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// A deterministic mock OpenAI / Anthropic provider.
///
/// Serves POST /v1/chat/completions, POST /v1/responses and POST /v1/messages, plus POST
/// /v1/messages/count_tokens, GET /v1/models and GET /v1/models/{id}, and the Responses API's
/// GET and DELETE /v1/responses/{id}, POST /v1/responses/{id}/cancel, GET
/// /v1/responses/{id}/input_items, POST /v1/responses/input_tokens and POST
/// /v1/responses/compact. Each request chooses its answer with headers: x-mock-scenario (text,
/// tools, text_and_tools, thinking, stream_error, incomplete, failed, hang), x-mock-text,
/// x-mock-chunk-size, x-mock-chunks, x-mock-delay-ms and x-mock-status.
#[derive(Debug, Parser)]
#[command(name = "mock-upstream", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the log line tells which).
    #[arg(long, env = "MOCK_UPSTREAM_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,

    /// Do not keep received requests in memory (for long benchmark runs). The variable takes
    /// true/false, 1/0, yes/no or on/off.
    #[arg(
        long,
        env = "MOCK_UPSTREAM_NO_RECORD",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    no_record: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let options = MockOptions {
        record: !args.no_record,
    };
    let mock = MockUpstream::serve_with(listener, options.clone())
        .await
        .context("cannot start the mock upstream")?;
    tracing::info!(addr = %mock.addr(), record = options.record, "mock upstream listening");

    shutdown_signal().await?;
    tracing::info!("mock upstream stopping");
    drop(mock);
    Ok(())
}

/// Resolves on Ctrl-C, or on SIGTERM where there is one (containers and CI stop with it).
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}
