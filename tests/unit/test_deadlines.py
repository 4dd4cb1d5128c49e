"""Coarse request deadlines: never early, at most one tick late, forgotten ones ignored."""
from __future__ import annotations

import asyncio
import gc
import weakref

from remora.proxy.deadlines import TICK, DeadlineWheel, RequestDeadlines


async def test_deadline_fires_not_early_and_within_a_tick():
    """A deadline fires no sooner than its delay and at most about one tick later."""
    loop = asyncio.get_running_loop()
    fired = {}
    wheel = DeadlineWheel(loop, lambda key: fired.setdefault(key, loop.time()))
    start = loop.time()
    wheel.add(0.12, 1)
    wheel.add(0.02, 2)
    await asyncio.sleep(0.12 + 3 * TICK)
    assert fired[2] - start >= 0.02 and fired[1] - start >= 0.12
    assert fired[1] - start <= 0.12 + 2 * TICK
    assert wheel.pending() == 0 and wheel.handle is None


class FakeExchange:
    def __init__(self):
        self.timed_out = False
        self.per_try = []

    def on_route_timeout(self):
        self.timed_out = True

    def on_per_try_deadline(self, attempt):
        self.per_try.append(attempt)


async def test_forgotten_requests_are_ignored_and_not_kept_alive():
    """A finished request's deadline does nothing, and the wheel holds no reference to it."""
    deadlines = RequestDeadlines(asyncio.get_running_loop())
    done, live = FakeExchange(), FakeExchange()
    done_ref = weakref.ref(done)
    s1, s2 = deadlines.register(done), deadlines.register(live)
    deadlines.route.add(0.01, s1)
    deadlines.route.add(0.01, s2)
    deadlines.per_try.add(0.01, (s2 << 8) | 3)
    deadlines.forget(s1)
    del done
    gc.collect()
    assert done_ref() is None, "a forgotten request must not be kept alive by its deadline"
    await asyncio.sleep(0.01 + 2 * TICK)
    assert live.timed_out and live.per_try == [3]
