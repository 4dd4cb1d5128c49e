"""What a captured connection is, decided when it arrives: HTTP, TCP, passthrough or refused.

With `remora proxy --capture` the listeners receive connections iptables redirected to
them (`remora iptables`). Each starts with a Sniffer protocol, which asks its listener's
capture for a decision:

outbound (15001), OutboundCapture:
  - not redirected (the app dialled 15001 itself): explicit mode, HTTP routed by Host.
  - loop guard: the original destination is one of the proxy's own ports on a local
    address: refused (closed, `capture.loop_refused`).
  - the original destination is a mesh service port declared non-HTTP (TCP, TLS, ...):
    TCP proxy to the service's endpoints (mTLS to sidecar endpoints).
  - else the first bytes decide: a request line -> the HTTP codec, routed by Host; a Host
    that matches no route falls back to the original destination's service, then to
    passthrough (ALLOW_ANY: forwarded to the original destination) or a 502 NR
    (REGISTRY_ONLY). Not HTTP (or nothing within SNIFF_TIMEOUT: a server-first protocol)
    -> TCP: to the service when the destination is one, else passthrough / closed.

inbound (15006): see inbound_capture.py.
"""
from __future__ import annotations

import asyncio
import socket

from remora.intercept.original_dst import redirected
from remora.proxy.router.tcp_routes import pick_route
from remora.proxy.upstream.tcp_proxy import TcpSession, TcpTarget, cluster_target
from remora.proxy.upstream.cluster import Cluster, ClusterStats, Endpoint
from remora.proxy.telemetry.counters import Counters
from remora.proxy.codec.downstream import DownstreamHttp1
from remora.proxy.router.exchange import Exchange
from remora.proxy.router.route_table import RouteTable
from remora.proxy.process.cluster_setup import prepare_cluster

ALLOW_ANY, REGISTRY_ONLY = "ALLOW_ANY", "REGISTRY_ONLY"
PROXY_PORTS = frozenset({15000, 15001, 15006, 15021, 15090})
SNIFF_TIMEOUT = 1.0          # no first byte by then: a server-first protocol, proxied as TCP
SNIFF_BYTES = 24             # an HTTP method plus its space fits in this
PASSTHROUGH = "PassthroughCluster"     # Envoy/Istio's names for ALLOW_ANY and REGISTRY_ONLY
BLACKHOLE = "BlackHoleCluster"
PASSTHROUGH_CACHE = 1024     # passthrough destinations kept compiled per worker


class CaptureStats(Counters):
    """What the capture decided, per listener (`listener.<address>.capture.*`)."""

    __slots__ = ("redirected", "explicit", "loop_refused", "http", "tcp", "passthrough",
                 "registry_only_refused", "sniff_timeout")


def looks_like_http(data: bytes) -> bool | None:
    """True for an HTTP/1 request line start (`METHOD `), False for anything else, None: need more bytes."""
    for i, byte in enumerate(data[:SNIFF_BYTES]):
        if byte == 0x20:
            return i > 0
        if not (0x41 <= byte <= 0x5A or byte in (0x2D, 0x5F)):   # A-Z, '-', '_'
            return False
    return None if len(data) < SNIFF_BYTES else False


