"""The istio.io TCP Traffic Shifting task on `remora gateway`: Istio's tcp-echo gateway
YAML (TCP server on 31400, tcp routes by port), with two tcp-echo versions on loopback that
answer like the sample's (`one <line>` and `two <line>`)."""
from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import pytest

from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_gateway_ingress import SAMPLES
from tests.integration.upstreams import LoopThread

pytestmark = pytest.mark.integration


class TcpEcho(asyncio.Protocol):
    """The tcp-echo sample's server: each line comes back prefixed with its version."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.prefix + b" " + data)


class EchoVersions(LoopThread):
    name = "tcp-echo v1 and v2"

    async def _start(self) -> None:
        self.ports, self.servers = {}, []
        for version, prefix in (("v1", b"one"), ("v2", b"two")):
            server = await self.loop.create_server(lambda p=prefix: TcpEcho(p), "127.0.0.1", 0)
            self.servers.append(server)
            self.ports[version] = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def echoes():
    servers = EchoVersions().start()
    yield servers
    servers.stop()


def registry(echoes) -> str:
    """tcp-echo as the registry would have it: one TCP port, a v1 and a v2 workload."""
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp: {echoes.ports["v1"]}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp: {echoes.ports["v2"]}}}, labels: {{version: v2}}}}
---
"""


def say(port: int, line: bytes) -> bytes:
    """One connection, one line (as `nc` in the task): the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(line)
            return sock.recv(1024)
        except ConnectionResetError:   # closed with our line unread: the kernel resets
            return b""


def test_all_connections_go_to_v1(echoes):
    """tcp-echo-all-v1.yaml: every connection through the gateway's TCP port reaches v1."""
    gateway = ProxyProcess(registry(echoes) + (SAMPLES / "tcp-echo-all-v1.yaml").read_text(),
                           gateway_ports=(31400,)).wait_ready()
    try:
        answers = [say(gateway.ports[31400], b"hello %d\n" % i) for i in range(10)]
        assert answers == [b"one hello %d\n" % i for i in range(10)]
        stats = gateway.admin_get("/stats")
        assert "tcp.gateway_31400.downstream_cx_total: 10" in stats
        metrics = gateway.admin_get("/stats/prometheus")
        assert any(line.startswith("istio_tcp_connections_opened_total{") and 'reporter="source"' in line
                   and 'destination_service="tcp-echo.default.svc.cluster.local"' in line
                   for line in metrics.splitlines()), metrics[-2000:]
    finally:
        gateway.stop()


def test_weighted_routes_split_connections_80_20(echoes):
    """tcp-echo-20-v2.yaml replacing the all-v1 route: of 100 connections, 80 reach v1 and 20 v2."""
    base = (SAMPLES / "tcp-echo-all-v1.yaml").read_text()
    without_route = base[:base.rindex("---")]     # its Gateway and DestinationRule
    mesh = registry(echoes) + without_route + "---\n" + (SAMPLES / "tcp-echo-20-v2.yaml").read_text()
    gateway = ProxyProcess(mesh, gateway_ports=(31400,)).wait_ready()
    try:
        versions = Counter(say(gateway.ports[31400], b"x\n").split()[0] for _ in range(100))
        assert versions == {b"one": 80, b"two": 20}
    finally:
        gateway.stop()


def test_a_port_without_a_tcp_route_closes_the_connection(echoes):
    """A TCP server no tcp route serves: the connection is closed at once, counted as no_route."""
    mesh = registry(echoes) + (SAMPLES / "tcp-echo-all-v1.yaml").read_text().replace("- port: 31400", "- port: 31401")
    gateway = ProxyProcess(mesh, gateway_ports=(31400,)).wait_ready()
    try:
        assert say(gateway.ports[31400], b"hello\n") == b""
        assert "http.gateway_31400.no_route: 1" in gateway.admin_get("/stats")
    finally:
        gateway.stop()


def test_a_tls_server_terminates_then_routes_tcp(echoes, tmp_path):
    """protocol TLS with mode SIMPLE: the gateway terminates TLS with its credential, then the
    tcp route sends the plaintext stream to tcp-echo v1."""
    import shutil
    import ssl

    from tests.integration.tls_origin_servers import TestPki
    pki = TestPki(str(tmp_path))
    ca = pki.ca("example.com")
    cert, key = pki.leaf("example.com", "echo.example.com", dns=["echo.example.com"])
    credential = tmp_path / "credentials" / "echo-credential"
    credential.mkdir(parents=True)
    shutil.copy(cert, credential / "tls.crt")
    shutil.copy(key, credential / "tls.key")
    mesh = registry(echoes) + """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: echo-tls}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31443, name: tls, protocol: TLS}
    hosts: [echo.example.com]
    tls: {mode: SIMPLE, credentialName: echo-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-tls}
spec:
  hosts: [echo.example.com]
  gateways: [echo-tls]
  tcp:
  - match: [{port: 31443}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""
    gateway = ProxyProcess(mesh, "--credentials-dir", str(tmp_path / "credentials"),
                           gateway_ports=(31443,)).wait_ready()
    try:
        context = ssl.create_default_context(cafile=ca)
        with socket.create_connection(("127.0.0.1", gateway.ports[31443]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="echo.example.com") as sock:
                sock.sendall(b"over tls\n")
                assert sock.recv(1024) == b"one over tls\n"
    finally:
        gateway.stop()



def test_idle_tcp_connections_close_after_the_destination_rules_idle_timeout(echoes):
    """connectionPool.tcp.idleTimeout: 2s on tcp-echo's DestinationRule: a connection that
    stays silent is closed by the gateway (counted in tcp.<listener>.idle_timeout), one that
    keeps talking for longer stays open."""
    sample = (SAMPLES / "tcp-echo-all-v1.yaml").read_text()
    rule = "spec:\n  host: tcp-echo\n"     # the DestinationRule's, not the route's destination
    assert sample.count(rule) == 1
    sample = sample.replace(rule, rule + "  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 2s}}}\n")
    gateway = ProxyProcess(registry(echoes) + sample, gateway_ports=(31400,)).wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", gateway.ports[31400]), timeout=15) as silent, \
                socket.create_connection(("127.0.0.1", gateway.ports[31400]), timeout=15) as talker:
            for sock in (silent, talker):
                sock.sendall(b"hi\n")
                assert sock.recv(1024) == b"one hi\n"
            started = time.monotonic()
            while time.monotonic() - started < 5:        # the talker says something every 0.2 s
                talker.sendall(b"again\n")
                assert talker.recv(1024) == b"one again\n"
                time.sleep(0.2)
            assert silent.recv(1024) == b""              # closed by the gateway meanwhile
            talker.sendall(b"still\n")
            assert talker.recv(1024) == b"one still\n"
        assert "tcp.gateway_31400.idle_timeout: 1" in gateway.admin_get("/stats")
    finally:
        gateway.stop()
