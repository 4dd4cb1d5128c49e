"""Downstream HTTP/2 end to end: h2c prior knowledge on the outbound listener to HTTP/1 apps.

Streams map to their own exchanges, flow control ties the client's windows to the
upstream's pace in both directions, a client reset cancels only its stream, drain sends
GOAWAY, and a rapid-reset client is cut off while the others stay served.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
from hyperframe.frame import GoAwayFrame

from tests.integration.client import RawClient
from tests.integration.conftest import mesh_yaml, service, virtual_service
from tests.integration.h2_client import H2Client, keep_reading_after_goaway
from tests.integration.proxy_process import ProxyProcess, wait_until
from tests.integration.upstreams import LoopThread, SinkServer, SourceServer

pytestmark = pytest.mark.integration

TIMEOUT = 30.0   # generous: a busy 2-core machine


# Routing by path: /admin on `web` never reaches the app (a fault answers 418).
ADMIN_FAULT = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /admin}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]
---
"""


class HoldingApp(asyncio.Protocol):
    """An HTTP/1 app that reads request bodies and never answers /hold: each connection
    records the bytes it got and whether the proxy closed it (a cancelled request)."""

    connections: list[dict] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.record = {"bytes": 0, "closed": False, "head": b""}
        HoldingApp.connections.append(self.record)

    def data_received(self, data: bytes) -> None:
        record = self.record
        if b"\r\n\r\n" not in record["head"]:
            record["head"] += data
            if b"\r\n\r\n" in record["head"]:
                record["bytes"] = len(record["head"].split(b"\r\n\r\n", 1)[1])
            return
        record["bytes"] += len(data)

    def eof_received(self):
        self.record["closed"] = True
        return False

    def connection_lost(self, exc) -> None:
        self.record["closed"] = True


