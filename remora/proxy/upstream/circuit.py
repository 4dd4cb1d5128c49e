"""Envoy's circuit breakers for one cluster in one worker (connectionPool thresholds,
the pending queue, the retry budget); the pools in pool.py hand connections over through it."""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from remora.proxy.router.retry import RetryBudget

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
        self.pending: deque = deque()
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

    def hand_over(self, pool: "EndpointPool") -> None:
        """A connection of `pool` went idle: give it to the first waiting request."""
        if pool.by_host:
            # Auto-SNI connections belong to one request host: the first waiter takes one made
            # for its host, else the oldest idle one closes so that it can open its own.
            conn = pool.acquire(self.pending[0].up_authority)
            if conn is None:
                pool.idle.pop(0).close()      # closed_one() lets the first waiter connect
                return
        else:
            conn = pool.acquire()
        if conn is not None:
            self.pending.popleft().on_pooled_connection(conn)

    def closed_one(self) -> None:
        """A connection closed (or failed to open): the first waiter may open a new one."""
        self.open -= 1
        if self.pending and self.open < self.max_connections:
            self.pending.popleft().on_connection_slot()
