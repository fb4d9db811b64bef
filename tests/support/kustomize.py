"""A small Kustomize builder, so that the tests can read what `kubectl apply -k` would apply.

`kubectl kustomize` (Kustomize) is the real tool; no binary of it can be installed where the
tests run, so this module implements the subset of it that ``deploy/kubernetes`` uses, and
refuses every other kustomization field instead of ignoring it:

- ``resources``: YAML files (one or several documents) and other kustomization directories,
  followed recursively, each built on its own first (its namespace, labels and patches apply
  to its own resources only), as Kustomize does.
- ``configMapGenerator`` and ``secretGenerator``: ``literals`` (``KEY=VALUE``) and ``files``
  (``path`` or ``key=path``), ``behavior`` (``create``, ``merge``, ``replace``) and
  ``options.labels``. **Names are not hashed**: Kustomize appends a hash of the content to a
  generated name (unless ``disableNameSuffixHash``) and rewrites the references to it in
  the built resources; here the name stays as written, which the references already use.
  Secret values are base64-encoded into ``data``, as Kustomize does.
- ``patches``: strategic-merge patches, from a file (``path``) or inline (``patch``), each
  applied to the one resource with the patch's kind and name (``target`` is not supported).
  Lists merge by the key Kubernetes gives them (containers, env and volumes by ``name``,
  volume mounts by ``mountPath``, ports by their number, spread constraints by
  ``topologyKey``); other lists are replaced, as they are for custom resources; a null value
  removes a field; ``$patch: delete`` at the top removes the whole resource.
- ``namespace`` (set on every namespaced resource, and as the name of a Namespace),
  ``labels`` (``pairs`` on every resource's metadata, and on pod templates with
  ``includeTemplates``; ``includeSelectors`` is not supported) and ``images`` (``newName``,
  ``newTag``, ``digest`` on the containers and init containers of pod templates).

It also applies Kustomize's default load restriction: a file a kustomization reads must lie
in or below that kustomization's directory (other kustomization directories may lie
anywhere).

Below the builder are small readers of built resources (pod templates, containers, label
selectors, a container's environment and the Axon settings it makes) for the tests.
"""

from __future__ import annotations

import base64
import copy
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from axon.config import Settings

Object = dict[str, Any]

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "secretGenerator",
    "patches",
    "namespace",
    "labels",
    "images",
}

#: Kinds that live outside namespaces, among those a deployment might hold.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ClusterSecretStore",
    "ClusterTriggerAuthentication",
}

#: The strategic-merge key of each list Kubernetes merges item by item (the
#: ``patchMergeKey`` of its API type); every other list is replaced by the patch's.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
}


class KustomizeError(ValueError):
    """The kustomization uses something this builder does not implement, or is wrong in a
    way Kustomize would refuse too."""


def build(directory: Path) -> list[Object]:
    """The resources `kubectl kustomize directory` would print (generated names unhashed)."""
    root = directory.resolve()
    spec = _kustomization(root)
    unsupported = set(spec) - SUPPORTED_FIELDS
    if unsupported:
        raise KustomizeError(f"{root}: unsupported kustomization fields {sorted(unsupported)}")
    objects: list[Object] = []
    for entry in spec.get("resources", []):
        for obj in _resource(root, entry):
            _add(objects, obj, root)
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for generator in spec.get(field, []):
            _generate(objects, root, kind, generator)
    for patch in spec.get("patches", []):
        objects = _apply_patch(objects, _patch_document(root, patch), root)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] == "Namespace":
                # Kustomize renames the Namespace itself to the one it moves everything to.
                obj["metadata"]["name"] = spec["namespace"]
            elif obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        _apply_labels(objects, label, root)
    for image in spec.get("images", []):
        _apply_image(objects, image)
    return objects


@functools.cache
def _built_once(directory: Path) -> list[Object]:
    return build(directory)


def built(directory: Path) -> list[Object]:
    """``build(directory)``, built once per test session and deep-copied on each call: a
    test that changes what it gets changes nothing for the others."""
    return copy.deepcopy(_built_once(directory.resolve()))


def _kustomization(root: Path) -> Object:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = root / name
        if path.is_file():
            loaded = yaml.safe_load(path.read_text())
            if not isinstance(loaded, dict):
                raise KustomizeError(f"{path}: not a mapping")
            return loaded
    raise KustomizeError(f"{root}: no kustomization.yaml")


