//! The manifests under `deploy/kubernetes/`, as the kustomizations reach them, and the Luthien
//! containers in them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::binaries::{Binary, repository};
use super::dockerfile::Dockerfile;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// A whole object (`resources:`).
    Resource,
    /// A strategic-merge patch (`patches:`), partial by nature.
    Patch,
}

pub(super) struct Manifest {
    /// Relative to `deploy/kubernetes/`.
    pub(super) file: String,
    pub(super) role: Role,
    pub(super) value: Value,
}

fn files_under(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "yaml") {
            found.push(path);
        }
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        })
        .filter(|document| !document.is_null())
        .collect()
}

fn existing(kustomization: &Path, path: &Path) -> PathBuf {
    path.canonicalize()
        .unwrap_or_else(|error| panic!("{}: {}: {error}", kustomization.display(), path.display()))
}

/// Every manifest reachable from a kustomization under `deploy/kubernetes/`; a YAML file no
/// kustomization reaches would escape every check, so it fails the test.
pub(super) fn manifests() -> Vec<Manifest> {
    let root = repository().join("deploy/kubernetes");
    let mut yaml = Vec::new();
    files_under(&root, &mut yaml);
    let mut reached = BTreeMap::new();
    for kustomization in yaml
        .iter()
        .filter(|path| path.ends_with("kustomization.yaml"))
    {
        let directory = kustomization.parent().unwrap();
        let document = documents(kustomization).remove(0);
        let entries = |field: &str| -> Vec<PathBuf> {
            document[field]
                .as_array()
                .into_iter()
                .flatten()
                .map(|entry| {
                    let relative = entry.as_str().or(entry["path"].as_str()).unwrap();
                    directory.join(relative)
                })
                .collect()
        };
        for path in entries("resources")
            .into_iter()
            .chain(entries("components"))
        {
            if path.is_dir() {
                assert!(
                    path.join("kustomization.yaml").is_file(),
                    "{}: {} has no kustomization.yaml",
                    kustomization.display(),
                    path.display()
                );
            } else {
                reached.insert(existing(kustomization, &path), Role::Resource);
            }
        }
        for path in entries("patches") {
            reached.insert(existing(kustomization, &path), Role::Patch);
        }
    }
    let mut manifests = Vec::new();
    for path in yaml
        .iter()
        .filter(|path| !path.ends_with("kustomization.yaml"))
    {
        let file = path.strip_prefix(&root).unwrap().display().to_string();
        let role = *reached
            .get(&path.canonicalize().unwrap())
            .unwrap_or_else(|| panic!("deploy/kubernetes/{file}: no kustomization uses it"));
        manifests.extend(documents(path).into_iter().map(|value| Manifest {
            file: file.clone(),
            role,
            value,
        }));
    }
    assert!(
        manifests.len() >= 10,
        "manifests found: {}",
        manifests.len()
    );
    manifests
}

/// A Luthien container of a manifest: the data plane's or the control plane's.
pub(super) struct Container<'a> {
    pub(super) manifest: &'a Manifest,
    /// The pod template.
    pub(super) pod: &'a Value,
    pub(super) spec: &'a Value,
    pub(super) binary: &'a Binary,
}

