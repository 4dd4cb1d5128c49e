"""Process lifecycle: the SIGTERM / quitquitquit drain (inbound closed, outbound serving, exit when
no connection is left or at the deadline), several workers, and refusing invalid config."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from tests.integration.client import RawClient
from tests.integration.conftest import mesh_yaml, service
from tests.integration.proxy_process import ProxyProcess, wait_until
from tests.integration.upstreams import free_port


TIMEOUT = 30.0   # generous: a busy 2-core machine


def drain_sidecar(upstreams, *extra: str, drain: str = "60s", **kw) -> ProxyProcess:
    """A sidecar with an outbound route to the `drain` upstream and an inbound listener in front of it."""
    return ProxyProcess(service("drain", [(upstreams.ports["drain"], {})]), "--drain-seconds", drain,
                        "--access-log", "off", *extra, inbound_app_port=upstreams.ports["drain"],
                        **kw).wait_ready(TIMEOUT)


def in_background(client: RawClient, path: str) -> tuple[threading.Thread, dict]:
    """Send one request on `client` from a thread; the response lands in the dict."""
    result: dict = {}

    def run() -> None:
        result["resp"] = client.request("GET", path, "drain")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result



def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def in_flight(p: ProxyProcess, listener: str) -> int:
    stats = {s["name"]: s["value"] for s in json.loads(p.admin_get("/stats?format=json"))["stats"]}
    return stats[f"http.{listener}.downstream_rq_active"]


def health(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def start_drain_with_stuck_inbound(p: ProxyProcess, how, ms: int = 4000):
    """An idle inbound keep-alive and a slow inbound request, then `how(p)` begins the drain;
    returns the idle client and the slow request's thread and result."""
    idle = RawClient(p.inbound_port)
    assert idle.request("GET", "/", "drain").status == 200
    busy = RawClient(p.inbound_port)
    thread, result = in_background(busy, f"/slow?ms={ms}")
    wait_until(lambda: in_flight(p, "inbound") == 1, "the slow inbound request in flight", p)
    how(p)
    return idle, thread, result


def sigterm(p: ProxyProcess) -> None:
    p.proc.send_signal(signal.SIGTERM)


def test_drain_keeps_outbound_serving_refuses_inbound_and_finishes_in_flight(upstreams):
    """During the drain the app's outbound calls are served, new inbound connections are refused,
    idle inbound keep-alives close, the in-flight inbound request completes, readiness says
    DRAINING, and the proxy exits 0 once no connection is left, long before --drain-seconds."""
    p = drain_sidecar(upstreams, health_port=free_port())
    ready_url = f"http://127.0.0.1:{p.health_port}/healthz/ready"
    assert health(ready_url) == (200, "LIVE\n")
    idle, thread, result = start_drain_with_stuck_inbound(p, sigterm)
    began = time.time()
    assert idle.is_closed_by_peer(timeout=10), "idle inbound keep-alive was not closed"
    assert health(ready_url) == (503, "DRAINING\n")
    assert "resp" not in result, "the slow request ended before the drain could be checked"
    assert wait_until(lambda: refuses(p.inbound_port), "the inbound listener to close", p)
    outbound = RawClient(p.outbound_port)           # a new outbound connection is accepted
    resp = outbound.request("GET", "/", "drain")
    assert resp.status == 200 and resp.json()["server"] == "drain"
    assert resp.headers.get("connection") == "close"   # the app's pooled connections turn over
    assert outbound.is_closed_by_peer(timeout=10)
    thread.join(TIMEOUT)
    assert result["resp"].status == 200, "the in-flight inbound request did not complete"
    assert result["resp"].headers.get("connection") == "close"
    assert p.proc.wait(TIMEOUT) == 0
    assert time.time() - began < 50, "waited for the drain deadline although no connection was left"
    assert "draining: inbound closed, outbound serving" in p.stderr()
    assert "drain deadline" not in p.stderr()


def test_an_open_outbound_connection_holds_the_exit_until_it_closes(upstreams):
    """An app's idle keep-alive to the outbound listener is an active connection: the proxy stays
    (serving it) until the app closes it, then exits 0."""
    p = drain_sidecar(upstreams)
    app = RawClient(p.outbound_port)
    assert app.request("GET", "/", "drain").status == 200
    sigterm(p)
    wait_until(lambda: refuses(p.inbound_port), "the inbound listener to close", p)
    time.sleep(1.0)
    assert p.proc.poll() is None, "exited while the app still had a connection open"
    assert app.request("GET", "/", "drain").status == 200   # still served on the kept connection
    app.close()
    assert p.proc.wait(TIMEOUT) == 0


