"""Connection pools: one EndpointPool per (cluster, endpoint, TLS kind), in a per-worker
PoolRegistry that outlives config versions (warm connections survive a push).

The pool owns waiting (Envoy's conn_pool_base: newStream answered by onPoolReady or
onPoolFailure): `request(attempt, authority, fresh)` answers `attempt.on_pool_ready(conn,
reused)` with the newest idle connection that is still open, or opens one, or parks the
attempt in its cluster's circuit (circuit.py) while the cluster is at max_connections, or
answers `on_pool_failure(OVERFLOW)` when that queue is full. Idle connections are reused
newest-first (the most likely to be still open); the worker's sweeper closes those idle
past their deadline. Connections write their own state and come back through `returned`.
"""
from __future__ import annotations

import asyncio

from remora.proxy.telemetry.counters import set_keepalive
from remora.proxy.upstream.circuit import UNLIMITED, Circuit  # noqa: F401  (PoolRegistry's; re-exported)
from remora.proxy.upstream.http1_connection import ConnState, UpstreamHttp1
from remora.proxy.upstream.http2_pool import Http2EndpointPool
from remora.proxy.upstream.seams import AttemptFailure
from remora.proxy.upstream.tls_origination import OriginContexts, request_host
from remora.proxy.upstream.upstream_tls import TlsStats, UpstreamTlsError

DEFAULT_IDLE_TIMEOUT = 3600.0   # the cluster's idle timeout replaces it per snapshot


class EndpointPool:
    """Connections from one cluster to one endpoint."""

    __slots__ = ("host", "port", "idle", "active", "accepting", "loop", "circuit", "endpoint", "dialer",
                 "by_host", "idle_timeout", "max_duration", "cluster_stats")

    def __init__(self, host: str, port: int, loop: asyncio.AbstractEventLoop,
                 circuit: Circuit | None = None) -> None:
        self.host = host
        self.port = port
        self.loop = loop
        self.idle: list[UpstreamHttp1] = []
        self.active: set[UpstreamHttp1] = set()   # every open connection, idle ones included
        self.accepting = True
        self.circuit = circuit or Circuit(f"{host}:{port}")
        self.endpoint = None      # the cluster's Endpoint this pool serves (set per snapshot)
        self.idle_timeout = DEFAULT_IDLE_TIMEOUT   # the cluster's (set per snapshot)
        self.max_duration = 0.0   # tcp.maxConnectionDuration (0: none), and the stats to count it in
        self.cluster_stats = None
        # Set per snapshot: an MtlsDialer (mTLS) or OriginationDialer (DR SIMPLE / MUTUAL);
        # None: plaintext. by_host: its connections are per request host (auto SNI).
        self.dialer = None
        self.by_host = False

    # -- waiting -------------------------------------------------------------------------
    def request(self, waiter, authority: bytes | None, fresh: bool = False) -> None:
        """Answer `waiter` (PoolCallbacks) with a connection, now or later, or a failure.

        `fresh`: never an idle one (an upgrade, or a resend after the keep-alive race);
        `authority`: the request's Host, which an auto-SNI connection must have been made for.
        """
        if not fresh:
            if self.by_host:
                conn = self.acquire(authority)
                if conn is not None:
                    waiter.on_pool_ready(conn, True)
                    return
            else:
                idle = self.idle
                while idle:       # acquire(), inlined: this is every request's path
                    conn = idle.pop()
                    if conn.state is ConnState.IDLE and not conn.transport.is_closing():
                        waiter.on_pool_ready(conn, True)
                        return
        circuit = self.circuit
        if circuit.open >= circuit.max_connections:
            circuit.park(waiter, self, authority)
            return
        self.connect(waiter, authority)

    def cancel(self, waiter) -> None:
        """The waiter gave up: it leaves the circuit's queue (a connect in flight is
        answered anyway, and the cancelled waiter hands that connection back)."""
        self.circuit.cancel(waiter)

    def acquire(self, authority: bytes | None = None) -> UpstreamHttp1 | None:
        """The newest idle connection that is still open, or None (`authority`: the request's
        Host, which an auto-SNI connection must have been made for)."""
        idle = self.idle
        if self.by_host:
            host = request_host(authority)
            for i in range(len(idle) - 1, -1, -1):
                conn = idle[i]
                if conn.tls_host == host and conn.state is ConnState.IDLE and not conn.transport.is_closing():
                    del idle[i]
                    return conn
            return None
        while idle:
            conn = idle.pop()
            if conn.state is ConnState.IDLE and not conn.transport.is_closing():
                return conn
        return None

    # -- opening -------------------------------------------------------------------------
    def connect(self, waiter, authority: bytes | None) -> None:
        """Open a new connection for `waiter`; it is answered on_pool_ready / on_pool_failure."""
        self.circuit.open += 1
        self.loop.create_task(self._connect(waiter, authority))

    async def _connect(self, waiter, authority: bytes | None) -> None:
        cluster = waiter.cluster
        stats = cluster.stats
        stats.upstream_cx_total += 1
        try:
            if self.dialer is None:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(lambda: UpstreamHttp1(self), self.host, self.port),
                    cluster.connect_timeout)
            else:
                conn = await self.dialer.dial(self, lambda: UpstreamHttp1(self), cluster.connect_timeout,
                                              authority)
        except UpstreamTlsError as exc:
            self._connect_failed(waiter, stats, str(exc))
            return
        except asyncio.TimeoutError:
            stats.upstream_cx_connect_timeout += 1
            self._connect_failed(waiter, stats, "connection timeout")
            return
        except OSError as exc:
            self._connect_failed(waiter, stats, f"connection failure: {exc.strerror or exc}")
            return
        keepalive = cluster.tcp_keepalive
        if keepalive is not None:
            set_keepalive(conn.transport, *keepalive)
        conn.created_at = self.loop.time()
        self.active.add(conn)
        waiter.on_pool_ready(conn, False)

    def _connect_failed(self, waiter, stats, detail: str) -> None:
        stats.upstream_cx_connect_fail += 1
        self.circuit.closed_one()
        waiter.on_pool_failure(AttemptFailure.CONNECT_FAILURE, detail)

    # -- connections coming back ---------------------------------------------------------
    def returned(self, conn: UpstreamHttp1) -> None:
        """An idle connection is back (it set its own state): the first waiter may take it."""
        self.idle.append(conn)
        if self.circuit.pending:
            self.circuit.hand_over(self)

    def forget(self, conn: UpstreamHttp1) -> None:
        """The connection is closed or tunnelled: it no longer counts (idempotent)."""
        if conn in self.active:
            self.active.discard(conn)
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            self.circuit.closed_one()

    def expire_old(self, now: float) -> None:
        """maxConnectionDuration: a connection that old is not reused; an idle one closes now,
        a busy one after its response (Envoy: drained, then closed)."""
        for conn in list(self.active):
            if not conn.no_reuse and now - conn.created_at >= self.max_duration:
                conn.no_reuse = True
                if self.cluster_stats is not None:
                    self.cluster_stats.upstream_cx_max_duration_reached += 1
                if conn in self.idle:
                    self.idle.remove(conn)
                    conn.close()

    def close_idle(self, now: float | None = None) -> int:
        """Close idle connections past their deadline (all of them when now is None)."""
        expired = [c for c in self.idle if now is None or c.idle_deadline <= now or c.is_closed()]
        if expired:
            # Partition first: close() calls forget(), which edits self.idle.
            self.idle = [c for c in self.idle if c not in expired]
            for conn in expired:
                conn.close()
        return len(expired)