impl Container<'_> {
    pub(super) fn at(&self) -> String {
        format!(
            "{} ({} {}, container {})",
            self.manifest.file,
            self.manifest.value["kind"].as_str().unwrap_or("?"),
            self.manifest.value["metadata"]["name"]
                .as_str()
                .unwrap_or("?"),
            self.spec["name"].as_str().unwrap_or("?")
        )
    }

    /// Arguments after the program: `command[1..]` then `args`.
    pub(super) fn arguments(&self) -> Vec<&str> {
        let command = self.spec["command"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1);
        let args = self.spec["args"].as_array().into_iter().flatten();
        command.chain(args).filter_map(Value::as_str).collect()
    }

    pub(super) fn env(&self) -> impl Iterator<Item = &Value> {
        self.spec["env"].as_array().into_iter().flatten()
    }

    pub(super) fn env_named(&self, name: &str) -> Option<&Value> {
        self.env().find(|env| env["name"] == name)
    }

    /// The literal value this container gives the argument `id`, on the command line or in
    /// its environment.
    pub(super) fn literal(&self, id: &str) -> Option<String> {
        let arg = self.binary.expect_arg(id);
        if let Some(long) = arg.get_long() {
            let flag = format!("--{long}");
            let arguments = self.arguments();
            for (index, argument) in arguments.iter().enumerate() {
                if let Some(value) = argument.strip_prefix(&format!("{flag}=")) {
                    return Some(value.to_owned());
                }
                if *argument == flag
                    && let Some(value) = arguments.get(index + 1)
                {
                    return Some((*value).to_owned());
                }
            }
        }
        let env = arg.get_env()?.to_string_lossy().into_owned();
        self.env_named(&env)?["value"].as_str().map(str::to_owned)
    }

    /// The value of `id` in effect: this container's, else the image's `ENV`, else the default.
    pub(super) fn effective(&self, id: &str, image: &Dockerfile) -> Option<String> {
        self.literal(id)
            .or_else(|| image.env.get(&self.binary.env_of(id)).cloned())
            .or_else(|| self.binary.default_of(id))
    }

    /// The number of a container port given by number or by name.
    pub(super) fn port(&self, port: &Value) -> Option<u16> {
        match port {
            Value::Number(number) => number.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(name) => self.spec["ports"]
                .as_array()?
                .iter()
                .find(|declared| declared["name"] == name.as_str())?["containerPort"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    }

    /// Whether the environment variable `name` comes from a required Secret key.
    pub(super) fn takes_required_secret(&self, name: &str) -> bool {
        self.env_named(name).is_some_and(|env| {
            let reference = &env["valueFrom"]["secretKeyRef"];
            reference.is_object() && reference["optional"] != true
        })
    }
}

fn image_repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// Every container of the manifests that runs a Luthien binary. A container runs one when its
/// command names one, or (a patch) when the resource it patches does; the image `luthien`
/// without a command is a mistake (its default command only prints the help).
pub(super) fn luthien_containers<'a>(
    manifests: &'a [Manifest],
    binaries: &'a [Binary],
    problems: &mut Vec<String>,
) -> Vec<Container<'a>> {
    let binary_of = |container: &Value| -> Option<String> {
        let program = container["command"][0].as_str()?;
        Some(program.rsplit('/').next().unwrap_or(program).to_owned())
    };
    let mut found = Vec::new();
    for manifest in manifests {
        let pod = &manifest.value["spec"]["template"];
        let Some(containers) = pod["spec"]["containers"].as_array() else {
            continue;
        };
        for spec in containers {
            let name = binary_of(spec).or_else(|| {
                // A patch names the container; the resource it patches names the program.
                manifests
                    .iter()
                    .filter(|other| {
                        other.role == Role::Resource
                            && other.value["kind"] == manifest.value["kind"]
                            && other.value["metadata"]["name"] == manifest.value["metadata"]["name"]
                    })
                    .flat_map(|other| {
                        other.value["spec"]["template"]["spec"]["containers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                    })
                    .find(|other| other["name"] == spec["name"])
                    .and_then(binary_of)
            });
            let image = spec["image"].as_str().map(image_repository);
            let at = format!(
                "{} ({}, container {})",
                manifest.file, manifest.value["metadata"]["name"], spec["name"]
            );
            match name {
                Some(name) if name.starts_with("luthien") || image == Some("luthien") => {
                    match binaries.iter().find(|binary| binary.name == name) {
                        Some(binary) => found.push(Container {
                            manifest,
                            pod,
                            spec,
                            binary,
                        }),
                        None => problems.push(format!(
                            "{at}: runs `{name}`, whose command line these checks do not know"
                        )),
                    }
                }
                None if image == Some("luthien") => problems.push(format!(
                    "{at}: the luthien image without a command (its default only prints the help)"
                )),
                _ => {}
            }
        }
    }
    found
}
