"""The TCP proxy: bytes of one captured connection relayed to one upstream, both ways.

Used for what is not HTTP (undeclared ports whose first bytes are no request line, ports
declared TCP) and for passthrough to destinations outside the mesh (ALLOW_ANY). Like
Envoy's tcp_proxy filter: connect first (bytes the client sends meanwhile are held, at
most HOLD_LIMIT, then its reads pause), try the next endpoint when a connect fails, and
relay with backpressure (a full write buffer on one side pauses reading on the other).
A half close is passed on where the transport allows it (TLS transports cannot: there
the other side is closed once its buffer is written).

Idle timeout (Istio's DestinationRule `connectionPool.tcp.idleTimeout`, Envoy's tcp_proxy
idle_timeout): a connection with no byte in either direction for that long is closed, both
sides, and counted in `tcp.<listener>.idle_timeout`; default 1 hour, `0s` never. The
worker's sweeper checks once a second (`check_idle`), from the byte counters, so relaying
pays nothing for it.

Each connection counts in Istio's istio_tcp_* metrics (IstioMetrics.tcp_opened/closed)
and writes one access-log line when it ends: `"- - -"`, status 0, bytes, duration,
upstream host and cluster, and flags (UF: no upstream could be reached; NR: refused).
"""
from __future__ import annotations

import asyncio
import time

from remora.proxy.telemetry.counters import set_nodelay
from remora.proxy.telemetry.access_log import AccessLogRecord
from remora.proxy.upstream.cluster import DEFAULT_TCP_IDLE_TIMEOUT

HOLD_LIMIT = 64 * 1024      # client bytes held while the upstream connection is being made


class TcpTarget:
    """Where a TCP connection goes: a list of (host, port, dialer) tries, and how it is labelled."""

    __slots__ = ("cluster_name", "tries", "service", "cluster")

    def __init__(self, cluster_name: str, tries: list, service=None, cluster=None) -> None:
        self.cluster_name = cluster_name
        self.tries = tries           # [(host, port, pool-or-None)]: a pool with a .dialer dials TLS
        self.service = service       # istio_metrics ServiceTags (None: unknown)
        self.cluster = cluster       # the mesh Cluster (endpoint counters), when there is one


def cluster_target(cluster) -> TcpTarget:
    """A mesh cluster as a TCP target: the balancer's choice first, then up to two other
    healthy endpoints to try when a connect fails."""
    first = cluster.pick()
    order = [first] if first is not None else []
    order += [ep for ep in cluster.endpoints if ep is not first and not ep.ejected]
    return TcpTarget(cluster.name, [(ep.host, ep.port, ep.pool) for ep in order[:3]], cluster.telemetry, cluster)


