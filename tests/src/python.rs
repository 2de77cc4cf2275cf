//! The Python interpreter the tests run the examples and the official SDKs with.
//!
//! `bash .ci/test` provisions a virtual environment in `target/test-venv` holding the pinned
//! packages of `examples/remote-policy-python/requirements.txt` and
//! `tests/python/requirements.txt` (the official `openai` SDK); `LUTHIEN_TEST_PYTHON` names
//! another interpreter.

use std::path::PathBuf;
use std::process::Command;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// `LUTHIEN_TEST_PYTHON`, else the virtual environment `.ci/test` provisions
/// (`target/test-venv`), else `python3` from the path.
pub fn interpreter() -> PathBuf {
    if let Some(python) = std::env::var_os("LUTHIEN_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = repo_root().join("target/test-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Panics with the way to install them unless `modules` import.
pub fn require(modules: &str, purpose: &str) {
    let python = interpreter();
    let install = "`bash .ci/test` provisions it in target/test-venv";
    let check = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "{} is needed for {purpose} ({error}); {install}",
                python.display()
            )
        });
    assert!(
        check.status.success(),
        "{purpose} needs the Python modules {modules}: {install}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Runs `tests/python/responses_sdk.py`: the official `openai` SDK's Responses API against
/// `base_url` (`http://…/v1`), doing what `spec` says, and returns what it printed. Awaited,
/// never waited for, so a stack on the calling test's runtime keeps serving.
pub async fn responses_sdk(base_url: &str, spec: &serde_json::Value) -> serde_json::Value {
    static SDK_INSTALLED: std::sync::Once = std::sync::Once::new();
    SDK_INSTALLED.call_once(|| require("openai", "the Responses API SDK tests"));
    let output = tokio::process::Command::new(interpreter())
        .arg(repo_root().join("tests/python/responses_sdk.py"))
        .arg(base_url)
        .arg(spec.to_string())
        .output()
        .await
        .expect("the SDK script runs");
    assert!(
        output.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "the SDK script printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