class Holding(LoopThread):
    name = "holding app"

    async def _start(self) -> None:
        self.server = await self.loop.create_server(HoldingApp, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def holding():
    app = Holding().start()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def sidecar(upstreams, holding):
    yaml = (mesh_yaml(upstreams.ports) + service("hold", [(holding.port, {})])
            + virtual_service("hold", "timeout: 1s") + service("chaos", [(upstreams.ports["chaos"], {})])
            + service("web", [(upstreams.ports["echo"], {})]) + ADMIN_FAULT)
    p = ProxyProcess(yaml, "--drain-seconds", "2").wait_ready(TIMEOUT)
    yield p
    try:
        assert p.stop() == 0, p.stderr()
    finally:
        p.close()


def stats(p: ProxyProcess) -> dict[str, int]:
    return {s["name"]: s["value"] for s in json.loads(p.admin_get("/stats?format=json"))["stats"]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (Debian package curl)")
def test_curl_prior_knowledge_reaches_an_http1_app(sidecar):
    """curl --http2-prior-knowledge through the outbound listener reaches the HTTP/1 echo app with
    its method, path, body and Host from :authority; the access log says HTTP/2."""
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-i", "-H", "Host: echo",
                        "--data-binary", "hello h2", f"http://127.0.0.1:{sidecar.outbound_port}/h2/curl?q=1"],
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200")
    seen = json.loads(body)
    assert seen["server"] == "echo" and seen["method"] == "POST" and seen["path"] == "/h2/curl?q=1"
    assert seen["headers"]["host"] == "echo" and seen["body_len"] == len(b"hello h2")
    assert '"POST /h2/curl?q=1 HTTP/2" 200' in sidecar.access_log()


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed (Debian package nghttp2-client)")
def test_h2load_multiplexed_requests_all_succeed(sidecar):
    """h2load, 4 connections with 10 concurrent streams each, 2,000 requests: all answered 2xx."""
    r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "10", "-H", ":authority: echo",
                        f"http://127.0.0.1:{sidecar.outbound_port}/h2load"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Application protocol: h2c" in r.stdout
    assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded", r.stdout), r.stdout
    assert "status codes: 2000 2xx" in r.stdout


def test_concurrent_streams_with_bodies_get_their_own_responses(sidecar):
    """Eight streams on one connection, bodies sent interleaved (some larger than a stream
    window), each answered on its own stream with its own path and body."""
    c = H2Client(sidecar.outbound_port)
    try:
        bodies = {}
        for i in range(8):
            sid = c.start("POST", f"/stream-{i}", "echo", [("content-type", "application/octet-stream")], end=False)
            bodies[sid] = bytes([65 + i]) * (1000 + i * 40_000)   # up to ~280 KiB
        for offset in range(0, 300_000, 50_000):      # interleave the bodies in 50 KB slices
            for sid, body in bodies.items():
                if offset < len(body):
                    c.send(sid, body[offset:offset + 50_000], end=offset + 50_000 >= len(body))
        for i, (sid, body) in enumerate(bodies.items()):
            result = c.wait(sid)
            assert result.status == 200
            seen = json.loads(bytes(result.body))
            assert seen["path"] == f"/stream-{i}"
            assert seen["body_len"] == len(body) and seen["body_sha"] == sha(body)
    finally:
        c.close()


def test_routing_sees_the_normalized_path(sidecar):
    """Routes match the normalized :path: /public/../admin and /%61dmin take the /admin route
    (418 from its fault), and other paths reach the app normalized."""
    c = H2Client(sidecar.outbound_port)
    try:
        for path in ("/admin", "/public/../admin", "/%61dmin", "/./admin/x"):
            assert c.request("GET", path, "web").status == 418, path
        result = c.request("GET", "/public/./a/../b", "web")
        assert result.status == 200 and json.loads(bytes(result.body))["path"] == "/public/b"
    finally:
        c.close()


def test_preface_split_across_reads_is_still_http2(sidecar):
    """The client preface arriving in three pieces (the first read shorter than it) still
    selects HTTP/2, and a request line starting with P stays HTTP/1."""
    sock = socket.create_connection(("127.0.0.1", sidecar.outbound_port), timeout=TIMEOUT)
    c = H2Client.__new__(H2Client)
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    c.sock, c.timeout, c.acknowledge, c.streams, c.goaway, c.closed = sock, TIMEOUT, True, {}, None, False
    c.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    keep_reading_after_goaway(c.conn)
    c.conn.initiate_connection()
    data = c.conn.data_to_send()
    for piece in (data[:2], data[2:11], data[11:]):
        sock.sendall(piece)
        time.sleep(0.1)
    try:
        assert c.request("GET", "/split", "echo").status == 200
    finally:
        c.close()
    plain = RawClient(sidecar.outbound_port)
    try:
        assert plain.request("PUT", "/p", "echo").json()["method"] == "PUT"
    finally:
        plain.close()


def test_http1_and_http2_clients_share_the_listener(sidecar):
    """HTTP/1.1 and HTTP/2 clients on the same listener at once are both served, each
    counted once (downstream_cx_total) and the HTTP/2 one in downstream_cx_http2_total."""
    before = stats(sidecar)
    h1 = RawClient(sidecar.outbound_port)
    h2c = H2Client(sidecar.outbound_port)
    try:
        sid = h2c.start("GET", "/slow?ms=300", "echo")
        assert h1.request("GET", "/one", "echo").json()["path"] == "/one"
        assert h2c.wait(sid).status == 200
        assert h1.request("GET", "/two", "echo").status == 200
        assert json.loads(bytes(h2c.request("GET", "/three", "echo").body))["path"] == "/three"
        after = stats(sidecar)
        assert after["http.outbound.downstream_cx_total"] - before["http.outbound.downstream_cx_total"] == 2
        assert after["http.outbound.downstream_cx_http2_total"] - before["http.outbound.downstream_cx_http2_total"] == 1
        assert after["http.outbound.downstream_rq_http2_total"] - before["http.outbound.downstream_rq_http2_total"] == 2
    finally:
        h1.close()
        h2c.close()


def test_client_reset_mid_upload_cancels_that_request_only(sidecar):
    """RST_STREAM in the middle of an upload closes the app's connection for that request
    (logged DC) while another stream on the same connection completes."""
    c = H2Client(sidecar.outbound_port)
    try:
        seen = len(HoldingApp.connections)
        held = c.start("POST", "/hold", "hold", [("content-length", str(1 << 20))], end=False)
        other = c.start("POST", "/other", "echo", end=False)
        c.send(held, b"h" * 100_000)
        app = wait_until(lambda: len(HoldingApp.connections) > seen and HoldingApp.connections[seen],
                         "the held request to reach the app", sidecar)
        wait_until(lambda: app["bytes"] >= 90_000, "the first upload bytes at the app", sidecar)
        c.reset(held)
        wait_until(lambda: app["closed"], "the app's connection to be closed", sidecar)
        assert app["bytes"] < 1 << 20
        c.send(other, b"o" * 70_000, end=True)
        result = c.wait(other)
        assert result.status == 200 and json.loads(bytes(result.body))["body_len"] == 70_000
        assert c.streams[held].reset_code is None      # the proxy did not answer the reset
        log = sidecar.access_log()
        assert any('"POST /hold HTTP/2" 0 DC' in line for line in log.splitlines()), log[-2000:]
    finally:
        c.close()


def test_upstream_reset_mid_body_resets_only_that_stream(sidecar):
    """An upstream that dies after sending part of a body makes the proxy reset that stream
    (RST_STREAM INTERNAL_ERROR, never a second head), while a stream beside it completes."""
    c = H2Client(sidecar.outbound_port)
    try:
        beside = c.start("GET", "/slow?ms=500", "echo")
        cut = c.start("GET", "/reset-mid", "chaos")
        assert c.wait(cut).reset_code == 2
        assert c.streams[cut].status == 200 and bytes(c.streams[cut].body) == b"0123456789"
        result = c.wait(beside)
        assert result.status == 200 and json.loads(bytes(result.body))["path"] == "/slow?ms=500"
        assert stats(sidecar)["http2.tx_reset"] >= 1
    finally:
        c.close()


def test_slow_reading_client_stops_the_upstream(sidecar):
    """A client that grants no window beyond the first 64 KiB makes the proxy stop reading the
    upstream (the app's writes block: little of a 48 MiB body leaves it); once the client
    reads, the whole body arrives."""
    size = 48 << 20
    c = H2Client(sidecar.outbound_port, acknowledge=False, timeout=120)
    try:
        seen = len(SourceServer.responses)
        sid = c.start("GET", f"/{size}", "source")
        wait_until(lambda: len(SourceServer.responses) > seen, "the source to get the request", sidecar)
        record = SourceServer.responses[seen]
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 1.5:      # until the source stops moving
            c.pump(lambda: True)
            if record[2] != last:
                last, quiet_since = record[2], time.monotonic()
            time.sleep(0.1)
        assert record[2] < 24 << 20, f"{record[2] >> 20} MiB left the app for a client reading nothing"
        assert len(c.streams[sid].body) <= 65535
        c.acknowledge = True
        c.grant(sid)
        result = c.wait(sid)
        assert result.status == 200 and len(result.body) == size
    finally:
        c.close()


def test_slow_upstream_slows_the_uploading_client(sidecar):
    """An upstream that stops reading holds back an HTTP/2 upload: the proxy gives window back
    only for bytes the upstream took, so the client can send little of a 64 MiB body; once
    the upstream reads again, the whole body arrives."""
    size, block = 64 << 20, b"u" * (64 << 10)
    c = H2Client(sidecar.outbound_port, timeout=120)
    sent = [0]
    try:
        stalled = len(SinkServer.stalled)
        sid = c.start("POST", "/stall", "sink", [("content-length", str(size))], end=False)

        def upload() -> None:     # the only user of the client until it ends
            for _ in range(size // len(block)):
                c.send(sid, block)
                sent[0] += len(block)
            c.send(sid, b"", end=True)
        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        wait_until(lambda: len(SinkServer.stalled) > stalled, "the sink to get the request", sidecar)
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 1.5:      # until the client cannot send more
            if sent[0] != last:
                last, quiet_since = sent[0], time.monotonic()
            time.sleep(0.1)
        assert sent[0] < 24 << 20, f"the client sent {sent[0] >> 20} MiB to an upstream reading nothing"
        SinkServer.stalled.pop().release()
        sender.join(120)
        assert sent[0] == size
        result = c.wait(sid)
        assert result.status == 200 and bytes(result.body) == b"%d" % size
    finally:
        c.close()


def test_route_timeout_answers_504_on_its_stream(sidecar):
    """A route timeout (1 s on `hold`) answers 504 UT on its stream, found by the deadline wheel
    through the stream, and the app's connection for it is closed; the connection goes on."""
    c = H2Client(sidecar.outbound_port)
    try:
        seen = len(HoldingApp.connections)
        began = time.monotonic()
        result = c.request("GET", "/hold", "hold")
        assert result.status == 504 and bytes(result.body) == b"upstream request timeout"
        assert 0.9 < time.monotonic() - began < 10
        app = HoldingApp.connections[seen]
        wait_until(lambda: app["closed"], "the timed-out request's app connection to close", sidecar)
        assert c.request("GET", "/after", "echo").status == 200
    finally:
        c.close()


def test_rapid_reset_client_gets_goaway_and_others_stay_served(sidecar):
    """A client opening and at once resetting hundreds of streams (CVE-2023-44487) gets GOAWAY
    ENHANCE_YOUR_CALM and is disconnected (Envoy's premature-reset rule); a second client on
    the same listener is served throughout."""
    before = stats(sidecar)["http.outbound.downstream_rq_too_many_premature_resets"]
    attacker = H2Client(sidecar.outbound_port)
    bystander = H2Client(sidecar.outbound_port)
    try:
        block = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"echo")]
        for _ in range(30):                       # 30 writes of 10 HEADERS + RST_STREAM pairs
            for _ in range(10):
                sid = attacker.conn.get_next_available_stream_id()
                attacker.conn.send_headers(sid, block, end_stream=True)
                attacker.conn.reset_stream(sid, 8)
            try:
                attacker._send()
            except OSError:
                break
        attacker.pump(lambda: attacker.goaway is not None or attacker.closed)
        assert attacker.goaway is not None and attacker.goaway.error_code == 11   # ENHANCE_YOUR_CALM
        assert bystander.request("GET", "/still-served", "echo").status == 200
        assert stats(sidecar)["http.outbound.downstream_rq_too_many_premature_resets"] == before + 1
    finally:
        attacker.close()
        bystander.close()


