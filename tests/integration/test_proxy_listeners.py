"""Inbound listener, JSON access log, and consistent-hash balancing over real sockets."""
from __future__ import annotations

import json

from tests.integration.client import RawClient
from tests.integration.conftest import service
from tests.integration.proxy_process import ProxyProcess


def test_inbound_listener_forwards_any_host_to_the_app(upstreams):
    """The inbound listener sends every request to the local app port, whatever its Host."""
    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]),
                     inbound_app_port=upstreams.ports["v1"]).wait_ready()
    try:
        c = RawClient(p.inbound_port)
        for host in ("reviews:9080", "anything.example.com"):
            r = c.request("GET", "/in", host)
            assert r.status == 200 and r.json()["server"] == "v1"
            assert r.json()["headers"]["host"] == host
        clusters = json.loads(p.admin_get("/clusters?format=json"))
        inbound = next(c for c in clusters if c["name"] == f"inbound|{upstreams.ports['v1']}||")
        assert inbound["endpoints"][0]["total_requests"] == 2
    finally:
        assert p.stop() == 0


def test_json_access_log_lines(upstreams):
    """--access-log-format json writes one JSON object per request with Envoy's field names."""
    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]),
                     "--access-log-format", "json").wait_ready()
    try:
        RawClient(p.outbound_port).request("GET", "/json-log", "echo", headers={"x-request-id": "rid-1"})
        lines = [json.loads(line) for line in p.access_log().splitlines() if line.strip()]
        entry = next(e for e in lines if e["path"] == "/json-log")
        assert entry["response_code"] == 200
        assert entry["request_id"] == "rid-1"
        assert entry["upstream_cluster"] == "outbound|80||echo.default.svc.cluster.local"
        assert entry["authority"] == "echo"
    finally:
        assert p.stop() == 0


def test_consistent_hash_on_header_pins_each_user(upstreams):
    """With consistentHash.httpHeaderName, each user value always reaches the same endpoint."""
    yaml = service("sticky", [(upstreams.ports["v1"], {"app": "sticky"}),
                              (upstreams.ports["v2"], {"app": "sticky"})]) + """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky}
spec:
  host: sticky
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
"""
    p = ProxyProcess(yaml, "--access-log", "off").wait_ready()
    try:
        c = RawClient(p.outbound_port)
        seen = {}
        for user in range(30):
            servers = {c.request("GET", "/", "sticky", headers={"x-user": f"u{user}"}).headers["x-upstream"]
                       for _ in range(4)}
            assert len(servers) == 1, f"user u{user} moved between {servers}"
            seen[user] = servers.pop()
        assert set(seen.values()) == {"v1", "v2"}, "hashing sent every user to one endpoint"
    finally:
        assert p.stop() == 0
