"""Retries and outlier ejection over real sockets."""
from __future__ import annotations

import json
import time
from collections import Counter

from tests.integration.client import RawClient
from tests.integration.conftest import destination_rule, service, virtual_service
from tests.integration.proxy_process import ProxyProcess


def stat_values(p: ProxyProcess) -> dict[str, int]:
    return {s["name"]: s["value"] for s in json.loads(p.admin_get("/stats?format=json"))["stats"]}


def test_retries_hide_one_failing_endpoint_of_three(upstreams):
    """With retryOn 5xx, every request succeeds although one of three endpoints always answers 503."""
    ports = upstreams.ports
    p = ProxyProcess(service("trio", [(ports["v1"], {}), (ports["v2"], {}), (ports["fail"], {})])
                     + virtual_service("trio", "retries: {attempts: 2, retryOn: 5xx}")).wait_ready()
    try:
        c = RawClient(p.outbound_port)
        seen = Counter()
        for _ in range(60):
            r = c.request("POST", "/", "trio", body=b"replayed body")
            assert r.status == 200
            info = r.json()
            assert info["body_len"] == len(b"replayed body")
            seen[(info["server"], info["headers"]["x-envoy-attempt-count"])] += 1
        stats = stat_values(p)["cluster.outbound|80||trio.default.svc.cluster.local.upstream_rq_retry"]
        assert stats >= 15, "the failing endpoint should have been tried and retried about 20 times"
        assert any(count == "2" for (_, count) in seen), "retried attempts carry x-envoy-attempt-count: 2"
        assert {server for server, _ in seen} == {"v1", "v2"}
    finally:
        p.stop()


def test_exhausted_retries_return_the_last_response_with_urx(upstreams):
    """When every attempt fails, the last upstream response is returned with flag URX."""
    p = ProxyProcess(service("doomed", [(upstreams.ports["fail"], {})])
                     + virtual_service("doomed", "retries: {attempts: 2, retryOn: 5xx}")).wait_ready()
    try:
        r = RawClient(p.outbound_port).request("GET", "/urx-check", "doomed")
        assert r.status == 503 and r.body == b"fail"
        assert '"GET /urx-check HTTP/1.1" 503 URX' in p.access_log()
        assert stat_values(p)["cluster.outbound|80||doomed.default.svc.cluster.local.upstream_rq_retry"] == 2
    finally:
        p.stop()


def test_attempts_zero_disables_retries(upstreams):
    """attempts: 0 turns retries off: a 503 from the flaky endpoint reaches the client."""
    p = ProxyProcess(service("noretry", [(upstreams.ports["fail"], {})])
                     + virtual_service("noretry", "retries: {attempts: 0}")).wait_ready()
    try:
        assert RawClient(p.outbound_port).request("GET", "/", "noretry").status == 503
        assert stat_values(p)["cluster.outbound|80||noretry.default.svc.cluster.local.upstream_rq_retry"] == 0
    finally:
        p.stop()


def test_per_try_timeout_retries_then_gives_up_with_ut(upstreams):
    """perTryTimeout bounds each attempt; after the retries the client gets 504 UT,URX."""
    p = ProxyProcess(service("sluggish", [(upstreams.ports["echo"], {})])
                     + virtual_service("sluggish", "retries: {attempts: 1, perTryTimeout: 200ms, retryOn: 5xx}")
                     ).wait_ready()
    try:
        start = time.time()
        r = RawClient(p.outbound_port).request("GET", "/slow?ms=2000", "sluggish")
        elapsed = time.time() - start
        assert r.status == 504
        assert 0.38 <= elapsed < 2.0
        assert '"GET /slow?ms=2000 HTTP/1.1" 504 UT,URX' in p.access_log()
    finally:
        p.stop()


def test_failing_endpoint_is_ejected_then_returns(upstreams):
    """An endpoint answering 503 three times in a row is ejected, gets no traffic, and returns after its ejection."""
    ports = upstreams.ports
    p = ProxyProcess(service("ejecting", [(ports["v1"], {}), (ports["fail"], {})])
                     + virtual_service("ejecting", "retries: {attempts: 0}")
                     + destination_rule("ejecting", "{outlierDetection: {consecutive5xxErrors: 3, interval: 1s, "
                                        "baseEjectionTime: 2s, maxEjectionPercent: 100}}")).wait_ready()
    try:
        c = RawClient(p.outbound_port)
        first = [c.request("GET", "/", "ejecting").status for _ in range(6)]
        assert first.count(503) == 3, first          # round robin: the 3rd 503 ejects it
        after = [c.request("GET", "/", "ejecting").status for _ in range(20)]
        assert after == [200] * 20, "the ejected endpoint still received traffic"
        clusters = json.loads(p.admin_get("/clusters?format=json"))
        eps = next(cl for cl in clusters if cl["name"].endswith("|ejecting.default.svc.cluster.local"))["endpoints"]
        health = {e["address"]: e["health"] for e in eps}
        assert health[f"127.0.0.1:{ports['fail']}"] == "ejected"
        assert "/failed_outlier_check" in p.admin_get("/clusters")
        stats = stat_values(p)
        prefix = "cluster.outbound|80||ejecting.default.svc.cluster.local.outlier_detection."
        assert stats[prefix + "ejections_active"] == 1
        assert stats[prefix + "ejections_enforced_total"] == 1
        time.sleep(3.6)          # 2 s ejection, noticed at the next 1 s interval tick
        back = [c.request("GET", "/", "ejecting").status for _ in range(6)]
        assert 503 in back, "the endpoint did not come back after its ejection time"
    finally:
        p.stop()


def test_body_over_retry_buffer_is_not_retried(upstreams):
    """A request body longer than --retry-buffer-bytes streams through and is not retried (retry_or_shadow_abandoned)."""
    p = ProxyProcess(service("bigbody", [(upstreams.ports["fail"], {})])
                     + virtual_service("bigbody", "retries: {attempts: 2, retryOn: 5xx}"),
                     "--retry-buffer-bytes", "1000").wait_ready()
    try:
        c = RawClient(p.outbound_port)
        assert c.request("POST", "/", "bigbody", body=b"b" * 500).status == 503     # small: retried
        assert c.request("POST", "/", "bigbody", body=b"b" * 5000).status == 503    # large: not retried
        s = stat_values(p)
        prefix = "cluster.outbound|80||bigbody.default.svc.cluster.local."
        assert s[prefix + "upstream_rq_retry"] == 2
        assert s[prefix + "retry_or_shadow_abandoned"] == 1
    finally:
        p.stop()


def test_all_endpoints_ejected_answers_503_uh(upstreams):
    """With its only endpoint ejected (and no panic threshold), the cluster answers 503 UH, as Envoy does."""
    p = ProxyProcess(service("lonely", [(upstreams.ports["fail"], {})])
                     + virtual_service("lonely", "retries: {attempts: 0}")
                     + destination_rule("lonely", "{outlierDetection: {consecutive5xxErrors: 2, interval: 1s, "
                                                  "baseEjectionTime: 30s, maxEjectionPercent: 100}}")).wait_ready()
    try:
        c = RawClient(p.outbound_port)
        assert [c.request("GET", "/", "lonely").status for _ in range(2)] == [503, 503]
        r = c.request("GET", "/uh-after-ejection", "lonely")
        assert r.status == 503 and r.body == b"no healthy upstream"
        assert '"GET /uh-after-ejection HTTP/1.1" 503 UH' in p.access_log()
    finally:
        p.stop()
