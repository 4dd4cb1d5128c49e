"""What each sidecar receives: per-scope snapshots of one config version, computed once.

Rules:
- A sidecar's *scope* decides which resources it needs. Today the scope key is its
  namespace; `ScopeKey` is a frozen dataclass so later issues can add per-workload parts
  (labels that select policies) without touching the cache.
- Istio's `exportTo` on ServiceEntry, VirtualService and DestinationRule: empty or "*" =
  every namespace, "." = the resource's own namespace, "~" = none, otherwise the listed
  namespaces. A WorkloadEntry is visible when a visible ServiceEntry of its namespace
  selects it (`workloadSelector`), as Istio scopes endpoints.
- One `SnapshotCache` per config version: a scope's snapshot is computed at most once and
  shared by every sidecar with that key; each resource is encoded once per version and
  each type's list once per scope.
- A type's `version_info` is a hash of that type's encoded list, so a change that leaves a
  type's content alone (an endpoint moving leaves routes and clusters as they were) leaves
  its version alone, and the stream does not resend it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from remora.config.model import MeshConfig, Resource
from remora.config.mesh_rules import ROOT_NAMESPACE
from remora.config.sidecar_scope import scoped_config
from remora.wire.protocol import CLUSTERS, ENDPOINTS, POLICIES, ROUTES, TYPE_KINDS, TYPE_ORDER, Node

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class ScopeKey:
    """What decides the resources a sidecar gets (grows with per-workload policies)."""

    namespace: str

    @classmethod
    def of(cls, node: Node) -> "ScopeKey":
        return cls(node.namespace)


def exported_to(export_to: list[str], owner_namespace: str, viewer_namespace: str) -> bool:
    """Istio's exportTo: is a resource of `owner_namespace` visible from `viewer_namespace`?"""
    if not export_to:
        return True
    for target in export_to:
        if target == "*" or target == viewer_namespace or (target == "." and owner_namespace == viewer_namespace):
            return True
    return False


def _visible(resource: Resource, namespace: str) -> bool:
    return exported_to(resource.spec.export_to, resource.namespace, namespace)


def _selects(selector_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector_labels.items())


# What each type's resources are chosen from: a type whose fields are the same objects (or
# equal) in two configs has the same content in every scope of both.
TYPE_FIELDS: dict[str, tuple[str, ...]] = {
    CLUSTERS: ("service_entries", "destination_rules", "sidecars"),
    ENDPOINTS: ("workload_entries", "service_entries", "sidecars"),
    ROUTES: ("virtual_services", "gateways", "sidecars"),
    POLICIES: ("telemetries", "peer_authentications", "authorization_policies", "request_authentications"),
}
# The kinds a scope takes from the root namespace and its own, by their MeshConfig field.
_BY_NAMESPACE = {"Sidecar": "sidecars", "Telemetry": "telemetries", "PeerAuthentication": "peer_authentications",
                 "AuthorizationPolicy": "authorization_policies", "RequestAuthentication": "request_authentications"}
# The fields the Sidecar resource narrows, by the kinds that need them narrowed.
_NARROWED = {"ServiceEntry": "service_entries", "Service": "service_entries", "WorkloadEntry": "service_entries",
             "VirtualService": "virtual_services", "DestinationRule": "destination_rules"}


def scoped_resources(config: MeshConfig, key: ScopeKey,
                     types: tuple[str, ...] = TYPE_ORDER) -> dict[str, list[Resource]]:
    """The resources of each type (of `types`) a sidecar with this scope needs, sorted by identity.

    A namespace-wide Sidecar (or the root namespace's) narrows services, VirtualServices
    and DestinationRules to its egress hosts (config/sidecar_scope.py); a Sidecar that
    selects workloads is pushed to its namespace and applied by the sidecars it selects."""
    ns = key.namespace
    kinds = [kind for type_url in types for kind in TYPE_KINDS[type_url]]
    narrowed = tuple(dict.fromkeys(_NARROWED[kind] for kind in kinds if kind in _NARROWED))
    if narrowed and not any(r.namespace == ns and r.spec.workload_selector is not None
                            and r.spec.workload_selector.labels for r in config.sidecars):
        config = scoped_config(config, ns, None, narrowed)
    chosen = {kind: _chosen(config, ns, kind) for kind in kinds}
    return {type_url: sorted((r for kind in TYPE_KINDS[type_url] for r in chosen[kind]),
                             key=lambda r: r.order)
            for type_url in types}


def _chosen(config: MeshConfig, ns: str, kind: str) -> list[Resource]:
    """The resources of one kind a scope of namespace `ns` gets, from an already narrowed config."""
    if kind in ("ServiceEntry", "Service"):
        # config.service_entries holds Kubernetes Services too (served as ServiceEntries).
        return [r for r in config.service_entries if r.kind == kind and _visible(r, ns)]
    if kind == "WorkloadEntry":
        by_namespace: dict[str, list[Resource]] = {}
        for we in config.workload_entries:
            by_namespace.setdefault(we.namespace, []).append(we)
        workload_entries: dict[str, Resource] = {}
        for se in config.service_entries:
            selector = se.spec.workload_selector
            if selector is None or not _visible(se, ns):
                continue
            for we in by_namespace.get(se.namespace, ()):
                if we.ref not in workload_entries and _selects(selector.labels, we.spec.labels):
                    workload_entries[we.ref] = we
        return list(workload_entries.values())
    if kind == "DestinationRule":
        return [r for r in config.destination_rules if _visible(r, ns)]
    if kind == "VirtualService":
        return [r for r in config.virtual_services if _visible(r, ns)]
    if kind == "Gateway":
        # Every Gateway: a gateway workload picks those whose selector matches it (Istio's
        # default scope: a Gateway selects gateway pods in any namespace); sidecars ignore them.
        return list(config.gateways)
    # Sidecar, and policies: Telemetry applies mesh-wide from the root namespace, else within
    # its own namespace (the sidecar then picks by its workload selector: telemetry_policy.resolve);
    # security policies scope the same way (mesh-wide in the root namespace, else their own).
    return [r for r in getattr(config, _BY_NAMESPACE[kind]) if r.namespace in (ROOT_NAMESPACE, ns)]


