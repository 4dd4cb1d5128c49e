"""Resilience over real sockets: fault injection (DI/FI) and route timeouts (UT)."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.integration.client import RawClient
from tests.integration.conftest import service
from tests.integration.proxy_process import ProxyProcess


def virtual_service(name: str, host: str, extra: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  http:
  - {extra}
    route: [{{destination: {{host: {host}}}}}]
---
"""


@pytest.fixture(scope="module")
def resilient(upstreams):
    """A sidecar with fault-injecting and timing-out routes in front of the echo upstream."""
    echo = upstreams.ports["echo"]
    yaml = (service("aborted", [(echo, {})]) + service("delayed", [(echo, {})])
            + service("half", [(echo, {})]) + service("slowroute", [(echo, {})])
            + virtual_service("aborted", "aborted", "fault: {abort: {httpStatus: 418, percentage: {value: 100}}}")
            + virtual_service("delayed", "delayed", "fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}")
            + virtual_service("half", "half", "fault: {abort: {httpStatus: 503, percentage: {value: 50}}}")
            + virtual_service("slowroute", "slowroute", "timeout: 300ms"))
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
