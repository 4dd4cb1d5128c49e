"""Kubernetes API objects as the config documents the control server validates.

Pure functions: an object as the API server sends it (JSON, camelCase) in, documents out.

Endpoints: pods plus the Service's selector, not EndpointSlices, for Services with a selector.
- The loader already selects endpoints by labels (kube_service.py: a Service's selector
  over WorkloadEntries), the same rule it applies to WorkloadEntries in files and to the
  registered sidecars; a pod read as a WorkloadEntry joins that one rule.
- A pod says what an endpoint address does not: its labels (subsets of DestinationRules,
  workloadSelectors of policies), its service account (the SPIFFE identity a client
  checks) and whether it runs the Remora sidecar (mTLS to it or plaintext).
- Readiness is read from the pod too: Running, an IP, no deletionTimestamp and the Ready
  condition True, which is what the endpoints controller puts in EndpointSlices as ready.
EndpointSlices are read for the Services WITHOUT a selector (endpoints managed by hand or by
another controller): no pod stands behind them, so their ready addresses become
WorkloadEntries with a label only that Service selects (SLICE_SERVICE_LABEL), and the Service
document gets that label as its selector. Slices of Services with a selector are ignored
(their pods are the endpoints already).

A pod counts as having the Remora sidecar when it has the container `remora inject` adds
(sidecar.PROXY_NAME, as a native sidecar in initContainers or as a container); only then
does its WorkloadEntry carry `security.istio.io/tlsMode: istio`, so clients send mTLS to
it. A pod without the sidecar is a plaintext endpoint.

Objects from the API server were validated by it, so fields newer than the loader's model
(Service fields, metadata such as managedFields) are dropped rather than refused; the Istio
kinds pass with their spec as stored, since the loader's schema is the validation the API
server does not do for them (no Istio webhook here).
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from remora.config.kube_service import KubeServicePort, KubeServiceSpec, workload_port_name
from remora.config.names import TLS_MODE_LABEL
from remora.kube.sidecar import PROXY_NAME

WORKLOAD_API_VERSION = "networking.istio.io/v1"
SLICE_SERVICE_LABEL = "endpointslice.remora.io/service-name"
SLICE_OWNER_LABEL = "kubernetes.io/service-name"   # set on every EndpointSlice by Kubernetes
SOURCE = "kubernetes"
_SERVICE_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(KubeServiceSpec))
_PORT_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(KubeServicePort))

Document = tuple[dict, str]   # (document, where it came from)


def _meta(obj: dict) -> dict:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


NAME_MAX = 253   # a DNS-1123 subdomain, what a WorkloadEntry's name must be


def entry_name(prefix: str, name: str) -> str:
    """`<prefix>-<name>` for a WorkloadEntry made from an object, cut with a hash suffix when
    over NAME_MAX: a name the loader refused would reject the whole candidate set."""
    full = f"{prefix}-{name}"
    if len(full) <= NAME_MAX:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{full[:NAME_MAX - 11].rstrip('-.')}-{digest}"


def source_of(kind: str, obj: dict) -> str:
    """Where a document came from, as validation errors name it: `kubernetes Kind ns/name`."""
    meta = _meta(obj)
    namespace = meta.get("namespace")
    return f"{SOURCE} {kind} {namespace + '/' if namespace else ''}{meta.get('name')}"


def _metadata(obj: dict) -> dict:
    """name, namespace, labels and annotations: what the loader reads of metadata."""
    meta = _meta(obj)
    kept = {key: meta[key] for key in ("name", "namespace") if meta.get(key)}
    for key in ("labels", "annotations"):
        if _dict(meta.get(key)):
            kept[key] = dict(meta[key])
    return kept


def istio_document(obj: dict, kind: str, api_version: str) -> Document:
    """An Istio custom resource as its config document (spec as stored)."""
    document = {"apiVersion": obj.get("apiVersion") or api_version, "kind": kind,
                "metadata": _metadata(obj), "spec": obj.get("spec")}
    return document, source_of(kind, obj)


def service_document(obj: dict, selector: dict[str, str] | None = None) -> Document:
    """A Service as the loader's `Service` document; `selector` replaces an absent one
    (the label of its EndpointSlices' entries)."""
    spec = {key: value for key, value in _dict(obj.get("spec")).items() if key in _SERVICE_FIELDS}
    if isinstance(spec.get("ports"), list):
        spec["ports"] = [{k: v for k, v in port.items() if k in _PORT_FIELDS} if isinstance(port, dict) else port
                         for port in spec["ports"]]
    if selector:
        spec["selector"] = selector
    metadata = _metadata(obj)
    metadata.pop("labels", None)   # the loader keeps only the exportTo annotation of a Service
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}, source_of("Service", obj)


