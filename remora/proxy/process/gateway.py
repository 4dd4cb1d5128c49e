"""`remora gateway`: the worker's listeners come from the Gateways that select it.

A gateway has no app and no capture: no outbound 15001 or inbound 15006 listener. Each
port number of the selected Gateways' servers is one listener (plaintext HTTP, or HTTPS
terminating TLS by SNI), routed by that port's table (router/gateway_routes.py), and every
route goes to mesh services as a sidecar's outbound does: the same clusters, auto mTLS with
the gateway's own certificate (so AuthorizationPolicy at the backend sees the gateway's
principal), Istio metrics with reporter="source".

Listeners follow the config: a pushed Gateway that adds a port opens a listener, one that
drops a port closes it (connections in flight finish), and a port whose TLS settings
change (mode, versions, ciphers: see gateway_tls.py) gets a new listener. `--port-map
80=8080` listens for server port 80 on local port 8080, the role of the gateway Service's
targetPort (binding 80 needs root; Istio's gateway listens on 8080 for port 80 too).
"""
from __future__ import annotations

import asyncio

from remora.config.loader import ConfigError, ConfigIssue
from remora.config.model import MeshConfig
from remora.proxy.router.gateway_routes import GatewayPort, build_gateway_tables, gateway_ports
from remora.proxy.codec.tls_sni import NotTls, client_hello_sni
from remora.proxy.router.tcp_routes import pick_route, pick_tls_route
from remora.proxy.upstream.tcp_proxy import TcpSession, cluster_target
from remora.proxy.security.credentials import DirectoryCredentials
from remora.proxy.security.gateway_credentials import CredentialContexts
from remora.proxy.security.gateway_tls import GatewayTlsError, PortTls
from remora.proxy import log_levels

log = log_levels.logger("main")


def credential_contexts(options) -> CredentialContexts | None:
    """Where this gateway reads credentialName: the source the CLI handed in
    (--credentials-from-kubernetes), else --credentials-dir, else nowhere (None)."""
    source = options.credential_source
    if source is None and options.credentials_dir:
        source = DirectoryCredentials(options.credentials_dir)
    return CredentialContexts(source) if source is not None else None


def compile_gateway(config: MeshConfig, services, options,
                    credentials: CredentialContexts | None = None) -> tuple[dict[int, GatewayPort], list[str]]:
    """The ports this gateway serves, with route tables and TLS; ConfigError (naming
    resource and field) when a server's certificates cannot be used. `credentials`: the
    worker's (kept across versions); None makes one from `options` (a check at startup)."""
    if credentials is None:
        credentials = credential_contexts(options)
    identity = options.identity
    ports, warnings = gateway_ports(config, identity.labels)
    build_gateway_tables(config, services, ports, identity.labels, identity.namespace)
    issues = []
    for port in ports.values():
        if port.protocol not in ("HTTPS", "TLS"):
            continue
        servers = [([h.rpartition("/")[2] for h in b.server.hosts], b.server.tls, f"{b.path}.tls")
                   for b in port.servers]
        try:
            port.tls = PortTls(servers, credentials)
        except GatewayTlsError as error:
            bound = next(b for b in port.servers if error.path.startswith(b.path))
            issues.append(ConfigIssue(bound.gateway.source, bound.gateway.ref, error.path, error.message))
    if issues:
        raise ConfigError(issues)
    if credentials is not None:
        credentials.retain({b.server.tls.credential_name for port in ports.values() for b in port.servers
                            if b.server.tls is not None and b.server.tls.credential_name})
    return ports, warnings


def listener_key(port: GatewayPort) -> tuple:
    """What identifies a port's listener: a change of any part replaces it."""
    tls = port.tls
    return (port.number, port.bind, tls.key if tls is not None else None, port.protocol)


