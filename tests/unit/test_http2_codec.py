"""The downstream HTTP/2 codec (codec/http2.py, http2_stream.py, http2_request.py) without sockets.

An h2 client state machine writes the bytes a real client would; they are fed to the
codec in small fragments (frames cut anywhere, the preface cut too) through
DownstreamHttp1, which must hand the connection over. What the codec writes back is fed
to the same client, so every assertion is about what a client would see.
"""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from remora.proxy.codec.downstream import DownstreamHttp1
from remora.proxy.codec.http1 import BadRequest
from remora.proxy.codec.http2 import DownstreamHttp2, Http2Stats
from remora.proxy.codec.http2_request import request_head
from remora.proxy.codec.http2_stream import OUT_HIGH
from remora.proxy.codec.paths import PathNormalizer
from remora.proxy.process.listener import ListenerStats
from tests.unit.test_downstream_codec import FakeExchange, FakeListener, FakeTransport


class Loop:
    """FakeLoop with call_soon run on demand (the codec's out-of-batch flush)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.soon: list = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback, *args) -> None:
        self.soon.append((callback, args))

    def run_soon(self) -> None:
        soon, self.soon = self.soon, []
        for callback, args in soon:
            callback(*args)


class Exchange(FakeExchange):
    """A fake exchange that also records the codec's write backpressure."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.write_paused: list[bool] = []

    def downstream_write_paused(self, paused: bool) -> None:
        self.write_paused.append(paused)


class Listener(FakeListener):
    def __init__(self) -> None:
        super().__init__()
        self.loop = Loop()
        self.paths = PathNormalizer("BASE")
        self.stats = ListenerStats()
        self.http2 = Http2Stats()
        self.replaced = []

    def connection_replaced(self, old, new) -> None:
        self.replaced.append((old, new))

    def new_exchange(self, sink, head, routed: bool = True):
        if not routed:
            return super().new_exchange(sink, head, routed)
        exchange = Exchange(self, sink, head, len(self.exchanges))
        self.exchanges.append(exchange)
        return exchange


class Transport(FakeTransport):
    """FakeTransport that knows its protocol (the HTTP/1 codec hands itself over)."""

    def __init__(self) -> None:
        super().__init__([])
        self.protocol = None

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol


class Pair:
    """An h2 client and the proxy's codec joined by a fake transport."""

    def __init__(self, fragment: int = 7, window: int | None = None) -> None:
        self.listener = Listener()
        self.transport = Transport()
        http1 = self.transport.protocol = DownstreamHttp1(self.listener)
        http1.connection_made(self.transport)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if window is not None:
            self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.fragment = fragment
        self.events: list = []
        self.read = 0
        self.send()
        assert len(self.listener.replaced) == 1, "the preface did not hand the connection over"
        self.proto: DownstreamHttp2 = self.listener.replaced[0][1]

    def send(self) -> None:
        """Client bytes to the codec, `fragment` bytes per read; then the codec's answer back."""
        data = self.client.data_to_send()
        for i in range(0, len(data), self.fragment):
            self.transport.protocol.data_received(data[i:i + self.fragment])
        self.receive()

    def receive(self) -> list:
        self.listener.loop.run_soon()
        written = b"".join(self.transport.writes)[self.read:]
        self.read += len(written)
        events = self.client.receive_data(written) if written else []
        self.events += events
        data = self.client.data_to_send()
        if data:
            self.transport.protocol.data_received(data)
            return events + self.receive()
        return events

    def request(self, headers: list, body: bytes | None = None, end: bool = True) -> int:
        sid = self.client.get_next_available_stream_id()
        block = [(b":method", b"POST" if body else b"GET"), (b":scheme", b"http"), *headers]
        self.client.send_headers(sid, block, end_stream=body is None and end)
        if body is not None:
            self.client.send_data(sid, body, end_stream=end)
        self.send()
        return sid

    def of(self, kind, sid: int | None = None) -> list:
        return [e for e in self.events if isinstance(e, kind) and (sid is None or e.stream_id == sid)]


BASE = [(b":path", b"/a/./b/../c?q=1"), (b":authority", b"reviews:9080")]


