//! Flags and environment variables: a manifest sets only what its binary reads, and secrets only
//! from Secrets.

use std::collections::BTreeSet;

use super::binaries::{OTHER_ENV, SECRET_SETTINGS, binaries, repository};
use super::manifests::{luthien_containers, manifests};
use super::report;

#[test]
fn manifests_set_only_flags_and_variables_the_binaries_read() {
    let binaries = binaries();
    let manifests = manifests();
    let mut problems = Vec::new();
    let containers = luthien_containers(&manifests, &binaries, &mut problems);
    for plane in &binaries {
        assert!(
            containers.iter().any(|c| c.binary.name == plane.name),
            "no manifest runs {}",
            plane.name
        );
    }
    let other_env: BTreeSet<&str> = OTHER_ENV.iter().map(|(name, _)| *name).collect();
    for container in &containers {
        let at = container.at();
        for argument in container.arguments() {
            let Some(flag) = argument.strip_prefix("--") else {
                continue;
            };
            let long = flag.split('=').next().unwrap_or(flag);
            if container.binary.by_long(long).is_none() {
                problems.push(format!(
                    "{at}: {} has no flag --{long}",
                    container.binary.name
                ));
            }
        }
        if container.spec.get("envFrom").is_some() {
            problems.push(format!(
                "{at}: envFrom sets variables no check can see; list them under env"
            ));
        }
        for env in container.env() {
            let name = env["name"].as_str().unwrap_or_default();
            match container.binary.by_env(name) {
                None if !other_env.contains(name) => problems.push(format!(
                    "{at}: {} reads no environment variable {name}",
                    container.binary.name
                )),
                Some(arg)
                    if (arg.is_hide_env_values_set()
                        || SECRET_SETTINGS.contains(&arg.get_id().as_str()))
                        && !env["valueFrom"]["secretKeyRef"].is_object() =>
                {
                    problems.push(format!(
                        "{at}: {name} is a secret: take it from a Secret (valueFrom.secretKeyRef)"
                    ))
                }
                _ => {}
            }
        }
    }
    for manifest in &manifests {
        if manifest.value["kind"] == "Secret" && !manifest.file.starts_with("overlays/dev/") {
            problems.push(format!(
                "{}: a Secret with its values; only the dev overlay may hold one",
                manifest.file
            ));
        }
    }
    // The variables allowed besides the flags' are the ones luthien-telemetry says it reads.
    let telemetry = std::fs::read_to_string(repository().join("telemetry/src/lib.rs")).unwrap();
    for (name, reader) in OTHER_ENV {
        let documented = telemetry.contains(name)
            // Documented as `OTEL_TRACES_SAMPLER(_ARG)`.
            || telemetry.contains(&name.replace("_ARG", "(_ARG)"));
        if name.starts_with("OTEL_") && !documented {
            problems.push(format!(
                "OTHER_ENV allows {name} ({reader}), which luthien-telemetry does not mention"
            ));
        }
    }
    report("the manifests set what the binaries do not read", &problems);
}