def test_drain_sends_goaway_and_streams_in_flight_finish(upstreams):
    """SIGTERM: an HTTP/2 client gets GOAWAY naming its last stream, that slow stream still
    completes, the connection then closes and the proxy exits 0 before its deadline."""
    p = ProxyProcess(mesh_yaml(upstreams.ports), "--drain-seconds", "30", "--access-log", "off").wait_ready(TIMEOUT)
    c = H2Client(p.outbound_port)
    try:
        assert c.request("GET", "/warm", "echo").status == 200
        sid = c.start("GET", "/slow?ms=1500", "echo")
        wait_until(lambda: stats(p)["http.outbound.downstream_rq_active"] == 1, "the slow stream in flight", p)
        began = time.time()
        p.proc.send_signal(signal.SIGTERM)
        c.pump(lambda: c.goaway is not None)
        assert c.goaway.error_code == 0 and c.goaway.last_stream_id == sid
        assert not c.streams[sid].done, "the slow stream ended before the GOAWAY was checked"
        result = c.wait(sid)
        assert result.status == 200 and json.loads(bytes(result.body))["path"] == "/slow?ms=1500"
        c.pump(lambda: c.closed)
        assert p.proc.wait(TIMEOUT) == 0
        assert time.time() - began < 25
    finally:
        c.close()
        p.close()


