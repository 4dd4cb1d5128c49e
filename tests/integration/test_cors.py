"""VirtualService corsPolicy through a real sidecar, with the CorsPolicy example of Istio's
VirtualService reference (ratings-route: allowOrigins https://example.com, POST/GET,
X-Foo-Bar, maxAge 24h)."""
from __future__ import annotations

import pytest

from tests.integration.client import RawClient
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration

ROUTE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: prod}}
spec:
  hosts: [ratings.prod.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: prod}}
spec:
  host: ratings.prod.svc.cluster.local
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings-route
  namespace: prod
spec:
  hosts:
  - ratings.prod.svc.cluster.local
  http:
  - route:
    - destination:
        host: ratings.prod.svc.cluster.local
        subset: v1
    corsPolicy:
      allowOrigins:
      - exact: https://example.com
      allowMethods:
      - POST
      - GET
      allowCredentials: false
      allowHeaders:
      - X-Foo-Bar
      maxAge: "24h"
"""


@pytest.fixture(scope="module")
def sidecar(upstreams):
    proxy = ProxyProcess(ROUTE.format(port=upstreams.ports["v1"])).wait_ready()
    yield proxy
    proxy.stop()


def ask(sidecar, method: str, origin: str | None, preflight: bool = False):
    client = RawClient(sidecar.outbound_port)
    lines = [f"{method} /ratings/1 HTTP/1.1", "Host: ratings.prod.svc.cluster.local:9080"]
    if origin:
        lines.append(f"Origin: {origin}")
    if preflight:
        lines += ["Access-Control-Request-Method: POST", "Access-Control-Request-Headers: X-Foo-Bar"]
    try:
        client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return client.read_response()
    finally:
        client.close()


def test_preflight_from_an_allowed_origin_is_answered_by_the_proxy(sidecar):
    """OPTIONS with Origin and Access-Control-Request-Method from https://example.com: 200
    from the proxy with the policy's headers; the app never sees it."""
    resp = ask(sidecar, "OPTIONS", "https://example.com", preflight=True)
    assert resp.status == 200 and resp.body == b""
    assert resp.headers["access-control-allow-origin"] == "https://example.com"
    assert resp.headers["access-control-allow-methods"] == "POST,GET"
    assert resp.headers["access-control-allow-headers"] == "X-Foo-Bar"
    assert resp.headers["access-control-max-age"] == "86400"
    assert "access-control-allow-credentials" not in resp.headers
    assert "x-envoy-upstream-service-time" not in resp.headers


def test_preflight_from_another_origin_is_forwarded_without_cors_headers(sidecar):
    """unmatchedPreflights defaults to FORWARD: the app answers, and no CORS header is added."""
    resp = ask(sidecar, "OPTIONS", "https://evil.example", preflight=True)
    assert resp.status == 200 and resp.json()["method"] == "OPTIONS"
    assert "access-control-allow-origin" not in resp.headers


def test_actual_requests_get_the_allow_origin_of_an_allowed_origin_only(sidecar):
    """A GET from https://example.com is routed and answered with allow-origin; from another origin, without."""
    allowed = ask(sidecar, "GET", "https://example.com")
    assert allowed.status == 200 and allowed.json()["server"] == "v1"
    assert allowed.headers["access-control-allow-origin"] == "https://example.com"
    other = ask(sidecar, "GET", "https://evil.example")
    assert other.status == 200 and "access-control-allow-origin" not in other.headers
