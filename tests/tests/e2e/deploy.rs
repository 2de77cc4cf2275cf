//! The deployment files against the binaries they run, and a policy reload the way Kubernetes
//! delivers a ConfigMap.
//!
//! `deploy/kubernetes/` (base, overlays, components) and the `Dockerfile` name the planes'
//! flags, environment variables, ports and paths, and nothing compiles them: they drift silently
//! when a flag is renamed or a listener moves. These checks read the binaries' real command lines
//! (`luthien_dataplane::cli::Cli`, `luthien_controlplane::cli::Cli`, through clap) and fail when
//! a manifest or the Dockerfile
//! - passes a flag, or sets an environment variable, that the binary does not read (beyond
//!   [`binaries::OTHER_ENV`]);
//! - gives a secret as a plain `value` instead of a `secretKeyRef`, or holds a Secret outside
//!   the dev overlay;
//! - declares a container, probe, Prometheus or Service port other than the one the plane
//!   listens on, or a listen address the kubelet and other pods cannot reach;
//! - probes or scrapes a path the plane does not serve (asked of real planes, in-process);
//! - points the data planes at anything but the control planes' headless Service;
//! - leaves the control plane unable to start (no channel token off loopback);
//! - gives a draining data plane less time than its drain takes, or runs another user than the
//!   image's;
//! - copies a binary the workspace does not build, runs as root, or exposes other ports than
//!   its listeners'.
//!
//! [`reload`] then reproduces the kubelet's update of a mounted ConfigMap against a control plane
//! reading its policy file through it.
//!
//! That the manifests are valid Kubernetes objects is `deploy/validate`'s job (in CI).

mod binaries;
mod dockerfile;
mod environment;
mod image;
mod manifests;
mod pods;
mod ports;
mod probes;
mod reload;
mod services;

use std::net::SocketAddr;

fn port_of(address: &str) -> Option<u16> {
    address
        .parse::<SocketAddr>()
        .ok()
        .map(|address| address.port())
}

/// Fails with every problem found, one a line.
fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n{}",
        problems
            .iter()
            .map(|problem| format!("  - {problem}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