def test_client_goaway_lets_streams_in_flight_finish(sidecar):
    """A client's graceful GOAWAY (NO_ERROR) mid-request: its slow stream still gets the whole
    answer, the proxy answers GOAWAY naming that stream and then closes the connection."""
    c = H2Client(sidecar.outbound_port)
    try:
        sid = c.start("GET", "/slow?ms=800", "echo")
        c.sock.sendall(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
        result = c.wait(sid)
        assert result.status == 200 and json.loads(bytes(result.body))["path"] == "/slow?ms=800"
        c.pump(lambda: c.closed)
        assert c.goaway is not None and c.goaway.error_code == 0 and c.goaway.last_stream_id == sid
    finally:
        c.close()


def test_client_goaway_with_an_error_closes_at_once(sidecar):
    """A client's GOAWAY with an error code ends the connection: the stream in flight is cut
    off (flag DC in the access log) rather than answered."""
    c = H2Client(sidecar.outbound_port)
    try:
        sid = c.start("GET", "/slow?ms=3000&goaway=error", "echo")
        c.sock.sendall(GoAwayFrame(0, last_stream_id=0, error_code=1).serialize())
        started = time.monotonic()
        c.pump(lambda: c.closed)
        assert time.monotonic() - started < 2.5 and not c.streams[sid].done
    finally:
        c.close()
    wait_until(lambda: "goaway=error" in sidecar.access_log(), "the access log line", sidecar)
    [line] = [l for l in sidecar.access_log().splitlines() if "goaway=error" in l]
    assert " DC " in line, line


@pytest.fixture(scope="module")
def impatient(upstreams):
    """A sidecar with 1 s idle and stream-idle timeouts."""
    p = ProxyProcess(mesh_yaml(upstreams.ports), "--idle-timeout", "1s", "--stream-idle-timeout", "1s",
                     "--drain-seconds", "1").wait_ready(TIMEOUT)
    yield p
    try:
        assert p.stop() == 0, p.stderr()
    finally:
        p.close()


def test_idle_connection_gets_goaway_and_closes(impatient):
    """An HTTP/2 connection with no stream for --idle-timeout gets GOAWAY and is closed."""
    c = H2Client(impatient.outbound_port)
    try:
        assert c.request("GET", "/", "echo").status == 200
        c.pump(lambda: c.closed, timeout=10)
        assert c.goaway is not None and c.goaway.error_code == 0
    finally:
        c.close()


def test_idle_stream_times_out_alone(impatient):
    """A stream with no activity for --stream-idle-timeout is answered 408 (flag SI) on its
    own; a stream beside it that keeps moving is not cut."""
    c = H2Client(impatient.outbound_port)
    try:
        quiet = c.start("GET", "/slow?ms=5000", "echo")
        busy = c.start("POST", "/busy", "echo", end=False)
        for _ in range(8):                 # 2.4 s of a slow upload: activity every 0.3 s
            c.send(busy, b"b" * 100)
            time.sleep(0.3)
        c.send(busy, b"", end=True)
        assert c.wait(quiet).status == 408 and bytes(c.streams[quiet].body) == b"stream timeout"
        assert c.wait(busy).status == 200
        assert json.loads(bytes(c.streams[busy].body))["body_len"] == 800
        assert '"GET /slow?ms=5000 HTTP/2" 408 SI' in impatient.access_log()
    finally:
        c.close()


def test_ping_is_answered(sidecar):
    """A PING gets its ACK with the same opaque data (h2 answers it)."""
    import h2.events
    c = H2Client(sidecar.outbound_port)
    try:
        acks = []
        original = c.conn.receive_data

        def receive(data):
            events = original(data)
            acks.extend(e.ping_data for e in events if isinstance(e, h2.events.PingAckReceived))
            return events
        c.conn.receive_data = receive
        c.conn.ping(b"remora!!")
        c._send()
        c.pump(lambda: acks)
        assert acks == [b"remora!!"]
    finally:
        c.close()


def test_bad_requests_are_answered_on_their_stream(sidecar):
    """A fragment in :path or an asterisk-form :path on a GET is a 400 on that stream only
    (flag DPE); the connection keeps serving."""
    c = H2Client(sidecar.outbound_port)
    try:
        assert c.request("GET", "/x#frag", "echo").status == 400
        assert c.request("GET", "*", "echo").status == 400
        assert c.request("GET", "/fine", "echo").status == 200
        log = sidecar.access_log()
        assert any(" 400 DPE " in line and "HTTP/2" in line for line in log.splitlines()), log[-1500:]
    finally:
        c.close()


def test_header_block_left_unfinished_times_out(upstreams):
    """A HEADERS frame without END_HEADERS and no CONTINUATION after it holds the whole
    connection: after --request-headers-timeout (1 s) the proxy sends GOAWAY NO_ERROR and
    closes, while the idle timeout (default 300 s) has not come; counted as a protocol error,
    as HTTP/1's 408 is."""
    from tests.integration.h2_attacks import NO_ERROR, RawClient

    p = ProxyProcess(mesh_yaml(upstreams.ports), "--request-headers-timeout", "1s").wait_ready(TIMEOUT)
    try:
        client = RawClient(p.outbound_port, authority="echo")
        assert client.send(client.headers(1, end_headers=False))
        deadline = time.monotonic() + 15
        while not client.outcome.closed and time.monotonic() < deadline:
            client.poll(0.2)
        outcome = client.finish()
        assert outcome.closed and outcome.goaway == NO_ERROR, outcome
        assert 1 <= outcome.seconds < 14, outcome.seconds
        assert stats(p)["http.outbound.downstream_cx_protocol_error"] == 1
    finally:
        p.close()
