"""A Sidecar resource scoping a real sidecar: only its egress hosts are routable, and
/config_dump says which Sidecar applies (the shape of istio-examples 002-14's
`egress: hosts: [./service...]`)."""
from __future__ import annotations

import json

import pytest

from tests.integration.client import RawClient
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration


def mesh(upstreams) -> str:
    services = "".join(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {upstreams.ports[version]}}}}}]
---
""" for name, version in (("reviews", "v1"), ("ratings", "v2")))
    return services + """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts:
    - ./reviews.default.svc.cluster.local
    - istio-system/*
"""


def status(port: int, host: str) -> int:
    client = RawClient(port)
    try:
        client.send(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return client.read_response().status
    finally:
        client.close()


def test_only_the_egress_hosts_are_kept(upstreams):
    """reviews (in the egress hosts) is routed; ratings (not) is unknown to this sidecar: 404 NR."""
    sidecar = ProxyProcess(mesh(upstreams)).wait_ready()
    try:
        assert status(sidecar.outbound_port, "reviews:9080") == 200
        assert status(sidecar.outbound_port, "ratings:9080") == 404
        assert '"GET / HTTP/1.1" 404 NR' in sidecar.access_log()
        dump = json.loads(sidecar.admin_get("/config_dump"))
        assert dump["sidecar_resource"] == "default/default"
        assert not any("ratings" in name for name in dump["clusters"]), dump["clusters"]
    finally:
        sidecar.stop()
