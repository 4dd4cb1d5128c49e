"""Locality failover end to end (DestinationRule localityLbSetting, `--locality`): a sidecar
sends to the endpoints of its own zone, and when outlier detection ejects them, to the
nearest others, as an Istio sidecar does on Envoy's priority levels.

The mesh mirrors Istio's "Locality failover" and "Locality weighted distribution" tasks
(istio.io, tasks/traffic-management/locality-load-balancing/): a helloworld service with
endpoints in several regions, and a DestinationRule with outlierDetection and
`localityLbSetting.failover`, or with `localityLbSetting.distribute`.
The endpoints are loopback servers labelled with localities.
"""
from __future__ import annotations

from collections import Counter

from tests.integration.client import RawClient
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import free_port

LOCAL, SAME_REGION, FAR, FAILOVER_TARGET = "us-east/us-east-1a", "us-east/us-east-1b", "ap-south/ap-south-1a", \
    "eu-west/eu-west-1a"


def helloworld(ports: dict[str, int], endpoints: list[tuple[str, str, dict]], traffic_policy: str) -> str:
    """The helloworld ServiceEntry with one loopback endpoint per (upstream, locality, labels),
    and its DestinationRule with `traffic_policy` (YAML indented under trafficPolicy)."""
    listed = "".join(f"""
  - address: 127.0.0.1
    ports: {{http: {ports[name]}}}
    locality: {locality}
    labels: {labels or {'app': 'helloworld'}}""" for name, locality, labels in endpoints)
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld}}
spec:
  hosts: [helloworld]
  ports: [{{number: 5000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:{listed}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: helloworld}}
spec:
  host: helloworld
  trafficPolicy:
{traffic_policy}
"""


OUTLIER = "    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 100}"


def mesh(ports: dict[str, int], outlier: bool = True, failover: bool = False) -> str:
    endpoints = [("fail", LOCAL, {}), ("v1", FAILOVER_TARGET if failover else SAME_REGION, {}), ("v2", FAR, {})]
    policy = OUTLIER if outlier else "    loadBalancer: {simple: ROUND_ROBIN}"
    if failover:
        policy += """
    loadBalancer:
      localityLbSetting:
        enabled: true
        failover: [{from: us-east, to: eu-west}]"""
    return helloworld(ports, endpoints, policy)


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


def test_distribute_sends_each_locality_its_share(upstreams):
    """Istio's "Locality weighted distribution" task: from us-east/*, 80% to us-east and 20% to
    us-west; ap-south, matched by no pattern, gets nothing. No outlierDetection needed."""
    endpoints = [("v1", LOCAL, {}), ("v2", "us-west/us-west-1a", {}), ("echo", FAR, {})]
    sidecar = ProxyProcess(helloworld(upstreams.ports, endpoints, """    loadBalancer:
      localityLbSetting:
        enabled: true
        distribute:
        - from: us-east/*
          to: {"us-east/*": 80, "us-west/*": 20}"""), "--locality", LOCAL).wait_ready()
    try:
        seen = servers(sidecar, 300)
        assert set(seen) == {"v1", "v2"}, seen
        assert 0.70 < seen["v1"] / 300 < 0.90, seen
    finally:
        sidecar.stop()


def external_service(east_port: int, west_port: int) -> str:
    """istio.io blog "Configuring failover for external services" (2021): mydb.com backed by
    two regional endpoints, and its DestinationRule with failover us-east1 -> us-west (the
    DynamoDB hosts become loopback addresses here). One line is added: `maxEjectionPercent:
    100`. Today's Envoy ejects a host only while (ejected + 1) / hosts stays within it, so
    Istio's default of 10% ejects neither of two endpoints and traffic never fails over (the
    Envoy of 2021 compared before counting the host, so the post worked then)."""
    return f"""apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
 name: external-svc-dns
spec:
 hosts:
 - mydb.com
 location: MESH_EXTERNAL
 ports:
 - number: 80
   name: http
   protocol: HTTP
 resolution: DNS
 endpoints:
 - address: 127.0.0.1
   locality: us-east1
   ports:
     http: {east_port}
 - address: 127.0.0.1
   locality: us-west
   ports:
     http: {west_port}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
 name: mydynamodb
spec:
 host: mydb.com
 trafficPolicy:
   loadBalancer:
     simple: ROUND_ROBIN
     localityLbSetting:
       enabled: true
       failover:
         - from: us-east1
           to: us-west
   outlierDetection:
     consecutive5xxErrors: 1
     interval: 15s
     baseEjectionTime: 1m
     maxEjectionPercent: 100
"""


def mydb(sidecar: ProxyProcess, count: int) -> Counter:
    client = RawClient(sidecar.outbound_port)
    try:
        return Counter(client.request("GET", "/", "mydb.com").json()["server"] for _ in range(count))
    finally:
        client.close()


def test_the_external_failover_blog_post_as_written(upstreams):
    """The blog's two steps: with both endpoints up every request stays in us-east1; with the
    us-east1 endpoint on a wrong port, the connect failure ejects it and every request (the
    first one retried) is answered from us-west."""
    ports = upstreams.ports
    healthy = ProxyProcess(external_service(ports["v1"], ports["v2"]), "--locality", "us-east1").wait_ready()
    try:
        assert mydb(healthy, 20) == Counter({"v1": 20})
    finally:
        healthy.stop()
    broken = ProxyProcess(external_service(free_port(), ports["v2"]), "--locality", "us-east1").wait_ready()
    try:
        assert mydb(broken, 20) == Counter({"v2": 20})
        assert "/failed_outlier_check" in broken.admin_get("/clusters")
    finally:
        broken.stop()


def test_retry_remote_localities_sends_the_retry_to_another_level(upstreams):
    """retryRemoteLocalities (Envoy's previous_priorities): the local endpoint answers 503 and
    is never ejected (consecutive5xxErrors: 0); its retry goes to the next locality instead of
    back to it. Without the flag every retry lands on the same local endpoint."""
    ports = upstreams.ports
    for remote, expected in ((True, Counter({"v1": 10})), (False, Counter({503: 10}))):
        yaml = mesh(ports).replace(OUTLIER, "    outlierDetection: {consecutive5xxErrors: 0}") + f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: helloworld}}
spec:
  hosts: [helloworld]
  http:
  - route: [{{destination: {{host: helloworld}}}}]
    retries: {{attempts: 1, retryOn: 5xx, retryRemoteLocalities: {str(remote).lower()}}}
"""
        sidecar = ProxyProcess(yaml, "--locality", LOCAL).wait_ready()
        try:
            assert servers(sidecar, 10) == expected
        finally:
            sidecar.stop()


def test_failover_priority_ranks_by_network_then_region_then_zone(upstreams):
    """failoverPriority as Istio's docs write it (network, region, zone): the same-zone
    endpoint on another network ranks last, the same-network same-region one first, although
    plain locality order would put the same-zone one first."""
    ports = upstreams.ports
    endpoints = [(name, locality, {"topology.istio.io/network": network}) for name, locality, network in (
        ("echo", LOCAL, "network2"), ("v2", "us-west/us-west-1a", "network1"), ("v1", SAME_REGION, "network1"))]
    yaml = helloworld(ports, endpoints, """    loadBalancer:
      localityLbSetting:
        enabled: true
        failoverPriority:
        - "topology.istio.io/network"
        - "topology.kubernetes.io/region"
        - "topology.kubernetes.io/zone"
""" + OUTLIER)
    sidecar = ProxyProcess(yaml, "--locality", LOCAL, "--labels", "app=sleep,topology.istio.io/network=network1")
    sidecar.wait_ready()
    try:
        assert servers(sidecar, 20) == Counter({"v1": 20})
        clusters = sidecar.admin_get("/clusters")
        name = "outbound|5000||helloworld.default.svc.cluster.local"
        assert f"{name}::127.0.0.1:{ports['echo']}::priority::2" in clusters
    finally:
        sidecar.stop()
