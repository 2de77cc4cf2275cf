//! Ports: what each container declares, probes and lets Prometheus scrape is what its plane
//! listens on, on an address the kubelet and other pods reach.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::binaries::{Binary, binaries};
use super::dockerfile::Dockerfile;
use super::manifests::{Container, Role, luthien_containers, manifests};
use super::{port_of, report};

/// Each plane's listening port per listener, as every address given for it says; addresses
/// that disagree on the port are a problem.
pub(super) fn listener_ports(
    binaries: &[Binary],
    containers: &[Container],
    image: &Dockerfile,
    problems: &mut Vec<String>,
) -> BTreeMap<(&'static str, &'static str), u16> {
    let mut ports = BTreeMap::new();
    for binary in binaries {
        for listener in binary.listeners {
            let env = binary.env_of(listener.id);
            let mut given: Vec<(String, String)> = Vec::new();
            if let Some(address) = image.env.get(&env) {
                given.push((format!("Dockerfile ENV {env}"), address.clone()));
            }
            for container in containers.iter().filter(|c| c.binary.name == binary.name) {
                if let Some(address) = container.literal(listener.id) {
                    given.push((container.at(), address));
                }
            }
            let default = binary.default_of(listener.id).unwrap();
            let mut found = BTreeSet::new();
            for (at, address) in &given {
                match port_of(address) {
                    Some(port) => {
                        found.insert(port);
                    }
                    None => problems.push(format!("{at}: {env}={address} is no IP:PORT")),
                }
            }
            if found.len() > 1 {
                problems.push(format!(
                    "{} {}: listen addresses disagree on the port: {given:?}",
                    binary.name, listener.id
                ));
            }
            let port = found
                .into_iter()
                .next()
                .or_else(|| port_of(&default))
                .unwrap();
            ports.insert((binary.name, listener.id), port);
        }
    }
    ports
}

#[test]
fn manifest_ports_match_what_the_planes_listen_on() {
    let binaries = binaries();
    let manifests = manifests();
    let image = Dockerfile::read();
    let mut problems = Vec::new();
    let containers = luthien_containers(&manifests, &binaries, &mut problems);
    let ports = listener_ports(&binaries, &containers, &image, &mut problems);

    // Every listener of the command lines is known here: one added later gets checked too.
    for binary in &binaries {
        for arg in binary.args() {
            let listens = arg
                .get_default_values()
                .first()
                .is_some_and(|value| value.to_string_lossy().parse::<SocketAddr>().is_ok());
            if listens && !binary.listeners.iter().any(|l| arg.get_id() == l.id) {
                problems.push(format!(
                    "{}: --{} is a listen address these checks do not know",
                    binary.name,
                    arg.get_long().unwrap_or_default()
                ));
            }
        }
    }

    for container in containers
        .iter()
        .filter(|c| c.manifest.role == Role::Resource)
    {
        let (at, binary) = (container.at(), container.binary);
        let http_port = ports[&(binary.name, binary.http_listener().id)];
        for listener in binary.listeners {
            let address = container.effective(listener.id, &image).unwrap();
            if address
                .parse::<SocketAddr>()
                .is_ok_and(|address| address.ip().is_loopback())
            {
                problems.push(format!(
                    "{at}: {} on loopback ({address}): neither the kubelet nor other pods reach it",
                    binary.env_of(listener.id)
                ));
            }
        }
        // Container ports: exactly the listeners'.
        let declared: BTreeSet<u16> = container.spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|port| port["containerPort"].as_u64())
            .filter_map(|port| u16::try_from(port).ok())
            .collect();
        let listening: BTreeSet<u16> = binary
            .listeners
            .iter()
            .map(|listener| ports[&(binary.name, listener.id)])
            .collect();
        if declared != listening {
            problems.push(format!(
                "{at}: containerPorts {declared:?}, but {} listens on {listening:?}",
                binary.name
            ));
        }
        // Probes: HTTP, on the listener that serves them.
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            let spec = &container.spec[probe];
            if spec.is_null() {
                if probe != "startupProbe" {
                    problems.push(format!("{at}: no {probe}"));
                }
                continue;
            }
            let get = &spec["httpGet"];
            if !get.is_object() {
                problems.push(format!(
                    "{at}: {probe} is not httpGet (the image has no shell)"
                ));
                continue;
            }
            match container.port(&get["port"]) {
                Some(port) if port == http_port => {}
                other => problems.push(format!(
                    "{at}: {probe} on port {:?} ({other:?}), but the probes are served on {http_port}",
                    get["port"]
                )),
            }
        }
        // Prometheus: the scrape annotations name the metrics listener.
        let annotations = &container.pod["metadata"]["annotations"];
        if annotations["prometheus.io/scrape"] != "true" {
            problems.push(format!("{at}: prometheus.io/scrape is not \"true\""));
        }
        let scrape_port = annotations["prometheus.io/port"].as_str();
        if scrape_port != Some(http_port.to_string().as_str()) {
            problems.push(format!(
                "{at}: prometheus.io/port {scrape_port:?}, but /metrics is served on {http_port}"
            ));
        }
    }
    report("the manifests' ports drifted from the planes'", &problems);
}
