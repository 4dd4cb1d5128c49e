"""Envoy's circuit breakers for one cluster in one worker (connectionPool thresholds,
the pending queue, the retry budget); the pools in pool.py hand connections over through it.

The pending queue is this class's alone: pools park waiters with `wait`, waiters that give
up leave with `cancel` (through their pool), and only `hand_over` / `closed_one` let one go.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from remora.proxy.router.retry import RetryBudget
from remora.proxy.upstream.seams import AttemptFailure

if TYPE_CHECKING:
    from remora.proxy.upstream.pool import EndpointPool


UNLIMITED = 2**32 - 1   # Istio's default for every circuit-breaker threshold


class Circuit:
    """Envoy's circuit breakers for one cluster in one worker.

    It outlives config versions (keyed by cluster name) because the connections it counts
    do. `open` counts connections of the cluster, including ones still connecting. A
    request that needs a new connection while `open` is at max_connections waits in the
    FIFO `pending` queue (bounded by max_pending); a connection returning to a pool or
    closing lets the first waiter go.
    """

    __slots__ = ("name", "open", "pending", "max_connections", "max_pending", "max_requests",
                 "max_requests_per_connection", "retry_budget")

    def __init__(self, name: str) -> None:
        self.name = name
        self.open = 0
        self.pending: deque = deque()   # (waiter, pool, authority), oldest first
        self.configure(None)

    def configure(self, policy) -> None:
        """Thresholds from a TrafficPolicy's connectionPool (Istio: unlimited when unset)."""
        pool = policy.connection_pool if policy is not None else None
        tcp = pool.tcp if pool is not None else None
        http = pool.http if pool is not None else None
        self.max_connections = (tcp and tcp.max_connections) or UNLIMITED
        self.max_pending = (http and http.http1_max_pending_requests) or UNLIMITED
        self.max_requests = (http and http.http2_max_requests) or UNLIMITED
        self.max_requests_per_connection = (http and http.max_requests_per_connection) or 0
        # Concurrent retries: Istio sets no retry budget and max_retries 2^32-1 unless
        # connectionPool.http.maxRetries is set (Envoy's 20% budget would refuse most retries
        # when one endpoint of three fails half its requests).
        self.retry_budget = RetryBudget(max_retries=(http and http.max_retries) or None, budget_percent=None)

    def wait(self, waiter, pool: "EndpointPool", authority: bytes | None) -> bool:
        """Park a waiter for a connection of `pool`; False when the queue is full (overflow)."""
        if len(self.pending) >= self.max_pending:
            return False
        self.pending.append((waiter, pool, authority))
        return True

    def park(self, waiter, pool, authority: bytes | None) -> None:
        """A request that needs a connection while the cluster is at max_connections (Envoy):
        it waits in the queue bounded by max_pending_requests, past that it fails fast (UO)."""
        stats = waiter.cluster.stats
        stats.upstream_cx_overflow += 1
        if not self.wait(waiter, pool, authority):
            stats.upstream_rq_pending_overflow += 1
            waiter.on_pool_failure(AttemptFailure.OVERFLOW, "overflow")
            return
        stats.upstream_rq_pending_total += 1

    def cancel(self, waiter) -> None:
        """Drop a waiter that gave up (no-op when it is not waiting)."""
        for entry in self.pending:
            if entry[0] is waiter:
                self.pending.remove(entry)
                return

    def hand_over(self, pool: "EndpointPool") -> None:
        """A connection of `pool` went idle: give it to the first waiting request."""
        if pool.by_host:
            # Auto-SNI connections belong to one request host: the first waiter takes one made
            # for its host, else the oldest idle one closes so that it can open its own.
            conn = pool.acquire(self.pending[0][2])
            if conn is None:
                pool.idle.pop(0).close()      # closed_one() lets the first waiter connect
                return
        else:
            conn = pool.acquire()
        if conn is not None:
            self.pending.popleft()[0].on_pool_ready(conn, True)

    def closed_one(self) -> None:
        """A connection closed (or failed to open): the first waiter may open a new one."""
        self.open -= 1
        if self.pending and self.open < self.max_connections:
            waiter, pool, authority = self.pending.popleft()
            pool.connect(waiter, authority)
