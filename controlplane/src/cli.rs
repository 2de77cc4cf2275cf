//! The `luthien-controlplane` command line, in the library so that tooling (the deployment
//! manifests' drift test) can read every flag and environment variable the binary accepts.

use clap::Parser;
use luthien_telemetry::{ChannelTokenArgs, LogArgs};

use crate::ControlPlaneConfig;

/// Luthien control plane: runs the policy chain on every call the data
/// planes stream to it.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: ControlPlaneConfig,
    #[command(flatten)]
    pub log: LogArgs,
    /// The token call streams must carry.
    #[command(flatten)]
    pub token: ChannelTokenArgs,
}
