"""Backpressure of one transport, in one place (uvicorn's flow_control.py is the model).

One FlowControl per connection owns both directions of its pausing:
- Reading: every party that may hold the peer back pauses with its own reason, one bit
  each, chosen by the protocol that owns the FlowControl (for instance "a pipelined
  request waits", "the router's upstream cannot take the body"). The transport stops
  reading at the first reason and reads again only when the last one is released, so
  one pauser can never resume what another still holds.
- Writing: the transport's pause_writing / resume_writing (the write buffer passed its
  high / low water mark) are recorded here; `write_paused` is the answer to "may I write
  more now?", and coroutines can wait for the buffer to drain (`wait_writable`).
- A closing transport is never resumed, and after `lost()` (connection_lost) nothing
  touches the transport again and every waiter is released, so a producer never hangs
  on a connection that is gone.

The owning protocol forwards its asyncio callbacks (pause_writing, resume_writing,
connection_lost) here and decides itself whom to tell (the router stream, a tunnel's
other side); this class knows no HTTP. Both the downstream codecs and the upstream
connections use it (see docs/architecture.md, "Backpressure").
"""
from __future__ import annotations

import asyncio


class FlowControl:
    """Reading and writing pause state of one transport (see the module docstring)."""

    __slots__ = ("transport", "read_paused", "write_paused", "_waiters")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.read_paused = 0          # the reasons (bits) holding reading, 0: reading
        self.write_paused = False     # the transport asked us to stop writing
        self._waiters: list[asyncio.Future] | None = None

    # -- reading -----------------------------------------------------------------------------
    def pause_reading(self, reason: int) -> None:
        """Stop reading for `reason` (a bit); reading stops once, whatever the number of reasons."""
        if not self.read_paused and self.transport is not None:
            self.transport.pause_reading()
        self.read_paused |= reason

    def resume_reading(self, reasons: int) -> None:
        """Release `reasons` (bits); reading resumes when no reason holds it any more."""
        held = self.read_paused
        if held & reasons:
            held = self.read_paused = held & ~reasons
            transport = self.transport
            if not held and transport is not None and not transport.is_closing():
                transport.resume_reading()   # a closing transport reads nothing more

    # -- writing -----------------------------------------------------------------------------
    def pause_writing(self) -> None:
        """The transport's write buffer passed its high-water mark."""
        self.write_paused = True

    def resume_writing(self) -> None:
        """The write buffer drained below its low-water mark: wake whoever waits."""
        self.write_paused = False
        self._wake()

    async def wait_writable(self) -> None:
        """Return once writing is not paused (at once if it is not), or the connection is lost."""
        if not self.write_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        await waiter

    # -- end ---------------------------------------------------------------------------------
    def lost(self) -> None:
        """The connection is gone: never touch the transport again; release every waiter."""
        self.transport = None
        self.write_paused = False
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)
