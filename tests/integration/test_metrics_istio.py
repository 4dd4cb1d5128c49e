"""Istio's standard metrics over real sockets: client -> sidecar A (outbound) -> sidecar B
(inbound) -> app, scraped on both sidecars' admin /stats/prometheus and :15090."""
from __future__ import annotations

import asyncio
import time
import urllib.request

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.client import RawClient
from tests.integration.conftest import service
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import free_port

A_IDENTITY = ("--service", "productpage", "--namespace", "shop", "--service-account", "bookinfo-pp",
              "--labels", "app=productpage,version=v1")
B_IDENTITY = ("--service", "reviews", "--namespace", "shop", "--service-account", "bookinfo-reviews",
              "--labels", "app=reviews,version=v2", "--workload", "reviews-v2-abc")


def samples(text: str, name: str) -> list[tuple[dict, float]]:
    """Every sample called `name` in a Prometheus text scrape, as (labels, value)."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out.append((s.labels, s.value))
    return out


def one(text: str, name: str, **labels: str) -> float:
    """The value of the single sample of `name` whose labels include `labels` (0 if none)."""
    found = [v for l, v in samples(text, name) if all(l.get(k) == v2 for k, v2 in labels.items())]
    assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
    return found[0] if found else 0.0


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def wait_for(fetch, check, timeout: float = 15.0):
    """Poll `fetch()` until `check(result)` holds; return the last result (checked by the caller)."""
    deadline = time.time() + timeout
    while True:
        result = fetch()
        if check(result) or time.time() > deadline:
            return result
        time.sleep(0.1)


@pytest.fixture(scope="module")
def mesh(upstreams):
    """Sidecar B in front of the echo app (inbound), sidecar A calling B as `reviews`."""
    b_prom = free_port()
    b = ProxyProcess(service("dummy", [(upstreams.ports["v1"], {})]), *B_IDENTITY,
                     inbound_app_port=upstreams.ports["echo"], prometheus_port=b_prom).wait_ready()
    a_prom = free_port()
    a_yaml = (service("reviews", [(b.inbound_port, {"app": "reviews", "version": "v2"})], 9080)
              + service("empty", [])
              + service("outside.example.com", [(upstreams.ports["echo"], {})], location="MESH_EXTERNAL"))
    a = ProxyProcess(a_yaml, *A_IDENTITY, prometheus_port=a_prom).wait_ready()
    yield a, b
    assert a.stop() == 0, a.stderr()
    assert b.stop() == 0, b.stderr()


def test_request_through_two_sidecars_is_counted_by_both_reporters(mesh):
    """One request A -> B is one istio_requests_total sample on each side, with the local
    side's labels from its identity and the peer's from metadata exchange."""
    a, b = mesh
    r = RawClient(a.outbound_port).request("GET", "/two-hops", "reviews:9080", body=b"hello")
    assert r.status == 200
    seen_by_app = r.json()["headers"]
    assert "x-remora-peer-metadata" not in seen_by_app, "the app must never see the metadata header"
    assert "x-remora-peer-metadata" not in r.headers, "the client must never see it either"

    common = dict(source_workload="productpage-v1", source_workload_namespace="shop",
                  source_app="productpage", source_version="v1", source_principal="unknown",
                  destination_workload="reviews-v2-abc", destination_workload_namespace="shop",
                  destination_app="reviews", destination_version="v2", destination_principal="unknown",
                  request_protocol="http", response_code="200", grpc_response_status="",
                  response_flags="-")
    a_text = wait_for(lambda: scrape(a.admin("/stats/prometheus")),
                      lambda t: one(t, "istio_requests_total", reporter="source", response_code="200") >= 1)
    src = dict(common, reporter="source", connection_security_policy="unknown",
               destination_service="reviews.default.svc.cluster.local",
               destination_service_name="reviews", destination_service_namespace="default")
    assert one(a_text, "istio_requests_total", **src) == 1
    b_text = scrape(b.admin("/stats/prometheus"))
    dst = dict(common, reporter="destination", connection_security_policy="none",
               destination_service="reviews.shop.svc.cluster.local",
               destination_service_name="reviews", destination_service_namespace="shop")
    assert one(b_text, "istio_requests_total", **dst) == 1
    # Every label of the sample is one of Istio's, with nothing else (no path, no id).
    labels = next(l for l, _ in samples(b_text, "istio_requests_total"))
    assert set(labels) == set(src)

    # Histograms count it: the +Inf bucket and _count are 1, body sizes are summed.
    assert one(b_text, "istio_request_duration_milliseconds_bucket", le="+Inf", **dst) == 1
    assert one(b_text, "istio_request_duration_milliseconds_bucket", le="3.6e+06", **dst) == 1
    assert one(b_text, "istio_request_duration_milliseconds_count", **dst) == 1
    assert one(b_text, "istio_request_bytes_sum", **dst) == 5
    assert one(b_text, "istio_request_bytes_bucket", le="1", **dst) == 0
    assert one(b_text, "istio_request_bytes_bucket", le="5", **dst) == 1
    assert one(a_text, "istio_response_bytes_sum", **src) == len(r.body)

    # :15090 serves the same families as admin /stats/prometheus.
    for p, labels in ((a, src), (b, dst)):
        text = scrape(f"http://127.0.0.1:{p.prometheus_port}/stats/prometheus")
        assert one(text, "istio_requests_total", **labels) == 1
        assert samples(text, "envoy_server_live"), "Envoy-style stats are on :15090 too"


def test_failures_have_their_code_and_flags(mesh):
    """A 503 UH (no endpoint) and a 404 NR (no route) are counted with Istio's labels; an
    unknown Host never becomes a label value."""
    a, _ = mesh
    c = RawClient(a.outbound_port)
    assert c.request("GET", "/", "empty").status == 503
    assert c.request("GET", "/", "no-such-host-1234.example:81").status == 404
    text = wait_for(lambda: scrape(a.admin("/stats/prometheus")),
                    lambda t: one(t, "istio_requests_total", response_flags="NR") >= 1)
    assert one(text, "istio_requests_total", reporter="source", response_code="503", response_flags="UH",
               destination_service="empty.default.svc.cluster.local",
               destination_workload="unknown") == 1
    assert one(text, "istio_requests_total", reporter="source", response_code="404", response_flags="NR",
               destination_service="unknown", destination_service_name="unknown") == 1
    assert "no-such-host-1234" not in text


def test_external_services_get_no_metadata(mesh):
    """A MESH_EXTERNAL ServiceEntry never receives the sidecar's metadata header, and its
    answers do not fill destination_* labels."""
    a, _ = mesh
    r = RawClient(a.outbound_port).request("GET", "/ext", "outside.example.com")
    assert r.status == 200
    assert "x-remora-peer-metadata" not in r.json()["headers"]
    text = wait_for(lambda: scrape(a.admin("/stats/prometheus")),
                    lambda t: one(t, "istio_requests_total", destination_service="outside.example.com") >= 1)
    assert one(text, "istio_requests_total", reporter="source",
               destination_service="outside.example.com", destination_service_name="outside.example.com",
               destination_workload="unknown", response_code="200") == 1


def test_websocket_tunnel_counts_tcp_metrics(mesh):
    """A WebSocket upgrade through A and B opens and closes one TCP connection on each
    reporter and counts the tunnelled bytes in both directions."""
    a, b = mesh

    async def talk():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{a.outbound_port}/ws",
                                          headers={"Host": "reviews:9080"},
                                          timeout=aiohttp.ClientWSTimeout(ws_receive=10)) as ws:
                await ws.send_bytes(b"x" * 1000)
                assert await ws.receive_bytes() == b"x" * 1000

    asyncio.run(talk())
    for p, reporter in ((a, "source"), (b, "destination")):
        text = wait_for(lambda: scrape(p.admin("/stats/prometheus")),
                        lambda t: one(t, "istio_tcp_connections_closed_total", reporter=reporter) >= 1)
        assert one(text, "istio_tcp_connections_opened_total", reporter=reporter,
                   request_protocol="tcp", source_app="productpage", destination_app="reviews") == 1
        assert one(text, "istio_tcp_connections_closed_total", reporter=reporter) == 1
        assert one(text, "istio_tcp_received_bytes_total", reporter=reporter) >= 1000
        assert one(text, "istio_tcp_sent_bytes_total", reporter=reporter) >= 1000
        assert one(text, "istio_requests_total", reporter=reporter, response_code="101") == 1


def test_workers_are_summed_in_one_scrape(upstreams):
    """With --workers 2 one scrape of admin (and of :15090) returns every worker's requests."""
    prom = free_port()
    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]), "--workers", "2",
                     "--access-log", "off", *A_IDENTITY, prometheus_port=prom).wait_ready()
    try:
        n = 40
        for _ in range(n):   # a new connection each time, so the kernel spreads them
            assert RawClient(p.outbound_port).request("GET", "/w", "echo").status == 200
        want = dict(reporter="source", destination_service="echo.default.svc.cluster.local",
                    response_code="200")
        text = wait_for(lambda: scrape(p.admin("/stats/prometheus")),
                        lambda t: one(t, "istio_requests_total", **want) >= n)
        assert one(text, "istio_requests_total", **want) == n
        assert one(text, "istio_request_duration_milliseconds_count", **want) == n
        assert one(text, "envoy_server_live") == 1, "a process-wide gauge is not summed"
        assert one(scrape(f"http://127.0.0.1:{prom}/stats/prometheus"), "istio_requests_total", **want) == n
    finally:
        assert p.stop() == 0, p.stderr()


def test_no_istio_metrics_flag_turns_them_off(upstreams):
    """--no-istio-metrics: no istio_* samples and no metadata header, Envoy-style stats stay."""
    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]), "--no-istio-metrics",
                     "--access-log", "off").wait_ready()
    try:
        r = RawClient(p.outbound_port).request("GET", "/off", "echo")
        assert "x-remora-peer-metadata" not in r.json()["headers"]
        text = scrape(p.admin("/stats/prometheus"))
        assert "istio_requests_total" not in text
        assert one(text, "envoy_cluster_upstream_rq_total",
                   envoy_cluster_name="outbound|80||echo.default.svc.cluster.local") == 1
    finally:
        assert p.stop() == 0
