"""Coarse per-request deadlines: O(1) to arm, nothing to cancel, nothing allocated.

A loop.call_later per request (and its cancel) costs more than the rest of a short
request's routing, and almost every route timeout is cancelled by the response anyway.
Instead, the exchange stores its deadline as a float, and its stream's `deadline_owner`
(the downstream connection, alive anyway) is appended to a bucket per TICK (per-try
deadlines: the attempt itself, see _per_try_due). One timer, running only while buckets
are pending, asks each due connection to `route_deadline_due(now)`: it looks at the
exchanges it is answering now and times out those whose own deadline has passed; a
finished request simply is not there any more. The wheel never holds a request's objects:
an HTTP/2 stream as key would keep every finished exchange alive for the whole timeout
(180,000 of them at 12k req/s and a 15 s timeout). The same connection twice in a row in
one bucket is kept once. Resolution: at most TICK (50 ms) late, never early.
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
        elif bucket[-1] is key:
            return        # already due at this tick: one look at its exchanges covers both
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


def time_out_if_due(exchange, now: float) -> None:
    """A route deadline owner's check of one exchange it is answering."""
    if exchange is not None and 0 < exchange.deadline <= now:
        exchange.on_route_timeout()


def _route_due(owner, now: float) -> None:
    owner.route_deadline_due(now)


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
