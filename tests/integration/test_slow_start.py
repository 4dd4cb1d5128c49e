"""Slow start (DestinationRule `loadBalancer.warmupDurationSecs`) end to end: a control
server adds an endpoint to a running sidecar's cluster, and the new endpoint's share of
requests starts low and grows to its full share over the window, as Envoy's slow start
mode does for Istio. The same push without warmup gives the new endpoint half at once.

The DestinationRule is the shape of Istio's reference example for warmupDurationSecs
(a `loadBalancer` with `simple: ROUND_ROBIN` and the window).
"""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.integration.client import RawClient
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration


def reviews(ports: list[int], warmup: str | None) -> str:
    endpoints = ", ".join(f"{{address: 127.0.0.1, ports: {{http: {port}}}}}" for port in ports)
    window = f", warmupDurationSecs: {warmup}" if warmup else ""
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{endpoints}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN{window}}}
"""


def shares(sidecar: ProxyProcess, count: int) -> Counter:
    client = RawClient(sidecar.outbound_port)
    try:
        return Counter(client.request("GET", "/", "reviews").json()["server"] for _ in range(count))
    finally:
        client.close()


def endpoints(sidecar: ProxyProcess) -> int:
    clusters = json.loads(sidecar.admin_get("/clusters?format=json"))
    return sum(len(c["endpoints"]) for c in clusters if c["name"].startswith("outbound|80||reviews"))


@pytest.mark.parametrize("warmup", ["5s", None])
def test_a_pushed_endpoint_warms_up(upstreams, warmup):
    """With a 5 s window the new endpoint (v2) gets well under half right after the push and
    about half once the window is over; without one it gets half at once. (v1 joined when
    the sidecar started, so the test lets its own window pass first.)"""
    ports = upstreams.ports
    control = ControlProcess({"mesh.yaml": reviews([ports["v1"]], warmup)}).wait_ready()
    try:
        sidecar = ProxyProcess(None, control=control.url).wait_ready(30)
        assert shares(sidecar, 10) == Counter({"v1": 10})
        if warmup is not None:
            time.sleep(5.5)
        code, answer = control.apply(reviews([ports["v1"], ports["v2"]], warmup))
        assert code == 200, answer
        control.wait_until(lambda: endpoints(sidecar) == 2, what="the sidecar to have both endpoints")
        early = shares(sidecar, 100)["v2"]
        if warmup is None:
            assert 40 <= early <= 60, early
        else:
            assert 1 <= early <= 35, early             # 20-33% of v1's weight in its first 2.5 s
            time.sleep(5.5)
            assert 40 <= shares(sidecar, 100)["v2"] <= 60
        sidecar.stop()
    finally:
        control.stop()
