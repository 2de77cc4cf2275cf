"""Renders every kustomization under deploy/kubernetes/ and validates each resulting resource
against the Kubernetes OpenAPI schemas bundled with kubernetes-validate, strictly (an unknown
field is an error). Run through deploy/validate, which provides the packages.

What is rendered: each Kustomization (base, overlays/*), and each Component on top of the base.
The rendering implements the part of kustomize these manifests use — `resources` (files and
directories, recursively), `components`, strategic-merge `patches` from files, `images`,
`replicas` and `namespace` — and refuses any other field, so that a manifest can never go
unchecked because the renderer skipped it. When `kubectl` is installed, its own
`kubectl kustomize` output must equal this rendering.

Exits non-zero on any error.
"""

import copy
import os
import shutil
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kubernetes")

# The newest schemas kubernetes-validate ships, and the oldest Kubernetes the manifests are meant
# for (PodDisruptionBudget's unhealthyPodEvictionPolicy is GA from 1.31).
KUBERNETES_VERSIONS = ["1.31", "1.37"]

KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "resources", "components", "patches", "images", "replicas", "namespace",
}

# Strategic-merge keys of the lists the patches touch; patching any other list of objects is
# refused rather than guessed.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "PriorityClass", "CustomResourceDefinition"}


class RenderError(Exception):
    pass


def load_documents(path):
    with open(path, encoding="utf-8") as file:
        try:
            return [doc for doc in yaml.safe_load_all(file) if doc is not None]
        except yaml.YAMLError as error:
            raise RenderError(f"{path}: not YAML: {error}") from error


def load_kustomization(directory, kind):
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(path):
        raise RenderError(f"{directory}: no kustomization.yaml")
    documents = load_documents(path)
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise RenderError(f"{path}: expected one mapping")
    kustomization = documents[0]
    if kustomization.get("kind", "Kustomization") != kind:
        raise RenderError(f"{path}: kind {kustomization.get('kind')}, expected {kind}")
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{path}: fields this validator does not render: {sorted(unknown)}")
    return kustomization


def render(directory, kind="Kustomization", resources=None):
    """The resources of the kustomization (or component, applied to `resources`) in `directory`."""
    kustomization = load_kustomization(directory, kind)
    resources = [] if resources is None else resources
    for entry in kustomization.get("resources", []):
        path = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(path):
            resources.extend(render(path))
        elif os.path.isfile(path):
            resources.extend(load_documents(path))
        else:
            raise RenderError(f"{directory}: resource {entry} does not exist")
    for entry in kustomization.get("components", []):
        resources = render(os.path.normpath(os.path.join(directory, entry)), "Component", resources)
    for patch in kustomization.get("patches", []):
        apply_patch_file(directory, patch, resources)
    for image in kustomization.get("images", []):
        set_image(resources, image)
    for replicas in kustomization.get("replicas", []):
        set_replicas(resources, replicas)
    if "namespace" in kustomization:
        for resource in resources:
            if resource.get("kind") not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    return resources


def apply_patch_file(directory, patch, resources):
    if set(patch) != {"path"}:
        raise RenderError(f"{directory}: only `patches: - path: FILE` is rendered, got {patch}")
    path = os.path.normpath(os.path.join(directory, patch["path"]))
    for document in load_documents(path):
        targets = [
            resource for resource in resources
            if resource.get("kind") == document.get("kind")
            and resource.get("apiVersion") == document.get("apiVersion")
            and resource.get("metadata", {}).get("name") == document.get("metadata", {}).get("name")
        ]
        if len(targets) != 1:
            raise RenderError(f"{path}: patches {len(targets)} resources, expected exactly one")
        merged = strategic_merge(targets[0], document, [], path)
        targets[0].clear()
        targets[0].update(merged)


def strategic_merge(base, patch, field_path, source):
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, field_path + [key], source)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        if not any(isinstance(item, dict) for item in base + patch):
            return copy.deepcopy(patch)
        field = field_path[-1]
        key = MERGE_KEYS.get(field)
        if key is None:
            raise RenderError(
                f"{source}: patching the list `{'.'.join(field_path)}` is not rendered by this "
                f"validator; add its merge key to MERGE_KEYS"
            )
        # As kustomize orders them: the patch's items (merged with the base's of the same key)
        # in the patch's order, then the base's other items in their order.
        merged = []
        for item in patch:
            existing = next((old for old in base if old.get(key) == item.get(key)), None)
            merged.append(copy.deepcopy(item) if existing is None
                          else strategic_merge(existing, item, field_path, source))
        patched = {item.get(key) for item in patch}
        merged.extend(copy.deepcopy(old) for old in base if old.get(key) not in patched)
        return merged
    return copy.deepcopy(patch)


