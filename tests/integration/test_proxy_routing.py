"""Istio routing over real sockets: weighted split, header match, rewrite, header operations."""
from __future__ import annotations

import json
import urllib.request
from collections import Counter

from tests.integration.client import RawClient


def test_weighted_split_follows_weights(proxy):
    """Over 5,000 requests an 80/20 VirtualService split lands within 2 percentage points."""
    clients = [RawClient(proxy.outbound_port) for _ in range(4)]
    seen = Counter()
    for i in range(5000):
        r = clients[i % 4].request("GET", "/split", "reviews:9080")
        seen[r.headers["x-upstream"]] += 1
    share_v1 = seen["v1"] / 5000
    assert abs(share_v1 - 0.80) <= 0.02, seen


def test_header_match_routes_to_subset(proxy):
    """A request with end-user: jason always goes to subset v2."""
    c = RawClient(proxy.outbound_port)
    servers = {c.request("GET", "/", "reviews:9080", headers={"end-user": "jason"}).headers["x-upstream"]
               for _ in range(20)}
    assert servers == {"v2"}


def test_short_and_qualified_hosts_route_alike(proxy):
    """reviews, reviews:9080, reviews.default and the FQDN all reach the reviews service."""
    c = RawClient(proxy.outbound_port)
    for host in ("reviews", "reviews:9080", "reviews.default", "reviews.default.svc.cluster.local:9080",
                 "REVIEWS:9080"):
        r = c.request("GET", "/", host, headers={"end-user": "jason"})
        assert r.status == 200 and r.headers["x-upstream"] == "v2", host


def test_prefix_rewrite_and_header_operations(proxy):
    """rewrite.uri replaces the matched prefix; request set/remove and response add apply."""
    c = RawClient(proxy.outbound_port)
    r = c.request("GET", "/api/v1/items?x=1", "reviews:9080", headers={"x-secret": "s"})
    info = r.json()
    assert info["server"] == "v1"
    assert info["path"] == "/v1/items?x=1"
    assert info["headers"]["x-route"] == "api"
    assert "x-secret" not in info["headers"]
    assert r.headers["x-served-by"] == "remora"


def test_admin_endpoints_show_clusters_config_and_stats(proxy):
    """Admin shows per-endpoint cluster state, the config version and Envoy/Prometheus stats."""
    RawClient(proxy.outbound_port).request("GET", "/", "echo")
    clusters = json.loads(proxy.admin_get("/clusters?format=json"))
    by_name = {c["name"]: c for c in clusters}
    v1 = by_name["outbound|9080|v1|reviews.default.svc.cluster.local"]
    assert v1["endpoints"][0]["labels"] == {"version": "v1"}
    assert "outbound|80||echo.default.svc.cluster.local::127.0.0.1:" in proxy.admin_get("/clusters")
    dump = json.loads(proxy.admin_get("/config_dump"))
    assert dump["version"] and dump["resources"]["VirtualService"][0]["name"] == "reviews"
    stats = proxy.admin_get("/stats")
    assert "cluster.outbound|80||echo.default.svc.cluster.local.upstream_rq_total:" in stats
    prom = proxy.admin_get("/stats/prometheus")
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|80||echo.default.svc.cluster.local"}' in prom
    with urllib.request.urlopen(proxy.admin("/ready")) as r:
        assert r.read() == b"LIVE\n"


# Mirrors Istio's samples/httpbin/httpbin-gateway.yaml (Gateway + VirtualService hosts "*"
# bound to httpbin-gateway), with httpbin as a loopback ServiceEntry on port 8000.
HTTPBIN_GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: ["*"]
  gateways: [httpbin-gateway]
  http:
  - match:
    - uri: {prefix: /status}
    - uri: {prefix: /delay}
    route:
    - destination:
        port: {number: 8000}
        host: httpbin
"""


def test_gateway_virtual_service_does_not_capture_sidecar_hosts(upstreams):
    """A VirtualService bound only to a Gateway never routes a sidecar's traffic: unknown hosts stay 404 NR."""
    from tests.integration.conftest import service
    from tests.integration.proxy_process import ProxyProcess
    mesh = service("httpbin", [(upstreams.ports["echo"], {})], port=8000) + HTTPBIN_GATEWAY
    p = ProxyProcess(mesh).wait_ready()
    try:
        c = RawClient(p.outbound_port)
        assert c.request("GET", "/status/200", "api.github.com").status == 404
        assert c.request("GET", "/status/200", "reviews:9080").status == 404
        assert c.request("GET", "/status/201", "httpbin:8000").status == 201   # the service itself still works
        assert " NR " in p.access_log()
    finally:
        assert p.stop() == 0, p.stderr()