def is_local_address(ip: str) -> bool:
    """Whether this host (this network namespace) owns the address: binding to it works."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


class BlackHoleExchange(Exchange):
    """REGISTRY_ONLY: a request for a destination outside the mesh answers 502 NR (Istio's BlackHoleCluster)."""

    __slots__ = ()

    def start(self) -> None:
        self.local_reply(502, b"", "NR")


class Captured:
    """What the HTTP codec of a captured connection needs for its fallback route."""

    __slots__ = ("original", "destination")

    def __init__(self, original: tuple[str, int], destination) -> None:
        self.original = original
        self.destination = destination     # MeshDestination or None


class Sniffer(asyncio.Protocol):
    """The first protocol of a connection on a capture listener: asks for a decision,
    reads the first bytes when it needs them, then hands the transport over."""

    def __init__(self, capture, tls: bool = False) -> None:
        self.capture = capture
        self.tls = tls
        self.transport = None
        self.buffer = b""
        self.timer = None
        self.state = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.state = self.capture.on_connect(self, transport)
        if self.state is not None:
            self.timer = self.capture.loop.call_later(SNIFF_TIMEOUT, self._timeout)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        verdict = looks_like_http(self.buffer)
        if verdict is not None:
            self._decide(verdict)

    def eof_received(self):
        self._decide(looks_like_http(self.buffer) is True)
        return True

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _timeout(self) -> None:
        self.timer = None
        self.capture.stats.sniff_timeout += 1
        self._decide(False)

    def _decide(self, http: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport.is_closing():
            return
        self.capture.on_sniffed(self, http)

    def hand_over(self, protocol) -> None:
        """Give the transport (and the bytes read so far) to the protocol that serves it."""
        self.transport.set_protocol(protocol)
        if isinstance(protocol, TcpSession):
            protocol.take_over(self.transport, self.buffer)
            return
        protocol.connection_made(self.transport)
        if self.buffer:
            protocol.data_received(self.buffer)


def mesh_target(snapshot, destination, address: str | None = None) -> TcpTarget | None:
    """The TCP target of a mesh service port: the cluster its VirtualService's tcp routes
    pick for this connection (router/tcp_routes.py), else the port's default cluster;
    the balancer's choice first."""
    routes = snapshot.tcp_routes.get(destination.fqdn)
    route = pick_route(routes, destination.port, address) if routes else None
    if route is not None:
        return cluster_target(route.choose().cluster_for(destination.port))
    info = snapshot.services.get(destination.fqdn)
    cluster = info.clusters.get((destination.port, None)) if info is not None else None
    return cluster_target(cluster) if cluster is not None else None


class OutboundCapture:
    """The outbound listener's decisions for captured connections (see the module doc)."""

    def __init__(self, listener, policy: str) -> None:
        self.listener = listener
        self.worker = listener.worker
        self.loop = listener.loop
        self.default_policy = policy   # --outbound-traffic-policy; a Sidecar resource overrides it
        self.stats = CaptureStats()
        self.own_ports = PROXY_PORTS | {p for p in (self.worker.options.outbound_port,
                                                    self.worker.options.inbound_port,
                                                    self.worker.options.admin_port) if p}
        self.passthrough: dict[tuple[str, int], object] = {}
        self.passthrough_stats = ClusterStats()   # one set for every passthrough destination

    @property
    def policy(self) -> str:
        """ALLOW_ANY or REGISTRY_ONLY for captured traffic to no mesh service: the Sidecar
        resource's outboundTrafficPolicy in this snapshot, else the flag."""
        return self.worker.snapshot.outbound_traffic_policy or self.default_policy

    def on_connect(self, sniffer: Sniffer, transport):
        """Decide what can be decided before any byte; None when the sniffer is done."""
        sock = transport.get_extra_info("socket")
        original = redirected(sock) if sock is not None else None
        if original is None:
            self.stats.explicit += 1
            sniffer.hand_over(self._http(None))
            return None
        self.stats.redirected += 1
        if original[1] in self.own_ports and is_local_address(original[0]):
            self.stats.loop_refused += 1
            transport.abort()
            return None
        index = self.worker.snapshot.destinations
        destination = index.find(*original) if index is not None else None
        if destination is not None and destination.opaque:
            self._tcp(sniffer, original, destination)
            return None
        sniffer.original = original
        sniffer.destination = destination
        return "sniffing"

    def on_sniffed(self, sniffer: Sniffer, http: bool) -> None:
        if http:
            self.stats.http += 1
            sniffer.hand_over(self._http(Captured(sniffer.original, sniffer.destination)))
        else:
            self._tcp(sniffer, sniffer.original, sniffer.destination)

    def _http(self, captured: Captured | None):
        conn = DownstreamHttp1(self.listener)
        conn.capture = captured
        return conn

    def _tcp(self, sniffer: Sniffer, original, destination) -> None:
        self.stats.tcp += 1
        target = mesh_target(self.worker.snapshot, destination, original[0]) if destination is not None else None
        if target is None:
            if self.policy == REGISTRY_ONLY:
                self.stats.registry_only_refused += 1
                sniffer.transport.close()
                return
            self.stats.passthrough += 1
            target = TcpTarget(PASSTHROUGH, [(original[0], original[1], None)])
        sniffer.hand_over(TcpSession(self.listener, target, inbound=False))

    # -- HTTP: a Host that matches no route -------------------------------------------------
    def fallback(self, sink, head, stats) -> Exchange:
        """The exchange for a captured request whose Host matched no virtual host."""
        captured: Captured = sink.capture
        listener = self.listener
        if captured.destination is not None:
            vhost = self.worker.snapshot.outbound.lookup(captured.destination.authority)
            found = vhost.route(head) if vhost is not None else None
            if found is not None:
                return Exchange(sink, head, listener, found[0], found[1], vhost.port)
        if self.policy == REGISTRY_ONLY:
            self.stats.registry_only_refused += 1
            stats.no_route += 1
            return BlackHoleExchange(sink, head, listener, None, None, 0)
        self.stats.passthrough += 1
        vhost = self._passthrough_vhost(captured.original)
        found = vhost.route(head)
        return Exchange(sink, head, listener, found[0], found[1], vhost.port)

    def _passthrough_vhost(self, original: tuple[str, int]):
        vhost = self.passthrough.get(original)
        if vhost is None:
            if len(self.passthrough) >= PASSTHROUGH_CACHE:
                self.passthrough.clear()
            cluster = Cluster(PASSTHROUGH, PASSTHROUGH, original[1], None,
                              [Endpoint(original[0], original[1], {})], None)
            cluster.stats = self.passthrough_stats
            prepare_cluster(cluster, self.worker.pools)
            vhost = self.passthrough[original] = RouteTable.single(cluster, "allow_any").catch_all
        return vhost