class Snapshot:
    """One scope's view of one config version: per type, its encoded resources and version."""

    __slots__ = ("key", "config_version", "versions", "payloads", "counts", "store_revision")

    def __init__(self, key: ScopeKey, config_version: str, encoded: dict[str, list[bytes]],
                 store_revision: int = 0, kept: "Snapshot | None" = None) -> None:
        """`encoded`: each type's resources; a type missing from it is `kept`'s, unchanged."""
        self.key = key
        self.config_version = config_version
        self.store_revision = store_revision
        self.payloads: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        for type_url in TYPE_ORDER:
            if type_url not in encoded:
                self.payloads[type_url] = kept.payloads[type_url]
                self.versions[type_url] = kept.versions[type_url]
                self.counts[type_url] = kept.counts[type_url]
                continue
            payload = b"[" + b",".join(encoded[type_url]) + b"]"
            self.payloads[type_url] = payload.decode()
            self.versions[type_url] = hashlib.sha256(payload).hexdigest()[:12]
            self.counts[type_url] = len(encoded[type_url])

    def response_frame(self, type_url: str, nonce: str) -> str:
        """A DiscoveryResponse as one text frame, the resource list pasted in pre-encoded.

        Equal to `protocol.encode(DiscoveryResponse(...))` (a unit test checks it), without
        re-encoding the resources for every sidecar.
        """
        return ('{"type":"response","type_url":' + _json_string(type_url)
                + ',"version_info":' + _json_string(self.versions[type_url])
                + ',"nonce":' + _json_string(nonce)
                + ',"resources":' + self.payloads[type_url]
                + ',"store_revision":' + str(self.store_revision) + "}")


def _json_string(text: str) -> str:
    return _encode(text).decode()


# The encoding of each resource of the last version, by identity, with what it was made of:
# a new version encodes only the resources whose spec object changed (the loader hands back
# the same spec object for an unchanged document), not all ten thousand.
_KEPT: dict[str, tuple[object, object, str, bytes]] = {}
_KEPT_VERSION = [""]


def _encode_kept(resource: Resource) -> bytes:
    kept = _KEPT.get(resource.ref)
    if kept is not None and kept[0] is resource.spec and kept[1] is resource.written \
            and kept[2] == resource.api_version:
        return kept[3]
    encoded = _encode(resource.document())
    _KEPT[resource.ref] = (resource.spec, resource.written, resource.api_version, encoded)
    return encoded


class SnapshotCache:
    """Snapshots of one config version, by scope key, computed on first use.

    Made after `previous` (the cache of the version before), a scope's snapshot takes the
    types whose fields did not change (TYPE_FIELDS) from the previous snapshot of that scope
    as they were: a VirtualService applied in a mesh of 10,000 services makes each scope's
    routes again, not its clusters. Only snapshots the previous cache had made are taken,
    so caches do not chain."""

    def __init__(self, config: MeshConfig, changed_at: float | None = None, store_revision: int = 0,
                 previous: "SnapshotCache | None" = None) -> None:
        self.config = config
        self.version = config.version
        self.store_revision = store_revision   # the shared store's revision this config reflects
        self.changed_at = changed_at    # when the change that made this version happened (monotonic)
        self._encoded: dict[str, bytes] = {}
        self._snapshots: dict[ScopeKey, Snapshot] = {}
        self._before: dict[ScopeKey, Snapshot] = {}
        self._changed: tuple[str, ...] = TYPE_ORDER
        if previous is not None:
            # Tuples of the same Resource objects compare by identity first: cheap when equal.
            self._changed = tuple(t for t in TYPE_ORDER
                                  if any(getattr(previous.config, name) != getattr(config, name)
                                         for name in TYPE_FIELDS[t]))
            self._before = dict(previous._snapshots)
        if _KEPT_VERSION[0] != config.version:   # forget resources the new version no longer has
            _KEPT_VERSION[0] = config.version
            refs = {r.ref for r in config.resources()}
            for ref in [ref for ref in _KEPT if ref not in refs]:
                del _KEPT[ref]

    def get(self, key: ScopeKey) -> Snapshot:
        snapshot = self._snapshots.get(key)
        if snapshot is None:
            before = self._before.pop(key, None)
            types = self._changed if before is not None else TYPE_ORDER
            resources = scoped_resources(self.config, key, types)
            snapshot = Snapshot(key, self.version, {t: [self._encode(r) for r in resources[t]] for t in types},
                                self.store_revision, before)
            self._snapshots[key] = snapshot
        return snapshot

    def _encode(self, resource: Resource) -> bytes:
        encoded = self._encoded.get(resource.ref)
        if encoded is None:
            encoded = self._encoded[resource.ref] = _encode_kept(resource)
        return encoded

    def documents(self, key: ScopeKey) -> dict[str, list[dict[str, Any]]]:
        """The documents a scope gets, decoded (for tests and debugging, not the hot path)."""
        snapshot = self.get(key)
        return {t: msgspec.json.decode(snapshot.payloads[t]) for t in TYPE_ORDER}
