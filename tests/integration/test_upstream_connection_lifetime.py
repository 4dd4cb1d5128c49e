"""How long upstream connections live: DestinationRule `connectionPool.http.idleTimeout` on
HTTP/2 upstreams, and `connectionPool.tcp.maxConnectionDuration` on HTTP/1.1 and HTTP/2
upstreams (Envoy's common_http_protocol_options idle_timeout and max_connection_duration,
as Istio sets them), seen through the cluster's counters.

The app speaks HTTP/1.1 and h2c on one port (dual_protocol_server.py); a ServiceEntry port
named `http` reaches it over HTTP/1.1, one with protocol HTTP2 over HTTP/2. The
DestinationRules have the shape of Istio's reference (connectionPool on trafficPolicy).
"""
from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.integration.dual_protocol_server import DualProtocolServer
from tests.integration.proxy_process import ProxyProcess, wait_until

pytestmark = pytest.mark.integration


def service(name: str, port: int, protocol: str, pool: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: {protocol.lower()}, protocol: {protocol}}}]
  endpoints: [{{address: 127.0.0.1, ports: {{{protocol.lower()}: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {name}.example.test
  trafficPolicy:
    connectionPool: {pool}
---
"""


def cluster_stat(proxy: ProxyProcess, name: str, stat: str) -> int:
    stats = {s["name"]: s["value"] for s in json.loads(proxy.admin_get("/stats?format=json"))["stats"]}
    return stats[f"cluster.outbound|80||{name}.example.test.{stat}"]


def get(client: http.client.HTTPConnection, host: str) -> int:
    client.request("GET", "/", headers={"Host": host})
    response = client.getresponse()
    response.read()
    return response.status


def test_http2_upstream_connections_close_after_the_idle_timeout():
    """http.idleTimeout: 1s on an HTTP/2 upstream: the connection is closed once it has been
    without a stream that long (before, HTTP/2 upstream connections were never swept)."""
    with DualProtocolServer() as app:
        proxy = ProxyProcess(service("h2idle", app.port, "HTTP2", "{http: {idleTimeout: 1s}}")).wait_ready(30)
        try:
            client = http.client.HTTPConnection("127.0.0.1", proxy.outbound_port, timeout=15)
            assert get(client, "h2idle.example.test") == 200
            assert cluster_stat(proxy, "h2idle", "upstream_cx_active") == 1
            wait_until(lambda: cluster_stat(proxy, "h2idle", "upstream_cx_active") == 0,
                       "the idle HTTP/2 connection to close", proxy, timeout=15)
            assert get(client, "h2idle.example.test") == 200        # a new one is made
            assert cluster_stat(proxy, "h2idle", "upstream_cx_total") == 2
            client.close()
        finally:
            proxy.stop()


@pytest.mark.parametrize("protocol", ["HTTP", "HTTP2"])
def test_max_connection_duration_replaces_old_connections_without_failing_requests(protocol):
    """tcp.maxConnectionDuration: 1s: a client sending a request every 0.2 s for 3 s gets
    every answer while the proxy moves to new upstream connections (counted in
    upstream_cx_max_duration_reached); without it one connection carries them all."""
    with DualProtocolServer() as app:
        yaml = (service("aged", app.port, protocol, "{tcp: {maxConnectionDuration: 1s}}")
                + service("ageless", app.port, protocol, "{tcp: {connectTimeout: 5s}}"))
        proxy = ProxyProcess(yaml).wait_ready(30)
        try:
            client = http.client.HTTPConnection("127.0.0.1", proxy.outbound_port, timeout=15)
            started = time.monotonic()
            while time.monotonic() - started < 3:
                assert get(client, "aged.example.test") == 200
                assert get(client, "ageless.example.test") == 200
                time.sleep(0.2)
            client.close()
            assert cluster_stat(proxy, "aged", "upstream_cx_max_duration_reached") >= 1
            assert cluster_stat(proxy, "aged", "upstream_cx_total") >= 2
            assert cluster_stat(proxy, "ageless", "upstream_cx_max_duration_reached") == 0
            assert cluster_stat(proxy, "ageless", "upstream_cx_total") == 1
        finally:
            proxy.stop()