def reconcile(worker, make_listener) -> list:
    """Bring the worker's gateway listeners in line with its snapshot: (listeners to start).

    Listeners whose key left the snapshot stop accepting and are dropped from the worker
    once their connections are done (their connections keep the old listener)."""
    wanted = {listener_key(port): port for port in worker.snapshot.gateway_ports.values()}
    current = {listener.gateway_key: listener for listener in worker.listeners}
    started = []
    for key, listener in current.items():
        if key not in wanted:
            log.info("port %s no longer served by this config: closing its listener", key[0])
            listener.stop_accepting()
            worker.listeners.remove(listener)
            worker.retired.append(listener)
    for key, port in wanted.items():
        if key not in current:
            listener = make_listener(port, key)
            worker.listeners.append(listener)
            started.append(listener)
    return started


async def start_listener(listener) -> None:
    """Start a listener a pushed config added; a port that cannot be bound is logged (the
    config stays applied: its other ports serve, and /config_dump shows what is bound)."""
    try:
        await listener.start(True)
    except OSError as error:
        log.error("cannot listen on %s:%s for server port %s: %s", listener.host,
                  listener.port, listener.gateway_port, error)


def gateway_dump(snapshot, credentials: CredentialContexts | None = None) -> dict:
    """What /config_dump shows of a gateway: per port, protocol, virtual hosts and who bound
    them; and each credentialName's origin, serial and expiry (or why it is refused)."""
    return {
        "credentials": credentials.dump() if credentials is not None else None,
        "ports": [{"port": port.number, "protocol": port.protocol, "bind": port.bind,
                   "servers": [f"{b.gateway.ref} {b.path}" for b in port.servers],
                   "virtual_hosts": {host: sorted(set(refs)) for host, refs in sorted(port.hosts.items())}}
                  for port in sorted(snapshot.gateway_ports.values(), key=lambda p: p.number)],
        "warnings": list(snapshot.gateway_warnings),
    }


class NoTcpRoute(asyncio.Protocol):
    """A connection to a TCP server no tcp route takes: closed at once (Envoy: no filter
    chain), counted in the listener's `no_route`."""

    def __init__(self, listener) -> None:
        listener.stats.no_route += 1

    def connection_made(self, transport) -> None:
        transport.close()


def tcp_protocol_factory(listener):
    """The protocol factory of a TCP server port: each connection takes the first tcp route
    of the current snapshot that applies, a destination drawn by weight."""
    number = listener.gateway_port

    def make():
        port = listener.worker.snapshot.gateway_ports.get(number)
        route = pick_route(port.tcp_routes, number) if port is not None else None
        if route is None:
            return NoTcpRoute(listener)
        return TcpSession(listener, cluster_target(route.choose().cluster_for(number)), inbound=False)
    return make


class SniSniffer(asyncio.Protocol):
    """A PASSTHROUGH connection until its ClientHello names a server: then the TcpSession of
    the tls route its SNI takes (Envoy's tls_inspector + tcp_proxy; nothing is decrypted).
    No route, no TLS, or no complete ClientHello within --protocol-detection-timeout: the
    connection is closed, counted in `no_route`."""

    def __init__(self, listener) -> None:
        self.listener = listener
        self.buffer = b""
        self.transport = None
        self.timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.timer = self.listener.loop.call_later(self.listener.settings.detection_timeout, self._refuse)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            sni = client_hello_sni(self.buffer)
        except NotTls:
            self._refuse()
            return
        if sni is None:
            return          # the ClientHello is not complete yet
        self.timer.cancel()
        number = self.listener.gateway_port
        port = self.listener.worker.snapshot.gateway_ports.get(number)
        route = pick_tls_route(port.tls_routes, number, sni) if port is not None else None
        if route is None:
            self._refuse()
            return
        session = TcpSession(self.listener, cluster_target(route.choose().cluster_for(number)), inbound=False)
        self.transport.set_protocol(session)
        session.take_over(self.transport, self.buffer)

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _refuse(self) -> None:
        self.timer.cancel()
        self.listener.stats.no_route += 1
        self.transport.close()
