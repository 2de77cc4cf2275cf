//! The binaries the manifests run, with their real command lines, and what else their
//! containers may set.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
/// Environment variables a Luthien container may set although no flag reads them, and who reads
/// each.
pub(super) const OTHER_ENV: &[(&str, &str)] = &[
    ("RUST_LOG", "the log filter (luthien-telemetry)"),
    ("TOKIO_WORKER_THREADS", "Tokio's runtime"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "luthien-telemetry"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "luthien-telemetry"),
    ("OTEL_SDK_DISABLED", "luthien-telemetry"),
    ("OTEL_SERVICE_NAME", "the OpenTelemetry SDK"),
    ("OTEL_RESOURCE_ATTRIBUTES", "the OpenTelemetry SDK"),
    ("OTEL_TRACES_SAMPLER", "the OpenTelemetry SDK"),
    ("OTEL_TRACES_SAMPLER_ARG", "the OpenTelemetry SDK"),
];

/// Settings that carry credentials although clap shows their values (database and Redis URLs
/// hold passwords): like the hidden ones, only ever from a Secret.
pub(super) const SECRET_SETTINGS: &[&str] = &["database_url", "redis_url"];

/// A plane's listener: the clap argument that sets its address, and whether the probes and
/// `/metrics` are served there.
pub(super) struct Listener {
    pub(super) id: &'static str,
    pub(super) http: bool,
}

/// A binary the manifests run, with its real command line.
pub(super) struct Binary {
    pub(super) name: &'static str,
    pub(super) command: clap::Command,
    pub(super) listeners: &'static [Listener],
}

pub(super) fn binaries() -> Vec<Binary> {
    let binary = |name, mut command: clap::Command, listeners| {
        command.build();
        Binary {
            name,
            command,
            listeners,
        }
    };
    vec![
        binary(
            "luthien-dataplane",
            luthien_dataplane::cli::Cli::command(),
            &[Listener {
                id: "listen",
                http: true,
            }],
        ),
        binary(
            "luthien-controlplane",
            luthien_controlplane::cli::Cli::command(),
            &[
                Listener {
                    id: "grpc_listen",
                    http: false,
                },
                Listener {
                    id: "http_listen",
                    http: true,
                },
            ],
        ),
    ]
}

impl Binary {
    pub(super) fn args(&self) -> impl Iterator<Item = &clap::Arg> {
        self.command.get_arguments()
    }

    pub(super) fn arg(&self, id: &str) -> Option<&clap::Arg> {
        self.args().find(|arg| arg.get_id() == id)
    }

    /// The argument `id`, which the checks rely on: its absence is a drift too.
    pub(super) fn expect_arg(&self, id: &str) -> &clap::Arg {
        self.arg(id)
            .unwrap_or_else(|| panic!("{} has no argument `{id}` any more", self.name))
    }

    pub(super) fn env_of(&self, id: &str) -> String {
        let arg = self.expect_arg(id);
        let env = arg.get_env().unwrap_or_else(|| panic!("`{id}` has no env"));
        env.to_string_lossy().into_owned()
    }

    pub(super) fn by_env(&self, name: &str) -> Option<&clap::Arg> {
        self.args()
            .find(|arg| arg.get_env().is_some_and(|env| env == name))
    }

    pub(super) fn by_long(&self, long: &str) -> Option<&clap::Arg> {
        self.args().find(|arg| arg.get_long() == Some(long))
    }

    pub(super) fn default_of(&self, id: &str) -> Option<String> {
        let arg = self.expect_arg(id);
        arg.get_default_values()
            .first()
            .map(|value| value.to_string_lossy().into_owned())
    }

    /// The listener that serves the probes and `/metrics`.
    pub(super) fn http_listener(&self) -> &Listener {
        self.listeners
            .iter()
            .find(|listener| listener.http)
            .expect("every plane serves HTTP somewhere")
    }
}

pub(super) fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The binaries the workspace builds, from its members' manifests: `[[bin]]` names, the package
/// name for a `src/main.rs`, and the `src/bin/*.rs` no `[[bin]]` names otherwise.
pub(super) fn workspace_binaries() -> BTreeSet<String> {
    let root = repository();
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = workspace
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .expect("workspace members")
        .0;
    let mut binaries = BTreeSet::new();
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if member.is_empty() {
            continue;
        }
        let directory = root.join(member);
        let manifest = std::fs::read_to_string(directory.join("Cargo.toml")).unwrap();
        let (mut section, mut package, mut bins) = (String::new(), None, Vec::new());
        let mut bin_paths = Vec::new();
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_owned();
                if section == "[[bin]]" {
                    bins.push(None);
                }
            } else if let Some(value) = line.strip_prefix("name = ") {
                let value = value.trim_matches('"').to_owned();
                match section.as_str() {
                    "[package]" => package = Some(value),
                    "[[bin]]" => *bins.last_mut().unwrap() = Some(value),
                    _ => {}
                }
            } else if let Some(value) = line.strip_prefix("path = ")
                && section == "[[bin]]"
            {
                bin_paths.push(value.trim_matches('"').to_owned());
            }
        }
        if bins.is_empty() && directory.join("src/main.rs").is_file() {
            bins.push(package.clone());
        }
        binaries.extend(bins.into_iter().flatten());
        if let Ok(entries) = std::fs::read_dir(directory.join("src/bin")) {
            for entry in entries {
                let path = entry.unwrap().path();
                let named = bin_paths.iter().any(|bin| directory.join(bin) == path);
                if path.extension().is_some_and(|ext| ext == "rs") && !named {
                    binaries.insert(path.file_stem().unwrap().to_string_lossy().into_owned());
                }
            }
        }
    }
    binaries
}
