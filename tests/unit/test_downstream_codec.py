"""The downstream HTTP/1.1 codec (remora/proxy/codec/downstream.py), driven without sockets.

A fake transport records what the codec writes and whether it closed or paused reading; a
fake listener hands out fake exchanges that record the head, body chunks and end they are
given (and a real Exchange for the codec's own error replies). Request bytes are fed in
fragments, as a socket would deliver them, and the feed stops while reading is paused.
"""
from __future__ import annotations

import re
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remora.proxy.codec.downstream import DownstreamHttp1
from remora.proxy.router.exchange import Exchange
from remora.proxy.codec.http1 import CONTINUE_100, MAX_HEADER_BYTES, REQUEST_SPECIAL
from remora.proxy.process.listener import ListenerSettings
from remora.proxy.codec.paths import PathNormalizer

UUID4 = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


# ---- fakes ---------------------------------------------------------------------------------------

class FakeTransport:
    """Records writes, close and pause/resume; reports a loopback peer and no socket."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True
        self.pause_calls = 0
        self.resume_calls = 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.log.append(("write", bytes(data)))

    def close(self) -> None:
        self.closed = True
        self.log.append(("close",))

    def pause_reading(self) -> None:
        self.reading = False
        self.pause_calls += 1

    def resume_reading(self) -> None:
        self.reading = True
        self.resume_calls += 1

    def get_extra_info(self, name: str, default=None):
        if name == "peername":
            return ("127.0.0.1", 5555)
        if name == "socket":
            return None
        return default

    def is_closing(self) -> bool:
        return self.closed

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class FakeExchange:
    """Stands in for a routed Exchange (a RouterStream, codec/seams.py): records what the codec hands it."""

    def __init__(self, listener: "FakeListener", sink, head, index: int) -> None:
        self.listener = listener
        self.sink = sink
        self.head = head
        self.index = index
        self.body: list[bytes] = []
        self.ends = 0
        self.starts = 0
        self.finished = False
        self.bytes_sent = 0
        self.local = None
        self.downstream_closed = 0

    def start(self) -> None:
        self.starts += 1
        self.listener.log.append(("start", self.index))

    def on_request_body(self, data: bytes) -> None:
        self.body.append(bytes(data))
        self.listener.log.append(("body", self.index))

    def on_request_trailers(self, trailers: list) -> None:
        self.listener.log.append(("trailers", self.index))

    def on_request_end(self) -> None:
        self.ends += 1
        self.listener.log.append(("end", self.index))

    def on_downstream_closed(self) -> None:
        self.downstream_closed += 1

    def downstream_write_paused(self, paused: bool) -> None:
        pass

    def local_reply(self, status: int, body: bytes, flag: str, extra=None) -> None:
        """As Exchange.local_reply: finish, then hand the reply to the sink."""
        if self.finished:
            return
        self.finished = True
        self.local = (status, body, flag)
        self.sink.send_local_reply(status, body, extra)

    def respond(self, status: int = 200, body: bytes = b"ok") -> None:
        """A complete upstream response, in the order Exchange drives the sink."""
        self.sink.send_response_head(status, b"OK", [(b"x-served-by", b"%d" % self.index)], len(body))
        self.sink.send_response_body(body)
        self.finished = True
        self.listener.log.append(("finish", self.index))
        self.sink.end_response()


class FakeListener:
    """What DownstreamHttp1 and Exchange need from a listener, recording every call."""

    def __init__(self) -> None:
        self.loop = FakeLoop()
        self.settings = ListenerSettings()
        self.draining = False
        self.sample_ratio = 0.0
        # Framing tests compare paths byte for byte; normalization has its own tests.
        self.paths = PathNormalizer("NONE")
        self.log: list = []
        self.exchanges: list[FakeExchange] = []
        self.local: list[Exchange] = []
        self.errors: list[int] = []
        self.opened = 0
        self.closed = 0
        self.finished: list = []

    def connection_opened(self, conn) -> None:
        self.opened += 1

    def connection_closed(self, conn) -> None:
        self.closed += 1

    def count_protocol_error(self, status: int) -> None:
        self.errors.append(status)

    def new_exchange(self, sink, head, routed: bool = True):
        if routed:
            exchange = FakeExchange(self, sink, head, len(self.exchanges))
            self.exchanges.append(exchange)
            self.log.append(("new", exchange.index))
            return exchange
        exchange = Exchange(sink, head, self, None, None, 0)
        self.local.append(exchange)
        self.log.append(("new", "local"))
        return exchange

    def exchange_finished(self, exchange) -> None:
        self.finished.append(exchange)


class Conn:
    """One DownstreamHttp1 on a fake transport, with its listener."""

    def __init__(self) -> None:
        self.listener = FakeListener()
        self.transport = FakeTransport(self.listener.log)
        self.proto = DownstreamHttp1(self.listener)
        self.proto.connection_made(self.transport)

    @property
    def exchanges(self) -> list[FakeExchange]:
        return self.listener.exchanges

    def feed(self, fragments, when_paused=None) -> None:
        """Deliver fragments like a socket: nothing is delivered while reading is paused."""
        pending = deque(fragments)
        while pending:
            if not self.transport.reading:
                if when_paused is None:
                    return
                when_paused()
                assert self.transport.reading, "reading stayed paused"
                continue
            self.proto.data_received(pending.popleft())


def fragments(data: bytes, size: int | None = None, cuts=()) -> list[bytes]:
    """data whole (size None), in fixed-size pieces, or cut at the given offsets."""
    if cuts:
        points = [0, *sorted(set(cuts)), len(data)]
        return [data[a:b] for a, b in zip(points, points[1:]) if b > a]
    if size is None:
        return [data]
    return [data[i:i + size] for i in range(0, len(data), size)]


def fed(data: bytes, size: int | None = None) -> Conn:
    conn = Conn()
    conn.feed(fragments(data, size))
    return conn


def only(conn: Conn) -> FakeExchange:
    assert len(conn.exchanges) == 1, conn.exchanges
    return conn.exchanges[0]


# ---- request generation ---------------------------------------------------------------------------

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SPECIAL = {name.decode() for name in REQUEST_SPECIAL}
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/%!$&'()*+,;=:@"

header_names = st.text(TOKEN, min_size=1, max_size=12).filter(lambda n: n.lower() not in SPECIAL)
header_values = (st.binary(max_size=24)
                 .map(lambda b: bytes(c for c in b if c == 0x09 or 0x20 <= c <= 0x7E or c >= 0x80).strip(b" \t")))
paths = st.builds(
    lambda p, q: ("/" + p + ("?" + q if q is not None else "")).encode(),
    st.text(PATH_CHARS, max_size=20), st.none() | st.text(PATH_CHARS + "?", max_size=16),
)
hosts = st.sampled_from([b"reviews", b"reviews:9080", b"reviews.default.svc.cluster.local:9080",
                         b"10.0.0.1:80", b"[::1]:8080", b"API.Example.com"])


@st.composite
def requests(draw, keep_alive: bool = True):
    """(raw bytes, expected head fields, expected body) for a valid request with a body."""
    method = draw(st.sampled_from([b"POST", b"PUT", b"PATCH", b"GET", b"DELETE"]))
    path = draw(paths)
    host = draw(hosts)
    headers = [(n.encode(), v) for n, v in draw(st.lists(st.tuples(header_names, header_values), max_size=8))]
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    fields = list(headers)
    fields.insert(draw(st.integers(0, len(fields))), (draw(st.sampled_from([b"Host", b"host", b"HOST"])), host))
    if chunked:
        fields.insert(draw(st.integers(0, len(fields))), (b"Transfer-Encoding", b"chunked"))
        sizes = draw(st.lists(st.integers(1, 120), max_size=6))
        pieces, rest = [], body
        for size in sizes:
            if rest:
                pieces.append(rest[:size])
                rest = rest[size:]
        if rest:
            pieces.append(rest)
        upper = draw(st.booleans())
        framed = b"".join((b"%X" if upper else b"%x") % len(p)
                          + (b";ext=1" if draw(st.booleans()) else b"") + b"\r\n" + p + b"\r\n"
                          for p in pieces)
        framed += b"0\r\n\r\n"
    else:
        fields.insert(draw(st.integers(0, len(fields))), (b"Content-Length", b"%d" % len(body)))
        framed = body
    if not keep_alive:
        fields.append((b"Connection", b"close"))
    raw = (method + b" " + path + b" HTTP/1.1\r\n"
           + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n" + framed)
    expected = {
        "method": method, "path": path, "authority": host, "headers": headers,
        "content_length": None if chunked else len(body), "chunked": chunked,
    }
    return raw, expected, body


def head_fields(exchange: FakeExchange) -> dict:
    head = exchange.head
    return {"method": head.method, "path": head.path, "authority": head.authority,
            "headers": list(head.headers), "content_length": head.content_length,
            "chunked": head.chunked}


# ---- fragmentation ----------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_fragmentation_gives_the_same_head_and_body(data):
    """Whatever the split of the bytes (whole, hypothesis-chosen cuts, 1-byte pieces): same head, same body, one end."""
    raw, expected, body = data.draw(requests())
    cuts = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=25))
    for pieces in (fragments(raw), fragments(raw, cuts=cuts), fragments(raw, 1)):
        conn = Conn()
        conn.feed(pieces)
        exchange = only(conn)
        assert head_fields(exchange) == expected
        assert b"".join(exchange.body) == body
        assert exchange.ends == 1
        assert exchange.starts == 1
        assert conn.transport.writes == [] and not conn.transport.closed
        assert conn.listener.errors == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_pipelined_requests_become_exchanges_in_order(data):
    """Two keep-alive requests in one stream, split anywhere: two exchanges in order, the second started only after the first's response ended."""
    raw1, expected1, body1 = data.draw(requests())
    raw2, expected2, body2 = data.draw(requests())
    raw = raw1 + raw2
    cuts = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=20))
    conn = Conn()
    conn.feed(fragments(raw, cuts=cuts), when_paused=lambda: conn.exchanges[0].respond(body=b"first"))
    if not conn.exchanges[0].finished:
        conn.exchanges[0].respond(body=b"first")
    first, second = conn.exchanges
    assert head_fields(first) == expected1 and head_fields(second) == expected2
    assert b"".join(first.body) == body1 and b"".join(second.body) == body2
    assert (first.ends, second.ends) == (1, 1)
    assert (first.starts, second.starts) == (1, 1)
    log = conn.listener.log
    assert log.index(("start", 0)) < log.index(("finish", 0)) < log.index(("start", 1))
    assert log.index(("new", 1)) > log.index(("end", 0))
    second.respond(body=b"second")
    assert conn.transport.data.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert conn.transport.data.index(b"first") < conn.transport.data.index(b"second")
    assert not conn.transport.closed
    assert conn.transport.pause_calls == conn.transport.resume_calls == 1