def _file(root: Path, relative: str) -> Path:
    """A file the kustomization at ``root`` reads: refused outside ``root``, as Kustomize's
    default load restrictor (``LoadRestrictionsRootOnly``) refuses it."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise KustomizeError(f"{root}: {relative} is not in or below the kustomization's directory")
    if not path.is_file():
        raise KustomizeError(f"{root}: {relative} does not exist")
    return path


def _resource(root: Path, entry: str) -> list[Object]:
    target = (root / entry).resolve()
    if target.is_dir():
        return build(target)
    return [doc for doc in yaml.safe_load_all(_file(root, entry).read_text()) if doc]


def _identity(obj: Object) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _add(objects: list[Object], obj: Object, root: Path) -> None:
    if any(_identity(o) == _identity(obj) for o in objects):
        kind, name = _identity(obj)
        raise KustomizeError(f"{root}: {kind} {name} is defined twice")
    objects.append(obj)


def _generate(objects: list[Object], root: Path, kind: str, generator: Object) -> None:
    unsupported = set(generator) - {"name", "literals", "files", "behavior", "options"}
    if unsupported:
        raise KustomizeError(f"{root}: unsupported generator fields {sorted(unsupported)}")
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise KustomizeError(f"{root}: literal {literal!r} has no '='")
        data[key] = value
    for entry in generator.get("files", []):
        key, sep, relative = entry.partition("=")
        if not sep:
            key, relative = Path(entry).name, entry
        data[key] = _file(root, relative).read_text()
    options = generator.get("options", {})
    unsupported = set(options) - {"labels"}
    if unsupported:
        raise KustomizeError(f"{root}: unsupported generator options {sorted(unsupported)}")
    behavior = generator.get("behavior", "create")
    name = generator["name"]
    existing = next((o for o in objects if _identity(o) == (kind, name)), None)
    if behavior == "create":
        obj: Object = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
        if kind == "Secret":
            obj["type"] = "Opaque"
        _set_data(obj, data, replace=True)
        _add(objects, obj, root)
    elif behavior in ("merge", "replace"):
        if existing is None:
            raise KustomizeError(f"{root}: {behavior} of {kind} {name}, which does not exist")
        obj = existing
        _set_data(obj, data, replace=behavior == "replace")
    else:
        raise KustomizeError(f"{root}: unknown generator behavior {behavior!r}")
    if options.get("labels"):
        obj["metadata"].setdefault("labels", {}).update(options["labels"])


def _set_data(obj: Object, data: dict[str, str], *, replace: bool) -> None:
    if obj["kind"] == "Secret":
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        obj["data"] = encoded if replace else {**obj.get("data", {}), **encoded}
    else:
        obj["data"] = dict(data) if replace else {**obj.get("data", {}), **data}


def _patch_document(root: Path, entry: Object) -> Object:
    unsupported = set(entry) - {"path", "patch"}
    if unsupported:
        raise KustomizeError(f"{root}: unsupported patch fields {sorted(unsupported)}")
    if ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{root}: a patch needs exactly one of `path` and `patch`")
    text = _file(root, entry["path"]).read_text() if "path" in entry else entry["patch"]
    documents = [doc for doc in yaml.safe_load_all(text) if doc]
    if len(documents) != 1:
        # The Kustomize in older kubectl releases reads one patch per entry.
        raise KustomizeError(f"{root}: one strategic-merge patch per entry, not {len(documents)}")
    patch: Object = documents[0]
    return patch


def _apply_patch(objects: list[Object], patch: Object, root: Path) -> list[Object]:
    matches = [o for o in objects if _identity(o) == _identity(patch)]
    if len(matches) != 1:
        kind, name = _identity(patch)
        raise KustomizeError(f"{root}: the patch of {kind} {name} matches {len(matches)} resources")
    target = matches[0]
    if patch.get("$patch") == "delete":
        return [o for o in objects if o is not target]
    merged = strategic_merge(target, patch)
    return [merged if o is target else o for o in objects]


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """``patch`` merged into a copy of ``base`` (the subset described at the top)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if key == "$patch":
                continue
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        key = _merge_key(field, base + patch)
        if key is not None:
            return _merge_list(base, patch, key)
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    if field == "ports":
        # Container ports merge by number, Service ports by port.
        return "containerPort" if "containerPort" in items[0] else "port"
    return MERGE_KEYS.get(field)