def test_preface_and_frames_in_fragments_make_one_exchange_per_stream():
    """Fed 7 bytes at a time, the preface hands over and a request becomes an exchange whose
    head is HTTP/1's: normalized path, :authority as authority, cookies joined, te: trailers kept,
    trace headers collected, chunked when no length; body pieces and end follow."""
    pair = Pair()
    sid = pair.request([*BASE, (b"cookie", b"a=1"), (b"te", b"trailers"), (b"cookie", b"b=2"),
                        (b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
                        (b"x-custom", b"v")], body=b"hello", end=False)
    exchange, = pair.listener.exchanges
    head = exchange.head
    assert (head.method, head.path, head.authority, head.version) == (b"POST", b"/a/c?q=1", b"reviews:9080", b"2")
    assert head.headers == [(b"te", b"trailers"), (b"x-custom", b"v"), (b"cookie", b"a=1; b=2")]
    assert head.trace_in and head.trace_in[0][0] == b"traceparent"
    assert head.chunked and head.content_length is None and head.peer_ip == b"127.0.0.1"
    assert exchange.starts == 1 and b"".join(exchange.body) == b"hello" and exchange.ends == 0
    pair.client.send_data(sid, b" world", end_stream=True)
    pair.send()
    assert b"".join(exchange.body) == b"hello world" and exchange.ends == 1
    assert pair.listener.stats.downstream_rq_http2_total == 1


def test_request_head_refusals():
    """A fragment, a relative :path and CONNECT are refused with HTTP/1's statuses; a
    content-length is read; :authority wins over host."""
    paths = PathNormalizer("BASE")

    def head(*extra, ended=True):
        return request_head([(b":method", b"GET"), (b":scheme", b"http"), *extra], ended, paths, 100)
    with pytest.raises(BadRequest) as err:
        head((b":path", b"/x#f"), (b":authority", b"a"))
    assert err.value.status == 400
    with pytest.raises(BadRequest):
        head((b":path", b"x"), (b":authority", b"a"))
    with pytest.raises(BadRequest) as err:
        request_head([(b":method", b"CONNECT"), (b":authority", b"a:443")], False, paths, 100)
    assert err.value.status == 405
    with pytest.raises(BadRequest) as err:
        head((b":path", b"/"), (b":authority", b"a"), *[(b"x-%d" % i, b"v") for i in range(101)])
    assert err.value.status == 431
    got = head((b":path", b"/"), (b"host", b"h"), (b":authority", b"a"), (b"content-length", b"12"), ended=False)
    assert got.authority == b"a" and got.content_length == 12 and not got.chunked


def test_held_request_body_is_acknowledged_only_on_resume():
    """While the exchange holds the client (pause_reading), received DATA gives no window
    back; resume_reading acknowledges it (WINDOW_UPDATE on the stream)."""
    pair = Pair(fragment=4096)
    sid = pair.request(BASE, body=b"", end=False)
    exchange, = pair.listener.exchanges
    exchange.sink.pause_reading()
    before = pair.client.local_flow_control_window(sid)
    for _ in range(4):
        pair.client.send_data(sid, b"x" * 15000)
    pair.send()
    assert pair.client.local_flow_control_window(sid) == before - 60000
    assert not pair.of(h2.events.WindowUpdated, sid)
    exchange.sink.resume_reading()
    pair.receive()
    assert pair.of(h2.events.WindowUpdated, sid)
    assert pair.client.local_flow_control_window(sid) == before


def test_response_waits_for_the_client_window_and_pauses_the_upstream():
    """With a 1000-byte client window only 1000 body bytes go out; above OUT_HIGH waiting the
    exchange is told to stop reading its upstream, and the client's WINDOW_UPDATE lets the
    rest out, resumes the upstream and ends the stream after the last byte."""
    pair = Pair(fragment=4096, window=1000)
    sid = pair.request(BASE)
    exchange, = pair.listener.exchanges
    sink = exchange.sink
    body = b"r" * (OUT_HIGH + 5000)
    sink.send_response_head(200, b"OK", [(b"x-up", b"1")], len(body))
    sink.send_response_body(body)
    sink.end_response()
    sink.flush()
    pair.receive()
    assert sum(len(e.data) for e in pair.of(h2.events.DataReceived, sid)) == 1000
    assert exchange.write_paused == [True] and not pair.of(h2.events.StreamEnded, sid)
    while not pair.of(h2.events.StreamEnded, sid):
        got = sum(e.flow_controlled_length for e in pair.of(h2.events.DataReceived, sid))
        pair.client.acknowledge_received_data(got - getattr(pair, "acked", 0), sid)
        pair.acked = got
        pair.client.increment_flow_control_window(got, sid)   # open the stream window wide
        pair.send()
    received = b"".join(e.data for e in pair.of(h2.events.DataReceived, sid))
    assert received == body and exchange.write_paused == [True, False]
    headers = dict(pair.of(h2.events.ResponseReceived, sid)[0].headers)
    assert headers[b":status"] == b"200" and headers[b"x-up"] == b"1"


def test_trailers_follow_the_body_and_end_the_stream():
    """Trailers given before end_response come after the body and carry END_STREAM."""
    pair = Pair(fragment=4096)
    sid = pair.request(BASE)
    exchange, = pair.listener.exchanges
    sink = exchange.sink
    sink.send_response_head(200, b"OK", [(b"content-type", b"application/grpc")], None)
    sink.send_response_body(b"\x00\x00\x00\x00\x02hi")
    sink.send_response_trailers([(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
    sink.end_response()
    sink.flush()
    pair.receive()
    kinds = [type(e) for e in pair.events if getattr(e, "stream_id", None) == sid]
    assert kinds.index(h2.events.DataReceived) < kinds.index(h2.events.TrailersReceived)
    assert dict(pair.of(h2.events.TrailersReceived, sid)[0].headers)[b"grpc-status"] == b"0"
    assert pair.of(h2.events.StreamEnded, sid)


def test_client_reset_closes_that_exchange_and_abort_resets_only_its_stream():
    """RST_STREAM from the client reaches its exchange as on_downstream_closed; the proxy's
    abort of another stream is RST_STREAM INTERNAL_ERROR; a third stream is unaffected."""
    pair = Pair(fragment=4096)
    reset_by_client = pair.request(BASE, body=b"", end=False)
    aborted = pair.request(BASE)
    fine = pair.request(BASE)
    first, second, third = pair.listener.exchanges
    pair.client.reset_stream(reset_by_client, 8)
    pair.send()
    assert first.downstream_closed == 1 and second.downstream_closed == third.downstream_closed == 0
    second.sink.send_response_head(200, b"OK", [], 100)
    second.sink.send_response_body(b"partial")
    second.sink.abort()
    third.respond(200, b"whole")
    pair.receive()
    assert pair.of(h2.events.StreamReset, aborted)[0].error_code == 2
    assert b"".join(e.data for e in pair.of(h2.events.DataReceived, fine)) == b"whole"
    assert pair.of(h2.events.StreamEnded, fine)
    assert pair.listener.http2.rx_reset == 1 and pair.listener.http2.tx_reset == 1
    assert pair.proto.streams == {}


def test_local_reply_before_the_body_ends_resets_with_no_error():
    """A local reply while the client is still sending: the full response, then RST_STREAM
    NO_ERROR so the client stops (RFC 9113 8.1)."""
    pair = Pair(fragment=4096)
    sid = pair.request(BASE, body=b"part", end=False)
    exchange, = pair.listener.exchanges
    exchange.local_reply(403, b"RBAC: access denied", "RBAC")
    pair.receive()
    assert b"".join(e.data for e in pair.of(h2.events.DataReceived, sid)) == b"RBAC: access denied"
    assert pair.of(h2.events.StreamReset, sid)[0].error_code == 0


def test_settings_advertise_the_limits():
    """The server's SETTINGS carry 100 concurrent streams, a 60 KiB header list and a 65535
    stream window; the connection window is opened to streams x stream window."""
    pair = Pair(fragment=4096)
    settings = pair.client.remote_settings
    assert settings.max_concurrent_streams == 100
    assert settings.max_header_list_size == 60 * 1024
    assert settings.initial_window_size == 65535
    assert pair.client.outbound_flow_control_window == 100 * 65535


def test_drain_goaway_names_the_last_stream_and_refuses_later_ones():
    """begin_drain sends GOAWAY NO_ERROR with the last stream taken; that stream is still
    answered, a stream opened after it is refused (REFUSED_STREAM) and never reaches the
    router, and the connection closes once the taken stream is done."""
    from tests.integration.h2_client import keep_reading_after_goaway
    pair = Pair(fragment=4096)
    keep_reading_after_goaway(pair.client)
    taken = pair.request(BASE)
    pair.proto.begin_drain()
    later = pair.request(BASE)            # sent before the client read the GOAWAY
    goaway, = pair.of(h2.events.ConnectionTerminated)
    assert (goaway.error_code, goaway.last_stream_id) == (0, taken)
    assert pair.of(h2.events.StreamReset, later)[0].error_code == 7
    assert len(pair.listener.exchanges) == 1 and not pair.transport.closed
    pair.listener.exchanges[0].respond(200, b"done")
    pair.receive()
    assert b"".join(e.data for e in pair.of(h2.events.DataReceived, taken)) == b"done"
    assert pair.transport.closed and pair.listener.http2.goaway_sent == 1


def test_a_protocol_error_ends_the_connection_with_goaway():
    """A frame HTTP/2 forbids (WINDOW_UPDATE of 0 on the connection) ends the connection:
    GOAWAY PROTOCOL_ERROR, transport closed, the open stream's exchange told the client left."""
    pair = Pair(fragment=4096)
    pair.request(BASE, body=b"", end=False)
    exchange, = pair.listener.exchanges
    pair.transport.protocol.data_received(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
    pair.receive()
    assert pair.of(h2.events.ConnectionTerminated)[0].error_code == 1
    assert pair.transport.closed and pair.listener.http2.protocol_error == 1
    pair.proto.connection_lost(None)
    assert exchange.downstream_closed == 1 and pair.listener.stats.downstream_cx_http2_active == 0