def test_queued_request_waits_for_the_active_response():
    """A pipelined request is queued (reading paused) and starts only when the active response ends."""
    conn = Conn()
    raw = b"GET /a HTTP/1.1\r\nHost: r\r\n\r\nGET /b HTTP/1.1\r\nHost: r\r\n\r\n"
    conn.proto.data_received(raw)
    first, second = conn.exchanges
    assert (first.starts, second.starts) == (1, 0)
    assert not conn.transport.reading
    first.respond()
    assert second.starts == 1
    assert conn.transport.reading
    second.respond()
    assert conn.transport.data.count(b"HTTP/1.1 200 OK") == 2
    assert not conn.transport.closed


def test_next_request_after_the_response_starts_at_once():
    """On a keep-alive connection a request that arrives after the previous response starts immediately."""
    conn = Conn()
    conn.feed([b"GET /a HTTP/1.1\r\nHost: r\r\n\r\n"])
    conn.exchanges[0].respond()
    conn.feed([b"GET /b HTTP/1.1\r\nHost: r\r\n\r\n"])
    assert [e.starts for e in conn.exchanges] == [1, 1]
    assert conn.transport.pause_calls == 0
    assert not conn.transport.closed


def test_later_connection_close_applies_to_its_own_response():
    """Pipelined A then B with Connection: close: A's response keeps the connection open, B's closes it."""
    conn = fed(b"GET /a HTTP/1.1\r\nHost: r\r\n\r\nGET /b HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
    first, second = conn.exchanges
    first.respond(body=b"first")
    assert not conn.transport.closed and b"connection: close" not in conn.transport.data
    assert second.starts == 1
    second.respond(body=b"second")
    assert conn.transport.data.count(b"connection: close") == 1
    assert conn.transport.data.index(b"first") < conn.transport.data.index(b"connection: close")
    assert conn.transport.closed


def test_request_with_body_starts_after_the_read_that_brought_its_head():
    """A head with a body in the same read: body and end are handed over before the exchange starts."""
    conn = fed(b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n\r\nhello")
    assert conn.listener.log[:4] == [("new", 0), ("body", 0), ("end", 0), ("start", 0)]
    plain = fed(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")
    assert only(plain).starts == 1


def test_malformed_body_in_the_head_read_never_starts_the_exchange():
    """A bad chunk in the read that brought the head: 400 DPE, and the exchange was never started."""
    conn = fed(b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n")
    assert only(conn).starts == 0 and only(conn).local[0] == 400
    assert conn.transport.closed


@pytest.mark.parametrize("extra,status", [(98, None), (99, 431)])
def test_header_line_count_limit(extra, status):
    """Host + user-agent + N more lines: 100 lines pass, 101 get 431 before routing (special headers count too)."""
    raw = (b"GET / HTTP/1.1\r\nHost: r\r\nUser-Agent: t\r\n"
           + b"".join(b"x-%d: v\r\n" % i for i in range(extra)) + b"\r\n")
    conn = fed(raw, 7)
    if status is None:
        assert len(only(conn).head.headers) == 98
    else:
        assert_rejected(conn, 431)
        assert conn.exchanges == []


def test_malformed_request_pipelined_behind_another_is_refused_in_its_turn():
    """A valid request, then garbage: the valid one is answered first, then 400 and close."""
    conn = fed(b"GET /a HTTP/1.1\r\nHost: r\r\n\r\nNOT HTTP\r\n\r\n")
    first = only(conn)
    assert not conn.transport.closed and not conn.transport.reading
    first.respond(body=b"first")
    data = conn.transport.data
    assert data.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 400 Bad Request" in data
    assert data.index(b"first") < data.index(b"400 Bad Request")
    assert conn.transport.closed and conn.listener.errors == [400]


# ---- the head: hop-by-hop, framing, captured fields ---------------------------------------------------

def test_hop_by_hop_and_framing_headers_are_not_forwarded():
    """Connection, the names it lists, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade (without Connection: upgrade), Content-Length and Transfer-Encoding are not in head.headers."""
    raw = (b"POST /x HTTP/1.1\r\n"
           b"Host: reviews:9080\r\n"
           b"X-Before: 1\r\n"
           b"Connection: keep-alive, X-Listed, x-other-listed\r\n"
           b"x-listed: gone\r\n"
           b"X-Other-Listed: gone\r\n"
           b"Keep-Alive: timeout=5\r\n"
           b"Proxy-Connection: keep-alive\r\n"
           b"TE: trailers\r\n"
           b"Trailer: x-checksum\r\n"
           b"Upgrade: websocket\r\n"
           b"Transfer-Encoding: chunked\r\n"
           b"X-After: 2\r\n"
           b"\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
    for size in (None, 1):
        exchange = only(fed(raw, size))
        assert exchange.head.headers == [(b"X-Before", b"1"), (b"X-After", b"2")]
        assert exchange.head.upgrade is None
        assert exchange.head.chunked and exchange.head.content_length is None
        assert b"".join(exchange.body) == b"abc"


def test_content_length_is_not_forwarded_but_recorded():
    """Content-Length is taken out of the headers and kept as head.content_length."""
    exchange = only(fed(b"PUT / HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\nX: y\r\n\r\nhello"))
    assert exchange.head.headers == [(b"X", b"y")]
    assert exchange.head.content_length == 5 and not exchange.head.chunked
    assert exchange.head.has_body


def test_request_without_body_has_no_body():
    """A GET without Content-Length or Transfer-Encoding has no body and ends at once."""
    exchange = only(fed(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n"))
    assert not exchange.head.has_body and exchange.body == [] and exchange.ends == 1


def test_upgrade_with_connection_upgrade_is_kept_on_the_head():
    """Upgrade survives only as head.upgrade, and only with Connection: upgrade; reading pauses for the 101."""
    exchange_conn = fed(b"GET /ws HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    exchange = only(exchange_conn)
    assert exchange.head.upgrade == b"websocket"
    assert exchange.head.headers == []
    assert not exchange_conn.transport.reading


class FakeUpstream:
    """The upstream connection of an accepted upgrade: what start_tunnel hands the tunnel end to."""

    def __init__(self) -> None:
        self.upgrade = b"websocket"
        self.transport = FakeTransport([])
        self.tunnel_end = None

    def start_tunnel(self, end) -> None:
        self.tunnel_end = end


def test_tunnel_pauses_the_client_only_through_its_own_reason():
    """After a 101 the wait for it no longer holds the client; the upstream side pauses and resumes it through the connection's flow control."""
    conn = fed(b"GET /ws HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    upstream = FakeUpstream()
    conn.listener.reply_header = None
    conn.listener.tunnel_opened = lambda exchange, resp: None
    resp = type("Resp", (), {"reason": b"", "headers": []})()
    conn.proto.start_tunnel(upstream, resp, b"")
    assert conn.transport.reading and conn.transport.data.startswith(b"HTTP/1.1 101 ")
    upstream.tunnel_end.pause_reading()
    assert not conn.transport.reading
    conn.proto.flow.pause_reading(1)          # another reason holds it too ...
    upstream.tunnel_end.resume_reading()
    assert not conn.transport.reading         # ... so the tunnel end cannot release it alone
    conn.proto.flow.resume_reading(1)
    assert conn.transport.reading
    upstream.tunnel_end.write(b"frame")
    assert conn.transport.writes[-1] == b"frame"


def test_host_is_captured_not_forwarded():
    """Host becomes head.authority (as sent) and is not one of head.headers."""
    exchange = only(fed(b"GET / HTTP/1.1\r\nX-A: 1\r\nhOsT: Reviews:9080\r\n\r\n"))
    assert exchange.head.authority == b"Reviews:9080"
    assert exchange.head.headers == [(b"X-A", b"1")]


def test_absolute_form_target_gives_authority_and_path():
    """`GET http://reviews:9080/x?y` takes the authority from the URL (over Host) and the path with its query."""
    for raw in (b"GET http://reviews:9080/x?y HTTP/1.1\r\nHost: other\r\n\r\n",
                b"GET http://reviews:9080/x?y HTTP/1.1\r\n\r\n",
                b"GET HTTP://user@reviews:9080/x?y HTTP/1.1\r\nHost: other\r\n\r\n"):
        for size in (None, 1):
            exchange = only(fed(raw, size))
            assert exchange.head.authority == b"reviews:9080"
            assert exchange.head.path == b"/x?y"


def test_absolute_form_without_path_means_slash():
    """`GET http://reviews:9080 HTTP/1.1` has path `/`."""
    exchange = only(fed(b"GET http://reviews:9080 HTTP/1.1\r\n\r\n"))
    assert (exchange.head.authority, exchange.head.path) == (b"reviews:9080", b"/")


def test_absolute_form_query_without_path():
    """`GET http://reviews:9080?y` has authority reviews:9080 and path /?y (the authority ends at '?' too, RFC 3986)."""
    exchange = only(fed(b"GET http://reviews:9080?y HTTP/1.1\r\n\r\n"))
    assert (exchange.head.authority, exchange.head.path) == (b"reviews:9080", b"/?y")


def test_request_id_is_kept_when_given():
    """A client's x-request-id is kept as head.request_id (and not duplicated in head.headers)."""
    exchange = only(fed(b"GET / HTTP/1.1\r\nHost: r\r\nX-Request-Id: abc-123\r\n\r\n"))
    assert exchange.head.request_id == b"abc-123"
    assert exchange.head.headers == []
    assert exchange.head.header(b"x-request-id") == b"abc-123"


def test_request_id_is_generated_as_uuid4_when_absent():
    """Without x-request-id the codec generates a fresh UUID4 per request."""
    conn = Conn()
    conn.feed([b"GET /1 HTTP/1.1\r\nHost: r\r\n\r\n"])
    conn.exchanges[0].respond()
    conn.feed([b"GET /2 HTTP/1.1\r\nHost: r\r\n\r\n"])
    ids = [e.head.request_id for e in conn.exchanges]
    assert all(UUID4.match(i) for i in ids), ids
    assert ids[0] != ids[1]


def test_forwarded_for_user_agent_proto_and_peer_are_captured():
    """x-forwarded-for (all lines joined), user-agent and x-forwarded-proto go to head fields; the peer IP is recorded."""
    raw = (b"GET / HTTP/1.1\r\nHost: r\r\nX-Forwarded-For: 1.1.1.1\r\nUser-Agent: curl/8\r\n"
           b"x-forwarded-for: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-Proto: https\r\n\r\n")
    head = only(fed(raw, 3)).head
    assert head.forwarded_for == b"1.1.1.1, 2.2.2.2, 3.3.3.3"
    assert head.user_agent == b"curl/8"
    assert head.scheme == b"https"
    assert head.peer_ip == b"127.0.0.1"
    assert head.headers == []


def test_http10_without_host_is_accepted():
    """HTTP/1.0 does not require Host: the authority is empty."""
    exchange = only(fed(b"GET / HTTP/1.0\r\n\r\n"))
    assert exchange.head.authority == b"" and exchange.head.version == b"1.0"


def test_header_values_exclude_surrounding_whitespace():
    """A field value excludes leading and trailing whitespace (RFC 9112 section 5)."""
    exchange = only(fed(b"GET / HTTP/1.1\r\nHost: r\r\nX-A:   v  \r\nX-B:\tw\t\r\n\r\n"))
    assert exchange.head.headers == [(b"X-A", b"v"), (b"X-B", b"w")]


def test_trailer_fields_do_not_join_the_head():
    """Trailer fields after a chunked body never appear in head.headers (they arrive after routing)."""
    raw = (b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
           b"3\r\nabc\r\n0\r\nX-Trailer: v\r\n\r\n")
    exchange = only(fed(raw))
    assert exchange.head.headers == [(b"X-A", b"1")]


def test_trailer_fields_do_not_fail_a_valid_request():
    """A trailer named like a request header (Host) neither fails the request nor changes its head."""
    raw = (b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\nHost: evil\r\n\r\n")
    conn = fed(raw)
    exchange = only(conn)
    assert exchange.local is None and exchange.ends == 1
    assert exchange.head.authority == b"r"
    assert not conn.transport.closed


# ---- Expect: 100-continue --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [None, 1])
def test_expect_100_continue_is_answered_first(size):
    """Expect: 100-continue on a request with a body writes `HTTP/1.1 100 Continue` before anything else, once."""
    conn = fed(b"POST / HTTP/1.1\r\nHost: r\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc", size)
    assert conn.transport.writes == [CONTINUE_100]
    assert conn.listener.log.index(("write", CONTINUE_100)) < conn.listener.log.index(("new", 0))
    exchange = only(conn)
    assert exchange.head.headers == []          # Expect is answered here, not forwarded
    assert b"".join(exchange.body) == b"abc"
    exchange.respond()
    assert conn.transport.writes[0] == CONTINUE_100
    assert conn.transport.writes[1].startswith(b"HTTP/1.1 200 OK\r\n")


def test_expect_100_continue_without_body_is_not_answered():
    """No 100 Continue for a request without a body (nothing to wait for)."""
    conn = fed(b"POST / HTTP/1.1\r\nHost: r\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
    assert conn.transport.writes == []
    assert only(conn).ends == 1


def test_expect_100_continue_from_http10_is_not_answered():
    """An HTTP/1.0 client cannot read a 1xx: no 100 Continue is sent."""
    conn = fed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\na")
    assert conn.transport.writes == []


# ---- malformed and smuggling ----------------------------------------------------------------------------

BIG_HEADERS = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(62))   # > 60 KiB in total

REJECTED_BEFORE_ROUTING = {
    "cl-and-te": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-and-cl": (b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    "duplicate-cl-same": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    "duplicate-cl-different": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "cl-negative": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: -1\r\n\r\n", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: +3\r\n\r\nabc", 400),
    "cl-not-a-number": (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: abc\r\n\r\n", 400),
    "te-chunked-twice": (b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-identity-and-cl": (b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc", 400),
    "bare-lf-line-end": (b"GET / HTTP/1.1\r\nHost: r\nX: y\r\n\r\n", 400),
    "bare-cr-line-end": (b"GET / HTTP/1.1\r\nHost: r\rX: y\r\n\r\n", 400),
    "bare-cr-in-value": (b"GET / HTTP/1.1\r\nHost: r\r\nX: y\rz\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: r\r\nX: y\r\n z\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: r\r\nX : y\r\n\r\n", 400),
    "space-in-name": (b"GET / HTTP/1.1\r\nHost: r\r\nX Y: z\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: r\r\nX: a\x00b\r\n\r\n", 400),
    "missing-host-1.1": (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    "duplicate-host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "unknown-scheme": (b"GET ftp://r/x HTTP/1.1\r\nHost: r\r\n\r\n", 400),
    "unsupported-expect": (b"POST / HTTP/1.1\r\nHost: r\r\nExpect: magic\r\nContent-Length: 1\r\n\r\na", 417),
    "header-block-over-60k": (b"GET / HTTP/1.1\r\nHost: r\r\n" + BIG_HEADERS + b"\r\n", 431),
    "one-header-over-60k": (b"GET / HTTP/1.1\r\nHost: r\r\nX: " + b"v" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\n", 431),
    "unterminated-line": (b"GET / HTTP/1.1\r\nHost: r\r\nX: " + b"v" * (2 * MAX_HEADER_BYTES + 10), 431),
    "unterminated-target": (b"GET /" + b"v" * (2 * MAX_HEADER_BYTES + 10), 431),
}


def assert_rejected(conn: Conn, status: int) -> None:
    """Exactly one error reply with `status`, connection: close, then the transport closed."""
    assert len(conn.transport.writes) == 1, conn.transport.writes
    reply = conn.transport.writes[0]
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:60]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head
    assert b"\r\ncontent-length: %d" % len(body) in head
    assert conn.transport.closed
    assert conn.listener.errors == [status]


@pytest.mark.parametrize("name", list(REJECTED_BEFORE_ROUTING))
@pytest.mark.parametrize("split", ["whole", "pieces"])
def test_malformed_head_is_rejected_before_routing(name, split):
    """A malformed or ambiguous request head gets one 4xx (431 when too large) with connection: close, the connection closes, and no routed exchange is created."""
    raw, status = REJECTED_BEFORE_ROUTING[name]
    size = None if split == "whole" else (1 if len(raw) < 4096 else 997)
    conn = fed(raw, size)
    assert_rejected(conn, status)
    assert conn.exchanges == []
    assert [e.flags for e in conn.listener.local] == ["DPE"]
    assert conn.listener.finished == conn.listener.local


MALFORMED_BODY = {
    "invalid-chunk-size": b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "chunk-data-not-crlf-terminated": b"3\r\nabcX\r\n0\r\n\r\n",
    "bare-lf-in-chunk-framing": b"3\nabc\n0\n\n",
}


@pytest.mark.parametrize("name", list(MALFORMED_BODY))
@pytest.mark.parametrize("split", ["whole", "pieces"])
def test_malformed_chunked_body_gets_400_and_close(name, split):
    """A valid head with a malformed chunked body: the routed exchange answers 400 (flag DPE), its request never ends, the connection closes."""
    raw = b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n" + MALFORMED_BODY[name]
    conn = fed(raw, None if split == "whole" else 1)
    assert_rejected(conn, 400)
    exchange = only(conn)
    assert exchange.local[0] == 400 and exchange.local[2] == "DPE"
    assert exchange.ends == 0


def test_non_chunked_transfer_encoding_is_rejected_before_routing():
    """Transfer-Encoding whose final coding is not chunked is rejected with 400 before any exchange is created (RFC 9112 6.3)."""
    conn = fed(b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: gzip\r\n\r\nabc")
    assert_rejected(conn, 400)
    assert conn.exchanges == []


def test_nothing_is_parsed_after_a_rejection():
    """After a 4xx the connection is closed: later bytes create no exchange and write nothing."""
    conn = fed(b"GET / HTTP/1.1\r\nX: y\r\n\r\n")
    conn.proto.data_received(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")
    assert conn.exchanges == []
    assert len(conn.transport.writes) == 1


def test_bytes_after_connection_close_do_not_cancel_the_request():
    """Bytes after a `Connection: close` request are ignored: that request is still answered, then the connection closes."""
    conn = fed(b"GET /a HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: r\r\n\r\n")
    exchange = only(conn)
    assert not conn.transport.closed and conn.listener.errors == []
    exchange.respond()
    assert conn.transport.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert conn.transport.closed


# ---- response framing and keep-alive ----------------------------------------------------------------------

def test_response_head_and_body_are_written_once():
    """A response with a known length goes out as one write: status line, headers, content-length, body."""
    conn = fed(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")
    only(conn).respond(body=b"hello")
    assert conn.transport.writes == [b"HTTP/1.1 200 OK\r\nx-served-by: 0\r\ncontent-length: 5\r\n\r\nhello"]
    assert not conn.transport.closed


def test_connection_close_request_closes_after_the_response():
    """A request with Connection: close gets `connection: close` on its response, then the connection closes."""
    conn = fed(b"GET / HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
    only(conn).respond()
    assert b"\r\nconnection: close\r\n" in conn.transport.data
    assert conn.transport.closed


def test_http10_keep_alive_is_confirmed():
    """An HTTP/1.0 client that asks for keep-alive gets `connection: keep-alive` and an open connection."""
    conn = fed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    only(conn).respond()
    assert b"\r\nconnection: keep-alive\r\n" in conn.transport.data
    assert not conn.transport.closed


def test_http10_without_keep_alive_closes():
    """An HTTP/1.0 request without keep-alive is answered and the connection closes."""
    conn = fed(b"GET / HTTP/1.0\r\n\r\n")
    only(conn).respond()
    assert b"\r\nconnection: close\r\n" in conn.transport.data
    assert conn.transport.closed


def test_draining_listener_closes_after_the_response():
    """While the listener drains, a response carries connection: close and the connection closes."""
    conn = Conn()
    conn.listener.draining = True
    conn.feed([b"GET / HTTP/1.1\r\nHost: r\r\n\r\n"])
    only(conn).respond()
    assert b"\r\nconnection: close\r\n" in conn.transport.data
    assert conn.transport.closed


def test_connection_lost_tells_every_exchange():
    """When the client goes away the active and queued exchanges are told once each."""
    conn = Conn()
    conn.feed([b"GET /a HTTP/1.1\r\nHost: r\r\n\r\nGET /b HTTP/1.1\r\nHost: r\r\n\r\n"])
    conn.proto.connection_lost(None)
    assert [e.downstream_closed for e in conn.exchanges] == [1, 1]
    assert conn.listener.closed == 1
