"""Outbound capture (15001) in network namespaces: passthrough, REGISTRY_ONLY, explicit mode kept."""
from __future__ import annotations

import json

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


H2_GET = """
import json, socket, sys
import h2.config, h2.connection, h2.events
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=20)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
c.initiate_connection()
c.send_headers(1, [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"),
                   (b":authority", f"{host}:{port}".encode())], end_stream=True)
s.sendall(c.data_to_send())
status, body, done = None, b"", False
while not done:
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            status = int(dict(e.headers)[b":status"])
        elif isinstance(e, h2.events.DataReceived):
            body += e.data
            c.acknowledge_received_data(e.flow_controlled_length, 1)
        elif isinstance(e, h2.events.StreamEnded):
            done = True
    s.sendall(c.data_to_send())
json.dump([status, body.decode()], sys.stdout)
"""


def test_h2c_prior_knowledge_to_a_non_mesh_destination_passes_through(lab):
    """ALLOW_ANY: an app speaking h2c (prior knowledge) to an address no ServiceEntry knows is
    captured as HTTP, served as HTTP/2 and passed through to the HTTP/1 server unchanged."""
    client, outside = lab.pods["client"], lab.pods["outside"]
    before = lab.allow_any.stats()
    code = "import sys; sys.argv = ['h2get', %r, '8080', '/h2-captured']\n" % outside.ip + H2_GET
    status, body = json.loads(client.python(code).stdout)
    assert status == 200 and '"server": "outside"' in body and '"path": "/h2-captured"' in body
    after = lab.allow_any.stats()
    assert after["cluster.PassthroughCluster.upstream_rq_2xx"] > before.get("cluster.PassthroughCluster.upstream_rq_2xx", 0)
    assert after["http.outbound.downstream_cx_http2_total"] > before.get("http.outbound.downstream_cx_http2_total", 0)
    assert wait_until(lambda: '"GET /h2-captured HTTP/2" 200' in lab.allow_any.log(), 20, "the HTTP/2 access log line")


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
    # The access log is flushed every 100 ms: wait for the line rather than read once.
    assert wait_until(lambda: " 502 NR " in strict.log(), 20, "the 502 NR access log line")
