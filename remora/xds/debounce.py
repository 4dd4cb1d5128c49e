"""Coalescing config changes into pushes: wait for quiet, but never longer than a cap.

A change schedules a push `delay` after it; another change within that time moves the
push later, up to `max_delay` after the first change of the burst, so a constant stream of
changes (sidecars registering one after another) still produces a push at least every
`max_delay`. Istio's PILOT_DEBOUNCE_AFTER / PILOT_DEBOUNCE_MAX work the same way.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable


def due_time(first_change: float, last_change: float, delay: float, max_delay: float) -> float:
    """When a burst that started at `first_change` and last changed at `last_change` is pushed."""
    return min(last_change + delay, first_change + max(delay, max_delay))


class Debouncer:
    """Calls `fire(first_change)` once per burst of `trigger()` calls."""

    def __init__(self, delay: float, max_delay: float, fire: Callable[[float], None]) -> None:
        self.delay = delay
        self.max_delay = max_delay
        self.fire = fire
        self.first_change: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def trigger(self, at: float | None = None) -> None:
        """A change happened (`at`: when, in loop time, if earlier than now, e.g. before validation)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = now if at is None else min(at, now)
        if self.first_change is None or at < self.first_change:
            self.first_change = at
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_at(due_time(self.first_change, now, self.delay, self.max_delay), self._run)

    def _run(self) -> None:
        first, self.first_change, self._handle = self.first_change, None, None
        if first is not None:
            self.fire(first)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.first_change = None
