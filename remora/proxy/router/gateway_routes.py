"""A gateway's route tables: Gateway servers and the VirtualServices bound to them, per port.

Istio's rules (pilot/pkg/networking/core/gateway.go, docs/gateways.md):
- The Gateways that apply are those whose `selector` the gateway workload's labels
  include, in any namespace. Their servers are merged by port number: every HTTP server
  on a port shares one table (Istio's `http.<port>` route config); HTTPS servers add their
  hosts to the port's table and their certificates to its SNI choice (gateway_tls.py).
- A VirtualService serves at a Gateway when its `gateways` names it (`name` means the
  VirtualService's namespace, `ns/name` any); a match entry's own `gateways` overrides.
- Hosts: a server host `ns/host` admits only VirtualServices of `ns` (`./host`: the
  Gateway's namespace; `*/host` and a bare host: all). A VirtualService host binds where
  it intersects a server host, under the more specific of the two names.
- The Host header's port is ignored (Istio sets ignore_port_in_host_matching); a host no
  virtual host covers, or a path no route matches, is 404 NR.
- `tls.httpsRedirect` on an HTTP server: every request for its hosts gets 301 to https.
- A PASSTHROUGH server (TLS or HTTPS) reads the ClientHello's SNI and takes the first `tls`
  route whose `sniHosts` cover it; the TLS bytes go through untouched (Envoy's
  tls_inspector + tcp_proxy).
- A TCP server, and a TLS server that terminates (SIMPLE, MUTUAL, ISTIO_MUTUAL), takes the `tcp` routes of the VirtualServices bound to it whose hosts meet
  the server's (router/tcp_routes.py); the first whose match applies to the port wins.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from remora.config.gateways import (gateway_selects, host_intersection, resolve_gateway_name, selects_workload,
                                    server_hosts_for)
from remora.config.model import MeshConfig, Resource
from remora.config.model_gateway import GatewayServer
from remora.config.names import qualify_host
from remora.proxy.router.local_answer import RedirectAnswer, split_authority
from remora.proxy.router.route_table import Route, RouteTable, VirtualHost, _compile_route
from remora.proxy.router.tcp_routes import gateway_tcp_routes, gateway_tls_routes
from remora.proxy.upstream.cluster import ServiceInfo

HTTP_KINDS = frozenset({"HTTP", "HTTP2", "GRPC"})


@dataclass
class BoundServer:
    """One Gateway server as a gateway serves it."""

    gateway: Resource
    index: int          # position in spec.servers (for error paths)
    server: GatewayServer

    @property
    def path(self) -> str:
        return f"spec.servers[{self.index}]"


@dataclass
class GatewayPort:
    """Everything a gateway serves on one port number."""

    number: int
    protocol: str                      # HTTP (HTTP, HTTP2, GRPC), HTTPS, TCP, TLS (terminated, then TCP) or PASSTHROUGH
    bind: str | None
    servers: list[BoundServer] = field(default_factory=list)
    table: "GatewayRouteTable | None" = None
    hosts: dict[str, list[str]] = field(default_factory=dict)   # virtual host -> VirtualServices bound
    tls: object | None = None          # HTTPS: security/gateway_tls.PortTls (set by process/gateway.py)
    tcp_routes: list = field(default_factory=list)   # TCP: router/tcp_routes.TcpRoute, in order
    tls_routes: list = field(default_factory=list)   # PASSTHROUGH: TlsRoute (SNI hosts, TcpRoute)


class GatewayRouteTable(RouteTable):
    """Host -> VirtualHost ignoring the Host's port, as Envoy does for Istio's gateways."""

    def lookup(self, authority: bytes):
        host = split_authority(authority.lower())[0]
        vh = self.vhosts.get(host)
        if vh is not None:
            return vh
        for suffix, wvh in self.wildcards:
            if host.endswith(suffix):
                return wvh
        return self.catch_all


def selected_gateways(config: MeshConfig, labels: dict[str, str]) -> list[Resource]:
    """The Gateways whose selector picks a workload with these labels, in config order."""
    return [gw for gw in config.gateways if gateway_selects(gw.spec.selector, labels)]


def gateway_ports(config: MeshConfig, labels: dict[str, str]) -> tuple[dict[int, GatewayPort], list[str]]:
    """Servers of the selected Gateways merged by port; a server whose protocol conflicts
    with the port's first one is left out (Istio skips it too) and named in the warnings."""
    ports: dict[int, GatewayPort] = {}
    warnings: list[str] = []
    for gw in selected_gateways(config, labels):
        for i, server in enumerate(gw.spec.servers):
            declared = (server.port.protocol or "").upper()
            protocol = declared if declared in ("HTTPS", "TCP", "TLS") else "HTTP"
            if declared in ("HTTPS", "TLS") and server.tls is not None and (server.tls.mode or "PASSTHROUGH") == "PASSTHROUGH":
                protocol = "PASSTHROUGH"
            number = server.port.number
            port = ports.setdefault(number, GatewayPort(number, protocol, server.bind))
            if port.protocol != protocol or port.bind != server.bind:
                warnings.append(f"{gw.ref}: spec.servers[{i}]: skipped: port {number} already serves "
                                f"{port.protocol} (bind {port.bind or 'default'}) for another server")
                continue
            port.servers.append(BoundServer(gw, i, server))
    return ports, warnings


