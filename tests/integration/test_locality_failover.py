"""Locality failover end to end (DestinationRule localityLbSetting, `--locality`): a sidecar
sends to the endpoints of its own zone, and when outlier detection ejects them, to the
nearest others, as an Istio sidecar does on Envoy's priority levels.

The mesh mirrors Istio's "Locality failover" task (istio.io, tasks/traffic-management/
locality-load-balancing/failover): a helloworld-like service with endpoints in several
regions, and a DestinationRule with outlierDetection and `localityLbSetting.failover`.
The endpoints are loopback servers labelled with localities.
"""
from __future__ import annotations

from collections import Counter

from tests.integration.client import RawClient
from tests.integration.proxy_process import ProxyProcess

LOCAL, SAME_REGION, FAR, FAILOVER_TARGET = "us-east/us-east-1a", "us-east/us-east-1b", "ap-south/ap-south-1a", \
    "eu-west/eu-west-1a"


def mesh(ports: dict[str, int], outlier: bool = True, failover: bool = False) -> str:
    endpoints = "".join(f"""
  - address: 127.0.0.1
    ports: {{http: {ports[name]}}}
    locality: {locality}
    labels: {{app: helloworld, server: {name}}}""" for name, locality in (
        ("fail", LOCAL), ("v1", FAILOVER_TARGET if failover else SAME_REGION), ("v2", FAR)))
    policy = ""
    if outlier:
        policy = """
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}"""
        if failover:
            policy += """
    loadBalancer:
      localityLbSetting:
        enabled: true
        failover: [{from: us-east, to: eu-west}]"""
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld}}
spec:
  hosts: [helloworld]
  ports: [{{number: 5000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:{endpoints}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: helloworld}}
spec:
  host: helloworld{policy or chr(10) + "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}"}
"""


def servers(sidecar: ProxyProcess, count: int) -> Counter:
    client = RawClient(sidecar.outbound_port)
    try:
        seen = Counter()
        for _ in range(count):
            r = client.request("GET", "/", "helloworld:5000")
            seen[r.json()["server"] if r.status == 200 else r.status] += 1
        return seen
    finally:
        client.close()


def test_traffic_stays_near_and_fails_over_to_the_nearest_on_ejection(upstreams):
    """The local endpoint takes the first request; its 503 ejects it (Istio's default retry
    sends that request on), and every request goes to the same region's endpoint, none to the
    far one; /clusters shows the levels and localities."""
    sidecar = ProxyProcess(mesh(upstreams.ports), "--locality", f"{LOCAL}/sz1").wait_ready()
    try:
        assert servers(sidecar, 31) == Counter({"v1": 31})
        clusters = sidecar.admin_get("/clusters")
        name = "outbound|5000||helloworld.default.svc.cluster.local"
        fail, v1, v2 = (f"{name}::127.0.0.1:{upstreams.ports[n]}" for n in ("fail", "v1", "v2"))
        assert f"{fail}::priority::0" in clusters and f"{fail}::health_flags::/failed_outlier_check" in clusters
        assert f"{fail}::rq_total::1" in clusters and f"{v2}::rq_total::0" in clusters
        assert f"{v1}::priority::1" in clusters and f"{v1}::zone::us-east-1b" in clusters
        assert f"{v2}::priority::2" in clusters and f"{v2}::region::ap-south" in clusters
    finally:
        sidecar.stop()


def test_failover_names_the_region_to_try_before_the_others(upstreams):
    """failover us-east -> eu-west: with the local endpoint ejected, eu-west takes everything
    although ap-south is listed too."""
    sidecar = ProxyProcess(mesh(upstreams.ports, failover=True), "--locality", LOCAL).wait_ready()
    try:
        assert servers(sidecar, 31) == Counter({"v1": 31})
    finally:
        sidecar.stop()


def test_without_outlier_detection_or_a_locality_every_endpoint_takes_traffic(upstreams):
    """No outlierDetection (Istio: no failover without it), or no --locality: round robin over all."""
    for sidecar in (ProxyProcess(mesh(upstreams.ports, outlier=False), "--locality", LOCAL).wait_ready(),
                    ProxyProcess(mesh(upstreams.ports)).wait_ready()):
        try:
            seen = servers(sidecar, 30)
            assert seen["v1"] >= 5 and seen["v2"] >= 5, seen
        finally:
            sidecar.stop()
