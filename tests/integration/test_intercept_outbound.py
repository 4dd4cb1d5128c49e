"""Outbound capture (15001) in network namespaces: passthrough, REGISTRY_ONLY, explicit mode kept."""
from __future__ import annotations

import pytest

from tests.integration.capture_lab import Lab, Sidecar, capture, http_get, start_app, tcp_exchange
from tests.integration.netns import skip_unless_possible, wait_until

EMPTY_MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: unrelated}
spec:
  hosts: [unrelated.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.203.0.99}]
"""


@pytest.fixture(scope="module")
def lab():
    skip_unless_possible()
    made = Lab(net=203)
    try:
        client, outside = made.pod("client", 2), made.pod("outside", 4)
        start_app(outside, "http", 8080, "outside")
        start_app(outside, "echo", 7000)
        capture(client)
        made.allow_any = Sidecar(client, EMPTY_MESH)
        yield made
    finally:
        made.close()


def test_http_to_a_non_mesh_destination_passes_through(lab):
    """ALLOW_ANY: an app's plain HTTP call to an address no ServiceEntry knows reaches it unchanged, via the sidecar."""
    client, outside = lab.pods["client"], lab.pods["outside"]
    before = lab.allow_any.stats()
    status, _, body = http_get(client, f"http://{outside.ip}:8080/hello")
    assert status == 200 and '"server": "outside"' in body and '"path": "/hello"' in body
    after = lab.allow_any.stats()
    assert after["listener.127.0.0.1_15001.capture.passthrough"] > before.get("listener.127.0.0.1_15001.capture.passthrough", 0)
    assert after["cluster.PassthroughCluster.upstream_rq_2xx"] >= 1


def test_tcp_to_a_non_mesh_destination_passes_through(lab):
    """ALLOW_ANY: non-HTTP bytes to an unknown destination are relayed as TCP, byte for byte, both ways."""
    client, outside = lab.pods["client"], lab.pods["outside"]
    payload = bytes(range(256)) * 300        # binary, larger than one read
    assert tcp_exchange(client, outside.ip, 7000, payload) == payload
    # counted when the proxy sees the connection end, just after the client did
    stats = wait_until(lambda: (s := lab.allow_any.stats())["tcp.outbound.downstream_cx_active"] == 0 and s,
                       20, "the TCP connection closed in the sidecar: ")
    assert stats["tcp.outbound.downstream_cx_total"] >= 1
    assert stats["tcp.outbound.downstream_cx_rx_bytes_total"] >= len(payload)
    assert stats["tcp.outbound.downstream_cx_tx_bytes_total"] >= len(payload)
    log = wait_until(lambda: '"- - -" 0 - ' in (text := lab.allow_any.log()) and text, 20, "access log line")
    line = next(line for line in log.splitlines() if '"- - -"' in line)
    assert f'"{outside.ip}:7000"' in line and f" {len(payload)} {len(payload)} " in line


def test_explicit_mode_still_routes_by_host(lab):
    """A client dialling 127.0.0.1:15001 itself (no redirect) is served as before: no route -> 404 NR."""
    client = lab.pods["client"]
    status, _, _ = http_get(client, "http://127.0.0.1:15001/", {"Host": "nothing.example"})
    assert status == 404


def test_registry_only_refuses_non_mesh_destinations(lab):
    """REGISTRY_ONLY: HTTP to a non-mesh destination answers 502 (flag NR), TCP is closed; both counted."""
    client, outside = lab.pods["client"], lab.pods["outside"]
    lab.allow_any.proc.terminate()
    lab.allow_any.proc.wait(timeout=20)
    strict = Sidecar(client, EMPTY_MESH, "--outbound-traffic-policy", "REGISTRY_ONLY")
    status, _, _ = http_get(client, f"http://{outside.ip}:8080/")
    assert status == 502
    assert tcp_exchange(client, outside.ip, 7000, b"\x00\x01binary") in (b"", "error:ConnectionResetError")
    stats = strict.stats()
    assert stats["listener.127.0.0.1_15001.capture.registry_only_refused"] >= 2
    assert " 502 NR " in strict.log()
