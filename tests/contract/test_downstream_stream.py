"""Contract of the DownstreamStream and the codec's side of RouterStream (codec/seams.py).

Every downstream codec runs these (tests/contract/codecs.py CODECS: HTTP/1.1 and HTTP/2), on a
real loopback socket: a client speaking the codec's wire, and a RecordingStream in place
of the router, which answers through the stream the codec gave it.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.contract.codecs import CODECS, until

pytestmark = pytest.mark.parametrize("codec", CODECS, ids=lambda codec: codec.name)


async def test_response_head_body_and_end_arrive_in_order(codec):
    """Head, then body pieces in order, then end: the client reads one complete response with those bytes."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/ordered")
        stream = await listener.stream(0)
        stream.respond(200, [b"one-", b"two-", b"three"], headers=[(b"x-a", b"1")])
        resp = await client.response()
        assert resp.complete and resp.status == 200
        assert resp.body == b"one-two-three"
        assert (b"x-a", b"1") in resp.headers


async def test_body_of_unknown_length_is_framed_by_the_codec(codec):
    """content_length None: the codec frames the body itself and the client still reads it whole."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/stream")
        stream = await listener.stream(0)
        stream.respond(200, [b"a" * 1000, b"b" * 10], content_length=None)
        resp = await client.response()
        assert resp.complete and resp.body == b"a" * 1000 + b"b" * 10


async def test_trailers_end_the_response(codec):
    """send_response_trailers ends the response: the client reads it complete, and the connection serves the next request."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/grpc")
        stream = await listener.stream(0)
        stream.sink.send_response_head(200, b"", [], None)
        stream.sink.send_response_body(b"payload")
        stream.finished = True
        stream.sink.send_response_trailers([(b"grpc-status", b"0")])
        resp = await client.response()
        assert resp.complete and resp.body == b"payload"
        assert (b"grpc-status", b"0") in resp.trailers
        await client.request(b"GET", b"/next")
        (await listener.stream(1)).respond()
        assert (await client.response()).complete


async def test_local_reply_is_one_whole_response(codec):
    """A local reply carries its status, a text/plain body and the extra headers, and the connection serves the next request."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/denied")
        stream = await listener.stream(0)
        stream.local_reply(403, b"RBAC: access denied", [(b"x-reason", b"policy")])
        resp = await client.response()
        assert resp.complete and resp.status == 403
        assert resp.body == b"RBAC: access denied"
        assert (b"content-type", b"text/plain") in resp.headers
        assert (b"x-reason", b"policy") in resp.headers
        await client.request(b"GET", b"/next")
        (await listener.stream(1)).respond()
        assert (await client.response()).status == 200


async def test_abort_mid_response_cuts_the_response_short(codec):
    """abort() after part of the body: the client sees the response cut short, and the finished stream hears nothing more."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/cut")
        stream = await listener.stream(0)
        stream.sink.send_response_head(200, b"", [], 1000)
        stream.sink.send_response_body(b"x" * 10)
        stream.sink.flush()
        stream.abort()
        resp = await client.response()
        assert not resp.complete
        assert await client.cut_off()
        await asyncio.sleep(0.05)
        assert "closed" not in stream.kinds()


async def test_request_body_is_delivered_in_order_then_end_once(codec):
    """Body pieces sent over time arrive in order, then one end; start comes once."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"POST", b"/upload", streamed=True)
        stream = await listener.stream(0)
        pieces = [b"alpha-", b"b" * 5000, b"-gamma"]
        for piece in pieces:
            await client.send_body(piece)
            await asyncio.sleep(0.01)
        await client.end_body()
        await until(lambda: "end" in stream.kinds())
        assert stream.body == b"".join(pieces)
        kinds = stream.kinds()
        assert kinds.count("start") == 1 and kinds.count("end") == 1
        assert kinds[-1] == "end"


async def test_request_without_body_ends_before_it_starts(codec):
    """A request with no body is complete at its head: on_request_end comes before start."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/nobody")
        stream = await listener.stream(0)
        await until(lambda: "start" in stream.kinds())
        assert stream.kinds() == ["end", "start"]


async def test_router_hold_stops_the_body_until_released(codec):
    """pause_reading holds the request body: beyond what the codec's flow control had already
    let in (HTTP/1.1: nothing; HTTP/2: one stream window), nothing arrives and the end does not
    come; resume_reading lets the rest through, in order."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"POST", b"/held", streamed=True)
        stream = await listener.stream(0)
        stream.hold_body = True
        await client.send_body(b"first")
        await until(lambda: stream.body)
        rest = b"s" * (codec.hold_allows + 10000)
        await client.send_body(rest)
        await client.end_body()
        await asyncio.sleep(0.2)
        assert len(stream.body) <= len(b"first") + codec.hold_allows and "end" not in stream.kinds()
        stream.sink.resume_reading()
        await until(lambda: "end" in stream.kinds())
        assert stream.body == b"first" + rest


async def test_a_finished_response_releases_the_routers_hold(codec):
    """A stream that paused reading and never resumed does not hold the connection once its response is done."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"POST", b"/held", body=b"payload")
        stream = await listener.stream(0)
        await until(lambda: "end" in stream.kinds())
        stream.sink.pause_reading()
        stream.respond()
        assert (await client.response()).status == 200
        await client.request(b"GET", b"/next")
        (await listener.stream(1)).respond(body_parts=[b"second"])
        assert (await client.response()).body == b"second"


async def test_write_backpressure_pauses_and_resumes_the_producer(codec):
    """A client that stops reading makes the stream report write_paused (and tell the router); reading again resumes it, and every byte arrives."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/big")
        stream = await listener.stream(0)
        sink = stream.sink
        piece = b"z" * 65536
        sink.send_response_head(200, b"", [], None)
        sent = 0
        while not sink.write_paused:
            assert sent < 256 << 20, "the stream never paused its producer"
            sink.send_response_body(piece)
            sink.flush()
            sent += len(piece)
            await asyncio.sleep(0)
        assert ("write_paused", True) in stream.events
        reading = asyncio.ensure_future(client.response(timeout=30))
        await until(lambda: ("write_paused", False) in stream.events, timeout=30)
        assert not sink.write_paused
        stream.finished = True
        sink.end_response()
        resp = await reading
        assert resp.complete and len(resp.body) == sent


async def test_client_close_reaches_the_router_exactly_once(codec):
    """The client going away mid-request is told to its unfinished stream once, and the connection is reported closed."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"POST", b"/gone", streamed=True)
        await client.send_body(b"partial")
        stream = await listener.stream(0)
        await until(lambda: stream.body)
        client.close()
        await until(lambda: listener.closed == 1)
        await asyncio.sleep(0.05)
        assert stream.kinds().count("closed") == 1


async def test_stream_knows_its_connection_and_its_active_request(codec):
    """A plaintext stream: tls False, no peer certificate, no capture; `active` is the stream being answered; last_activity is loop time."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/who")
        stream = await listener.stream(0)
        sink = stream.sink
        assert sink.tls is False and sink.peer_cert is None and sink.capture is None
        assert sink.active is stream
        assert 0 < sink.last_activity <= asyncio.get_running_loop().time()
        stream.respond()
        await client.response()
