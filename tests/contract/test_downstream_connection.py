"""Contract of DownstreamConnection (codec/seams.py): what the listener, the sweeper and drain
ask of a codec's connection. Every codec in tests/contract/codecs.py CODECS runs it."""
from __future__ import annotations

import asyncio

import pytest

from tests.contract.codecs import CODECS, until

pytestmark = pytest.mark.parametrize("codec", CODECS, ids=lambda codec: codec.name)


async def test_close_if_idle_closes_only_without_a_request_in_flight(codec):
    """close_if_idle refuses while a request is being answered, and closes the connection once it is idle."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"GET", b"/busy")
        stream = await listener.stream(0)
        conn = listener.connections[0]
        assert conn.close_if_idle() is False
        stream.respond()
        assert (await client.response()).complete
        assert conn.close_if_idle() is True
        assert await client.cut_off()
        await until(lambda: listener.closed == 1)


async def test_stream_idle_timeout_reaches_the_router_once(codec):
    """A request with no activity past stream_idle_timeout: its stream is told once, and the client is cut off."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        await client.request(b"POST", b"/slow", streamed=True)
        stream = await listener.stream(0)
        conn = listener.connections[0]
        settings = listener.settings
        later = asyncio.get_running_loop().time() + settings.stream_idle_timeout + 1
        conn.check_timeouts(later, settings)
        conn.check_timeouts(later + 1, settings)
        assert stream.kinds().count("idle_timeout") == 1
        assert await client.cut_off()


async def test_idle_connection_closes_after_idle_timeout(codec):
    """A connection with no request closes at the sweeper tick after idle_timeout, and not before."""
    async with codec.serve() as (listener, connect):
        client = await connect()
        conn = listener.connections[0]
        settings = listener.settings
        now = asyncio.get_running_loop().time()
        conn.check_timeouts(now + settings.idle_timeout - 1, settings)
        await asyncio.sleep(0.05)
        assert listener.closed == 0
        conn.check_timeouts(now + settings.idle_timeout + 1, settings)
        assert await client.cut_off()
        await until(lambda: listener.closed == 1)


async def test_connection_reports_its_transport_security(codec):
    """A plaintext connection says tls False and has no capture."""
    async with codec.serve() as (listener, connect):
        await connect()
        conn = listener.connections[0]
        assert conn.tls is False and conn.capture is None
