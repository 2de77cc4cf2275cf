//! `luthien`: the command for local use and operations.
//!
//! - `luthien up` runs the control plane and the data plane in one process,
//!   wired to each other over loopback;
//! - `luthien policy check FILE` validates a policy file without starting
//!   anything;
//! - `luthien replay` runs recorded calls through another policy file and
//!   prints what would change, without calling any LLM;
//! - `luthien calls list|show|diff|tail` reads the recorded calls and the live
//!   activity from a running control plane, over its Debug gRPC API.

mod calls;
mod render;
mod replay;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use luthien_controlplane::ControlPlaneConfig;
use luthien_dataplane::DataPlaneConfig;
use luthien_telemetry::{ChannelTokenArgs, LogArgs};
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
    Up(Box<UpArgs>),
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run recorded calls through a policy file and show what would change.
    Replay(replay::ReplayArgs),
    /// Read recorded calls and follow the live activity of a running control plane.
    Calls {
        #[command(subcommand)]
        command: Box<calls::CallsCommand>,
    },
}

/// Flags of both planes (boxed: they dwarf the other subcommands).
#[derive(clap::Args)]
struct UpArgs {
    #[command(flatten)]
    control_plane: ControlPlaneConfig,
    #[command(flatten)]
    data_plane: DataPlaneConfig,
    #[command(flatten)]
    token: ChannelTokenArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; exits non-zero with the error when it is bad.
    Check {
        /// The YAML policy file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("luthien: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match command {
            Command::Up(args) => {
                let UpArgs {
                    mut control_plane,
                    mut data_plane,
                    token,
                    log,
                } = *args;
                control_plane.control_plane_token = token.control_plane_token.clone();
                data_plane.control_plane_token = token.control_plane_token;
                up(control_plane, data_plane, log).await
            }
            Command::Policy {
                command: PolicyCommand::Check { file },
            } => check(&file),
            Command::Replay(args) => replay::run(args).await,
            Command::Calls { command } => calls::run(*command).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("luthien: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(
    control_plane: ControlPlaneConfig,
    mut data_plane: DataPlaneConfig,
    log: LogArgs,
) -> anyhow::Result<ExitCode> {
    luthien_telemetry::init_service(&log, "luthien");
    // Its own data plane reaches its control plane over loopback, in plain text; the channel's
    // TLS is for planes on different hosts.
    if control_plane.tls.tls_cert.is_some() || data_plane.control_plane_tls.ca.is_some() {
        anyhow::bail!(
            "luthien up connects its data plane to its own control plane over loopback: --tls-cert and --control-plane-ca are for planes run apart (luthien-controlplane, luthien-dataplane)"
        );
    }
    let policies = control_plane.load_policies()?;
    let grpc_listener = tokio::net::TcpListener::bind(control_plane.grpc_listen)
        .await
        .with_context(|| {
            format!(
                "control plane: cannot listen on --grpc-listen {}",
                control_plane.grpc_listen
            )
        })?;
    let http_listener = luthien_controlplane::server::bind_debug_http(&control_plane)
        .await
        .with_context(|| {
            format!(
                "control plane: cannot listen on --http-listen {}",
                control_plane.http_listen
            )
        })?;
    data_plane.control_plane = format!("http://{}", grpc_listener.local_addr()?);
    let proxy_listener = tokio::net::TcpListener::bind(data_plane.listen)
        .await
        .with_context(|| {
            format!(
                "data plane: cannot listen on --listen {}",
                data_plane.listen
            )
        })?;

    // A signal stops the data plane only. It drains (calls in flight may
    // still open their control-plane stream: a slow client body, a retry),
    // and only then is the control plane told to stop, finishing its streams
    // and flushing its writer. One shared token would have the control plane
    // refuse the streams of calls the data plane is still draining.
    let data_stop = CancellationToken::new();
    tokio::spawn(luthien_telemetry::cancel_on_signal(data_stop.clone()));
    let control_stop = CancellationToken::new();
    let mut control = tokio::spawn(luthien_controlplane::serve(
        control_plane,
        policies,
        grpc_listener,
        Some(http_listener),
        control_stop.clone(),
    ));
    let data = luthien_dataplane::serve(data_plane, proxy_listener, data_stop.clone());
    tokio::pin!(data);
    let (data, control) = tokio::select! {
        data = &mut data => {
            control_stop.cancel();
            (data, control.await?)
        }
        // The control plane stopped by itself (a failed start, a lost
        // store): nothing could be policed any more, so the data plane stops too.
        control = &mut control => {
            let control = control?;
            if let Err(error) = &control {
                tracing::error!(%error, "control plane stopped; stopping the data plane");
            }
            data_stop.cancel();
            (data.await, control)
        }
    };
    // Export whatever spans are still buffered before the process exits.
    luthien_telemetry::shutdown();
    control.context("control plane")?;
    data.context("data plane")?;
    Ok(ExitCode::SUCCESS)
}

fn check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match luthien_policy::config::load_chain_file(file) {
        Ok(chain) => {
            let mode = if chain.read_only() {
                "observe (every policy is read-only)"
            } else {
                "transform"
            };
            println!("{}: ok", file.display());
            for (position, policy) in chain.policies().iter().enumerate() {
                println!("  {}. {} ({})", position + 1, policy.name(), policy.kind());
            }
            println!("  calls run in {mode} mode");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
