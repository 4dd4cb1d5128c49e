"""A Kubernetes manifest mixed with Istio routing, served by a sidecar over real sockets.

tests/fixtures/istio-samples/bookinfo.yaml (Services, ServiceAccounts, Deployments, and
WorkloadEntries for the reviews pods) plus bookinfo-routing.yaml (the request-routing task),
loaded by `remora proxy --mesh-config ... --mesh-config-namespace bookinfo`: the reviews
Service is reachable by its Kubernetes host names, its endpoints are the WorkloadEntries its
selector picks, and the routing by subset holds. The same manifest under `remora control`
takes the sidecars that register as reviews as the Service's endpoints.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from remora.config.yaml_text import dump_all, load_all
from tests.integration.client import RawClient
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration
SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "istio-samples"


@pytest.fixture(scope="module")
def bookinfo_sidecar(upstreams):
    docs = [d for name in ("bookinfo.yaml", "bookinfo-routing.yaml")
            for d in load_all((SAMPLES / name).read_text()) if d]
    for doc in docs:   # the reviews pods are the session's test servers v1 and v2
        if doc["kind"] == "WorkloadEntry":
            doc["spec"]["ports"]["http"] = upstreams.ports[doc["spec"]["labels"]["version"]]
    p = ProxyProcess(dump_all(docs), "--mesh-config-namespace", "bookinfo")
    p.wait_ready()
    yield p
    try:
        assert p.stop() == 0, p.stderr()
    finally:
        p.close()


def test_service_is_reached_by_its_kubernetes_host_names(bookinfo_sidecar):
    """reviews.bookinfo.svc.cluster.local, reviews.bookinfo and reviews all reach the Service's v1 endpoint."""
    client = RawClient(bookinfo_sidecar.outbound_port)
    for host in ("reviews.bookinfo.svc.cluster.local:9080", "reviews.bookinfo:9080", "reviews:9080"):
        response = client.request("GET", "/", host)
        assert response.status == 200 and response.headers["x-upstream"] == "v1", host


def test_request_routing_selects_the_subset_of_the_services_workloads(bookinfo_sidecar):
    """end-user: jason goes to the v2 WorkloadEntry, everyone else to v1 (Istio's request-routing task)."""
    client = RawClient(bookinfo_sidecar.outbound_port)
    jason = {client.request("GET", "/", "reviews:9080", headers={"end-user": "jason"}).headers["x-upstream"]
             for _ in range(10)}
    others = {client.request("GET", "/", "reviews:9080").headers["x-upstream"] for _ in range(10)}
    assert (jason, others) == ({"v2"}, {"v1"})


def test_skipped_kubernetes_kinds_are_reported_once_each(bookinfo_sidecar):
    """The sidecar's log has one info line per ServiceAccount and Deployment it skipped, and nothing worse."""
    log = bookinfo_sidecar.stderr()
    assert log.count("info: skipped Deployment") == 5 and log.count("info: skipped ServiceAccount") == 4
    assert "warning:" not in log


def _manifest_without_pods() -> str:
    """bookinfo.yaml without its stand-in WorkloadEntries (registered sidecars serve instead), plus the routing."""
    docs = [d for d in load_all((SAMPLES / "bookinfo.yaml").read_text()) if d and d["kind"] != "WorkloadEntry"]
    return dump_all(docs) + "---\n" + (SAMPLES / "bookinfo-routing.yaml").read_text()


def _answers(sidecar: ProxyProcess, host: str, headers=None, count: int = 10) -> set[str]:
    client = RawClient(sidecar.outbound_port)
    answers = set()
    for _ in range(count):
        response = client.request("GET", "/", host, headers=headers)
        answers.add(response.headers.get("x-upstream", f"status {response.status}"))
    return answers


def test_control_server_serves_the_service_with_its_registered_sidecars(upstreams):
    """Under remora control, the reviews Service's endpoints are the registered reviews sidecars, routed by subset."""
    control = ControlProcess({"bookinfo.yaml": _manifest_without_pods()})
    sidecars: list[ProxyProcess] = []
    try:
        control.wait_ready()
        for version in ("v1", "v2"):
            sidecars.append(ProxyProcess(None, "--service", "reviews", "--labels", f"app=reviews,version={version}",
                                         "--node-id", f"reviews-{version}", "--drain-seconds", "1",
                                         inbound_app_port=upstreams.ports[version], control=control.url))
        client = ProxyProcess(None, "--service", "productpage", "--node-id", "productpage", "--drain-seconds", "1",
                              control=control.url)
        sidecars.append(client)
        for sidecar in sidecars:
            sidecar.wait_ready()
        host = "reviews.default.svc.cluster.local:9080"
        deadline = time.time() + 20   # both reviews sidecars register, then the client's config follows
        while ((_answers(client, host, {"end-user": "jason"}, 3), _answers(client, host, None, 3)) != ({"v2"}, {"v1"})
               and time.time() < deadline):
            time.sleep(0.2)
        assert _answers(client, host, {"end-user": "jason"}) == {"v2"}
        assert _answers(client, host) == {"v1"}
        listed = control.cli("get", "svc")
        assert listed.returncode == 0 and "reviews" in listed.stdout, listed.stderr
        applied = control.cli("apply", "-n", "default", "-f", "-", stdin=(SAMPLES / "httpbin.yaml").read_text())
        assert applied.returncode == 0, applied.stderr
        assert "Service/default/httpbin created" in applied.stdout and "Deployment/default/httpbin skipped" in applied.stdout
    finally:
        for sidecar in reversed(sidecars):
            sidecar.stop()
        control.stop()
