"""Istio's Sidecar resource as a scope: which Sidecar applies to a workload, and which
services, VirtualServices and DestinationRules its `egress.hosts` let the sidecar keep.
Shared by the control server (what it pushes) and the sidecar (what it compiles).

- Which Sidecar: one in the workload's namespace whose `workloadSelector` its labels
  include; else the namespace's Sidecar without a selector; else the root namespace's
  (istio-system) Sidecar without a selector, the mesh default. Several candidates: the
  first by name (Istio takes the oldest).
- `egress.hosts` entries are `namespace/dnsName`: namespace `*` (any), `.` (the workload's
  own), `~` (none), or a name; dnsName `*`, `*.suffix` or a name. A service (ServiceEntry
  host, Kubernetes Service) is kept when an entry covers its namespace and host; a
  VirtualService when one covers its namespace and one of its hosts; a DestinationRule
  when one covers its namespace and host (a rule for a service the sidecar does not keep
  has nothing to apply to).
"""
from __future__ import annotations

from dataclasses import replace

from remora.config.mesh_rules import ROOT_NAMESPACE
from remora.config.model import MeshConfig, Resource
from remora.config.names import qualify_host, wildcard_covers


def sidecar_for(config: MeshConfig, namespace: str | None, labels: dict | None) -> Resource | None:
    """The Sidecar resource that applies to a workload (None: no scoping)."""
    candidates = sorted(config.sidecars, key=lambda r: (r.namespace, r.name))
    if namespace is not None and labels is not None:
        for sidecar in candidates:
            selector = sidecar.spec.workload_selector
            if sidecar.namespace == namespace and selector is not None and selector.labels and \
                    all(labels.get(k) == v for k, v in selector.labels.items()):
                return sidecar
    for scope in (namespace, ROOT_NAMESPACE):
        for sidecar in candidates:
            selector = sidecar.spec.workload_selector
            if sidecar.namespace == scope and (selector is None or not selector.labels):
                return sidecar
    return None


def namespace_sidecar(config: MeshConfig, namespace: str) -> Resource | None:
    """The Sidecar every workload of `namespace` gets unless a selector picks another."""
    return sidecar_for(config, namespace, None)


def egress_hosts(sidecar: Resource | None) -> list[tuple[str, str]] | None:
    """(namespace, dnsName) pairs of its egress listener; None: everything is visible."""
    if sidecar is None or not sidecar.spec.egress:
        return None
    return [tuple(host.split("/", 1)) for listener in sidecar.spec.egress for host in listener.hosts]


def allows(hosts: list[tuple[str, str]] | None, resource_namespace: str, host: str, workload_namespace: str) -> bool:
    """Whether egress hosts let a workload of `workload_namespace` see `host` of `resource_namespace`."""
    if hosts is None:
        return True
    for namespace, pattern in hosts:
        if namespace == "~":
            continue
        if namespace == "*" or namespace == resource_namespace or \
                (namespace == "." and resource_namespace == workload_namespace):
            if wildcard_covers(pattern, host) or wildcard_covers(pattern, host.split(".")[0]):
                return True
    return False


SCOPED_FIELDS = ("service_entries", "virtual_services", "destination_rules")


def scoped_config(config: MeshConfig, namespace: str, labels: dict | None,
                  fields: tuple[str, ...] = SCOPED_FIELDS) -> MeshConfig:
    """The config a workload keeps under its Sidecar's egress hosts (the same config when
    no Sidecar scopes it). Only `fields` are narrowed (a caller that needs routes alone
    does not pay for the services)."""
    hosts = egress_hosts(sidecar_for(config, namespace, labels))
    if hosts is None:
        return config
    named = {namespace if ns == "." else ns for ns, _ in hosts if ns != "~"}
    everything = "*" in named

    def kept(kind: str, names_of) -> tuple[Resource, ...]:
        # Only the namespaces an entry names can hold what it lets in: with `./*` and a few
        # shared namespaces, a workload's scope is computed from those, not from the mesh.
        pool = getattr(config, kind) if everything else \
            [r for _, r in sorted(item for ns in named for item in _by_namespace(config, kind).get(ns, ()))]
        return tuple(r for r in pool if any(allows(hosts, r.namespace, qualify_host(h, r.namespace), namespace)
                                            for h in names_of(r)))
    hosts_of = {"service_entries": lambda r: r.spec.hosts, "virtual_services": lambda r: r.spec.hosts,
                "destination_rules": lambda r: [r.spec.host]}
    return replace(config, **{name: kept(name, hosts_of[name]) for name in fields})


# The namespace index of the last configs scoped: one config serves every scope of a push
# (the control server) or one scope (a sidecar), so two entries are plenty. Each field is
# indexed when first asked for (a push that changed only routes never indexes the services).
_INDEXES: list[tuple[MeshConfig, dict[str, dict[str, list[tuple[int, Resource]]]]]] = []


def _by_namespace(config: MeshConfig, field: str) -> dict[str, list[tuple[int, Resource]]]:
    """namespace -> [(position in the config, resource)] of one field, made once per config."""
    for cached, index in _INDEXES:
        if cached is config:
            break
    else:
        index = {}
        _INDEXES.insert(0, (config, index))
        del _INDEXES[2:]
    by_namespace = index.get(field)
    if by_namespace is None:
        by_namespace = index[field] = {}
        for position, resource in enumerate(getattr(config, field)):
            by_namespace.setdefault(resource.namespace, []).append((position, resource))
    return by_namespace
