"""UpstreamHttp2 against a real HTTP/2 server (grpcio): streams, trailers, flow control, GOAWAY."""
from __future__ import annotations

import asyncio
import struct

import h2.errors
import pytest

from remora.proxy.upstream.http2_connection import UpstreamHttp2
from tests.integration.grpc_apps import EchoServer

pytestmark = pytest.mark.integration


def grpc_frame(message: bytes) -> bytes:
    return struct.pack(">?I", False, len(message)) + message


def grpc_messages(body: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(body):
        _, size = struct.unpack(">?I", body[i:i + 5])
        out.append(body[i + 5:i + 5 + size])
        i += 5 + size
    return out


GRPC_HEADERS = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


class Recorder:
    """StreamEvents that record what one stream reported, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.head = None
        self.body = bytearray()
        self.trailers: list = []
        self.reset: tuple | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.pauses: list[bool] = []

    def on_response_head(self, resp) -> None:
        self.events.append("head")
        self.head = resp

    def on_response_body(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.body += data

    def on_response_trailers(self, trailers: list) -> None:
        self.events.append("trailers")
        self.trailers = trailers

    def on_response_end(self) -> None:
        self.events.append("end")
        self.done.set_result(True)

    def on_stream_reset(self, error_code: int, refused: bool, got_bytes: bool) -> None:
        self.events.append("reset")
        self.reset = (error_code, refused, got_bytes)
        if not self.done.done():
            self.done.set_result(False)

    def upstream_write_paused(self, paused: bool) -> None:
        self.pauses.append(paused)


async def connect(port: int, **kwargs) -> UpstreamHttp2:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: UpstreamHttp2(**kwargs), "127.0.0.1", port)
    return conn


async def test_concurrent_unary_streams_get_their_own_answers_and_trailers():
    """Many streams on one connection each get their own message back, then grpc-status 0 in trailers."""
    with EchoServer() as server:
        conn = await connect(server.port)
        recorders = []
        for i in range(20):
            rec = Recorder()
            sid = conn.open_stream(rec, b"POST", b"/test.Echo/Unary", b"echo", GRPC_HEADERS, False)
            conn.send_data(sid, grpc_frame(b"hello %d" % i), end_stream=True)
            recorders.append(rec)
        assert all(await asyncio.wait_for(asyncio.gather(*(r.done for r in recorders)), 10))
        for i, rec in enumerate(recorders):
            assert rec.events == ["head", "data", "trailers", "end"]
            assert rec.head.status == 200
            assert grpc_messages(bytes(rec.body)) == [b"hello %d" % i]
            assert (b"grpc-status", b"0") in rec.trailers
            # framing is carried as content_length, never as a header to forward
            assert all(name != b"content-length" for name, _ in rec.head.headers)
        assert conn.streams == {} and conn.streams_opened == 20
        conn.close()


async def test_error_status_arrives_in_trailers_only_response():
    """A failing call's grpc-status and grpc-message reach the stream owner unchanged."""
    with EchoServer() as server:
        conn = await connect(server.port)
        rec = Recorder()
        sid = conn.open_stream(rec, b"POST", b"/test.Echo/Unary", b"echo", GRPC_HEADERS, False)
        conn.send_data(sid, grpc_frame(b"fail:UNAVAILABLE"), end_stream=True)
        await asyncio.wait_for(rec.done, 10)
        fields = dict(rec.head.headers) | dict(rec.trailers)
        assert fields[b"grpc-status"] == b"14"
        assert b"UNAVAILABLE" in fields[b"grpc-message"]
        conn.close()


async def test_large_server_stream_is_held_at_the_stream_window_while_the_owner_pauses():
    """With reading paused the server stops at our stream window; resuming lets the rest through."""
    with EchoServer() as server:
        conn = await connect(server.port)
        rec = Recorder()
        # 4,000 messages of 1 KiB: about 4 MiB, four times the 1 MiB stream window
        sid = conn.open_stream(rec, b"POST", b"/test.Echo/ServerStream", b"echo", GRPC_HEADERS, False)
        conn.set_stream_reading(sid, False)
        conn.send_data(sid, grpc_frame(b"4000:1024"), end_stream=True)
        await asyncio.sleep(1.5)
        held = len(rec.body)
        assert 0 < held <= (1 << 20) + 16384, held
        assert not rec.done.done()
        conn.set_stream_reading(sid, True)
        await asyncio.wait_for(rec.done, 20)
        assert len(grpc_messages(bytes(rec.body))) == 4000
        conn.close()


async def test_request_body_larger_than_the_peer_window_is_queued_and_fully_sent():
    """A 3 MiB client stream goes out in window-sized pieces as WINDOW_UPDATEs arrive."""
    with EchoServer() as server:
        conn = await connect(server.port)
        rec = Recorder()
        sid = conn.open_stream(rec, b"POST", b"/test.Echo/ClientStream", b"echo", GRPC_HEADERS, False)
        message = b"x" * 65536
        for _ in range(48):
            conn.send_data(sid, grpc_frame(message))
        assert rec.pauses and rec.pauses[0] is True     # more queued than SEND_QUEUE_HIGH
        conn.end_stream(sid)
        await asyncio.wait_for(rec.done, 20)
        assert grpc_messages(bytes(rec.body)) == [b"count=48 bytes=%d" % (48 * 65536)]
        assert rec.pauses[-1] is False
        conn.close()


async def test_reset_stream_cancels_the_call_on_the_server():
    """reset_stream() reaches the server as a cancelled call and frees the stream slot."""
    with EchoServer() as server:
        conn = await connect(server.port)
        rec = Recorder()
        sid = conn.open_stream(rec, b"POST", b"/test.Echo/Unary", b"echo", GRPC_HEADERS, False)
        conn.send_data(sid, grpc_frame(b"sleep:5"), end_stream=True)
        await asyncio.sleep(0.3)
        conn.reset_stream(sid)
        assert sid not in conn.streams
        assert await asyncio.get_running_loop().run_in_executor(None, server.cancel_seen.wait, 5)
        conn.close()


async def test_capacity_follows_the_lower_of_the_cluster_limit_and_open_streams():
    """capacity() counts down as streams open, and is 0 after the connection closes."""
    with EchoServer() as server:
        conn = await connect(server.port, max_streams=3)
        await asyncio.sleep(0.2)   # the server's SETTINGS
        assert conn.capacity() == 3
        recs = [Recorder() for _ in range(2)]
        sids = [conn.open_stream(r, b"POST", b"/test.Echo/Unary", b"echo", GRPC_HEADERS, False)
                for r in recs]
        assert conn.capacity() == 1
        for sid in sids:
            conn.send_data(sid, grpc_frame(b"x"), end_stream=True)
        await asyncio.wait_for(asyncio.gather(*(r.done for r in recs)), 10)
        assert conn.capacity() == 3
        conn.close()
        assert conn.capacity() == 0


async def test_server_going_away_fails_open_streams_without_response_bytes():
    """When the server stops, streams in flight are reported reset (got_bytes False), none hangs."""
    server = EchoServer().__enter__()
    try:
        conn = await connect(server.port)
        rec = Recorder()
        sid = conn.open_stream(rec, b"POST", b"/test.Echo/Unary", b"echo", GRPC_HEADERS, False)
        conn.send_data(sid, grpc_frame(b"sleep:10"), end_stream=True)
        await asyncio.sleep(0.3)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, lambda: server.__exit__(None))
    await asyncio.wait_for(rec.done, 10)
    if rec.reset is not None:
        code, _, got_bytes = rec.reset
        assert code != h2.errors.ErrorCodes.NO_ERROR or not got_bytes
    else:    # the server may answer CANCELLED in trailers before going away
        assert (dict(rec.head.headers) | dict(rec.trailers)).get(b"grpc-status") not in (None, b"0")
    conn.close()
