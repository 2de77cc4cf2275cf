//! Services: each one targets a port its pods declare, and the data planes reach every control
//! plane through the headless Service on the control planes' gRPC port.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::binaries::binaries;
use super::dockerfile::Dockerfile;
use super::manifests::{Manifest, Role, luthien_containers, manifests};
use super::ports::listener_ports;
use super::report;

#[test]
fn services_reach_the_planes_listeners() {
    let binaries = binaries();
    let manifests = manifests();
    let image = Dockerfile::read();
    let mut problems = Vec::new();
    let containers = luthien_containers(&manifests, &binaries, &mut problems);
    let ports = listener_ports(&binaries, &containers, &image, &mut problems);

    // Services: each targets a port some selected container declares.
    let pods: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.role == Role::Resource && m.value["spec"]["template"].is_object())
        .collect();
    let mut headless = BTreeMap::new();
    for service in manifests
        .iter()
        .filter(|m| m.role == Role::Resource && m.value["kind"] == "Service")
    {
        let name = service.value["metadata"]["name"].as_str().unwrap();
        let at = format!("{} (Service {name})", service.file);
        let selector = service.value["spec"]["selector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let selected: Vec<&Manifest> = pods
            .iter()
            .copied()
            .filter(|pod| {
                let labels = &pod.value["spec"]["template"]["metadata"]["labels"];
                !selector.is_empty() && selector.iter().all(|(key, value)| &labels[key] == value)
            })
            .collect();
        if selected.is_empty() {
            problems.push(format!("{at}: selects no pod"));
        }
        for port in service.value["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            for pod in &selected {
                let resolved: Vec<u16> = pod.value["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|spec| {
                        let ports = spec["ports"].as_array()?;
                        let declared = ports.iter().find(|declared| match target {
                            Value::String(name) => declared["name"] == name.as_str(),
                            number => &declared["containerPort"] == number,
                        })?;
                        u16::try_from(declared["containerPort"].as_u64()?).ok()
                    })
                    .collect();
                if resolved.is_empty() {
                    problems.push(format!(
                        "{at}: targetPort {target} is no container port of {}",
                        pod.value["metadata"]["name"]
                    ));
                }
                if service.value["spec"]["clusterIP"] == "None" {
                    headless.insert(
                        (name.to_owned(), port["port"].as_u64().unwrap_or_default()),
                        (pod.value["metadata"]["name"].clone(), resolved),
                    );
                }
            }
        }
    }

    // The data planes reach every control plane through the headless Service on its gRPC port.
    let grpc_port = ports[&("luthien-controlplane", "grpc_listen")];
    let control_plane_workloads: BTreeSet<String> = containers
        .iter()
        .filter(|c| c.binary.name == "luthien-controlplane" && c.manifest.role == Role::Resource)
        .map(|c| {
            c.manifest.value["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for container in containers
        .iter()
        .filter(|c| c.binary.arg("control_plane").is_some())
    {
        let at = container.at();
        let Some(targets) = container.literal("control_plane") else {
            if container.manifest.role == Role::Resource {
                problems.push(format!(
                    "{at}: no control plane set (the default is loopback)"
                ));
            }
            continue;
        };
        for target in targets.split(',') {
            // The data plane speaks TLS to an https:// target only with a CA to check it by.
            if target.starts_with("https://") {
                let ca = container
                    .binary
                    .by_long("control-plane-ca")
                    .expect("the data plane's --control-plane-ca");
                if container.literal(ca.get_id().as_str()).is_none() {
                    problems.push(format!(
                        "{at}: control plane {target:?} is https, but --control-plane-ca is not set"
                    ));
                }
            }
            let Some((host, port)) = target
                .strip_prefix("http://")
                .or_else(|| target.strip_prefix("https://"))
                .and_then(|rest| rest.split_once(':'))
            else {
                problems.push(format!(
                    "{at}: control plane {target:?} is not http(s)://SERVICE:PORT"
                ));
                continue;
            };
            let service = host.split('.').next().unwrap_or(host).to_owned();
            let port: u64 = port.trim_end_matches('/').parse().unwrap_or_default();
            match headless.get(&(service, port)) {
                Some((workload, resolved))
                    if workload
                        .as_str()
                        .is_some_and(|w| control_plane_workloads.contains(w))
                        && resolved == &[grpc_port] => {}
                other => problems.push(format!(
                    "{at}: control plane {target:?} is not the headless Service of the control planes on their gRPC port {grpc_port} (found {other:?})"
                )),
            }
        }
    }
    report("the Services drifted from the planes' ports", &problems);
}
