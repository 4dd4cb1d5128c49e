"""Contract of RouterStream (codec/seams.py) as the router's Exchange keeps it.

A RecordingDownstream (a DownstreamStream that records every call) stands where a codec
would; the Exchange is made by a real Listener of a real Worker, routed to a pooled
upstream connection on a fake transport (as benchmarks/hotpath.py does), and the
upstream's answer is fed as bytes.
"""
from __future__ import annotations

import asyncio

import pytest

from remora.config.loader import load_mesh_text
from remora.proxy.codec.message import RequestHead
from remora.proxy.process.worker import ProxyOptions, Worker
from remora.proxy.upstream.pool import ConnState, UpstreamHttp1

MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: upstream}
spec:
  hosts: [upstream]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
"""
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"


class RecordingDownstream:
    """A DownstreamStream that records what the router sends it."""

    def __init__(self, loop) -> None:
        self.tls = False
        self.peer_cert = None
        self.capture = None
        self.active = None
        self.deadline_owner = self
        self.last_activity = loop.time()
        self.write_paused = False
        self.calls: list[tuple] = []

    def route_deadline_due(self, now) -> None:
        if self.active is not None and 0 < self.active.deadline <= now:
            self.active.on_route_timeout()

    def send_response_head(self, status, reason, headers, content_length) -> None:
        self.calls.append(("head", status, content_length))

    def send_response_body(self, data) -> None:
        self.calls.append(("body", bytes(data)))

    def send_response_trailers(self, trailers) -> None:
        self.calls.append(("trailers", trailers))

    def end_response(self) -> None:
        self.calls.append(("end",))

    def flush(self) -> None:
        self.calls.append(("flush",))

    def send_local_reply(self, status, body, extra) -> None:
        self.calls.append(("local", status, body))

    def abort(self) -> None:
        self.calls.append(("abort",))

    def pause_reading(self) -> None:
        self.calls.append(("pause",))

    def resume_reading(self) -> None:
        self.calls.append(("resume",))

    def start_tunnel(self, upstream, resp, rest) -> None:
        self.calls.append(("tunnel",))

    def kinds(self) -> list[str]:
        return [call[0] for call in self.calls]


class UpstreamTransport:
    """The pooled upstream connection's transport: records writes, reading and close."""

    def __init__(self) -> None:
        self.written = b""
        self.reading = True
        self.closed = False

    def write(self, data) -> None:
        self.written += bytes(data)

    def writelines(self, parts) -> None:
        for part in parts:
            self.write(part)

    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Bench:
    """A worker whose one cluster has one idle pooled connection; exchanges for its listener."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.worker = Worker(ProxyOptions(access_log="off"), load_mesh_text(MESH))
        self.listener = self.worker.listeners[0]
        pool = self.worker.snapshot.clusters()[0].endpoints[0].pool
        self.upstream = UpstreamHttp1(pool)
        self.transport = UpstreamTransport()
        self.upstream.connection_made(self.transport)
        self.upstream.state = ConnState.IDLE
        pool.idle.append(self.upstream)
        self.downstream = RecordingDownstream(loop)

    def exchange(self, method=b"GET", authority=b"upstream", content_length=None, chunked=False):
        head = RequestHead(method, b"/", authority, [], b"1.1")
        head.content_length = content_length
        head.chunked = chunked
        exchange = self.listener.new_exchange(self.downstream, head)
        self.downstream.active = exchange
        return exchange


@pytest.fixture
async def bench():
    yield Bench()


async def test_response_goes_down_as_head_body_end_then_nothing(bench):
    """A routed request's response reaches the stream as head, body, end (a flush after the end
    is allowed, nothing else), and the exchange finishes once."""
    exchange = bench.exchange()
    exchange.on_request_end()
    exchange.start()
    assert bench.transport.written.startswith(b"GET / HTTP/1.1\r\n")
    bench.upstream.data_received(RESPONSE)
    kinds = bench.downstream.kinds()
    assert kinds[:3] == ["head", "body", "end"] and set(kinds[3:]) <= {"flush"}
    assert bench.downstream.calls[0] == ("head", 200, 11)
    assert exchange.finished and exchange.bytes_sent == 11
    exchange.on_downstream_closed()
    assert bench.downstream.kinds() == kinds
    assert bench.listener.stats.downstream_rq_total == 1 and bench.listener.stats.downstream_rq_active == 0


async def test_no_route_is_one_local_reply(bench):
    """A head no route matches is answered by one local reply (404) and nothing else."""
    exchange = bench.exchange(authority=b"nowhere")
    exchange.on_request_end()
    exchange.start()
    assert bench.downstream.calls == [("local", 404, b"")]
    assert exchange.finished and exchange.flags == "NR"


async def test_downstream_close_stops_the_upstream_and_silences_the_stream(bench):
    """on_downstream_closed mid-response: the upstream connection closes, the stream hears nothing more, a second close changes nothing."""
    exchange = bench.exchange()
    exchange.on_request_end()
    exchange.start()
    bench.upstream.data_received(RESPONSE[:40])
    before = list(bench.downstream.calls)
    exchange.on_downstream_closed()
    exchange.on_downstream_closed()
    assert exchange.finished and exchange.flags == "DC"
    assert bench.transport.closed
    assert bench.downstream.calls == before
    assert bench.listener.stats.downstream_rq_active == 0


async def test_downstream_write_pause_stops_reading_the_upstream(bench):
    """downstream_write_paused(True) stops reading the upstream; (False) reads it again."""
    exchange = bench.exchange()
    exchange.on_request_end()
    exchange.start()
    exchange.downstream_write_paused(True)
    assert not bench.transport.reading
    exchange.downstream_write_paused(False)
    assert bench.transport.reading


async def test_a_slow_client_holds_the_next_attempts_upstream(bench):
    """When the stream says write_paused as the attempt starts, the upstream connection is not read."""
    bench.downstream.write_paused = True
    exchange = bench.exchange()
    exchange.on_request_end()
    exchange.start()
    assert not bench.transport.reading


async def test_body_before_the_connection_is_held_then_sent_in_order(bench):
    """Body bytes arriving before the request starts are kept in order; past 64 KiB the stream is paused, and released before they go up."""
    exchange = bench.exchange(method=b"POST", content_length=70000)
    pieces = [b"a" * 40000, b"b" * 30000]
    for piece in pieces:
        exchange.on_request_body(piece)
    assert bench.downstream.kinds() == ["pause"]
    exchange.on_request_end()
    exchange.start()
    assert bench.downstream.kinds() == ["pause", "resume"]
    assert bench.transport.written.endswith(b"\r\n\r\n" + b"".join(pieces))


async def test_body_after_start_streams_up_in_order(bench):
    """A chunked body arriving after start goes upstream piece by piece, in order, then the last chunk."""
    exchange = bench.exchange(method=b"POST", chunked=True)
    exchange.start()
    exchange.on_request_body(b"one")
    exchange.on_request_body(b"two")
    exchange.on_request_end()
    assert bench.transport.written.endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    assert bench.downstream.kinds() == []


async def test_stream_idle_timeout_before_the_response_is_408(bench):
    """on_stream_idle_timeout before any response byte: one local reply 408 with flag SI."""
    exchange = bench.exchange()
    exchange.on_request_end()
    exchange.start()
    exchange.on_stream_idle_timeout()
    assert bench.downstream.calls == [("local", 408, b"stream timeout")]
    assert exchange.finished and exchange.flags == "SI"
