"""HTTP/2 upstream pools: streams multiplexed on few connections (Envoy's HTTP/2 conn pool).

The same seam as the HTTP/1 pool (seams.py ConnectionPool): `request(attempt, authority,
fresh)` is answered by `attempt.on_pool_ready(handle, reused)` or `on_pool_failure(...)`;
here the "connection" an attempt gets is an Http2StreamHandle, one stream on a shared
UpstreamHttp2 connection, and the attempt drives it exactly like an HTTP/1 connection.

Rules:
- A request takes a stream on the connection with the most free streams (capacity is the
  lower of the peer's SETTINGS_MAX_CONCURRENT_STREAMS and DestinationRule
  maxConcurrentStreams); with none free it waits for a connection being opened, or opens
  one (max_connections permitting), or waits in the circuit's queue (circuit.py).
- The circuit's `max_requests` (DestinationRule http2MaxRequests) bounds the requests open
  across the cluster, checked by the router before it asks any pool (503 UO, never queued).
- `maxRequestsPerConnection` retires a connection after that many streams: it takes no new
  stream and closes once its last one ends.
- Requests waiting for a connection being opened are this pool's (bounded by the circuit's
  max_pending); a failed connect fails them all with CONNECT_FAILURE.
- A connection that goes away (GOAWAY, transport loss) fails only its own streams; streams
  it never processed fail as REFUSED_STREAM, which the router may retry elsewhere.
"""
from __future__ import annotations

import asyncio

from remora.proxy.telemetry.counters import set_keepalive
from remora.proxy.upstream.http2_connection import UNLIMITED as STREAMS_UNLIMITED
from remora.proxy.upstream.http2_connection import UpstreamHttp2
from remora.proxy.upstream.http2_stream import Http2StreamHandle
from remora.proxy.upstream.seams import AttemptFailure
from remora.proxy.upstream.tls_origination import request_host
from remora.proxy.upstream.upstream_tls import UpstreamTlsError

# Streams a connection being opened is expected to take before its SETTINGS arrive (the
# common server default): more waiters than this open a second connection.
EXPECTED_STREAMS = 100