def test_drain_deadline_cuts_a_stuck_request(upstreams):
    """A request longer than --drain-seconds does not keep the proxy alive past the deadline."""
    p = drain_sidecar(upstreams, drain="2s")
    c = RawClient(p.inbound_port)
    c.send(b"GET /slow?ms=120000 HTTP/1.1\r\nHost: drain\r\n\r\n")
    wait_until(lambda: in_flight(p, "inbound") == 1, "the stuck request in flight", p)
    start = time.time()
    sigterm(p)
    assert p.proc.wait(TIMEOUT) == 0
    assert time.time() - start < TIMEOUT
    assert c.is_closed_by_peer(timeout=5)
    assert "drain deadline (2s) reached: closing 1 connection(s)" in p.stderr()


def test_quitquitquit_drains_and_exits_0(upstreams):
    """POST /quitquitquit (a Job's last step) drains like SIGTERM: the in-flight request completes, exit 0."""
    def quit_(p: ProxyProcess) -> None:
        request = urllib.request.Request(p.admin("/quitquitquit"), method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            assert (r.status, r.read()) == (200, b"OK\n")
    p = drain_sidecar(upstreams)
    idle, thread, result = start_drain_with_stuck_inbound(p, quit_, ms=2000)
    assert idle.is_closed_by_peer(timeout=10)
    thread.join(TIMEOUT)
    assert result["resp"].status == 200
    assert p.proc.wait(TIMEOUT) == 0


def test_several_workers_drain_with_the_health_port(upstreams):
    """--workers 2: the supervisor serves the health port (200, then 503 DRAINING from SIGTERM on),
    outbound is still served, inbound refused, the in-flight request completes, exit 0."""
    p = drain_sidecar(upstreams, "--workers", "2", health_port=free_port())
    ready_url = f"http://127.0.0.1:{p.health_port}/healthz/ready"
    assert wait_until(lambda: health(ready_url) == (200, "LIVE\n"), "health 200", p)
    idle, thread, result = start_drain_with_stuck_inbound(p, sigterm)
    wait_until(lambda: health(ready_url) == (503, "DRAINING\n"), "health 503 DRAINING", p)
    assert "resp" not in result, "readiness said DRAINING only after the in-flight request ended"
    assert idle.is_closed_by_peer(timeout=10)
    assert wait_until(lambda: refuses(p.inbound_port), "both workers' inbound sockets to close", p)
    for _ in range(4):    # new connections, spread over both workers
        resp = RawClient(p.outbound_port).request("GET", "/", "drain")
        assert resp.status == 200 and resp.headers.get("connection") == "close"
    thread.join(TIMEOUT)
    assert result["resp"].status == 200
    assert p.proc.wait(TIMEOUT) == 0


def test_several_workers_serve_and_admin_sums_them(upstreams):
    """With --workers 2 both processes serve, and one admin scrape counts every request."""
    p = ProxyProcess(mesh_yaml(upstreams.ports), "--workers", "2", "--access-log", "off").wait_ready()
    try:
        total = 0
        for _ in range(20):   # new connections spread across the SO_REUSEPORT workers
            c = RawClient(p.outbound_port)
            for _ in range(5):
                assert c.request("GET", "/", "echo").status == 200
                total += 1
            c.close()
        stats = json.loads(p.admin_get("/stats?format=json"))["stats"]
        values = {s["name"]: s["value"] for s in stats}
        assert values["http.outbound.downstream_rq_total"] == total
        assert values["server.concurrency"] == 2
        clusters = json.loads(p.admin_get("/clusters?format=json"))
        echo = next(c for c in clusters if c["name"] == "outbound|80||echo.default.svc.cluster.local")
        assert echo["endpoints"][0]["total_requests"] == total
    finally:
        assert p.stop() == 0


def test_invalid_config_exits_nonzero_naming_the_field(tmp_path):
    """A bad VirtualService makes the proxy exit non-zero with file, resource and field path, serving nothing."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [cart]
  http:
  - route:
    - destination: {host: cart}
      weight: -5
""")
    proc = subprocess.run([sys.executable, "-m", "remora", "proxy", "--mesh-config", str(bad),
                           "--outbound-port", "0", "--admin-port", "0"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert str(bad) in proc.stderr
    assert "VirtualService/shop/broken" in proc.stderr
    assert "spec.http[0].route[0].weight" in proc.stderr
