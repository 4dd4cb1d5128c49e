"""`remora inject`: add the Remora sidecar to the pod templates of Kubernetes manifests.

Rules (like `istioctl kube-inject`):
- Workloads: Deployment, StatefulSet, DaemonSet, ReplicaSet, Job (spec.template), CronJob
  (spec.jobTemplate.spec.template), bare Pods, and any of them inside a `kind: List`.
- Skipped, untouched: pods opted out (label or annotation sidecar.remora.io/inject: "false"),
  pods with hostNetwork (capturing the node's traffic would break the node), pods that
  already have a `remora-proxy` container (so injecting twice changes nothing).
- Every other document is copied from the input text byte for byte; an injected one is
  re-serialised with its comments, key order and quoting kept.
- All or nothing: the first bad document raises InjectError naming it, and nothing is output.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from remora.kube import annotations as ann
from remora.kube.sidecar import (INIT_NAME, PROMETHEUS_PORT, PROXY_NAME, STATE_VOLUME, PodIdentity,
                                 SidecarSettings, default_token_secret, init_container,
                                 proxy_container, state_volume)
from remora.kube.yaml_documents import DocumentError, dump, parse, split_documents

# Where each workload kind keeps its pod template; () is the object itself (a Pod).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}


class InjectError(ValueError):
    """Input that cannot be injected; the message names the document, the object and the field."""


@dataclass
class InjectResult:
    """The output text, how many pod templates got a sidecar, and notes for stderr (skips)."""

    output: str
    injected: int = 0
    notes: list[str] = field(default_factory=list)


def inject_text(text: str, settings: SidecarSettings = SidecarSettings()) -> InjectResult:
    """Inject every workload in the multi-document YAML `text`; raises InjectError on bad input."""
    result = InjectResult(output="")
    parts: list[str] = []
    index = 0
    for doc in split_documents(text):
        try:
            parse(doc)
        except DocumentError as err:
            raise InjectError(f"document {index + 1} (line {err.line}): {err}") from None
        if doc.data is None:  # only comments, blank lines or markers
            parts.append(doc.text)
            continue
        index += 1
        before = result.injected
        inject_object(doc.data, f"document {index} (line {doc.content_line})", settings, result)
        parts.append(dump(doc) if result.injected > before else doc.text)
    result.output = "".join(parts)
    return result


def inject_object(obj, where: str, settings: SidecarSettings, result: InjectResult) -> None:
    """Inject one parsed object (a workload, a Pod or a List) in place; notes and counts go to
    `result`; InjectError names `where`. Used by inject_text and by the admission webhook."""
    if not isinstance(obj, dict):
        raise InjectError(f"{where}: expected a Kubernetes object (a mapping with apiVersion and kind), "
                          f"got {_type_name(obj)}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        raise InjectError(f"{where}: no kind")
    if kind == "List":
        items = obj.get("items")
        if not isinstance(items, list):
            raise InjectError(f"{where}: List: items: expected a list, got {_type_name(items)}")
        for i, item in enumerate(items):
            inject_object(item, f"{where} items[{i}]", settings, result)
        return
    path = TEMPLATE_PATHS.get(kind)
    if path is None:
        return
    metadata = _mapping(obj, "metadata", f"{where} {kind}")
    name = metadata.get("name") or str(metadata.get("generateName") or "").rstrip("-")
    if not isinstance(name, str) or not name:
        raise InjectError(f"{where} {kind}: metadata.name: missing")
    where = f"{where} {kind}/{name}"
    template = obj
    for depth, key in enumerate(path):
        template = template.get(key)
        if not isinstance(template, dict):
            raise InjectError(f"{where}: {'.'.join(path[:depth + 1])}: expected a mapping, "
                              f"got {_type_name(template)}")
    prefix = ".".join(path) + "." if path else ""
    try:
        note = _inject_pod(template, name, settings, where, prefix)
    except ann.AnnotationError as err:
        raise InjectError(f"{where}: {err}") from None
    if note:
        result.notes.append(f"{where}: {note}")
    else:
        result.injected += 1


def _inject_pod(template: dict, workload: str, settings: SidecarSettings, where: str,
                prefix: str) -> str | None:
    """Add the sidecar to one pod template; returns why it was skipped, or None when injected."""
    metadata = _mapping(template, "metadata", where, prefix)
    labels = _mapping(metadata, "labels", where, prefix + "metadata.")
    annotations = _mapping(metadata, "annotations", where, prefix + "metadata.")
    spec = template.get("spec")
    if not isinstance(spec, dict):
        raise InjectError(f"{where}: {prefix}spec: expected a mapping, got {_type_name(spec)}")
    containers = _containers(spec, "containers", where, prefix)
    if not containers:
        raise InjectError(f"{where}: {prefix}spec.containers: expected at least one container")
    inits = _containers(spec, "initContainers", where, prefix)
    names = {c.get("name") for c in containers + inits}
    if PROXY_NAME in names:
        return f"already injected ({PROXY_NAME} present), left as it is"
    if INIT_NAME in names:
        raise InjectError(f"{where}: {prefix}spec: has {INIT_NAME} but no {PROXY_NAME} (partly injected?); "
                          f"remove {INIT_NAME} and inject again")
    if not ann.wants_injection(annotations, labels):
        return f"not injected: {ann.INJECT} is false"
    if spec.get("hostNetwork") is True:
        return "not injected: hostNetwork pods share the node's network, which must not be captured"
    volumes = spec.get("volumes")
    if volumes is not None and not isinstance(volumes, list):
        raise InjectError(f"{where}: {prefix}spec.volumes: expected a list, got {_type_name(volumes)}")
    if any(isinstance(v, dict) and v.get("name") == STATE_VOLUME for v in volumes or ()):
        raise InjectError(f"{where}: {prefix}spec.volumes: the name {STATE_VOLUME} is taken; "
                          f"the sidecar needs it for its state")

    app_port = ann.app_port(annotations)
    if app_port is None:
        app_port = _first_container_port(containers[0], where, prefix)
    capture = ann.traffic_capture(annotations, has_inbound=app_port is not None)
    service_account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    token_secret = annotations.get(ann.TOKEN_SECRET) or default_token_secret(str(service_account))
    pod = PodIdentity(
        service=str(labels.get("app") or labels.get("app.kubernetes.io/name") or workload),
        workload=workload, service_account=str(service_account),
        labels={str(k): str(v) for k, v in labels.items()}, app_port=app_port,
        token_secret=str(token_secret))

    added = [init_container(settings, capture), proxy_container(settings, pod)]
    if "initContainers" in spec and isinstance(spec["initContainers"], list):
        for position, container in enumerate(added):
            spec["initContainers"].insert(position, container)
    else:
        _insert_before(spec, "containers", "initContainers", added)
    if volumes is None:
        spec["volumes"] = []
    spec["volumes"].append(state_volume())

    notes = _child_mapping(_child_mapping(template, "metadata", before="spec"), "annotations")
    notes[ann.STATUS] = json.dumps({"initContainers": [INIT_NAME, PROXY_NAME], "volumes": [STATE_VOLUME],
                                    "image": settings.image}, separators=(",", ":"))
    if "prometheus.io/scrape" not in notes:  # the app's own scrape settings win, as in Istio
        notes["prometheus.io/scrape"] = "true"
        notes["prometheus.io/port"] = str(PROMETHEUS_PORT)
        notes["prometheus.io/path"] = "/stats/prometheus"
    return None


def _first_container_port(container: dict, where: str, prefix: str) -> int | None:
    ports = container.get("ports")
    if not ports:
        return None
    field_path = f"{prefix}spec.containers[0].ports[0].containerPort"
    if not isinstance(ports, list) or not isinstance(ports[0], dict):
        raise InjectError(f"{where}: {prefix}spec.containers[0].ports: expected a list of mappings")
    port = ports[0].get("containerPort")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InjectError(f"{where}: {field_path}: expected a port number (1-65535), got {port!r}")
    return port


def _containers(spec: dict, key: str, where: str, prefix: str) -> list[dict]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InjectError(f"{where}: {prefix}spec.{key}: expected a list, got {_type_name(value)}")
    for i, container in enumerate(value):
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            raise InjectError(f"{where}: {prefix}spec.{key}[{i}]: expected a container with a name")
    return value


def _mapping(parent: dict, key: str, where: str, prefix: str = "") -> dict:
    """parent[key] as a mapping ({} when absent or null); InjectError when it is something else."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InjectError(f"{where}: {prefix}{key}: expected a mapping, got {_type_name(value)}")
    return value


def _child_mapping(parent: dict, key: str, before: str = "") -> dict:
    """parent[key], made an empty mapping first when it is absent or null."""
    if parent.get(key) is None:
        if key in parent:
            parent[key] = {}
        else:
            _insert_before(parent, before, key, {})
    return parent[key]


def _insert_before(mapping: dict, anchor: str, key: str, value) -> None:
    """Add `key` just before `anchor` (round-trip maps keep order, so the output reads naturally)."""
    keys = list(mapping)
    position = keys.index(anchor) if anchor in keys else len(keys)
    if hasattr(mapping, "insert"):
        mapping.insert(position, key, value)
    else:
        mapping[key] = value


def _type_name(value) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]
