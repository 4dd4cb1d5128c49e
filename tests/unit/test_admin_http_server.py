"""Remora's admin HTTP server (asyncio Protocol + httptools), checked with raw bytes."""

from __future__ import annotations

import asyncio
import re

import pytest

from remora.proxy.admin.http_server import HttpError, Request, Response, serve


async def _echo(request: Request) -> Response:
    return Response(200, f"{request.method} {request.path} {sorted(request.query.items())}\n")


async def _slow(request: Request) -> Response:
    await asyncio.sleep(0.2)
    return Response(200, "slow\n")


async def _bad(request: Request) -> Response:
    raise HttpError(Response(400, "nope\n"))


async def _boom(request: Request) -> Response:
    raise RuntimeError("boom")


ROUTES = {"/echo": {"GET": _echo}, "/slow": {"GET": _slow}, "/bad": {"GET": _bad},
          "/boom": {"GET": _boom}, "/post": {"POST": _echo}}


@pytest.fixture
async def server():
    srv = await serve(ROUTES, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.cleanup()


async def _exchange(server, *chunks: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0][1])
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)
    data = await asyncio.wait_for(reader.read(), 5) if read_until_close else b""
    writer.close()
    return data


async def test_fragmented_request_and_close(server):
    """A request head fed in fragments is parsed whole; Connection: close is honoured."""
    data = await _exchange(server, b"GET /ec", b"ho?filter=a+b&x=1&x=2 HTTP/1.1\r\nHo",
                           b"st: a\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; charset=utf-8" in head and b"Connection: close" in head
    assert body == b"GET /echo [('filter', 'a b'), ('x', '1')]\n"   # '+' is a space, first value wins


async def test_pipelined_requests_answered_in_order(server):
    """Pipelined requests get their answers in request order, the slow one first."""
    data = await _exchange(server, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
                                   b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert data.index(b"slow\n") < data.index(b"GET /echo")
    assert data.count(b"HTTP/1.1 200 OK") == 2


async def test_head_405_404_400_500(server):
    """HEAD of a GET route has no body; wrong method 405 with Allow; unknown 404; errors 400/500."""
    data = await _exchange(server, b"HEAD /echo HTTP/1.1\r\nHost: a\r\n\r\n"
                                   b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                                   b"GET /post HTTP/1.1\r\nHost: a\r\n\r\n"
                                   b"GET /none HTTP/1.1\r\nHost: a\r\n\r\n"
                                   b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n"
                                   b"GET /boom HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"405", b"405", b"404", b"400", b"500"]
    assert b"Allow: GET,HEAD" in data and b"Allow: POST" in data
    assert data.split(b"\r\n\r\n")[1].startswith(b"HTTP/1.1 405")   # HEAD: head only


async def test_malformed_request_400_and_closed(server):
    """A request httptools cannot parse is answered 400 and the connection closed."""
    data = await _exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data


async def test_cleanup_lets_in_flight_answer_finish():
    """cleanup() waits for a request in flight, then the port is closed."""
    srv = await serve(ROUTES, "127.0.0.1", 0)
    port = srv.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    await srv.cleanup()
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"slow\n") and b"Connection: close" in data
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