class _Upstream(asyncio.Protocol):
    """The upstream side: its bytes go to the downstream transport."""

    def __init__(self, session: "TcpSession") -> None:
        self.session = session
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.session.to_downstream(data)

    def eof_received(self):
        return self.session.upstream_eof()

    def connection_lost(self, exc) -> None:
        self.session.upstream_lost()

    def pause_writing(self) -> None:
        self.session.downstream.pause_reading()

    def resume_writing(self) -> None:
        self.session.downstream.resume_reading()

    # MtlsDialer.dial / OriginationDialer.dial set these on the protocol they return
    peer_id = None
    no_reuse = False
    tls_host = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpSession(asyncio.Protocol):
    """The downstream side of one proxied connection (the protocol of the accepted socket)."""

    def __init__(self, listener, target: TcpTarget, inbound: bool, peer_metadata=None) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.target = target
        self.inbound = inbound
        self.downstream = None
        self.upstream: _Upstream | None = None
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.received = 0           # from the downstream
        self.sent = 0               # to the downstream
        self.flags = "-"
        self.upstream_host = "-"
        self.started = 0.0
        self.closed = False
        cluster = target.cluster
        self.idle_timeout = cluster.tcp_idle_timeout if cluster is not None else DEFAULT_TCP_IDLE_TIMEOUT
        self._bytes_seen = 0         # received + sent at the last look that saw them move
        self._active_at = 0.0
        self.down_eof = False       # the client finished sending
        self.up_eof = False         # the upstream finished sending
        istio = listener.istio
        self.meter = None if istio is None else istio.tcp_opened(not inbound, peer_metadata, target.service)

    # -- downstream ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.downstream = transport
        self.started = self._active_at = self.loop.time()
        set_nodelay(transport)
        self.listener.tcp_sessions.add(self)
        stats = self.listener.tcp_stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        self.connect_task = self.loop.create_task(self._connect())

    def take_over(self, transport, first: bytes) -> None:
        """Continue a connection another protocol started reading (the sniffer's first bytes)."""
        self.connection_made(transport)
        if first:
            self.data_received(first)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.upstream is not None:
            self.upstream.transport.write(data)
            return
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes >= HOLD_LIMIT:
            self.downstream.pause_reading()

    def eof_received(self):
        self.down_eof = True
        if self.upstream is not None:
            if self.up_eof:                 # both directions finished: done
                self.upstream.close()
                return False
            self._pass_eof(self.upstream.transport)
        return True     # keep our write side open for the rest of the upstream's answer

    def connection_lost(self, exc) -> None:
        if self.upstream is not None:
            self.upstream.close()
        elif not self.connect_task.done():
            self.connect_task.cancel()
        self._finish()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    # -- upstream ------------------------------------------------------------------------
    async def _connect(self) -> None:
        timeout = self.target.cluster.connect_timeout if self.target.cluster is not None else 10.0
        for host, port, pool in self.target.tries:
            self.upstream_host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                if pool is not None and pool.dialer is not None:
                    upstream = await pool.dialer.dial(pool, lambda: _Upstream(self), timeout)
                else:
                    _, upstream = await asyncio.wait_for(
                        self.loop.create_connection(lambda: _Upstream(self), host, port), timeout)
            except asyncio.CancelledError:
                raise
            except Exception:    # noqa: BLE001 - OSError, TimeoutError, UpstreamTlsError: next try
                self.listener.tcp_stats.upstream_connect_fail += 1
                continue
            if self.closed:
                upstream.close()
                return
            self.upstream = upstream
            for chunk in self.held:
                upstream.transport.write(chunk)
            self.held.clear()
            if self.held_bytes >= HOLD_LIMIT:
                self.downstream.resume_reading()
            if self.down_eof:
                self._pass_eof(upstream.transport)
            return
        self.flags = "UF"
        self.downstream.close()

    def to_downstream(self, data: bytes) -> None:
        self.sent += len(data)
        self.downstream.write(data)

    def upstream_eof(self):
        self.up_eof = True
        if self.down_eof:                   # both directions finished: done
            self.downstream.close()
            return False
        self._pass_eof(self.downstream)
        return True

    def upstream_lost(self) -> None:
        if self.downstream is not None:
            self.downstream.close()

    @staticmethod
    def _pass_eof(transport) -> None:
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    # -- idle timeout ------------------------------------------------------------------------
    def check_idle(self, now: float) -> None:
        """Close the connection when no byte moved either way for `idle_timeout` (sweeper)."""
        moved = self.received + self.sent
        if moved != self._bytes_seen:
            self._bytes_seen, self._active_at = moved, now
        elif self.idle_timeout and now - self._active_at >= self.idle_timeout and not self.closed:
            self.idle_timeout = 0.0      # counted once, whenever the close completes
            self.listener.tcp_stats.idle_timeout += 1
            if self.upstream is not None:
                self.upstream.close()
            self.downstream.close()

    # -- end -------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        listener = self.listener
        listener.tcp_sessions.discard(self)
        stats = listener.tcp_stats
        stats.downstream_cx_active -= 1
        stats.downstream_cx_rx_bytes_total += self.received
        stats.downstream_cx_tx_bytes_total += self.sent
        if self.meter is not None:
            self.meter.received += self.received
            self.meter.sent += self.sent
            listener.istio.tcp_closed(self.meter)
        fmt = listener.log_format
        if fmt is not None:
            now = self.loop.time()
            listener.worker.access_log.log(AccessLogRecord(
                start_time=time.time() - (now - self.started), method="-", path="-", protocol="-",
                response_flags=self.flags, bytes_received=self.received, bytes_sent=self.sent,
                duration_ms=int((now - self.started) * 1000), upstream_host=self.upstream_host,
                upstream_cluster=self.target.cluster_name), fmt)
