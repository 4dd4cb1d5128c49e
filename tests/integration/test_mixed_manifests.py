"""A Kubernetes manifest mixed with Istio routing, served by a sidecar over real sockets.

tests/fixtures/istio-samples/bookinfo.yaml (Services, ServiceAccounts, Deployments, and
WorkloadEntries for the reviews pods) plus bookinfo-routing.yaml (the request-routing task),
loaded by `remora proxy --mesh-config ... --mesh-config-namespace bookinfo`: the reviews
Service is reachable by its Kubernetes host names, its endpoints are the WorkloadEntries its
selector picks, and the routing by subset holds.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from remora.config.yaml_text import dump_all, load_all
from tests.integration.client import RawClient
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
