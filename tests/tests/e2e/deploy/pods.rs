//! What else keeps a plane from starting or draining in its pod: the channel token a
//! non-loopback gRPC port needs, the grace period of a drain, service links, the image's user.

use std::net::SocketAddr;

use super::binaries::binaries;
use super::dockerfile::Dockerfile;
use super::manifests::{Role, luthien_containers, manifests};
use super::report;

#[test]
fn pods_let_the_planes_start_and_drain() {
    let binaries = binaries();
    let manifests = manifests();
    let image = Dockerfile::read();
    let mut problems = Vec::new();
    let containers = luthien_containers(&manifests, &binaries, &mut problems);
    for container in containers
        .iter()
        .filter(|c| c.manifest.role == Role::Resource)
    {
        let (at, binary) = (container.at(), container.binary);
        // The control plane refuses a non-loopback gRPC address without the channel token or
        // client certificates, unless --insecure.
        let off_loopback = |id: &str| {
            container
                .effective(id, &image)
                .and_then(|address| address.parse::<SocketAddr>().ok())
                .is_some_and(|address| !address.ip().is_loopback())
        };
        if binary.arg("grpc_listen").is_some() && off_loopback("grpc_listen") {
            let token = binary.env_of("control_plane_token");
            let authenticated = container.takes_required_secret(&token)
                || container.literal("tls_client_ca").is_some()
                || container.literal("insecure").is_some_and(|v| v != "false");
            if !authenticated {
                problems.push(format!(
                    "{at}: no {token} from a required Secret key (nor client certificates): the control plane refuses to start on a non-loopback gRPC address"
                ));
            }
        }
        // A draining data plane must not be killed before its drain is over.
        if binary.arg("drain_delay").is_some() {
            let seconds = |id: &str| {
                let text = container.effective(id, &image).unwrap();
                humantime::parse_duration(&text)
                    .unwrap_or_else(|error| panic!("{at}: {id} {text:?}: {error}"))
                    .as_secs_f64()
            };
            let drain = seconds("drain_delay") + seconds("drain_timeout");
            let grace = container.pod["spec"]["terminationGracePeriodSeconds"]
                .as_f64()
                .unwrap_or(30.0);
            if grace <= drain {
                problems.push(format!("{at}: terminationGracePeriodSeconds {grace} is not longer than --drain-delay + --drain-timeout ({drain} s)"));
            }
        }
        // Nor a stopping control plane before its calls had their grace and its writer drained.
        if binary.arg("shutdown_grace").is_some() {
            let text = container.effective("shutdown_grace", &image).unwrap();
            let calls = humantime::parse_duration(&text)
                .unwrap_or_else(|error| panic!("{at}: shutdown_grace {text:?}: {error}"))
                .as_secs_f64();
            // Then the calls' last work, remote policy streams and the event writer, 10 s each.
            let needed = calls + 30.0;
            let grace = container.pod["spec"]["terminationGracePeriodSeconds"]
                .as_f64()
                .unwrap_or(30.0);
            if grace <= needed {
                problems.push(format!("{at}: terminationGracePeriodSeconds {grace} is not longer than --shutdown-grace + 30 s ({needed} s)"));
            }
        }
        // Service links would put `<SERVICE>_PORT=…` variables into the environment.
        if container.pod["spec"]["enableServiceLinks"] != false {
            problems.push(format!("{at}: enableServiceLinks is not false"));
        }
        let run_as = container.spec["securityContext"]["runAsUser"]
            .as_u64()
            .or(container.pod["spec"]["securityContext"]["runAsUser"].as_u64());
        if run_as != image.uid() {
            problems.push(format!(
                "{at}: runAsUser {run_as:?}, but the image's user is {:?}",
                image.uid()
            ));
        }
    }
    report("the pods would keep the planes from working", &problems);
}