def has_sidecar(pod: dict) -> bool:
    """Whether `remora inject` added the proxy container to this pod."""
    spec = _dict(pod.get("spec"))
    containers = [c for key in ("initContainers", "containers") for c in spec.get(key) or [] if isinstance(c, dict)]
    return any(c.get("name") == PROXY_NAME for c in containers)


def pod_ready(pod: dict) -> bool:
    """Running, with an IP, not terminating, Ready: an endpoint the endpoints controller calls ready."""
    status = _dict(pod.get("status"))
    if status.get("phase") != "Running" or not status.get("podIP") or _meta(pod).get("deletionTimestamp"):
        return False
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_document(pod: dict) -> Document | None:
    """A ready pod as a WorkloadEntry (address, labels, service account, named container ports);
    None for a pod that is not an endpoint now (pending, terminating, not ready, host network)."""
    spec = _dict(pod.get("spec"))
    if not pod_ready(pod) or spec.get("hostNetwork"):
        # A host-network pod shares the node's IP: another pod's selector could not tell them apart.
        return None
    meta = _meta(pod)
    labels = {k: v for k, v in _dict(meta.get("labels")).items() if isinstance(v, str)}
    labels.pop(TLS_MODE_LABEL, None)   # only the sidecar's presence says mTLS, not a label a user set
    if has_sidecar(pod):
        labels[TLS_MODE_LABEL] = "istio"
    ports = {}
    for container in spec.get("containers") or []:
        for port in _dict(container).get("ports") or []:
            if isinstance(port, dict) and port.get("name") and isinstance(port.get("containerPort"), int) \
                    and port.get("protocol", "TCP") == "TCP":
                ports.setdefault(port["name"], port["containerPort"])
    entry = {"address": _dict(pod.get("status"))["podIP"], "labels": labels,
             "serviceAccount": spec.get("serviceAccountName") or "default"}
    if ports:
        entry["ports"] = ports
    metadata = {"name": entry_name("pod", str(meta.get("name"))), "namespace": meta.get("namespace") or "default"}
    document = {"apiVersion": WORKLOAD_API_VERSION, "kind": "WorkloadEntry", "metadata": metadata, "spec": entry}
    return document, source_of("Pod", pod)


def slice_documents(slices: list[dict], service: dict) -> list[Document]:
    """The ready endpoints of a selector-less Service's EndpointSlices as WorkloadEntries
    (labelled SLICE_SERVICE_LABEL=<service>), ports keyed as the Service's ports are."""
    meta = _meta(service)
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    service_ports = [p for p in _dict(service.get("spec")).get("ports") or [] if isinstance(p, dict)]
    docs: list[Document] = []
    for endpoint_slice in sorted(slices, key=lambda s: str(_meta(s).get("name"))):
        by_name = {p.get("name") or "": p.get("port") for p in endpoint_slice.get("ports") or [] if isinstance(p, dict)}
        ports = {workload_port_name(p.get("name"), p.get("targetPort"), p.get("port")): by_name[p.get("name") or ""]
                 for p in service_ports if isinstance(by_name.get(p.get("name") or ""), int)}
        for index, endpoint in enumerate(endpoint_slice.get("endpoints") or []):
            if not isinstance(endpoint, dict) or _dict(endpoint.get("conditions")).get("ready") is False:
                continue   # Kubernetes: ready unset means ready
            for address_index, address in enumerate(endpoint.get("addresses") or []):
                entry: dict[str, Any] = {"address": address, "labels": {SLICE_SERVICE_LABEL: name}}
                if ports:
                    entry["ports"] = ports
                suffix = f"{index}" + (f"-{address_index}" if address_index else "")
                document = {"apiVersion": WORKLOAD_API_VERSION, "kind": "WorkloadEntry",
                            "metadata": {"name": entry_name("slice", f"{_meta(endpoint_slice).get('name')}-{suffix}"),
                                         "namespace": namespace}, "spec": entry}
                docs.append((document, source_of("EndpointSlice", endpoint_slice)))
    return docs


def service_documents(services: list[dict], slices: list[dict]) -> list[Document]:
    """Every Service, and the endpoints of those without a selector from their EndpointSlices."""
    by_service: dict[tuple[str, str], list[dict]] = {}
    for endpoint_slice in slices:
        meta = _meta(endpoint_slice)
        owner = _dict(meta.get("labels")).get(SLICE_OWNER_LABEL)
        if owner:
            by_service.setdefault((meta.get("namespace") or "default", owner), []).append(endpoint_slice)
    docs: list[Document] = []
    for service in services:
        meta = _meta(service)
        spec = _dict(service.get("spec"))
        own = by_service.get((meta.get("namespace") or "default", meta.get("name")), [])
        if spec.get("selector") or spec.get("type") == "ExternalName" or not own:
            docs.append(service_document(service))
            continue
        docs.append(service_document(service, {SLICE_SERVICE_LABEL: meta.get("name")}))
        docs.extend(slice_documents(own, service))
    return docs