class PoolRegistry:
    """Every EndpointPool and Circuit of one worker, kept across config versions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tls=None, origins: OriginContexts | None = None) -> None:
        self.loop = loop
        self.tls = tls                    # the worker's MeshTls, which mTLS dialers read
        self.origins = origins or OriginContexts()   # TLS origination contexts (--credentials-dir)
        # Keyed by TLS too: a plaintext, an mTLS and a TLS-origination connection to one address
        # (or two with different origination settings) never share a pool.
        self.pools: dict[tuple[str, str, int, object], EndpointPool] = {}
        self.circuits: dict[str, Circuit] = {}
        self.tls_stats: dict[str, TlsStats] = {}   # ssl.* counters by cluster name
        self.tls_logged: set = set()      # secure-naming mismatches already logged

    def circuit_for(self, cluster_name: str) -> Circuit:
        circuit = self.circuits.get(cluster_name)
        if circuit is None:
            circuit = self.circuits[cluster_name] = Circuit(cluster_name)
        return circuit

    def tls_stats_for(self, cluster_name: str) -> TlsStats:
        stats = self.tls_stats.get(cluster_name)
        if stats is None:
            stats = self.tls_stats[cluster_name] = TlsStats()
        return stats

    def pool_for(self, cluster_name: str, host: str, port: int, tls: object = False,
                 http2: bool = False):
        """The pool of one endpoint; `tls` tells connection kinds apart (False: plaintext),
        `http2` picks the multiplexing pool (http2_pool.py) over the HTTP/1.1 one."""
        key = (cluster_name, host, port, tls, http2)
        pool = self.pools.get(key)
        if pool is None:
            kind = Http2EndpointPool if http2 else EndpointPool
            pool = self.pools[key] = kind(host, port, self.loop, self.circuit_for(cluster_name))
        return pool

    def sweep(self, now: float) -> None:
        for pool in self.pools.values():
            if pool.active:    # HTTP/2 pools keep no idle list: their connections are all here
                if pool.max_duration:
                    pool.expire_old(now)
                pool.close_idle(now)

    def close_all_idle(self) -> None:
        for pool in self.pools.values():
            pool.accepting = False
            pool.close_idle(None)
