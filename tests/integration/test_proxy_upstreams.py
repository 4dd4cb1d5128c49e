"""Upstream connection settings over real sockets: connect timeout, DNS-resolved endpoints."""
from __future__ import annotations

import json
import socket
import time

import pytest

from tests.integration.client import RawClient
from tests.integration.conftest import destination_rule, service
from tests.integration.proxy_process import ProxyProcess


@pytest.fixture
def unaccepting_port():
    """A port whose accept queue is full, so new connects hang (SYNs are dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel completes connects to a full accept queue; cannot provoke a connect timeout")
    except (socket.timeout, TimeoutError):
        pass
    finally:
        probe.close()
    yield port
    for s in fillers:
        s.close()
    server.close()


def test_connect_timeout_gives_503_uf(unaccepting_port):
    """connectTimeout bounds each connect; Istio's default policy retries it twice, then 503 UF,URX."""
    p = ProxyProcess(service("hang", [(unaccepting_port, {})])
                     + destination_rule("hang", "{connectionPool: {tcp: {connectTimeout: 500ms}}}")).wait_ready()
    try:
        c = RawClient(p.outbound_port)
        start = time.time()
        r = c.request("GET", "/", "hang")
        elapsed = time.time() - start
        assert r.status == 503 and b"connection timeout" in r.body
        assert 1.4 <= elapsed < 8     # three attempts of 500 ms, plus backoff
        stats = {s["name"]: s["value"] for s in json.loads(p.admin_get("/stats?format=json"))["stats"]}
        prefix = "cluster.outbound|80||hang.default.svc.cluster.local."
        assert stats[prefix + "upstream_cx_connect_timeout"] == 3
        assert stats[prefix + "upstream_rq_retry"] == 2
        assert '"GET / HTTP/1.1" 503 UF,URX' in p.access_log()
    finally:
        p.stop()


def test_dns_resolution_endpoint_is_resolved_at_connect(upstreams):
    """A DNS-resolution ServiceEntry endpoint given by name (localhost) is resolved and reached."""
    port = upstreams.ports["echo"]
    p = ProxyProcess(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: named}}
spec:
  hosts: [named.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints: [{{address: localhost, ports: {{http: {port}}}}}]
""").wait_ready()
    try:
        r = RawClient(p.outbound_port).request("GET", "/dns", "named.example.com")
        assert r.status == 200 and r.json()["path"] == "/dns"
    finally:
        p.stop()


def test_tcp_keepalive_is_set_on_upstream_sockets(upstreams):
    """connectionPool.tcp.tcpKeepalive turns on TCP keepalive (with its idle time) on upstream connections."""
    import subprocess
    port = upstreams.ports["v2"]
    p = ProxyProcess(service("kept", [(port, {})]) + destination_rule(
        "kept", "{connectionPool: {tcp: {tcpKeepalive: {time: 77s, interval: 5s, probes: 3}}}}")).wait_ready()
    try:
        assert RawClient(p.outbound_port).request("GET", "/", "kept").status == 200
        out = subprocess.run(["ss", "-tnoH", "state", "established", "dst", f"127.0.0.1:{port}"],
                             capture_output=True, text=True).stdout
        if not out.strip():
            pytest.skip("ss shows no sockets here")
        assert "keepalive" in out, out
    finally:
        p.stop()
