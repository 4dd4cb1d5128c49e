"""Chaos: an upstream that misbehaves in every way; the client always gets exactly one
response (or a clean close), and the proxy leaks no connections, requests or descriptors."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.integration.client import RawClient
from tests.integration.conftest import service
from tests.integration.proxy_process import ProxyProcess

CHAOS_MESH = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: chaos}
spec:
  hosts: [chaos]
  http:
  - timeout: 1s
    route: [{destination: {host: chaos}}]
---
"""

# path -> (status the client sees, response flag, connection still usable afterwards)
CASES = {
    "/close": (503, "UC", True),
    "/hang": (504, "UT", True),
    "/slow": (200, "-", True),
    "/invalid": (502, "UPE", True),
    "/idle-close": (200, "-", True),
}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stats(p: ProxyProcess) -> dict[str, int]:
    return {s["name"]: s["value"] for s in json.loads(p.admin_get("/stats?format=json"))["stats"]}


@pytest.fixture(scope="module")
def chaos_proxy(upstreams):
    p = ProxyProcess(service("chaos", [(upstreams.ports["chaos"], {})])
                     + service("refused", [(upstreams.ports["down"], {})]) + CHAOS_MESH).wait_ready()
    yield p
    p.stop()


@pytest.mark.parametrize("path", sorted(CASES))
def test_each_misbehaviour_gets_one_response_with_its_flag(chaos_proxy, path):
    """Every misbehaviour yields exactly one response with Envoy's status and flag; the connection stays usable."""
    status, flag, usable = CASES[path]
    c = RawClient(chaos_proxy.outbound_port)
    r = c.request("GET", path, "chaos")
    assert r.status == status and r.complete
    if usable:
        follow = c.request("GET", "/fine", "chaos")
        assert follow.status == 200 and follow.body == b"ok"
    c.sock.settimeout(0.3)
    try:
        extra = c.sock.recv(100)
    except (TimeoutError, OSError):
        extra = b""
    assert extra == b"", "more than one response for one request"
    assert f'"GET {path} HTTP/1.1" {status} {flag} ' in chaos_proxy.access_log()


def test_reset_mid_response_cuts_the_client_off(chaos_proxy):
    """An upstream reset after the head went downstream closes the client connection (flag UC), never a second head."""
    c = RawClient(chaos_proxy.outbound_port)
    r = c.request("GET", "/reset-mid", "chaos")
    assert r.status == 200 and not r.complete and r.body == b"0123456789"
    assert c.is_closed_by_peer()
    assert '"GET /reset-mid HTTP/1.1" 200 UC ' in chaos_proxy.access_log()


def test_refused_connections_retry_then_fail_with_uf(chaos_proxy):
    """Connection refused: Istio's default policy retries connect failures twice, then 503 UF,URX."""
    c = RawClient(chaos_proxy.outbound_port)
    assert c.request("GET", "/", "refused").status == 503
    assert c.request("GET", "/again", "refused").status == 503
    assert '"GET / HTTP/1.1" 503 UF,URX' in chaos_proxy.access_log()


def test_no_leaks_after_chaos(chaos_proxy):
    """After all of it: no request in flight, no pending waiter, no leaked upstream connection or fd."""
    pid = chaos_proxy.proc.pid
    baseline = fd_count(pid)
    for _ in range(3):
        for path in ("/close", "/hang", "/invalid", "/idle-close", "/reset-mid", "/slow"):
            c = RawClient(chaos_proxy.outbound_port)
            c.request("GET", path, "chaos")
            c.close()
    time.sleep(1.5)
    s = stats(chaos_proxy)
    prefix = "cluster.outbound|80||chaos.default.svc.cluster.local."
    assert s[prefix + "upstream_rq_active"] == 0
    assert s[prefix + "upstream_rq_pending_active"] == 0
    assert s["http.outbound.downstream_rq_active"] == 0
    assert s["http.outbound.downstream_cx_active"] == 0
    clusters = json.loads(chaos_proxy.admin_get("/clusters?format=json"))
    chaos = next(c for c in clusters if c["name"] == prefix[8:-1])
    pooled = sum(e["connections_idle"] for e in chaos["endpoints"])
    assert s[prefix + "upstream_cx_active"] == pooled, "open upstream connections that are not pooled"
    assert fd_count(pid) <= baseline + pooled + 2, "file descriptors leaked"
