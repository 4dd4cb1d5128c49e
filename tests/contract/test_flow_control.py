"""Contract of FlowControl (codec/flow_control.py): one owner of a transport's pausing.

Against a recording transport (what it is asked), and against a real loopback transport
(that its write state follows the transport's own pause_writing / resume_writing).
"""
from __future__ import annotations

import asyncio

from remora.proxy.codec.flow_control import FlowControl

A, B = 1, 2   # two pausers' reasons


class RecordingTransport:
    """Counts pause_reading / resume_reading calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_reading_stops_once_and_resumes_after_the_last_reason():
    """Two reasons pause the transport once; releasing one keeps it paused; releasing both resumes it once."""
    transport = RecordingTransport()
    flow = FlowControl(transport)
    flow.pause_reading(A)
    flow.pause_reading(B)
    assert transport.calls == ["pause"]
    flow.resume_reading(A)
    assert transport.calls == ["pause"] and flow.read_paused == B
    flow.resume_reading(B)
    assert transport.calls == ["pause", "resume"] and flow.read_paused == 0


def test_one_pauser_cannot_release_another():
    """resume_reading for a reason that does not hold reading changes nothing."""
    transport = RecordingTransport()
    flow = FlowControl(transport)
    flow.pause_reading(A)
    flow.resume_reading(B)
    assert transport.calls == ["pause"] and flow.read_paused == A


def test_pausing_and_resuming_are_idempotent():
    """The same reason twice pauses once; releasing it twice resumes once."""
    transport = RecordingTransport()
    flow = FlowControl(transport)
    flow.pause_reading(A)
    flow.pause_reading(A)
    flow.resume_reading(A)
    flow.resume_reading(A)
    assert transport.calls == ["pause", "resume"]


def test_several_reasons_are_released_at_once():
    """resume_reading with a mask releases every reason in it."""
    transport = RecordingTransport()
    flow = FlowControl(transport)
    flow.pause_reading(A)
    flow.pause_reading(B)
    flow.resume_reading(A | B)
    assert transport.calls == ["pause", "resume"]


def test_a_lost_connection_is_never_touched_again():
    """After lost(), pausing and resuming record the reasons but never call the transport."""
    transport = RecordingTransport()
    flow = FlowControl(transport)
    flow.pause_reading(A)
    flow.lost()
    flow.resume_reading(A)
    flow.pause_reading(B)
    assert transport.calls == ["pause"]


def test_a_closing_transport_is_not_resumed():
    """Releasing the last reason of a transport that is closing does not ask it to read again."""
    transport = RecordingTransport()
    flow = FlowControl(transport)
    flow.pause_reading(A)
    transport.closing = True
    flow.resume_reading(A)
    assert transport.calls == ["pause"] and flow.read_paused == 0


async def test_waiters_wake_when_writing_resumes():
    """wait_writable returns at once when not paused, and waits for resume_writing when paused."""
    flow = FlowControl(RecordingTransport())
    await asyncio.wait_for(flow.wait_writable(), 1)
    flow.pause_writing()
    waiters = [asyncio.ensure_future(flow.wait_writable()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    flow.resume_writing()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert not flow.write_paused


async def test_losing_the_connection_releases_waiters():
    """A producer waiting for a connection that is gone is released, not left hanging."""
    flow = FlowControl(RecordingTransport())
    flow.pause_writing()
    waiter = asyncio.ensure_future(flow.wait_writable())
    await asyncio.sleep(0.01)
    flow.lost()
    await asyncio.wait_for(waiter, 1)


class _Sink(asyncio.Protocol):
    """A server protocol that forwards its transport's write callbacks to a FlowControl."""

    def __init__(self, flows: list) -> None:
        self.flows = flows
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_made(self, transport) -> None:
        self.flow = FlowControl(transport)
        transport.set_write_buffer_limits(high=16384)
        self.flows.append(self)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def connection_lost(self, exc) -> None:
        self.flow.lost()


async def test_write_state_follows_a_real_transport():
    """On loopback: a peer that does not read makes write_paused true; once it reads, a waiter is woken; a paused transport reads nothing until released."""
    loop = asyncio.get_running_loop()
    protocols: list[_Sink] = []
    server = await loop.create_server(lambda: _Sink(protocols), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4096)
    try:
        await asyncio.wait_for(_first(protocols), 2)
        proto = protocols[0]
        written = 0
        while not proto.flow.write_paused:
            assert written < 256 << 20, "the transport never asked to stop writing"
            proto.flow.transport.write(b"y" * 65536)
            written += 65536
            await asyncio.sleep(0)
        waiter = asyncio.ensure_future(proto.flow.wait_writable())
        got = 0
        while got < written:
            got += len(await asyncio.wait_for(reader.read(1 << 20), 5))
        await asyncio.wait_for(waiter, 5)
        proto.flow.pause_reading(A)
        writer.write(b"held")
        await writer.drain()
        await asyncio.sleep(0.05)
        assert proto.received == b""
        proto.flow.resume_reading(A)
        await asyncio.wait_for(_received(proto, b"held"), 2)
    finally:
        writer.close()
        for proto in protocols:
            proto.flow.transport.abort()
        server.close()
        await server.wait_closed()


async def _received(proto: _Sink, data: bytes) -> None:
    while proto.received != data:
        await asyncio.sleep(0.005)


async def _first(protocols: list) -> None:
    while not protocols:
        await asyncio.sleep(0.005)
