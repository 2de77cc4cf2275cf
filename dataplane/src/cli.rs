//! The `luthien-dataplane` command line, in the library so that tooling (the deployment
//! manifests' drift test) can read every flag and environment variable the binary accepts.

use clap::Parser;
use luthien_telemetry::{ChannelTokenArgs, LogArgs};

use crate::DataPlaneConfig;

/// Luthien data plane: proxies OpenAI and Anthropic API calls through the
/// Luthien control plane's policies.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: DataPlaneConfig,
    #[command(flatten)]
    pub token: ChannelTokenArgs,
    #[command(flatten)]
    pub log: LogArgs,
}
