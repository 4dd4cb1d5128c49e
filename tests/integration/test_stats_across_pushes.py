"""A sidecar's cluster stats across config pushes: kept per cluster name, as Envoy keeps them."""
from __future__ import annotations

import json

import pytest

from remora.wire import protocol
from tests.integration.client import RawClient
from tests.integration.fake_control import FakeControl, documents
from tests.integration.proxy_process import ProxyProcess

ECHO = "echo.default.svc.cluster.local"
V1, V2 = f"outbound|80|v1|{ECHO}", f"outbound|80|v2|{ECHO}"
BROKEN = "outbound|80||broken.default.svc.cluster.local"


def clusters(down_port: int, subsets: tuple[str, ...] = ("v1", "v2"), extra: str = "") -> list[dict]:
    """echo (subsets by version) and `broken` (an endpoint nothing listens on, ejected after one failure)."""
    subset_yaml = "".join(f"\n  - {{name: {s}, labels: {{version: {s}}}}}" for s in subsets)
    return documents(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  subsets:{subset_yaml}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: broken}}
spec:
  hosts: [broken]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {down_port}}}}}, {{address: 127.0.0.2, ports: {{http: {down_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: broken}}
spec:
  host: broken
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, maxEjectionPercent: 100, baseEjectionTime: 60s}}
{extra}""")


def endpoints(ports: dict[str, int]) -> list[dict]:
    return [{"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
             "metadata": {"name": f"echo-{v}", "namespace": "default"},
             "spec": {"address": "127.0.0.1", "ports": {"http": ports[v]},
                      "labels": {"app": "echo", "version": v}}} for v in ("v1", "v2")]


def routes(subset: str = "v1", extra_host: str | None = None) -> list[dict]:
    """echo -> one subset; `extra_host` adds an unrelated VirtualService."""
    docs = [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "echo", "namespace": "default"},
             "spec": {"hosts": ["echo"], "http": [{"route": [{"destination": {"host": "echo", "subset": subset}}]}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "broken", "namespace": "default"},
             "spec": {"hosts": ["broken"], "http": [{"retries": {"attempts": 0},
                                                     "route": [{"destination": {"host": "broken"}}]}]}}]
    if extra_host:
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": extra_host, "namespace": "default"},
                     "spec": {"hosts": [extra_host], "http": [{"route": [{"destination": {"host": "broken"}}]}]}})
    return docs


def stats(p: ProxyProcess) -> dict[str, int]:
    return {s["name"]: s["value"] for s in json.loads(p.admin_get("/stats?format=json"))["stats"]}


def endpoint_view(p: ProxyProcess, cluster: str) -> list[dict]:
    data = json.loads(p.admin_get("/clusters?format=json"))
    found = [c for c in data if c["name"] == cluster]
    return found[0]["endpoints"] if found else []


def send(p: ProxyProcess, host: str, n: int) -> list[int]:
    c = RawClient(p.outbound_port)
    try:
        return [c.request("GET", "/", host).status for _ in range(n)]
    finally:
        c.close()


def push(control: FakeControl, type_url: str, version: str, resources: list[dict]) -> None:
    answer = control.wait_reply(control.push(type_url, version, resources))
    assert answer.error_detail is None and answer.version_info == version, answer


@pytest.fixture
def control():
    fake = FakeControl().start()
    yield fake
    fake.close()


def test_cluster_stats_survive_unrelated_pushes_and_reset_when_the_cluster_goes(control, upstreams):
    """cluster.* counters, outlier_detection.* counters and per-endpoint counts stay across pushes of other
    resources (clusters type included); a cluster that disappears loses them, and comes back from zero."""
    ports = upstreams.ports
    p = ProxyProcess(None, "--access-log", "off", "--drain-seconds", "2", control=control.url).wait_admin()
    try:
        control.wait_stream(1)
        answers = control.push_all("1", clusters(ports["down"]), endpoints(ports), routes())
        assert [a.error_detail for a in answers] == [None] * len(protocol.TYPE_ORDER)
        p.wait_ready()
        assert send(p, "echo", 7) == [200] * 7
        assert set(send(p, "broken", 2)) == {503}
        before = stats(p)
        assert before[f"cluster.{V1}.upstream_rq_total"] == 7 and before[f"cluster.{V1}.upstream_rq_2xx"] == 7
        ejected = before[f"cluster.{BROKEN}.outlier_detection.ejections_enforced_total"]
        assert ejected >= 1
        assert [e["total_requests"] for e in endpoint_view(p, V1)] == [7]

        # An unrelated route, then an unrelated ServiceEntry (every cluster is compiled again).
        push(control, protocol.ROUTES, "2", routes(extra_host="other"))
        other = documents("""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other}
spec:
  hosts: [other]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
""")
        push(control, protocol.CLUSTERS, "3", clusters(ports["down"]) + other)
        after = stats(p)
        assert after[f"cluster.{V1}.upstream_rq_total"] == 7, after[f"cluster.{V1}.upstream_rq_total"]
        assert after[f"cluster.{V1}.upstream_rq_2xx"] == 7
        assert after[f"cluster.{V1}.upstream_cx_total"] == before[f"cluster.{V1}.upstream_cx_total"]
        assert after[f"cluster.{V2}.upstream_rq_total"] == 0
        assert after[f"cluster.{BROKEN}.outlier_detection.ejections_enforced_total"] == ejected
        assert after[f"cluster.{BROKEN}.upstream_rq_total"] == before[f"cluster.{BROKEN}.upstream_rq_total"]
        assert after["cluster.outbound|80||other.default.svc.cluster.local.upstream_rq_total"] == 0
        assert [e["total_requests"] for e in endpoint_view(p, V1)] == [7]
        assert send(p, "echo", 3) == [200] * 3
        assert stats(p)[f"cluster.{V1}.upstream_rq_total"] == 10

        # Subset v1 removed (and no route to it): its cluster and stats are gone; re-added, it starts from zero.
        push(control, protocol.ROUTES, "4", routes("v2"))
        push(control, protocol.CLUSTERS, "4", clusters(ports["down"], subsets=("v2",)))
        assert not any(name.startswith(f"cluster.{V1}.") for name in stats(p))
        push(control, protocol.CLUSTERS, "5", clusters(ports["down"]))
        assert stats(p)[f"cluster.{V1}.upstream_rq_total"] == 0
        assert [e["total_requests"] for e in endpoint_view(p, V1)] == [0]
    finally:
        assert p.stop() == 0, p.stderr()
