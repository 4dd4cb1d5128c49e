"""Coarse per-request deadlines: O(1) to arm, nothing to cancel, nothing kept alive.

A loop.call_later per request (and its cancel) costs more than the rest of a short
request's routing, and almost every route timeout is cancelled by the response anyway.
Deadlines are instead integer keys appended to a bucket per TICK; one timer, running only
while buckets are pending, hands the due keys to `on_due`, which looks them up among the
requests still alive and ignores the rest. Buckets hold plain ints, so a finished request
is freed at once and the garbage collector never walks the pending deadlines.
Resolution: at most TICK (50 ms) late, never early.
"""
from __future__ import annotations

import asyncio
from typing import Callable

TICK = 0.05
_PER_SECOND = 1 / TICK


class DeadlineWheel:
    """Deadlines of one event loop, in TICK-sized buckets of integer keys."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[int], None]) -> None:
        self.loop = loop
        self.on_due = on_due
        self.buckets: dict[int, list[int]] = {}
        self.handle: asyncio.TimerHandle | None = None

    def add(self, delay: float, key: int) -> None:
        """Hand `key` to on_due once, no sooner than `delay` seconds from now."""
        slot = int((self.loop.time() + delay) * _PER_SECOND) + 1
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = []
            if self.handle is None:
                self.handle = self.loop.call_at(slot * TICK, self._fire)
        bucket.append(key)

    def _fire(self) -> None:
        self.handle = None
        now_slot = int(self.loop.time() * _PER_SECOND)
        for slot in sorted(s for s in self.buckets if s <= now_slot):
            for key in self.buckets.pop(slot):
                self.on_due(key)
        if self.buckets:
            self.handle = self.loop.call_at(min(self.buckets) * TICK, self._fire)

    def pending(self) -> int:
        """How many deadlines are waiting (expired or not)."""
        return sum(len(b) for b in self.buckets.values())


class RequestDeadlines:
    """Route timeouts and per-try timeouts of one worker's live exchanges."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.live: dict[int, object] = {}     # serial -> exchange, while it runs
        self.serial = 0
        self.route = DeadlineWheel(loop, self._route_due)
        self.per_try = DeadlineWheel(loop, self._per_try_due)

    def register(self, exchange) -> int:
        """A serial for an exchange that arms deadlines; forget() it when it finishes."""
        self.serial += 1
        self.live[self.serial] = exchange
        return self.serial

    def forget(self, serial: int) -> None:
        self.live.pop(serial, None)

    def _route_due(self, serial: int) -> None:
        exchange = self.live.get(serial)
        if exchange is not None:
            exchange.on_route_timeout()

    def _per_try_due(self, key: int) -> None:
        # key = serial * 256 + attempt: only the attempt it was armed for counts.
        exchange = self.live.get(key >> 8)
        if exchange is not None:
            exchange.on_per_try_deadline(key & 0xFF)
