"""Rules that need the whole config set: do route destinations name real hosts and subsets?

A destination host is *known* when, after `qualify_host` with each resource's own
namespace, it equals (or falls under a wildcard of) any of:

- a host of a ServiceEntry,
- a host of a VirtualService (routing a VirtualService to its own host is the normal
  case for a Kubernetes service, whose endpoints come from outside this config set),
- the host of a DestinationRule,
- the host of a Kubernetes Service (`<name>.<namespace>.svc.cluster.local`).

A destination subset must be defined by a DestinationRule whose host matches the
destination host. The index is fed from every resource whose identity could be read,
including resources rejected for other reasons, so that one typo does not cascade into
"unknown host" errors on everything that refers to it.
"""
from __future__ import annotations

from collections.abc import Iterable

from remora.config.kinds import KUBERNETES_SERVICE
from remora.config.kube_service import fqdn
from remora.config.model import VirtualServiceSpec
from remora.config.names import DEFAULT_DOMAIN, qualify_host
from remora.config.schema import Problem


def host_matches(pattern: str, host: str) -> bool:
    """Istio host matching on qualified names: `*` matches all, `*.x` any name under x."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


class HostIndex:
    """Qualified hosts and the subsets DestinationRules define for them."""

    def __init__(self, domain: str = DEFAULT_DOMAIN) -> None:
        self._domain = domain
        self._hosts: set[str] = set()
        # Qualified DestinationRule host -> subset names, or None when that rule could not
        # be read (then any subset is given the benefit of the doubt).
        self._subsets: dict[str, set[str] | None] = {}

    def qualify(self, host: str, namespace: str) -> str:
        return qualify_host(host, namespace, self._domain)

    def add_qualified(self, hosts: Iterable[str], rules: Iterable[tuple[str, Iterable[str] | None]]) -> None:
        """Hosts and DestinationRules already qualified (what host_index remembers per document)."""
        self._hosts.update(hosts)
        for qualified, names in rules:
            self._add_rule(qualified, names)

    def _add_rule(self, qualified: str, names: Iterable[str] | None) -> None:
        """Record a DestinationRule: its host becomes known, its subsets defined."""
        self._hosts.add(qualified)
        if names is None:
            self._subsets[qualified] = None
            return
        current = self._subsets.setdefault(qualified, set())
        if current is not None:
            current.update(names)

    def is_known(self, qualified_host: str) -> bool:
        # Exact names are a set lookup; only wildcard patterns need a scan (a config of a
        # thousand services has a handful of wildcards at most).
        if qualified_host in self._hosts:
            return True
        return any(host_matches(pattern, qualified_host) for pattern in self._hosts if "*" in pattern)

    def subsets_for(self, qualified_host: str) -> tuple[bool, set[str] | None]:
        """(any DestinationRule for the host?, union of their subsets or None if unreadable)."""
        found = False
        names: set[str] = set()
        candidates = [(qualified_host, self._subsets[qualified_host])] if qualified_host in self._subsets else []
        candidates += [(p, d) for p, d in self._subsets.items() if "*" in p and p != qualified_host]
        for pattern, defined in candidates:
            if host_matches(pattern, qualified_host):
                found = True
                if defined is None:
                    return True, None
                names |= defined
        return found, names


def check_destinations(spec: VirtualServiceSpec, namespace: str, index: HostIndex, path: str = "spec") -> list[Problem]:
    """Every route destination of a VirtualService names a known host and a defined subset."""
    problems: list[Problem] = []
    targets = []
    for i, route in enumerate(spec.http):
        targets += [(f"{path}.http[{i}].route[{k}].destination", d.destination) for k, d in enumerate(route.route)]
        if route.mirror is not None:
            targets.append((f"{path}.http[{i}].mirror", route.mirror))
        targets += [(f"{path}.http[{i}].mirrors[{k}].destination", m.destination) for k, m in enumerate(route.mirrors)]
    for kind, routes in (("tcp", spec.tcp), ("tls", spec.tls)):
        targets += [(f"{path}.{kind}[{t}].route[{k}].destination", d.destination)
                    for t, route in enumerate(routes) for k, d in enumerate(route.route)]
    for where, destination in targets:
        qualified = index.qualify(destination.host, namespace)
        if not index.is_known(qualified):
            problems.append(Problem(
                f"{where}.host",
                f"unknown destination host {destination.host!r} ({qualified}): it is not a host of any "
                "ServiceEntry, VirtualService or DestinationRule in this config",
            ))
            continue
        if destination.subset is None:
            continue
        has_rule, defined = index.subsets_for(qualified)
        if defined is None or destination.subset in defined:
            continue
        if not has_rule:
            message = f"subset {destination.subset!r} is not defined: there is no DestinationRule for {qualified}"
        else:
            defines = ", ".join(sorted(defined)) or "no subsets"
            message = f"subset {destination.subset!r} is not defined by the DestinationRule for {qualified} (it defines: {defines})"
        problems.append(Problem(f"{where}.subset", message))
    return problems


# ---- the loader's index of a set (items: the loader's _Loaded documents) -----------------

def shared_destination_rule_warnings(loaded: list, index: HostIndex) -> list[str]:
    """Istio merges several DestinationRules for one host; Remora applies one per host.

    A rule with a workloadSelector is a separate choice (it wins for the sidecars it selects,
    and Istio does not merge it with the others): only rules with the same selector collide.
    """
    by_host: dict[tuple, list] = {}   # (qualified host, selector scope) -> the loader's items
    for item in loaded:
        if item.kind == "DestinationRule" and item.spec is not None and item.spec.host:
            selector = item.spec.workload_selector
            scope = (item.namespace, tuple(sorted(selector.match_labels.items()))) if selector else None
            by_host.setdefault((index.qualify(item.spec.host, item.namespace), scope), []).append(item)
    return [
        f"several DestinationRules for host {host}: "
        + ", ".join(f"{item.ref} ({item.document.source})" for item in items)
        + "; Remora applies one DestinationRule per host, so their settings are not merged"
        for (host, _), items in by_host.items()
        if len(items) > 1
    ]


def host_index(loaded: list) -> HostIndex:
    """Index every readable host and subset, from typed specs or, for rejected ones, raw data.

    What a clean document adds is remembered with it (spec_cache.py): an unchanged document
    of a large set is not qualified again."""
    index = HostIndex()
    for item in loaded:
        memo = item.memo
        found = memo.hosts if memo is not None else None
        if found is None:
            found = _contribution(item, index)
            if memo is not None:
                memo.hosts = found
        hosts, subsets = found
        index.add_qualified(hosts, subsets)
    return index


def _contribution(item, index: HostIndex) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...] | None], ...]]:
    """(qualified hosts, (qualified DestinationRule host, its subset names or None)) of one item."""
    raw = item.document.body.get("spec")
    raw = raw if isinstance(raw, dict) else {}
    if item.kind == KUBERNETES_SERVICE:
        return (index.qualify(fqdn(item.name, item.namespace), item.namespace),), ()
    if item.kind in ("ServiceEntry", "VirtualService"):
        hosts = item.spec.hosts if item.spec is not None else raw.get("hosts")
        return tuple(index.qualify(host, item.namespace) for host in (hosts if isinstance(hosts, list) else ())
                     if isinstance(host, str) and host), ()
    if item.kind == "DestinationRule":
        if item.spec is not None and item.spec.host:
            return (), ((index.qualify(item.spec.host, item.namespace), tuple(s.name for s in item.spec.subsets)),)
        if isinstance(raw.get("host"), str) and raw["host"]:
            subsets = raw.get("subsets", [])
            readable = isinstance(subsets, list) and all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                                         for s in subsets)
            names = tuple(s["name"] for s in subsets) if readable else None
            return (), ((index.qualify(raw["host"], item.namespace), names),)
    return (), ()
