"""Traffic mirroring: VirtualService `mirror` / `mirrors` / `mirrorPercentage` (Envoy's
request_mirror_policies, shadowing).

- Fire and forget: a shadow is a copy of the request sent to the mirror cluster once the
  whole request has arrived; its response is read and dropped. It never delays, changes or
  fails the primary, which goes on as if there were no mirror.
- The copy's Host gets `-shadow` appended to its name (`reviews:9080` ->
  `reviews-shadow:9080`), as Envoy does, so the mirror can tell shadows from real traffic.
- Each mirror is drawn on its own: `mirrors[].percentage` (default 100), or
  `mirrorPercentage` for `mirror` (default 100).
- A body longer than the replay buffer (--retry-buffer-bytes) is not kept, so that request
  is not shadowed: counted in the mirror cluster's `retry_or_shadow_abandoned`, Envoy's
  counter. Shadows count in the mirror cluster's own stats (`upstream_rq_total`, status
  classes) and use its pools, mTLS and circuit breakers; an overflow or a missing healthy
  endpoint drops the shadow silently.
- A shadow's deadline is the route's timeout when it has one (per-try deadline wheel).
"""
from __future__ import annotations

import random

from remora.proxy.upstream.upstream_request import UpstreamRequest


class MirrorTarget:
    """One mirror of a route: where copies go, and what share of requests is copied."""

    __slots__ = ("destination", "percent")

    def __init__(self, destination, percent: float) -> None:
        self.destination = destination    # a RouteDestination: cluster_for(port)
        self.percent = percent

    def drawn(self) -> bool:
        return self.percent >= 100 or (self.percent > 0 and random.random() * 100 < self.percent)


def shadow_authority(authority: bytes) -> bytes:
    """Envoy's shadow Host: `-shadow` after the host name, before any port."""
    if authority.endswith(b"]") or b":" not in authority:
        return authority + b"-shadow"
    host, _, port = authority.rpartition(b":")
    return host + b"-shadow:" + port


def send_shadows(exchange, targets: list[MirrorTarget]) -> None:
    """Copy the exchange's request (head as routed, body kept for replay) to each mirror drawn."""
    body = exchange.replay
    if exchange.head.upgrade is not None:
        return      # a WebSocket (or other upgrade) is a tunnel, not a request to copy
    for target in targets:
        if not target.drawn():
            continue
        cluster = target.destination.cluster_for(exchange.port)
        if body is None:
            cluster.stats.retry_or_shadow_abandoned += 1   # too long to keep: cannot be copied
            continue
        ShadowRequest(exchange, cluster, list(body)).start()


class ShadowRequest:
    """The UpstreamCallbacks of one shadow: sends the copy, discards the answer."""

    __slots__ = ("head", "up_method", "up_path", "up_authority", "up_headers", "up_added", "up_unique",
                 "request_done",
                 "request_trailers", "peer_id", "cluster", "endpoint", "attempt", "pending", "timeout", "wheel",
                 "status")

    def __init__(self, exchange, cluster, body: list) -> None:
        self.head = exchange.head
        self.up_method = exchange.up_method
        self.up_path = exchange.up_path
        self.up_authority = shadow_authority(exchange.up_authority)
        self.up_headers = exchange.up_headers
        self.up_added, self.up_unique = exchange.listener.added_request_headers(exchange.head, cluster,
                                                                                exchange.trace)
        self.request_done = True
        self.request_trailers = exchange.request_trailers
        self.peer_id = None
        self.cluster = cluster
        self.endpoint = None
        self.pending = body
        self.timeout = exchange.route.timeout or 0.0
        self.wheel = exchange.listener.deadlines.per_try
        self.status = 0

    def start(self) -> None:
        cluster = self.cluster
        stats = cluster.stats
        ep = cluster.pick(cluster.hash_policy.key(self.head) if cluster.hash_policy is not None else None)
        if ep is None or (ep.ejected and not cluster.balancer.panic):
            stats.upstream_cx_none_healthy += 1
            return
        if stats.upstream_rq_active >= cluster.circuit.max_requests:
            stats.upstream_rq_pending_overflow += 1
            return
        stats.upstream_rq_total += 1
        stats.upstream_rq_active += 1
        self.endpoint = ep
        ep.active_requests += 1
        ep.total_requests += 1
        self.attempt = UpstreamRequest(self, self.timeout, self.wheel, self.pending)
        self.attempt.start(cluster, ep.pool, False)

    def _done(self, status: int) -> None:
        if self.endpoint is None:
            return
        self.endpoint.active_requests -= 1
        self.endpoint = None
        stats = self.cluster.stats
        stats.upstream_rq_active -= 1
        if status:
            stats.count_status(status)

    # -- UpstreamCallbacks: the response is read and dropped ------------------------------
    def on_upstream_host_selected(self, endpoint) -> None:
        pass

    def on_upstream_headers(self, resp) -> None:
        self.status = resp.status

    def on_upstream_data(self, data: bytes) -> None:
        pass

    def on_upstream_trailers(self, trailers: list) -> None:
        pass

    def on_upstream_end(self) -> None:
        self._done(self.status)

    def on_upstream_read_end(self) -> None:
        pass

    def on_attempt_failed(self, failure, detail: str) -> None:
        self._done(0)

    def on_upstream_upgraded(self, conn, resp, rest: bytes) -> None:
        conn.close()       # a shadow never becomes a tunnel
        self._done(0)

    def on_upstream_above_high_watermark(self) -> None:
        pass

    def on_upstream_below_low_watermark(self) -> None:
        pass
