"""VirtualService `tcp` routes: where a TCP connection goes (Istio's TCPRoute, Envoy's
tcp_proxy with weighted_clusters).

- A route applies when one of its `match` entries does (none: always): `port` is the
  port the connection came to (the service port at a sidecar, the server port at a
  gateway), `destinationSubnets` holds the address it was sent to, `sourceLabels` /
  `sourceNamespace` select this workload, `gateways` names where it applies. The first
  route that applies wins, per connection.
- Destinations are weighted (smooth weighted round robin, as http routes): the
  tcp-traffic-shifting task's 80/20 split is exactly 80/20 over 100 connections.
- Sidecars apply the tcp routes of their VirtualServices to captured TCP connections
  (remora/intercept); gateways to their TCP servers (process/gateway.py).
"""
from __future__ import annotations

import ipaddress

from remora.config.gateways import applies_to_sidecars, resolve_gateway_name, selects_workload
from remora.config.model import MeshConfig, Resource
from remora.config.names import qualify_host, wildcard_covers
from remora.proxy.router.route_table import route_destination
from remora.proxy.upstream.balancer import SmoothWeightedRoundRobin


class TcpRoute:
    """One tcp route of a VirtualService, compiled."""

    __slots__ = ("name", "matches", "destinations", "_picker")

    def __init__(self, name: str, matches: list, destinations: list, weights: list[int]) -> None:
        self.name = name
        self.matches = [(m.port, [ipaddress.ip_network(s, strict=False) for s in m.destination_subnets])
                        for m in matches]
        self.destinations = destinations
        self._picker = SmoothWeightedRoundRobin(destinations, weights) if len(destinations) > 1 else None

    def applies(self, port: int, address: str | None = None) -> bool:
        """Whether a connection to `port` (and original `address`, when known) takes this route."""
        if not self.matches:
            return True
        for want_port, subnets in self.matches:
            if want_port is not None and want_port != port:
                continue
            if subnets and (address is None or not _in_any(address, subnets)):
                continue
            return True
        return False

    def choose(self):
        """The RouteDestination for this connection, following the weights."""
        return self.destinations[0] if self._picker is None else self._picker.next()


def _in_any(address: str, subnets: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in subnet for subnet in subnets)


def compile_tcp_routes(vs: Resource, services, applies, specs=None, kind=TcpRoute) -> list[TcpRoute]:
    """The tcp (or tls: `specs`, `kind`) routes of one VirtualService whose match entries
    apply (`applies(entry)`)."""
    routes = []
    for i, spec in enumerate(vs.spec.tcp if specs is None else specs):
        matches = [m for m in spec.match if applies(m)]
        if spec.match and not matches:
            continue         # every entry is for other gateways or workloads
        destinations = [route_destination(d.destination, None, vs, services, set()) for d in spec.route]
        weights = [d.weight if d.weight is not None else (100 if len(spec.route) == 1 else 0) for d in spec.route]
        if len(weights) > 1 and not any(weights):
            weights = [1] * len(weights)
        routes.append(kind(f"{vs.namespace}/{vs.name}.{'tcp' if kind is TcpRoute else 'tls'}.{i}", matches,
                           destinations, weights))
    return routes


def sidecar_tcp_routes(config: MeshConfig, services, labels: dict | None,
                       namespace: str | None) -> dict[str, list[TcpRoute]]:
    """FQDN -> the tcp routes a sidecar applies to connections for that service."""
    def applies(m) -> bool:
        return applies_to_sidecars(m.gateways) and selects_workload(m.source_labels, m.source_namespace,
                                                                    labels, namespace)
    found: dict[str, list[TcpRoute]] = {}
    for vs in config.virtual_services:
        if not vs.spec.tcp or not applies_to_sidecars(vs.spec.gateways):
            continue
        routes = compile_tcp_routes(vs, services, applies)
        for host in vs.spec.hosts:
            found.setdefault(qualify_host(host, vs.namespace), []).extend(routes)
    return found


def _at_gateway(vs: Resource, gateway: str, labels, namespace):
    """The predicate of a match entry applying at `gateway` (ns/name) for this workload."""
    def applies(m) -> bool:
        if m.gateways and gateway not in {resolve_gateway_name(n, vs.namespace) for n in m.gateways}:
            return False
        return selects_workload(m.source_labels, m.source_namespace, labels, namespace)
    return applies


def gateway_tcp_routes(vs: Resource, gateway: str, services, labels, namespace) -> list[TcpRoute]:
    """The tcp routes of a VirtualService bound to `gateway` (ns/name) that apply there."""
    return compile_tcp_routes(vs, services, _at_gateway(vs, gateway, labels, namespace))


class TlsRoute(TcpRoute):
    """A tls route: a tcp route that also matches the ClientHello's SNI."""

    __slots__ = ("sni_hosts", "match_snis")

    def __init__(self, name: str, matches: list, destinations: list, weights: list[int]) -> None:
        super().__init__(name, matches, destinations, weights)
        # Per match entry, beside self.matches (port, subnets): the SNI patterns it takes.
        self.match_snis = [[host.lower() for host in m.sni_hosts] for m in matches]
        self.sni_hosts = sorted({host for hosts in self.match_snis for host in hosts})

    def applies_sni(self, port: int, sni: str) -> bool:
        for (want_port, _subnets), hosts in zip(self.matches, self.match_snis):
            if want_port is not None and want_port != port:
                continue
            if any(wildcard_covers(host, sni) for host in hosts):
                return True
        return False


def gateway_tls_routes(vs: Resource, gateway: str, services, labels, namespace) -> list[TlsRoute]:
    """The tls routes of a VirtualService bound to `gateway` whose match entries apply there."""
    return compile_tcp_routes(vs, services, _at_gateway(vs, gateway, labels, namespace), vs.spec.tls, TlsRoute)


def pick_tls_route(routes: list[TlsRoute], port: int, sni: str) -> TlsRoute | None:
    """The first tls route taking a connection with this SNI to `port`, or None."""
    for route in routes:
        if route.applies_sni(port, sni):
            return route
    return None


def pick_route(routes: list[TcpRoute], port: int, address: str | None = None) -> TcpRoute | None:
    """The first route a connection to `port` (original `address`) takes, or None."""
    for route in routes:
        if route.applies(port, address):
            return route
    return None
