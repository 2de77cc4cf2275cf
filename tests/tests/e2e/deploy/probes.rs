//! Probe and scrape paths, asked of real planes started in-process: each must be served.

use std::collections::BTreeSet;

use luthien_tests::{Client, Stack, StackOptions};

use super::binaries::binaries;
use super::manifests::{luthien_containers, manifests};
use super::report;

#[tokio::test]
async fn probe_and_metrics_paths_are_served_by_the_planes() {
    let binaries = binaries();
    let manifests = manifests();
    let mut problems = Vec::new();
    let containers = luthien_containers(&manifests, &binaries, &mut problems);
    let mut paths = BTreeSet::new();
    for container in &containers {
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            if let Some(path) = container.spec[probe]["httpGet"]["path"].as_str() {
                paths.insert((container.binary.name, path.to_owned(), container.at()));
            }
        }
        if let Some(path) = container.pod["metadata"]["annotations"]["prometheus.io/path"].as_str()
        {
            paths.insert((container.binary.name, path.to_owned(), container.at()));
        }
    }
    assert!(paths.len() >= 4, "paths found: {paths:?}");

    // The real planes, each path asked on the listener that serves probes and metrics (that
    // the manifests' ports are that listener's is checked above).
    let stack = Stack::start(StackOptions::default()).await;
    let client = Client::new();
    for (binary, path, at) in &paths {
        let base = match *binary {
            "luthien-dataplane" => stack.proxy.clone(),
            "luthien-controlplane" => stack.debug_http.clone().unwrap(),
            other => panic!("no running {other} to ask"),
        };
        let status = client
            .send("GET", &format!("{base}{path}"), &[], "")
            .await
            .status();
        if status == 404 || status == 405 {
            problems.push(format!("{at}: {binary} answers GET {path} with {status}"));
        }
    }
    report(
        "the manifests probe paths the planes do not serve",
        &problems,
    );
}