def _merge_list(base: list[Object], patch: list[Object], key: str) -> list[Object]:
    merged = [copy.deepcopy(item) for item in base]
    for item in patch:
        index = next((i for i, old in enumerate(merged) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[index] = strategic_merge(merged[index], item)
    return merged


def _apply_labels(objects: list[Object], label: Object, root: Path) -> None:
    unsupported = set(label) - {"pairs", "includeTemplates", "includeSelectors"}
    if unsupported or label.get("includeSelectors"):
        raise KustomizeError(f"{root}: unsupported labels options {label}")
    pairs: dict[str, str] = label["pairs"]
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        template = obj.get("spec", {}).get("template")
        if label.get("includeTemplates") and isinstance(template, dict):
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _image_name(image: str) -> str:
    """``registry:5000/name:tag@sha256:...`` without its tag and digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _apply_image(objects: list[Object], rule: Object) -> None:
    for container in (c for obj in objects for c in containers(obj, init=True)):
        if _image_name(container["image"]) != rule["name"]:
            continue
        name = rule.get("newName", rule["name"])
        if "digest" in rule:
            container["image"] = f"{name}@{rule['digest']}"
        elif "newTag" in rule:
            container["image"] = f"{name}:{rule['newTag']}"
        else:
            old = container["image"][len(rule["name"]) :]
            container["image"] = name + old


# Reading built resources.


def pod_template(obj: Object) -> Object | None:
    """The pod template of a workload (Deployment, StatefulSet, DaemonSet, Job), or None."""
    template: Object | None = obj.get("spec", {}).get("template")
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return template
    return None


def containers(obj: Object, *, init: bool = False) -> Iterator[Object]:
    """The containers of a workload's pod template (and its init containers with ``init``)."""
    template = pod_template(obj)
    if template is None:
        return
    spec = template["spec"]
    if init:
        yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def find(objects: list[Object], kind: str, name: str) -> Object:
    """The one resource of ``kind`` named ``name``."""
    found = [o for o in objects if _identity(o) == (kind, name)]
    if len(found) != 1:
        raise KeyError(f"{kind} {name}: {len(found)} found")
    return found[0]


def of_kind(objects: list[Object], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def selects(selector: Object, labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` and ``matchExpressions``, or a Service's
    plain map) selects an object with ``labels``. An empty selector selects everything."""
    match_labels: dict[str, str]
    expressions: list[Object]
    if "matchLabels" in selector or "matchExpressions" in selector:
        match_labels = selector.get("matchLabels", {})
        expressions = selector.get("matchExpressions", [])
    else:
        match_labels, expressions = selector, []
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    operators: dict[str, Callable[[Object], bool]] = {
        "In": lambda e: labels.get(e["key"]) in e["values"],
        "NotIn": lambda e: labels.get(e["key"]) not in e["values"],
        "Exists": lambda e: e["key"] in labels,
        "DoesNotExist": lambda e: e["key"] not in labels,
    }
    return all(operators[e["operator"]](e) for e in expressions)


def environment(objects: list[Object], container: Object, secret: str) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps (``envFrom``, later ones
    winning), then its own ``env``. Values read from Secrets are not in the build: each is
    ``secret`` instead."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        else:
            # A whole Secret's keys are unknown to the build; and a role should read only
            # the secrets it uses, each by name.
            raise KustomizeError(f"{container['name']}: envFrom {source}: use secretKeyRef")
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        source = var.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "secretKeyRef" in source:
            env[var["name"]] = secret
        else:
            raise KustomizeError(f"{container['name']}: {var['name']} comes from {source}")
    return env


_QUANTITY_UNITS = {"m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (``500m``, ``2``, ``1536Mi``) as a number."""
    text = str(value)
    for suffix, factor in _QUANTITY_UNITS.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def settings_from(env: dict[str, str]) -> Settings:
    """The settings an ``axon`` process started with exactly ``env`` would run with. An
    ``AXON_*`` name that is no setting, or a value that does not parse, raises here as it
    stops the process."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.upper().startswith("AXON_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings.from_environment()
