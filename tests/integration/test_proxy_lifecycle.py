"""Process lifecycle: SIGTERM drain, several workers, and refusing invalid config."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

from tests.integration.client import RawClient
from tests.integration.conftest import mesh_yaml, service
from tests.integration.proxy_process import ProxyProcess


def test_sigterm_drains_in_flight_requests_then_exits_0(upstreams):
    """On SIGTERM the proxy stops accepting, finishes the request in flight, closes idle keep-alives, exits 0."""
    p = ProxyProcess(service("drain", [(upstreams.ports["drain"], {})]), "--drain-seconds", "5").wait_ready()
    idle = RawClient(p.outbound_port)
    assert idle.request("GET", "/", "drain").status == 200
    busy = RawClient(p.outbound_port)
    result = {}

    def slow_request():
        result["resp"] = busy.request("GET", "/slow?ms=1500", "drain")

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.4)
    p.proc.send_signal(signal.SIGTERM)
    assert idle.is_closed_by_peer(timeout=3), "idle keep-alive connection was not closed"
    time.sleep(0.2)
    try:
        socket.create_connection(("127.0.0.1", p.outbound_port), timeout=1).close()
        refused = False
    except OSError:
        refused = True
    assert refused, "listener still accepts during drain"
    t.join(10)
    assert result["resp"].status == 200
    assert result["resp"].headers.get("connection") == "close"
    assert p.proc.wait(10) == 0


def test_drain_deadline_bounds_exit(upstreams):
    """A request longer than the drain time does not keep the proxy alive past the deadline."""
    p = ProxyProcess(service("drain", [(upstreams.ports["drain"], {})]), "--drain-seconds", "1").wait_ready()
    c = RawClient(p.outbound_port)
    c.send(b"GET /slow?ms=8000 HTTP/1.1\r\nHost: drain\r\n\r\n")
    time.sleep(0.3)
    start = time.time()
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    assert time.time() - start < 5


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
