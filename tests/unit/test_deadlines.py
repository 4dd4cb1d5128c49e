"""Coarse request deadlines: never early, at most a tick late, only for the exchange they belong to."""
from __future__ import annotations

import asyncio

from remora.proxy.router.deadlines import TICK, DeadlineWheel, RequestDeadlines, time_out_if_due


async def test_deadline_fires_not_early_and_within_a_tick():
    """A deadline fires no sooner than its time and at most about one tick later."""
    loop = asyncio.get_running_loop()
    fired = {}
    wheel = DeadlineWheel(loop, lambda key, now: fired.setdefault(key, now))
    start = loop.time()
    wheel.add(start + 0.12, "late")
    wheel.add(start + 0.02, "early")
    await asyncio.sleep(0.12 + 3 * TICK)
    assert fired["early"] - start >= 0.02 and fired["late"] - start >= 0.12
    assert fired["late"] - start <= 0.12 + 2 * TICK
    assert wheel.pending() == 0 and wheel.handle is None


class FakeExchange:
    def __init__(self, deadline=0.0):
        self.deadline = deadline
        self.timed_out = False

    def on_route_timeout(self):
        self.timed_out = True


class FakeAttempt:
    def __init__(self, try_deadline=0.0):
        self.try_deadline = try_deadline
        self.timed_out = False

    def on_per_try_timeout(self):
        self.timed_out = True


class FakeConnection:
    def __init__(self, active):
        self.active = active

    def route_deadline_due(self, now):
        time_out_if_due(self.active, now)


async def test_only_the_connections_current_exchange_with_a_past_deadline_times_out():
    """A due connection times out its current exchange only if that exchange's own deadline passed."""
    loop = asyncio.get_running_loop()
    deadlines = RequestDeadlines(loop)
    now = loop.time()
    due = FakeExchange(deadline=now + 0.02)
    later = FakeExchange(deadline=now + 60)          # a newer request on a reused connection
    conn_due, conn_reused, conn_idle = FakeConnection(due), FakeConnection(later), FakeConnection(None)
    for conn in (conn_due, conn_reused, conn_idle):
        deadlines.route.add(now + 0.02, conn)
    await asyncio.sleep(0.02 + 2 * TICK)
    assert due.timed_out
    assert not later.timed_out, "a deadline armed for an earlier request must not time out the next one"


async def test_per_try_deadline_times_out_only_an_attempt_still_armed():
    """A due attempt times out only while its try_deadline is set and past (an ended attempt reset it to 0)."""
    loop = asyncio.get_running_loop()
    deadlines = RequestDeadlines(loop)
    now = loop.time()
    armed, ended, later = FakeAttempt(now + 0.02), FakeAttempt(0.0), FakeAttempt(now + 60)
    for attempt in (armed, ended, later):
        deadlines.per_try.add(now + 0.02, attempt)
    await asyncio.sleep(0.02 + 2 * TICK)
    assert armed.timed_out
    assert not ended.timed_out and not later.timed_out


async def test_an_earlier_deadline_added_after_a_later_one_still_fires_on_time():
    """A deadline earlier than the one the timer is armed for re-arms it (they come out of order)."""
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    wheel = DeadlineWheel(loop, lambda key, now: fired.append((key, now)))
    start = loop.time()
    wheel.add(start + 5.0, "late")
    wheel.add(start + 0.1, "early")
    await asyncio.sleep(0.1 + 3 * TICK)
    assert [key for key, _ in fired] == ["early"]
    assert fired[0][1] - start < 0.1 + 2 * TICK
    assert wheel.pending() == 1


async def test_finished_http2_streams_are_not_kept_by_the_route_deadline_wheel():
    """200 HTTP/2 requests on a route with a 15 s timeout: when they are answered, the wheel
    holds only their connection, and none of their exchanges is still alive (it kept every
    one for the whole timeout once: 300 MiB at 12k req/s)."""
    import gc

    from benchmarks.hotpath import MESH, RESILIENCE, RESPONSE, FakeTransport, SwitchingTransport, h2load_requests
    from remora.config.loader import load_mesh_text
    from remora.proxy.codec.downstream import DownstreamHttp1
    from remora.proxy.process.worker import ProxyOptions, Worker
    from remora.proxy.router.exchange import Exchange
    from remora.proxy.upstream.http1_connection import UpstreamHttp1

    worker = Worker(ProxyOptions(access_log="off"), load_mesh_text(MESH + RESILIENCE))
    listener = worker.listeners[0]
    transport = SwitchingTransport()
    transport.protocol = http1 = DownstreamHttp1(listener)
    http1.connection_made(transport)
    opening, frames = h2load_requests(200)
    http1.data_received(opening)
    http2 = transport.protocol
    upstream = UpstreamHttp1(worker.snapshot.clusters()[0].endpoints[0].pool)
    upstream.connection_made(FakeTransport())
    upstream.release(True)
    for frame in frames:
        http2.data_received(frame)
        upstream.data_received(RESPONSE)
    gc.collect()
    assert listener.stats.by_class[2] == 200
    held = {id(key) for bucket in worker.deadlines.route.buckets.values() for key in bucket}
    assert held == {id(http2)}
    assert not [o for o in gc.get_objects() if isinstance(o, Exchange)], "finished exchanges are still referenced"
