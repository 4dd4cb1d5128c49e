"""HTTP/2 hardening: hostile raw clients (h2_attacks.py) against the proxy, Envoy alongside.

For every attack the proxy must stay responsive to a well-behaved client running at the same
time, its memory must stay bounded, and the attacks that Envoy ends (rapid reset,
CONTINUATION flood, SETTINGS and PING floods) must be ended. Envoy runs the same attacks from
the same YAML as the reference: a check that holds for Envoy and fails for Remora is a
Remora bug, not a test bug.
"""
from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.mesh import one_hop_yaml
from tests.integration import h2_attacks
from tests.integration.envoy_process import EnvoyProcess
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration

RSS_GROWTH_LIMIT_KIB = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _Upstream(ThreadingHTTPServer):
    # The attacks end hundreds of streams at once, and the proxy opens an upstream connection
    # for each: socketserver's default backlog of 5 drops SYNs, and a bystander's request then
    # waits out a retransmit or a connect timeout. The upstream is not what is under test.
    request_queue_size = 1024
    daemon_threads = True


@pytest.fixture(scope="module")
def upstream():
    server = _Upstream(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _start(kind: str, upstream_port: int):
    yaml_text = one_hop_yaml(upstream_port)
    if kind == "envoy":
        proxy = EnvoyProcess(yaml_text)
        _wait_serving(proxy.outbound_port)
        return proxy
    return ProxyProcess(yaml_text).wait_ready()


def _get(port: int, timeout: float = 5.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": "upstream"})
        return conn.getresponse().status
    finally:
        conn.close()


def _wait_serving(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _get(port, 1.0) == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"proxy on {port} never answered 200")
        time.sleep(0.1)


class Bystander(threading.Thread):
    """A well-behaved HTTP/1.1 client asking every 50 ms while an attack runs."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self.slowest = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status = _get(self.port)
            except OSError as error:
                status = 0
                self.failures.append(repr(error))
            self.slowest = max(self.slowest, time.monotonic() - started)
            if status == 200:
                self.ok += 1
            else:
                self.failed += 1
                if status:
                    self.failures.append(f"status {status}")
            self.stop.wait(0.05)


ATTACKS = {
    "rapid-reset": (h2_attacks.rapid_reset, True),
    "continuation-flood": (h2_attacks.continuation_flood, True),
    "settings-flood": (h2_attacks.settings_flood, True),
    "ping-flood": (h2_attacks.ping_flood, True),
    "hpack-bomb": (h2_attacks.hpack_bomb, False),
    "zero-window": (h2_attacks.zero_window, False),
    "too-many-streams": (h2_attacks.too_many_streams, False),
}
PROXIES = ["envoy", "remora"]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("kind", PROXIES)
def test_attack_is_contained_and_others_are_served(kind, attack, upstream):
    """The attack is ended where Envoy ends it, memory stays bounded, a bystander is served."""
    run, must_stop = ATTACKS[attack]
    proxy = _start(kind, upstream)
    before = proxy.rss_kib()
    bystander = Bystander(proxy.outbound_port)
    bystander.start()
    try:
        outcome = run(proxy.outbound_port)
    finally:
        bystander.stop.set()
        bystander.join(10)
    grown = proxy.rss_kib() - before
    if must_stop:
        assert outcome.stopped, f"{attack} was not ended: {outcome}"
    if attack == "hpack-bomb":
        assert 200 not in outcome.statuses, "a header block decoding to ~80 MiB was answered 200"
    assert grown < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {grown} KiB during {attack}"
    assert bystander.failed == 0 and bystander.ok > 0, (bystander.ok, bystander.failures)
    assert _get(proxy.outbound_port) == 200
    proxy.close()