def pod_containers(resource):
    spec = resource.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def set_image(resources, image):
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown or "name" not in image:
        raise RenderError(f"images: entry not rendered: {image}")
    for resource in resources:
        for container in pod_containers(resource):
            name, _, tag = container.get("image", "").partition("@")[0].partition(":")
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                tag = image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name


def set_replicas(resources, replicas):
    matches = [r for r in resources if r.get("metadata", {}).get("name") == replicas["name"]
               and "replicas" in r.get("spec", {})]
    if len(matches) != 1:
        raise RenderError(f"replicas: {replicas['name']} matches {len(matches)} resources")
    matches[0]["spec"]["replicas"] = replicas["count"]


def targets():
    """(label, resources) for each Kustomization, and for each Component on top of the base."""
    found = []
    for directory, _, files in sorted(os.walk(ROOT)):
        if "kustomization.yaml" not in files:
            continue
        label = os.path.relpath(directory, ROOT)
        kind = load_documents(os.path.join(directory, "kustomization.yaml"))[0].get("kind")
        if kind == "Component":
            found.append((f"base + {label}", lambda d=directory: render(
                d, "Component", render(os.path.join(ROOT, "base")))))
        else:
            found.append((label, lambda d=directory: render(d)))
    return found


def kubectl_rendering(label):
    """`kubectl kustomize`'s rendering of the same target, or None without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    if label.startswith("base + "):
        component = label[len("base + "):]
        with tempfile.TemporaryDirectory() as scratch:
            # kustomize loads only from below the kustomization's directory: link the tree in.
            os.symlink(ROOT, os.path.join(scratch, "kubernetes"))
            with open(os.path.join(scratch, "kustomization.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump({"resources": ["kubernetes/base"],
                                "components": [f"kubernetes/{component}"]}, f)
            return run_kubectl(kubectl, scratch)
    return run_kubectl(kubectl, os.path.join(ROOT, label))


def run_kubectl(kubectl, directory):
    result = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def identity(resource):
    metadata = resource.get("metadata", {})
    return (resource.get("kind"), metadata.get("namespace", ""), metadata.get("name"))


def main():
    errors = []
    checked = 0
    for label, build in targets():
        try:
            resources = build()
        except RenderError as error:
            errors.append(f"{label}: {error}")
            continue
        seen = set()
        for resource in resources:
            if identity(resource) in seen:
                errors.append(f"{label}: {identity(resource)} defined twice")
            seen.add(identity(resource))
        for version in KUBERNETES_VERSIONS:
            for resource in resources:
                name = "/".join(str(part) for part in identity(resource) if part)
                try:
                    kubernetes_validate.validate(resource, version, strict=True)
                    checked += 1
                except kubernetes_validate.ValidationError as error:
                    where = ".".join(str(part) for part in error.path)
                    errors.append(f"{label}: {name} against {version}: {where}: {error.message}")
                except Exception as error:  # an unknown kind or apiVersion has no schema
                    message = getattr(error, "message", None) or repr(error)
                    errors.append(f"{label}: {name} against {version}: {message}")
        try:
            reference = kubectl_rendering(label)
        except RenderError as error:
            errors.append(f"{label}: {error}")
            continue
        if reference is None:
            print(f"{label}: kubectl not installed; rendering not compared with kustomize's")
        elif sorted(map(yaml.safe_dump, reference)) != sorted(map(yaml.safe_dump, resources)):
            errors.append(f"{label}: this rendering differs from `kubectl kustomize`'s:\n"
                          + diff(reference, resources))
        print(f"{label}: {len(resources)} resources")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"all manifests valid: {checked} resource validations against Kubernetes "
          f"{' and '.join(KUBERNETES_VERSIONS)} (strict)")
    return 0


def diff(expected, actual):
    import difflib
    expected_text = "---\n".join(sorted(map(yaml.safe_dump, expected))).splitlines()
    actual_text = "---\n".join(sorted(map(yaml.safe_dump, actual))).splitlines()
    return "\n".join(difflib.unified_diff(expected_text, actual_text, "kubectl kustomize",
                                          "deploy/validate.py", lineterm=""))


if __name__ == "__main__":
    sys.exit(main())
