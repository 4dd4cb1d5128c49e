"""Compiled route table: request head -> virtual host -> first matching route -> cluster.

Compiled once per config version and never mutated afterwards (except the weighted
pickers' cursors), so a request can hold the table it started with while a new version is
swapped in. Semantics are Istio's: a VirtualService's http routes are tried in order and
the first match wins; within one route, any of its `match` blocks may match and every
condition inside a block must hold; uri/method/authority/header/query matches are
exact, prefix or regex (regexes match the whole value, as Envoy's safe_regex does); the
query string is not part of the path match. Hosts without a VirtualService get a default
route to their ServiceEntry's cluster.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl

from remora.config.duration import parse_duration
from remora.config.gateways import applies_to_sidecars, selects_workload, sidecar_matches
from remora.config.model import HeaderOperations, Headers, HTTPRoute, MeshConfig, StringMatch
from remora.config.names import host_aliases, qualify_host
from remora.proxy.upstream.balancer import SmoothWeightedRoundRobin
from remora.proxy.upstream.cluster import Cluster, ServiceInfo, cluster_name, empty_service
from remora.proxy.router.cors import Cors
from remora.proxy.router.local_answer import local_answer
from remora.proxy.router.shadow import MirrorTarget
from remora.proxy.router.fault import compile_fault
from remora.proxy.router.retry import NO_RETRY, compile_retry_policy
from remora.proxy.codec.message import RequestHead


def compile_string_match(m: StringMatch, ignore_case: bool = False):
    """A predicate on bytes for an Istio StringMatch."""
    if m.exact is not None:
        want = m.exact.encode()
        if ignore_case:
            want = want.lower()
            return lambda v: v is not None and v.lower() == want
        return lambda v: v == want
    if m.prefix is not None:
        want = m.prefix.encode()
        if ignore_case:
            want = want.lower()
            return lambda v: v is not None and v.lower().startswith(want)
        return lambda v: v is not None and v.startswith(want)
    if m.regex is not None:
        rx = re.compile(m.regex.encode(), re.IGNORECASE if ignore_case else 0)
        return lambda v: v is not None and rx.fullmatch(v) is not None
    return lambda v: v is not None   # an empty match means "present"


class MatchBlock:
    """One `match` entry: every condition must hold."""

    __slots__ = ("uri", "uri_prefix", "method", "authority", "headers", "without_headers",
                 "query", "port")

    def __init__(self, spec) -> None:
        ic = spec.ignore_uri_case
        self.uri = compile_string_match(spec.uri, ic) if spec.uri else None
        # A prefix match makes rewrite.uri a prefix rewrite (Envoy's prefix_rewrite).
        self.uri_prefix = spec.uri.prefix.encode() if spec.uri and spec.uri.prefix is not None else None
        self.method = compile_string_match(spec.method) if spec.method else None
        self.authority = compile_string_match(spec.authority) if spec.authority else None
        self.headers = [(k.lower().encode(), compile_string_match(v)) for k, v in spec.headers.items()]
        self.without_headers = [(k.lower().encode(), compile_string_match(v))
                                for k, v in spec.without_headers.items()]
        self.query = [(k.encode(), compile_string_match(v)) for k, v in spec.query_params.items()]
        self.port = spec.port

    def matches(self, head: RequestHead, port: int) -> bool:
        """True when the request satisfies every condition of this block."""
        if self.uri is not None and not self.uri(head.path_only()):
            return False
        if self.method is not None and not self.method(head.method):
            return False
        if self.authority is not None and not self.authority(head.authority):
            return False
        if self.port is not None and self.port != port:
            return False
        for name, pred in self.headers:
            if not pred(head.header(name)):
                return False
        for name, pred in self.without_headers:
            if pred(head.header(name)):
                return False
        if self.query:
            params: dict[bytes, bytes] = {}
            for name, value in parse_qsl(head.query(), keep_blank_values=True):
                params.setdefault(name, value)   # a repeated parameter: the first value counts, as in Envoy
            for name, pred in self.query:
                if not pred(params.get(name)):
                    return False
        return True


class HeaderOps:
    """Compiled set/add/remove header operations (lower-cased names)."""

    __slots__ = ("set", "add", "remove", "drop")

    def __init__(self, ops: HeaderOperations) -> None:
        self.set = [(k.encode(), v.encode()) for k, v in ops.set.items()]
        self.add = [(k.encode(), v.encode()) for k, v in ops.add.items()]
        self.remove = {k.lower().encode() for k in ops.remove}
        self.drop = self.remove | {k.lower() for k, _ in self.set}

    def apply(self, headers: list) -> list:
        """Return headers with the operations applied."""
        if self.drop:
            headers = [h for h in headers if h[0].lower() not in self.drop]
        return headers + self.set + self.add if (self.set or self.add) else headers


_RE2_ESCAPE = re.compile(rb"\\([0-9]|\\)")


def compile_regex_rewrite(pattern: bytes, template: bytes):
    r"""(regex, replacement function) for an RE2 rewrite string (Envoy's regex_rewrite).

    In RE2's syntax `\0`..`\9` insert a group and `\\` a backslash; every other
    character, including a backslash before anything else, is literal. Python's template
    syntax differs (`\g<n>`, escapes like `\n`), so the template is parsed once here.
    """
    rx = re.compile(pattern)
    parts: list[bytes | int] = []
    pos = 0
    for m in _RE2_ESCAPE.finditer(template):
        parts.append(template[pos:m.start()])
        token = m.group(1)
        group = int(token) if token.isdigit() else None
        # A group the pattern does not have inserts nothing (RE2 would reject the rewrite).
        parts.append(b"\\" if group is None else (group if group <= rx.groups else b""))
        pos = m.end()
    parts.append(template[pos:])
    if all(isinstance(part, bytes) for part in parts):
        literal = b"".join(parts)   # type: ignore[arg-type]
        return rx, lambda m: literal

    def expand(m: re.Match) -> bytes:
        return b"".join(part if isinstance(part, bytes) else (m.group(part) or b"") for part in parts)

    return rx, expand


def _ops(headers: Headers | None) -> tuple[HeaderOps | None, HeaderOps | None]:
    if headers is None:
        return None, None
    return (HeaderOps(headers.request) if headers.request else None,
            HeaderOps(headers.response) if headers.response else None)


class RouteDestination:
    """A weighted destination of a route: the cluster to use per listener-side port."""

    __slots__ = ("by_port", "default", "request_ops", "response_ops")

    def __init__(self, by_port: dict[int, Cluster], default: Cluster, headers: Headers | None) -> None:
        self.by_port = by_port
        self.default = default
        self.request_ops, self.response_ops = _ops(headers)

    def cluster_for(self, port: int) -> Cluster:
        """The cluster serving requests that arrived for this service port."""
        return self.by_port.get(port, self.default)


class Route:
    """One http route of a VirtualService (or a service's default route)."""

    __slots__ = ("name", "origin", "blocks", "destinations", "_picker", "rewrite_uri",
                 "rewrite_authority", "regex_rewrite", "request_ops", "response_ops",
                 "timeout", "retries", "retry_policy", "fault", "spec", "answer", "mirrors", "cors")

    def __init__(self, name: str, origin: str, blocks: list[MatchBlock],
                 destinations: list[RouteDestination], weights: list[int],
                 spec: HTTPRoute | None = None) -> None:
        self.name = name
        self.origin = origin
        self.blocks = blocks
        self.destinations = destinations
        self._picker = (SmoothWeightedRoundRobin(destinations, weights)
                        if len(destinations) > 1 else None)
        self.spec = spec
        rw = spec.rewrite if spec else None
        self.rewrite_uri = rw.uri.encode() if rw and rw.uri is not None else None
        self.rewrite_authority = rw.authority.encode() if rw and rw.authority else None
        self.regex_rewrite = (compile_regex_rewrite(rw.uri_regex_rewrite.match.encode(),
                                                    rw.uri_regex_rewrite.rewrite.encode())
                              if rw and rw.uri_regex_rewrite else None)
        self.request_ops, self.response_ops = _ops(spec.headers if spec else None)
        self.timeout = parse_duration(spec.timeout) if spec and spec.timeout else None
        self.retries = spec.retries if spec else None
        # Istio gives every outbound route its default retry policy unless it says otherwise.
        self.retry_policy = compile_retry_policy(spec.retries if spec else None)
        self.fault = compile_fault(spec.fault) if spec else None
        # directResponse / redirect: answered by the proxy, never routed (local_answer.py).
        self.answer = local_answer(spec) if spec else None
        self.mirrors: list | None = None    # MirrorTargets (shadow.py), set by _compile_route
        self.cors = Cors(spec.cors_policy, compile_string_match) if spec and spec.cors_policy else None

    def match(self, head: RequestHead, port: int) -> MatchBlock | bool:
        """The matching block, True for a route without conditions, or False."""
        if not self.blocks:
            return True
        for block in self.blocks:
            if block.matches(head, port):
                return block
        return False

    def choose(self) -> RouteDestination:
        """The destination for this request, following the weights exactly."""
        picker = self._picker
        return self.destinations[0] if picker is None else picker.next()

    def rewrite_path(self, path: bytes, block: MatchBlock | bool) -> bytes:
        """Apply rewrite.uri / uriRegexRewrite to a path, keeping the query string."""
        q = path.find(b"?")
        only, query = (path, b"") if q < 0 else (path[:q], path[q:])
        if self.regex_rewrite is not None:
            rx, expand = self.regex_rewrite
            only = rx.sub(expand, only)
        elif self.rewrite_uri is not None:
            prefix = block.uri_prefix if isinstance(block, MatchBlock) else None
            only = self.rewrite_uri + only[len(prefix):] if prefix is not None else self.rewrite_uri
        return only + query


class VirtualHost:
    """The routes for one host name and service port."""

    __slots__ = ("name", "port", "routes")

    def __init__(self, name: str, port: int, routes: list[Route]) -> None:
        self.name = name
        self.port = port
        self.routes = routes

    def route(self, head: RequestHead) -> tuple[Route, MatchBlock | bool] | None:
        """The first route that matches, with the block that matched."""
        port = self.port
        for route in self.routes:
            block = route.match(head, port)
            if block is not False:
                return route, block
        return None


class RouteTable:
    """Host -> VirtualHost, with wildcard suffixes and an optional catch-all."""

    def __init__(self, vhosts: dict[bytes, VirtualHost], wildcards: list[tuple[bytes, VirtualHost]],
                 catch_all: VirtualHost | None = None) -> None:
        self.vhosts = vhosts
        self.wildcards = wildcards
        self.catch_all = catch_all

    def lookup(self, authority: bytes) -> VirtualHost | None:
        """The virtual host for a Host/authority value (case-insensitive, port optional)."""
        vh = self.vhosts.get(authority)
        if vh is not None:
            return vh
        key = authority.lower()
        vh = self.vhosts.get(key)
        if vh is not None:
            return vh
        host, _, port = key.rpartition(b":") if b":" in key and not key.endswith(b"]") else (key, b"", b"")
        for suffix, wvh in self.wildcards:
            if host.endswith(suffix):
                return wvh
        return self.catch_all

    @classmethod
    def single(cls, cluster: Cluster, name: str) -> "RouteTable":
        """A table that sends everything to one cluster (the inbound listener)."""
        route = Route(name, name, [], [RouteDestination({}, cluster, None)], [1])
        route.retry_policy = NO_RETRY    # Istio's inbound routes do not retry
        return SingleHostTable({}, [], VirtualHost(name, cluster.port, [route]))


class SingleHostTable(RouteTable):
    """A RouteTable with only a catch-all (RouteTable.single): every authority is its host,
    found without the case-folding and wildcard search a miss costs (every inbound request)."""

    def lookup(self, authority: bytes) -> VirtualHost | None:
        return self.catch_all


def build_route_table(config: MeshConfig, services: dict[str, ServiceInfo],
                      labels: dict | None = None, namespace: str | None = None) -> RouteTable:
    """Compile ServiceEntries' default routes and VirtualServices into a RouteTable for the
    sidecar of a workload with these labels and namespace (for sourceLabels/sourceNamespace)."""

    def applies(m) -> bool:
        return applies_to_sidecars(m.gateways) and selects_workload(
            m.source_labels, m.source_namespace, labels, namespace)

    vhosts: dict[bytes, VirtualHost] = {}
    wildcards: list[tuple[bytes, VirtualHost]] = []
    catch_all: VirtualHost | None = None

    def register(host: str, ports: list[int], routes: list[Route], name: str,
                 bare: bool = True) -> None:
        """Map host:port for each port to routes, and (when bare) the host without a port."""
        nonlocal catch_all
        default_port = _default_port(ports)
        if not bare:
            # Another port of the same host owns the bare name (and the wildcard entry).
            if host == "*" or host.startswith("*."):
                return
            for alias in host_aliases(host):
                for p in ports:
                    vhosts[f"{alias}:{p}".encode()] = VirtualHost(name, p, routes)
            return
        if host == "*":
            catch_all = VirtualHost(name, default_port, routes)
            return
        if host.startswith("*."):
            wildcards.append((host[1:].encode(), VirtualHost(name, default_port, routes)))
            return
        for alias in host_aliases(host):
            for p in ports:
                vhosts[f"{alias}:{p}".encode()] = VirtualHost(name, p, routes)
            vhosts[alias.encode()] = VirtualHost(name, default_port, routes)

    for fqdn, info in services.items():
        by_port = {p: c for (p, s), c in info.clusters.items() if s is None}
        # A Host without a port means the service's port 80 when it has one (else its lowest),
        # however many ports it has; each port gets its own default route and cluster.
        bare_port = _default_port(sorted(by_port))
        for port, cluster in by_port.items():
            route = Route("default", fqdn, [], [RouteDestination({}, cluster, None)], [1])
            register(fqdn, [port], [route], f"{fqdn}:{port}", bare=port == bare_port)

    for vs in config.virtual_services:
        if not applies_to_sidecars(vs.spec.gateways):
            continue     # bound to gateways only, not to `mesh`
        vs_ports: set[int] = set()
        for host in vs.spec.hosts:
            info = services.get(qualify_host(host, vs.namespace))
            vs_ports.update(info.ports if info else ())
        routes = []
        for i, r in enumerate(vs.spec.http):
            blocks = sidecar_matches(r.match, applies)
            if blocks is not None:
                routes.append(_compile_route(r, i, vs, services, vs_ports, blocks))
        for host in vs.spec.hosts:
            fqdn = qualify_host(host, vs.namespace)
            info = services.get(fqdn)
            ports = sorted(info.ports) if info else sorted(vs_ports) or [80]
            register(fqdn, ports, routes, f"{vs.namespace}/{vs.name}")
    wildcards.sort(key=lambda item: -len(item[0]))   # most specific suffix first
    return RouteTable(vhosts, wildcards, catch_all)


def _default_port(ports: list[int]) -> int:
    """The port a Host without one addresses: 80 if the host has it, else its lowest port."""
    return 80 if 80 in ports or not ports else min(ports)


def route_destination(d, headers, vs, services: dict[str, ServiceInfo], vs_ports: set[int]) -> RouteDestination:
    """A VirtualService destination (host, subset, port) as the clusters it sends to per service port."""
    fqdn = qualify_host(d.host, vs.namespace)
    info = services.get(fqdn)
    want_port = d.port.number if d.port and d.port.number else None
    if info is None:
        info = services[fqdn] = empty_service(fqdn, vs.namespace, [want_port or 80])
    subset = d.subset

    def cluster_at(port: int) -> Cluster:
        if (port, subset) not in info.clusters:
            # A port or subset nothing defines: an empty cluster answers 503 UH. Only
            # missing keys are added: the port's real (subset-less) cluster must stay.
            for key, empty in empty_service(info.fqdn, info.namespace, [port]).clusters.items():
                info.clusters.setdefault(key, empty)
            if subset is not None:
                info.clusters[(port, subset)] = Cluster(cluster_name(port, subset, info.fqdn),
                                                        info.fqdn, port, subset, [], None)
        return info.clusters[(port, subset)]

    svc_ports = sorted(info.ports) or [80]
    default_port = want_port or svc_ports[0]
    by_port = {p: cluster_at(want_port or (p if p in info.ports else default_port)) for p in vs_ports | {80}}
    return RouteDestination(by_port, cluster_at(default_port), headers)


def _compile_route(spec: HTTPRoute, index: int, vs, services: dict[str, ServiceInfo],
                   vs_ports: set[int], matches: list) -> Route:
    destinations, weights = [], []
    for d in spec.route:
        destinations.append(route_destination(d.destination, d.headers, vs, services, vs_ports))
        weights.append(d.weight if d.weight is not None else (100 if len(spec.route) == 1 else 0))
    if len(weights) > 1 and not any(weights):
        weights = [1] * len(weights)
    blocks = [MatchBlock(m) for m in matches]
    name = spec.name or f"{vs.name}.{index}"
    route = Route(name, f"VirtualService/{vs.namespace}/{vs.name}", blocks, destinations, weights, spec)
    mirrors = [(spec.mirror, spec.mirror_percentage)] if spec.mirror is not None else []
    mirrors += [(m.destination, m.percentage) for m in spec.mirrors]
    if mirrors:
        route.mirrors = [MirrorTarget(route_destination(d, None, vs, services, vs_ports),
                                      100.0 if p is None else p.value) for d, p in mirrors]
    return route
