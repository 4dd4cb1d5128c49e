"""Resilience over real sockets: fault injection (DI/FI) and route timeouts (UT)."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.integration.client import RawClient
from tests.integration.conftest import destination_rule, service, virtual_service
from tests.integration.proxy_process import ProxyProcess


@pytest.fixture(scope="module")
def resilient(upstreams):
    """A sidecar with fault-injecting and timing-out routes in front of the echo upstream."""
    echo = upstreams.ports["echo"]
    yaml = (service("aborted", [(echo, {})]) + service("delayed", [(echo, {})])
            + service("half", [(echo, {})]) + service("slowroute", [(echo, {})])
            + virtual_service("aborted", "fault: {abort: {httpStatus: 418, percentage: {value: 100}}}")
            + virtual_service("delayed", "fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}")
            + virtual_service("half", "fault: {abort: {httpStatus: 503, percentage: {value: 50}}}")
            + virtual_service("slowroute", "timeout: 300ms"))
    p = ProxyProcess(yaml).wait_ready()
    yield p
    p.stop()


def test_fault_abort_answers_without_reaching_upstream(resilient):
    """A 100% abort answers the configured status with flag FI, and nothing reaches the upstream."""
    c = RawClient(resilient.outbound_port)
    r = c.request("GET", "/fi-check", "aborted")
    assert r.status == 418 and r.body == b"fault filter abort"
    assert c.request("GET", "/", "aborted").status == 418, "connection must stay usable"
    assert '"GET /fi-check HTTP/1.1" 418 FI' in resilient.access_log()
    assert "upstream_rq_total: 0" in resilient.admin_get(
        "/stats?filter=outbound.80..aborted.*upstream_rq_total")


def test_fault_delay_holds_the_request(resilient):
    """A 100% fixed delay of 300 ms delays the request, which then succeeds with flag DI."""
    c = RawClient(resilient.outbound_port)
    start = time.time()
    r = c.request("GET", "/di-check", "delayed")
    assert r.status == 200
    assert time.time() - start >= 0.29
    assert '"GET /di-check HTTP/1.1" 200 DI' in resilient.access_log()


def test_fault_abort_percentage_is_honoured(resilient):
    """A 50% abort aborts about half of 400 requests."""
    c = RawClient(resilient.outbound_port)
    seen = Counter(c.request("GET", "/", "half").status for _ in range(400))
    assert set(seen) == {200, 503}
    assert 140 <= seen[503] <= 260, seen


def test_route_timeout_gives_504_ut_and_keeps_client_usable(resilient):
    """A route timeout of 300 ms answers 504 with flag UT; the client connection stays usable."""
    c = RawClient(resilient.outbound_port)
    start = time.time()
    r = c.request("GET", "/slow?ms=3000", "slowroute")
    assert r.status == 504 and r.body == b"upstream request timeout"
    assert 0.25 <= time.time() - start < 2.5
    assert c.request("GET", "/slow?ms=10", "slowroute").status == 200
    assert '"GET /slow?ms=3000 HTTP/1.1" 504 UT' in resilient.access_log()


def concurrent_statuses(port: int, host: str, path: str, n: int) -> tuple[list[int], list[str]]:
    """Send n requests at once on n connections; return statuses and x-envoy-overloaded values."""
    import threading
    clients = [RawClient(port) for _ in range(n)]
    results = [None] * n
    for c in clients:
        c.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

    def read(i):
        results[i] = clients[i].read_response()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return [r.status for r in results], [r.headers.get("x-envoy-overloaded", "") for r in results]


def test_circuit_breaker_overflow_fails_fast_with_uo(upstreams):
    """maxConnections 1 + http1MaxPendingRequests 1 under 20 concurrent requests: 2 succeed, 18 get 503 UO."""
    echo = upstreams.ports["echo"]
    p = ProxyProcess(service("guarded", [(echo, {})]) + destination_rule(
        "guarded", "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}")
    ).wait_ready()
    try:
        statuses, overloaded = concurrent_statuses(p.outbound_port, "guarded", "/slow?ms=600", 20)
        assert statuses.count(200) == 2, statuses
        assert statuses.count(503) == 18, statuses
        assert overloaded.count("true") == 18
        log = p.access_log()
        assert log.count(" 503 UO ") == 18
        stats = p.admin_get("/stats?filter=guarded")
        assert "upstream_rq_pending_overflow: 18" in stats
        assert "upstream_cx_active: 1" in stats   # the one connection, now idle in its pool
        assert "upstream_rq_pending_active: 0" in stats
    finally:
        p.stop()


def test_max_requests_per_connection_retires_connections(upstreams):
    """maxRequestsPerConnection 1: each request travels on a new upstream connection."""
    echo = upstreams.ports["echo"]
    p = ProxyProcess(service("oneshot", [(echo, {})]) + destination_rule(
        "oneshot", "{connectionPool: {http: {maxRequestsPerConnection: 1}}}")).wait_ready()
    try:
        c = RawClient(p.outbound_port)
        ports = {c.request("GET", "/", "oneshot").json()["peer_port"] for _ in range(4)}
        assert len(ports) == 4
    finally:
        p.stop()


def test_max_requests_limits_concurrent_requests(upstreams):
    """http2MaxRequests 3 bounds active requests: 3 of 10 concurrent succeed, the rest get UO."""
    echo = upstreams.ports["echo"]
    p = ProxyProcess(service("capped", [(echo, {})]) + destination_rule(
        "capped", "{connectionPool: {http: {http2MaxRequests: 3}}}")).wait_ready()
    try:
        statuses, _ = concurrent_statuses(p.outbound_port, "capped", "/slow?ms=600", 10)
        assert statuses.count(200) == 3 and statuses.count(503) == 7, statuses
    finally:
        p.stop()
