//! A policy reload the way Kubernetes delivers a ConfigMap update: the kubelet never rewrites the
//! mounted file, it swaps a `..data` symlink to a new directory. A control plane that watched
//! the resolved file, or its mtime through `lstat`, would miss it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use luthien_tests::stack::ControlPlane;
use luthien_tests::{Client, Stack, StackOptions};
use serde_json::json;

/// A directory laid out as the kubelet lays out a mounted ConfigMap: the files in a timestamped
/// directory, `..data` a symlink to it, and each key a symlink through `..data`. An update writes
/// a new timestamped directory, points a `..data_tmp` symlink at it, renames that over `..data`
/// (the one atomic step) and deletes the old directory.
struct KubeletVolume {
    root: PathBuf,
    generation: u32,
    current: Option<PathBuf>,
}

impl KubeletVolume {
    fn new(root: &Path, policy: &str) -> Self {
        let mut volume = Self {
            root: root.to_owned(),
            generation: 0,
            current: None,
        };
        volume.update(policy);
        std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml")).unwrap();
        volume
    }

    fn update(&mut self, policy: &str) {
        self.generation += 1;
        let name = format!(
            "..2026_01_01_00_00_{:02}.{:09}",
            self.generation, self.generation
        );
        let directory = self.root.join(&name);
        std::fs::create_dir(&directory).unwrap();
        std::fs::write(directory.join("policy.yaml"), policy).unwrap();
        let staged = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &staged).unwrap();
        std::fs::rename(&staged, self.root.join("..data")).unwrap();
        if let Some(old) = self.current.replace(directory) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

const TEXT: &str = "Hello from the mock upstream. The quick brown fox jumps over the lazy dog.";

async fn answer(stack: &Stack) -> String {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let response = Client::new()
        .post(&stack.openai_url(), &[], body.to_string())
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_configmap_update_by_the_kubelet_reloads_the_chain_and_a_bad_one_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = KubeletVolume::new(dir.path(), "policies: [{type: noop}]");
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::File(dir.path().join("policy.yaml")),
        ..StackOptions::default()
    })
    .await;
    assert_eq!(answer(&stack).await, TEXT);

    volume.update("policies: [{type: all_caps}]");
    let swapped = tokio::time::Instant::now();
    while answer(&stack).await != TEXT.to_uppercase() {
        assert!(
            swapped.elapsed() < Duration::from_secs(10),
            "the new chain is not active 10 s after the swap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = swapped.elapsed();
    println!("the control plane ran the new chain {noticed:?} after the kubelet's swap");
    // It reads the file every second (`policy_source::WATCH_INTERVAL`).
    assert!(noticed < Duration::from_secs(3), "took {noticed:?}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 3,
        "policy.yaml, ..data and one timestamped directory"
    );

    // An invalid chain is rejected; the previous one stays active.
    volume.update("policies: [{type: all_caps, config: {shout: true}}]");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(answer(&stack).await, TEXT.to_uppercase());

    // A valid one after it is taken again.
    volume.update("policies: [{type: noop}]");
    let swapped = tokio::time::Instant::now();
    while answer(&stack).await != TEXT {
        assert!(swapped.elapsed() < Duration::from_secs(10), "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
