"""DestinationRule `connectionPool.http.useClientProtocol: true` end to end: a request goes
upstream in the HTTP version it came in with (Envoy's USE_DOWNSTREAM_PROTOCOL), on one
endpoint that speaks both; without it, an `http` port keeps HTTP/1.1 upstream.

The YAML mirrors the DestinationRule shape of Istio's traffic-management reference
(connectionPool.http settings on a host's trafficPolicy), with a ServiceEntry for the app.
"""
from __future__ import annotations

import http.client
import shutil

import pytest

from tests.integration.dual_protocol_server import DualProtocolServer
from tests.integration.h2_client import H2Client
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
"""
CLIENT_PROTOCOL = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dual, namespace: default}
spec:
  host: dual.example.test
  trafficPolicy:
    connectionPool:
      http: {useClientProtocol: true}
---
"""


@pytest.fixture(scope="module")
def sidecar():
    with DualProtocolServer() as app:
        yaml = (MESH.format(name="dual", port=app.port) + CLIENT_PROTOCOL
                + MESH.format(name="plain", port=app.port))
        proxy = ProxyProcess(yaml).wait_ready(30)
        try:
            yield proxy, app
        finally:
            proxy.close()
            shutil.rmtree(proxy.dir, ignore_errors=True)


def http1_get(port: int, host: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


def test_each_request_goes_upstream_in_the_clients_http_version(sidecar):
    """useClientProtocol: an HTTP/1.1 client's request reaches the app over HTTP/1.1, an
    HTTP/2 client's over HTTP/2, through the same endpoint."""
    proxy, app = sidecar
    assert http1_get(proxy.outbound_port, "dual.example.test") == b"HTTP/1.1"
    client = H2Client(proxy.outbound_port)
    try:
        results = [client.request("GET", "/", "dual.example.test") for _ in range(3)]
    finally:
        client.close()
    assert [(r.status, bytes(r.body)) for r in results] == [(200, b"HTTP/2")] * 3
    assert http1_get(proxy.outbound_port, "dual.example.test") == b"HTTP/1.1"


def test_without_it_an_http_port_stays_http1_upstream(sidecar):
    """No useClientProtocol: an HTTP/2 client's request to an `http` port goes upstream as HTTP/1.1."""
    proxy, _ = sidecar
    client = H2Client(proxy.outbound_port)
    try:
        result = client.request("GET", "/", "plain.example.test")
    finally:
        client.close()
    assert (result.status, bytes(result.body)) == (200, b"HTTP/1.1")


def test_request_trailers_reach_an_http2_upstream(sidecar):
    """An HTTP/2 client's request body followed by trailers (as gRPC clients may send):
    the trailers reach the HTTP/2 app as trailers, after the body; the answer comes back."""
    proxy, app = sidecar
    client = H2Client(proxy.outbound_port)
    try:
        sid = client.start("POST", "/upload", "dual.example.test", end=False)
        client.send(sid, b"body bytes")
        client.conn.send_headers(sid, [(b"x-checksum", b"abc123"), (b"x-count", b"1")], end_stream=True)
        client._send()
        result = client.wait(sid)
    finally:
        client.close()
    assert (result.status, bytes(result.body)) == (200, b"HTTP/2")
    assert [(b"x-checksum", b"abc123"), (b"x-count", b"1")] in app.trailers