class Http2EndpointPool:
    """HTTP/2 connections from one cluster to one endpoint."""

    __slots__ = ("host", "port", "loop", "circuit", "endpoint", "dialer", "by_host",
                 "idle_timeout", "accepting", "conns", "active", "idle", "connecting",
                 "waiters", "max_streams", "max_duration", "cluster_stats")

    def __init__(self, host: str, port: int, loop: asyncio.AbstractEventLoop, circuit) -> None:
        self.host = host
        self.port = port
        self.loop = loop
        self.circuit = circuit
        self.endpoint = None
        self.dialer = None
        self.by_host = False
        self.idle_timeout = 3600.0
        self.max_duration = 0.0   # tcp.maxConnectionDuration (0: none), and the stats to count it in
        self.cluster_stats = None
        self.accepting = True
        self.conns: list[UpstreamHttp2] = []      # open connections that take new streams
        self.active: set[UpstreamHttp2] = set()   # every open connection (retired ones too)
        self.idle: list = []                      # unused (HTTP/1's idle list), for sweeps
        self.connecting = 0                       # connections being opened
        self.waiters: list = []                   # (waiter, authority) for those connections
        self.max_streams = STREAMS_UNLIMITED      # DestinationRule maxConcurrentStreams

    # -- waiting -------------------------------------------------------------------------
    def request(self, waiter, authority: bytes | None, fresh: bool = False) -> None:
        """Answer `waiter` with a stream now, later, or a failure (see the module doc)."""
        handle = self.acquire(authority)
        if handle is not None:
            waiter.on_pool_ready(handle, True)
            return
        circuit = self.circuit
        stats = waiter.cluster.stats
        # (Auto SNI: a connection being opened may be for another host, so never wait on one.)
        if self.connecting and not self.by_host and len(self.waiters) < self.connecting * EXPECTED_STREAMS:
            if len(self.waiters) >= circuit.max_pending:
                stats.upstream_rq_pending_overflow += 1
                waiter.on_pool_failure(AttemptFailure.OVERFLOW, "overflow")
                return
            stats.upstream_rq_pending_total += 1
            self.waiters.append((waiter, authority))
            return
        if circuit.open >= circuit.max_connections:
            circuit.park(waiter, self, authority)
            return
        self.connect(waiter, authority)

    def cancel(self, waiter) -> None:
        """The waiter gave up: it leaves this pool's and the circuit's queues."""
        self.waiters = [(w, a) for w, a in self.waiters if w is not waiter]
        self.circuit.cancel(waiter)

    def acquire(self, authority: bytes | None = None) -> Http2StreamHandle | None:
        """A stream on the connection with the most free streams, or None (`authority`: the
        request's Host, which an auto-SNI connection must have been made for)."""
        best, room = None, 0
        host = request_host(authority) if self.by_host else None
        for conn in self.conns:
            if host is not None and conn.tls_host != host:
                continue
            free = conn.capacity()
            if free > room:
                best, room = conn, free
        if best is None:
            return None
        return Http2StreamHandle(best, self)

    # -- opening -------------------------------------------------------------------------
    def connect(self, waiter, authority: bytes | None) -> None:
        """Open a connection; `waiter` and those queued meanwhile get its streams."""
        self.circuit.open += 1
        self.connecting += 1
        self.waiters.insert(0, (waiter, authority))
        self.loop.create_task(self._connect(waiter.cluster, authority))

    def _new_connection(self) -> UpstreamHttp2:
        return UpstreamHttp2(on_capacity=self._capacity_freed, on_closed=self.forget,
                             max_streams=self.max_streams)

    async def _connect(self, cluster, authority: bytes | None) -> None:
        stats = cluster.stats
        stats.upstream_cx_total += 1
        try:
            if self.dialer is None:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(self._new_connection, self.host, self.port),
                    cluster.connect_timeout)
            else:
                conn = await self.dialer.dial(self, self._new_connection, cluster.connect_timeout,
                                              authority)
        except UpstreamTlsError as exc:
            self._connect_failed(stats, str(exc))
            return
        except asyncio.TimeoutError:
            stats.upstream_cx_connect_timeout += 1
            self._connect_failed(stats, "connection timeout")
            return
        except OSError as exc:
            self._connect_failed(stats, f"connection failure: {exc.strerror or exc}")
            return
        self.connecting -= 1
        keepalive = cluster.tcp_keepalive
        if keepalive is not None:
            set_keepalive(conn.transport, *keepalive)
        conn.requests_limit = self.circuit.max_requests_per_connection
        conn.created_at = conn.idle_since = self.loop.time()   # idle from the start, until a stream
        self.active.add(conn)
        self.conns.append(conn)
        self._serve_waiters()

    def _connect_failed(self, stats, detail: str) -> None:
        stats.upstream_cx_connect_fail += 1
        self.connecting -= 1
        self.circuit.closed_one()
        # The waiters beyond what the other connections being opened will take fail now.
        keep = self.connecting * EXPECTED_STREAMS
        failed, self.waiters = self.waiters[keep:], self.waiters[:keep]
        for waiter, _ in failed:
            waiter.on_pool_failure(AttemptFailure.CONNECT_FAILURE, detail)

    # -- streams ending, connections closing ---------------------------------------------
    def _capacity_freed(self, conn: UpstreamHttp2) -> None:
        if conn.retired:
            self.retire(conn)
            if not conn.streams:
                conn.close()
        if self.waiters:
            self._serve_waiters()
        if self.circuit.pending:
            self.circuit.hand_over(self)

    def _serve_waiters(self) -> None:
        if self.by_host:       # each waiter takes a stream of its own host's connections
            waiting, self.waiters = self.waiters, []
            for waiter, authority in waiting:
                handle = self.acquire(authority)
                if handle is None:
                    self.waiters.append((waiter, authority))
                else:
                    waiter.on_pool_ready(handle, False)
            return
        while self.waiters:
            handle = self.acquire(self.waiters[0][1])
            if handle is None:
                return
            waiter, _ = self.waiters.pop(0)
            waiter.on_pool_ready(handle, False)

    def forget(self, conn: UpstreamHttp2) -> None:
        """The connection closed: it no longer counts (idempotent)."""
        if conn in self.active:
            self.active.discard(conn)
            if conn in self.conns:
                self.conns.remove(conn)
            self.circuit.closed_one()

    def retire(self, conn: UpstreamHttp2) -> None:
        """No new streams on `conn` (maxRequestsPerConnection reached, or GOAWAY)."""
        if conn in self.conns:
            self.conns.remove(conn)

    def expire_old(self, now: float) -> None:
        """maxConnectionDuration: a connection that old takes no new stream (drained as after
        a GOAWAY) and closes once its streams are done."""
        for conn in list(self.active):
            if not conn.goaway and not conn.closed and now - conn.created_at >= self.max_duration:
                conn.goaway = True
                if self.cluster_stats is not None:
                    self.cluster_stats.upstream_cx_max_duration_reached += 1
                self.retire(conn)
                if not conn.streams:
                    conn.close()

    def close_idle(self, now: float | None = None) -> int:
        """Close connections without streams idle past the pool's idle timeout (all when now is None)."""
        closed = 0
        for conn in list(self.active):
            if not conn.streams and (now is None or conn.idle_since + self.idle_timeout <= now):
                conn.close()
                closed += 1
        return closed
