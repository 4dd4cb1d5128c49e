"""Upstream connection pool rules, with a fake transport (no sockets)."""
from __future__ import annotations

import asyncio

from remora.proxy.upstream.http1_connection import UpstreamHttp1
from remora.proxy.upstream.pool import EndpointPool


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closed = False
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name, default=None):
        return default


def make_conn():
    """A pool with one connection carrying a GET (answers go to a RecordingAttempt)."""
    loop = asyncio.new_event_loop()
    pool = EndpointPool("127.0.0.1", 9, loop)
    conn = UpstreamHttp1(pool)
    conn.connection_made(FakeTransport())
    pool.active.add(conn)
    attempt = RecordingAttempt()
    conn.start_request(attempt, attempt, b"GET", b"/", b"h", [], b"", b"", None, False, None, False)
    return pool, conn, loop


def test_connection_paused_by_slow_client_is_pooled_reading():
    """A connection paused for a slow client resumes reading when it goes back to the pool."""
    pool, conn, loop = make_conn()
    conn.set_reading(False)
    assert conn.transport.reading is False
    conn.release(True)
    assert conn.is_idle() and pool.idle == [conn]
    assert conn.transport.reading is True
    loop.close()


def test_newest_idle_connection_is_reused_first_and_closed_ones_skipped():
    """acquire() returns the most recently pooled open connection and drops closed ones."""
    pool, first, loop = make_conn()
    second = UpstreamHttp1(pool)
    second.connection_made(FakeTransport())
    first.release(True)
    second.release(True)
    assert pool.acquire() is second
    first.transport.closed = True
    assert pool.acquire() is None
    loop.close()


def test_not_keep_alive_closes_instead_of_pooling():
    """A connection whose response forbade keep-alive is closed, never pooled."""
    pool, conn, loop = make_conn()
    conn.release(False)
    assert conn.transport.closed and pool.idle == []
    loop.close()


def test_idle_deadline_closes_only_expired_connections():
    """The sweeper closes idle connections past their deadline and keeps the others."""
    pool, old, loop = make_conn()
    fresh = UpstreamHttp1(pool)
    fresh.connection_made(FakeTransport())
    pool.idle_timeout = 1.0
    old.release(True)                  # deadline now + 1.0
    pool.idle_timeout = 60.0
    fresh.release(True)                # deadline now + 60.0
    assert pool.close_idle(now=loop.time() + 5.0) == 1
    assert old.transport.closed and not fresh.transport.closed
    assert pool.idle == [fresh]
    loop.close()


def test_retries_are_not_budgeted_by_default_as_in_istio():
    """Without connectionPool.http.maxRetries, concurrent retries are unlimited (Istio sets no budget)."""
    from types import SimpleNamespace

    from remora.proxy.upstream.circuit import Circuit
    circuit = Circuit("outbound|80||flaky")
    circuit.configure(None)
    assert circuit.retry_budget.limit(active_requests=100) is None
    assert all(circuit.retry_budget.try_acquire(active_requests=100) for _ in range(100))
    http = SimpleNamespace(http1_max_pending_requests=None, http2_max_requests=None,
                           max_requests_per_connection=None, max_retries=5)
    policy = SimpleNamespace(connection_pool=SimpleNamespace(tcp=None, http=http))
    circuit.configure(policy)
    assert circuit.retry_budget.limit(active_requests=100) == 5


class RecordingAttempt:
    """What the connection tells the attempt it carries (here also its receiver) about a response."""

    def __init__(self) -> None:
        self.heads: list = []
        self.ends: list[bool] = []
        self.errors: list = []

    def on_upstream_headers(self, resp) -> None:
        self.heads.append(resp)

    def on_upstream_data(self, data: bytes) -> None:
        pass

    def on_read_end(self) -> None:
        pass

    def on_complete(self, keep_alive: bool) -> None:
        self.ends.append(keep_alive)

    def on_connection_failed(self, failure, detail: str) -> None:
        self.errors.append((failure, detail))


def answer(raw: bytes) -> RecordingAttempt:
    _, conn, loop = make_conn()
    attempt = conn.request
    conn.data_received(raw)
    loop.close()
    return attempt


def test_204_content_length_zero_is_dropped():
    """A 204 with Content-Length: 0 goes on without a length (Envoy's strict_1xx_and_204_headers)."""
    exchange = answer(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
    (resp,) = exchange.heads
    assert resp.status == 204 and resp.content_length is None and not resp.chunked
    assert exchange.ends == [True]


def test_204_with_a_length_or_chunked_is_a_protocol_error():
    """A 204 with a non-zero Content-Length or with Transfer-Encoding: chunked is an upstream protocol error."""
    for raw in (b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n"):
        exchange = answer(raw)
        assert exchange.heads == [] and len(exchange.errors) == 1, raw


def test_304_keeps_its_content_length():
    """A 304's Content-Length is kept (RFC 9110 8.6, as Envoy) and no body is expected."""
    exchange = answer(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1234\r\n\r\n")
    (resp,) = exchange.heads
    assert resp.content_length == 1234 and exchange.ends == [True]
