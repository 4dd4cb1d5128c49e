"""Where a VirtualService applies: Istio's `gateways` rules, shared by the data plane and
the Envoy renderer.

- A VirtualService with no `gateways` applies to sidecars only (Istio's implicit `mesh`).
- One whose `gateways` is set applies to sidecars only if the list names `mesh`; otherwise
  it is for those gateways alone and a sidecar must not route by it (a gateway's `hosts:
  ["*"]` would otherwise capture every host the sidecar's app calls).
- A `match` entry's own `gateways` overrides the VirtualService's for that entry; an http
  route whose every match entry is for other gateways does not exist at the sidecar.
- A match entry's `sourceLabels` / `sourceNamespace` select the calling workload: at a
  sidecar they are known when routes are compiled (the sidecar's own labels and
  namespace), so an entry for other workloads is dropped like one for another gateway.
"""
from __future__ import annotations

from collections.abc import Sequence

from remora.config.names import wildcard_covers

MESH_GATEWAY = "mesh"   # Istio's reserved gateway name for "all sidecars"


def applies_to_sidecars(gateways: Sequence[str] | None) -> bool:
    """True when a VirtualService (or a match entry) with these `gateways` applies at sidecars."""
    return not gateways or MESH_GATEWAY in gateways


def sidecar_matches(matches: Sequence, applies) -> list | None:
    """The match entries of one http route that apply at this sidecar, in order.

    `applies(entry)` says whether one entry does. Returns the entries that apply, and None
    when the route had entries and none applies (the route does not exist at the
    sidecar). A route without match entries matches everything.
    """
    if not matches:
        return list(matches)
    kept = [m for m in matches if applies(m)]
    return kept or None


def selects_workload(source_labels: dict | None, source_namespace: str | None,
                     labels: dict | None, namespace: str | None) -> bool:
    """Whether a match entry's sourceLabels / sourceNamespace select this workload.

    With no workload known (labels None: a tool compiling routes for nobody in
    particular) only entries without source conditions apply.
    """
    if source_labels:
        if labels is None or any(labels.get(k) != v for k, v in source_labels.items()):
            return False
    if source_namespace:
        return namespace is not None and namespace == source_namespace
    return True


# ---- gateway workloads (remora gateway) ----------------------------------------------------

def resolve_gateway_name(name: str, namespace: str) -> str:
    """Istio's resolveGatewayName: a VirtualService's `gateways` entry as `ns/name`.

    `name` and `./name` mean the VirtualService's own namespace; the legacy FQDN form
    `name.ns.svc.cluster.local` (or `name.ns`) means `ns/name`; `mesh` stays `mesh`."""
    if name == MESH_GATEWAY:
        return name
    if "/" in name:
        ns, _, short = name.partition("/")
        return f"{namespace if ns == '.' else ns}/{short}"
    if "." in name:
        short, ns = name.split(".")[:2]
        return f"{ns}/{short}"
    return f"{namespace}/{name}"


def gateway_selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A Gateway's `selector` picks a gateway workload whose labels include it (empty: every one)."""
    return all(labels.get(key) == value for key, value in selector.items())


def server_hosts_for(hosts: Sequence[str], gateway_namespace: str, vs_namespace: str) -> list[str]:
    """The server hosts a VirtualService of `vs_namespace` may bind to, prefixes stripped
    (Istio's sanitizeServerHostNamespace + NamesForNamespace): `ns/host` only for that
    namespace, `./host` only for the Gateway's, `*/host` and a bare host for every one."""
    found = []
    for host in hosts:
        ns, sep, name = host.partition("/")
        if not sep:
            found.append(host)
        elif ns == "*" or ns == vs_namespace or (ns == "." and gateway_namespace == vs_namespace):
            found.append(name)
    return found


def host_intersection(server_host: str, vs_host: str) -> str | None:
    """The more specific of two matching host patterns (Istio's Intersection), else None:
    server `*.example.com` with `a.example.com` gives `a.example.com`; `*` matches all."""
    server, vs = server_host.lower(), vs_host.lower()
    if wildcard_covers(server, vs):
        return vs
    if wildcard_covers(vs, server):
        return server
    return None