def build_gateway_tables(config: MeshConfig, services: dict[str, ServiceInfo], ports: dict[int, GatewayPort],
                         labels: dict[str, str], namespace: str) -> None:
    """Fill each port's route table from the VirtualServices bound to its servers."""
    for port in ports.values():
        routes_by_host: dict[str, list[Route]] = {}
        redirect_hosts: set[str] = set()
        compiled: dict[tuple, list[Route]] = {}   # per (VirtualService, Gateway): one Route each
        for bound in port.servers:
            gw, server = bound.gateway, bound.server
            gw_name = f"{gw.namespace}/{gw.name}"
            if server.tls is not None and server.tls.https_redirect and port.protocol == "HTTP":
                redirect_hosts.update(server_hosts_for(server.hosts, gw.namespace, gw.namespace))
            for vs in config.virtual_services:
                if gw_name not in (resolve_gateway_name(n, vs.namespace) for n in vs.spec.gateways):
                    continue
                hosts = server_hosts_for(server.hosts, gw.namespace, vs.namespace)
                matched = {inter for vs_host in vs.spec.hosts for server_host in hosts
                           if (inter := host_intersection(server_host, qualify_host(vs_host, vs.namespace)))}
                if not matched:
                    continue
                if port.protocol in ("TCP", "TLS"):
                    port.tcp_routes += gateway_tcp_routes(vs, gw_name, services, labels, namespace)
                    port.hosts.setdefault("*", []).append(f"{vs.namespace}/{vs.name}")
                    continue
                if port.protocol == "PASSTHROUGH":
                    for route in gateway_tls_routes(vs, gw_name, services, labels, namespace):
                        port.tls_routes.append(route)
                        for sni in route.sni_hosts:
                            port.hosts.setdefault(sni, []).append(f"{vs.namespace}/{vs.name}")
                    continue
                routes = compiled.get((vs.ref, gw_name))
                if routes is None:
                    routes = compiled[(vs.ref, gw_name)] = _routes_at_gateway(vs, gw_name, services, labels, namespace)
                for host in sorted(matched):
                    known = routes_by_host.setdefault(host, [])
                    known.extend(r for r in routes if all(r is not k for k in known))
                    port.hosts.setdefault(host, []).append(f"{vs.namespace}/{vs.name}")
        for host in redirect_hosts:
            # Envoy's require_tls on the virtual host: before any route, with or without one.
            routes_by_host[host] = [_https_redirect_route()]
            port.hosts.setdefault(host, []).append("httpsRedirect")
        port.table = _table(routes_by_host, port.number)


def _routes_at_gateway(vs: Resource, gw_name: str, services, labels, namespace) -> list[Route]:
    """The http routes of one VirtualService that apply at this gateway, compiled."""
    def applies(match) -> bool:
        if match.gateways:
            names = {resolve_gateway_name(n, vs.namespace) for n in match.gateways}
            if gw_name not in names:
                return False
        return selects_workload(match.source_labels, match.source_namespace, labels, namespace)

    routes = []
    for i, spec in enumerate(vs.spec.http):
        if spec.match:
            blocks = [m for m in spec.match if applies(m)]
            if not blocks:
                continue
        else:
            blocks = []
        routes.append(_compile_route(spec, i, vs, services, set(), blocks))
    return routes


def _https_redirect_route() -> Route:
    route = Route("https_redirect", "Gateway httpsRedirect", [], [], [])
    route.answer = RedirectAnswer(https=True)
    return route


def _table(routes_by_host: dict[str, list[Route]], port: int) -> GatewayRouteTable:
    vhosts, wildcards, catch_all = {}, [], None
    for host, routes in routes_by_host.items():
        vhost = VirtualHost(f"{host}:{port}", port, routes)
        if host == "*":
            catch_all = vhost
        elif host.startswith("*."):
            wildcards.append((host[1:].encode(), vhost))
        else:
            vhosts[host.encode()] = vhost
    wildcards.sort(key=lambda item: -len(item[0]))
    return GatewayRouteTable(vhosts, wildcards, catch_all)
