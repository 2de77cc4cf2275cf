//! The `Dockerfile`: it builds and copies workspace binaries, where the manifests run them; runs
//! them as a numeric non-root user; and listens on all interfaces on exactly the ports it exposes.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::binaries::{OTHER_ENV, binaries, workspace_binaries};
use super::dockerfile::Dockerfile;
use super::manifests::{luthien_containers, manifests};
use super::report;

#[test]
fn dockerfile_holds_the_workspace_binaries_as_a_user_on_the_listeners_ports() {
    let image = Dockerfile::read();
    let binaries = binaries();
    let workspace = workspace_binaries();
    let mut problems = Vec::new();

    assert!(image.stages.len() >= 2, "a build stage and a runtime stage");
    let built: BTreeSet<String> = image.stages[..image.stages.len() - 1]
        .iter()
        .flatten()
        .filter(|instruction| instruction.keyword == "RUN")
        .flat_map(|instruction| {
            let words: Vec<String> = instruction
                .rest
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            words
                .windows(2)
                .filter(|pair| pair[0] == "--bin")
                .map(|pair| pair[1].clone())
                .collect::<Vec<_>>()
        })
        .collect();
    let copied = image.copied();
    let copied_names: BTreeSet<String> = copied
        .iter()
        .map(|(source, _)| source.rsplit('/').next().unwrap().to_owned())
        .collect();
    for name in built.iter().chain(&copied_names) {
        if !workspace.contains(name) {
            problems.push(format!(
                "the Dockerfile builds or copies `{name}`, which is no workspace binary ({workspace:?})"
            ));
        }
    }
    if built != copied_names {
        problems.push(format!(
            "the Dockerfile builds {built:?} but copies {copied_names:?}"
        ));
    }
    // The manifests run programs the image has, where it puts them.
    let installed: BTreeSet<String> = copied
        .iter()
        .map(|(source, destination)| {
            format!(
                "{}/{}",
                destination.trim_end_matches('/'),
                source.rsplit('/').next().unwrap()
            )
        })
        .collect();
    let manifests = manifests();
    let containers = luthien_containers(&manifests, &binaries, &mut problems);
    for container in &containers {
        if let Some(program) = container.spec["command"][0].as_str()
            && !installed.contains(program)
        {
            problems.push(format!(
                "{}: runs {program}, which the image does not have ({installed:?})",
                container.at()
            ));
        }
    }

    match image.last("USER") {
        None => problems.push("the runtime stage sets no USER: it would run as root".into()),
        Some(user) => {
            let name = user.split(':').next().unwrap_or(user);
            if name == "0" || name == "root" {
                problems.push(format!("the runtime USER is root ({user})"));
            } else if image.uid().is_none() {
                problems.push(format!(
                    "the runtime USER {user} is not numeric: Kubernetes cannot check runAsNonRoot"
                ));
            }
        }
    }

    // ENV: only variables the binaries read; the listen addresses on all interfaces, and
    // EXPOSE exactly their ports.
    let other_env: BTreeSet<&str> = OTHER_ENV.iter().map(|(name, _)| *name).collect();
    let mut listen_ports = BTreeSet::new();
    for (name, value) in &image.env {
        let listener = binaries.iter().find_map(|binary| {
            binary
                .listeners
                .iter()
                .find(|listener| binary.env_of(listener.id) == *name)
        });
        if listener.is_some() {
            match value.parse::<SocketAddr>() {
                Ok(address) if address.ip().is_unspecified() => {
                    listen_ports.insert(address.port());
                }
                _ => problems.push(format!(
                    "ENV {name}={value}: a listen address in the image is on all interfaces (0.0.0.0:PORT)"
                )),
            }
        } else if !other_env.contains(name.as_str())
            && !binaries.iter().any(|binary| binary.by_env(name).is_some())
        {
            problems.push(format!("ENV {name}: no binary reads it"));
        }
    }
    for binary in &binaries {
        for listener in binary.listeners {
            let env = binary.env_of(listener.id);
            if !image.env.contains_key(&env) {
                problems.push(format!(
                    "the image does not set {env}: {} would listen on {} (loopback)",
                    binary.name,
                    binary.default_of(listener.id).unwrap_or_default()
                ));
            }
        }
    }
    let exposed: BTreeSet<u16> = image
        .all("EXPOSE")
        .flat_map(str::split_whitespace)
        .map(|port| {
            port.trim_end_matches("/tcp")
                .parse()
                .unwrap_or_else(|_| panic!("EXPOSE {port}"))
        })
        .collect();
    if exposed != listen_ports {
        problems.push(format!(
            "EXPOSE {exposed:?}, but the listen addresses in ENV use {listen_ports:?}"
        ));
    }
    report("the Dockerfile drifted from the workspace", &problems);
}
