"""Coarse per-request deadlines: O(1) to arm, nothing to cancel, nothing allocated.

A loop.call_later per request (and its cancel) costs more than the rest of a short
request's routing, and almost every route timeout is cancelled by the response anyway.
Instead, the exchange stores its deadline as a float, and the downstream connection
carrying it (alive anyway) is appended to a bucket per TICK (per-try deadlines: the
attempt itself, see _per_try_due). One timer, running only
while buckets are pending, hands each due connection to `on_due(connection, now)`, which
looks at the exchange the connection is answering now and times it out only if that
exchange's own deadline has passed; a finished request simply is not there any more.
Resolution: at most TICK (50 ms) late, never early.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

TICK = 0.05
_PER_SECOND = 1 / TICK


class DeadlineWheel:
    """Deadlines of one event loop, in TICK-sized buckets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[Any, float], None]) -> None:
        self.loop = loop
        self.on_due = on_due
        self.buckets: dict[int, list] = {}
        self.handle: asyncio.TimerHandle | None = None
        self.armed = 0        # the slot the timer is set for

    def add(self, when: float, key: Any) -> None:
        """Hand `key` to on_due once, no sooner than loop time `when`."""
        slot = int(when * _PER_SECOND) + 1
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = []
            # Deadlines are not always in order (per-try timeouts, a gRPC call's own
            # deadline): one earlier than the armed timer re-arms it.
            if self.handle is None or slot < self.armed:
                if self.handle is not None:
                    self.handle.cancel()
                self.armed = slot
                self.handle = self.loop.call_at(slot * TICK, self._fire)
        bucket.append(key)

    def _fire(self) -> None:
        self.handle = None
        now = self.loop.time()
        now_slot = int(now * _PER_SECOND)
        for slot in sorted(s for s in self.buckets if s <= now_slot):
            for key in self.buckets.pop(slot):
                self.on_due(key, now)
        if self.buckets:
            self.armed = min(self.buckets)
            self.handle = self.loop.call_at(self.armed * TICK, self._fire)

    def pending(self) -> int:
        """How many deadlines are waiting (expired or not)."""
        return sum(len(b) for b in self.buckets.values())


def _route_due(connection, now: float) -> None:
    exchange = connection.active
    if exchange is not None and 0 < exchange.deadline <= now:
        exchange.on_route_timeout()


def _per_try_due(attempt, now: float) -> None:
    # Keyed by the attempt (an UpstreamRequest), which drops its stream and connection
    # when it ends: what the wheel keeps alive meanwhile is that small object only.
    if 0 < attempt.try_deadline <= now:
        attempt.on_per_try_timeout()


class RequestDeadlines:
    """Route timeouts and per-try timeouts of one worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.route = DeadlineWheel(loop, _route_due)
        self.per_try = DeadlineWheel(loop, _per_try_due)
