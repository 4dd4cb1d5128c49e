"""Upstream HTTP/1.1 connections, the per-endpoint pools that keep them, and the
per-cluster circuit breakers that bound them.

Connection lifecycle (one owner, explicit states, as in httpcore):
  CONNECTING -> ACTIVE (one exchange at a time) -> IDLE (in its pool) -> ACTIVE ... -> CLOSED
A connection goes back to its pool only when the response ended cleanly, the request was
fully sent and both sides allowed keep-alive; anything else closes it. Idle connections
are reused newest-first (the most likely to be still open); the worker's sweeper closes
those idle past their deadline. The exchange is told about every event, including a
connection that closed before any response byte, so it can resend on a fresh connection
(the keep-alive race) instead of surfacing a spurious 503.
"""
from __future__ import annotations

import asyncio
import enum

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from remora.proxy.telemetry.counters import set_keepalive, set_nodelay
from remora.proxy.codec.http1 import (
    EOL, H_CL, H_CONNECTION, H_PEER, H_TE, H_UPGRADE, LAST_CHUNK, RESPONSE_SPECIAL,
    RESPONSE_SPECIAL_LENGTHS, chunk, connection_tokens,
    drop_named,
)
from remora.proxy.codec.message import ResponseHead
from remora.proxy.upstream.circuit import UNLIMITED, Circuit  # noqa: F401  (PoolRegistry's; re-exported)
from remora.proxy.codec.transfer_coding import chunked_is_final
from remora.proxy.upstream.tls_origination import OriginContexts, request_host
from remora.proxy.upstream.upstream_tls import TlsStats, UpstreamTlsError


class ConnState(enum.Enum):
    CONNECTING = 0
    ACTIVE = 1
    IDLE = 2
    CLOSED = 3


class UpstreamHttp1(asyncio.Protocol):
    """An HTTP/1.1 client connection carrying one exchange at a time."""

    def __init__(self, pool: "EndpointPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.state = ConnState.CONNECTING
        self.exchange = None
        self.requests_sent = 0
        self.idle_deadline = 0.0
        self.tunnel = None            # downstream transport once upgraded
        self.reading = True           # False while a slow client holds us back
        self.peer_id: str | None = None   # the server's verified SPIFFE ID on an mTLS connection
        self.plain_fallback = False   # auto-mTLS dialled in plaintext (no certificate yet): not pooled
        self.tls_host: str | None = None  # TLS origination: the request host it was made for (auto SNI)
        self._reset_response()

    def _reset_response(self) -> None:
        self.headers: list = []
        self.resp: ResponseHead | None = None
        self.got_bytes = False
        self.response_done = False
        self.head_only = False
        self.content_length: bytes | None = None
        self.rare = False          # set when one of the fields below was touched
        self.interim = False
        self.until_close = False
        self.hop_names: set[bytes] | None = None
        self.te_chunked = False
        self.upgrade: bytes | None = None
        self.peer_meta: bytes | None = None

    def _reset_common(self) -> None:
        """Per-response reset on the hot path: the rare fields only when a response set one."""
        if self.rare:
            self._reset_response()
            return
        self.headers = []
        self.resp = None
        self.got_bytes = self.response_done = self.head_only = False
        self.content_length = None

    # -- predicates ------------------------------------------------------------------
    def is_idle(self) -> bool:
        return self.state is ConnState.IDLE

    def is_closed(self) -> bool:
        return self.state is ConnState.CLOSED or self.transport is None or self.transport.is_closing()

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.exchange is None:
            # Bytes on an idle connection: the server broke framing; never reuse it.
            self.close()
            return
        self.got_bytes = True
        exchange = self.exchange
        try:
            self.parser.feed_data(data)
            exchange.sink.flush()
        except HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0]:])
        except HttpParserError as exc:
            exchange = self.exchange
            self.close()
            if exchange is not None and not self.response_done:
                exchange.on_upstream_protocol_error(str(exc))

    def eof_received(self):
        if self.until_close and self.exchange is not None and self.resp is not None:
            # A response without length ends at close (RFC 9112 6.3 rule 8).
            self.response_done = True
            self.exchange.on_response_end(False)
        return False

    def connection_lost(self, exc) -> None:
        self.state = ConnState.CLOSED
        self.pool.forget(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        exchange, self.exchange = self.exchange, None
        if exchange is not None and not self.response_done:
            if self.until_close and self.resp is not None:
                self.response_done = True
                exchange.on_response_end(False)
            else:
                exchange.on_upstream_lost(self.got_bytes)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.exchange is not None:
            self.exchange.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.exchange is not None:
            self.exchange.upstream_write_paused(False)

    def set_reading(self, on: bool) -> None:
        """Pause or resume reading the upstream (downstream backpressure)."""
        if on != self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = on
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    # -- request side ------------------------------------------------------------------
    def send_request_head(self, exchange, method: bytes, path: bytes, authority: bytes,
                          headers: list, added: bytes, content_length: int | None, chunked: bool,
                          upgrade: bytes | None, head_only: bool) -> None:
        """Start a request: write its head (`added`: ready-made header lines) with Remora's own framing."""
        self.exchange = exchange
        self.state = ConnState.ACTIVE
        self.requests_sent += 1
        self._reset_common()
        self.head_only = head_only
        parts = [method, b" ", path, b" HTTP/1.1\r\nhost: ", authority, EOL]
        if headers:
            parts.append(b"".join([name + b": " + value + EOL for name, value in headers]))
        parts.append(added)
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif content_length is not None:
            parts.append(b"content-length: %d\r\n" % content_length)
        if upgrade is not None:
            parts += (b"connection: upgrade\r\nupgrade: ", upgrade, EOL)
        parts.append(EOL)
        self.transport.write(b"".join(parts))

    def send_body(self, data: bytes, chunked: bool) -> None:
        if chunked:
            self.transport.writelines(chunk(data))
        else:
            self.transport.write(data)

    def end_body(self, chunked: bool) -> None:
        if chunked:
            self.transport.write(LAST_CHUNK)

    # -- httptools callbacks -------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        code = RESPONSE_SPECIAL.get(name.lower()) if len(name) in RESPONSE_SPECIAL_LENGTHS else None
        if code is None:
            self.headers.append((name, value))
        elif code == H_CONNECTION:
            self.rare = True
            extra = {t for t in connection_tokens(value) if t not in (b"close", b"keep-alive", b"upgrade")}
            if extra:
                self.hop_names = (self.hop_names or set()) | extra
        elif code == H_CL:
            self.content_length = value
        elif code == H_TE:
            self.rare = True
            if not chunked_is_final(value):   # transfer_coding.py: the rule of both codecs
                raise ValueError("unsupported transfer-encoding")
            self.te_chunked = True
        elif code == H_UPGRADE:
            self.rare = True
            self.upgrade = value
        elif code == H_PEER:
            self.rare = True
            self.peer_meta = value     # the answering sidecar's metadata: read, never forwarded

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True      # 100/103 from the upstream: we answer 100 ourselves
            self.rare = True
            self.headers = []
            return
        headers = self.headers if self.hop_names is None else drop_named(self.headers, self.hop_names)
        # The reason phrase is not kept (httptools' on_status would cost a call per
        # response): Remora sends the standard phrase for the status, as Envoy does.
        resp = ResponseHead(status, b"", headers)
        resp.keep_alive = self.parser.should_keep_alive()
        resp.peer_metadata = self.peer_meta
        if status == 204 and (self.content_length is not None or self.te_chunked):
            # Envoy's strict_1xx_and_204_headers (RFC 9110 8.6, 9112 6.1): a 204 carries
            # neither Transfer-Encoding nor Content-Length; "0" is dropped, anything else
            # is a protocol error (502 UPE). A 304 keeps its Content-Length, as in Envoy.
            if self.te_chunked or self.content_length.strip() != b"0":
                raise ValueError("content-length or transfer-encoding in a 204 response")
            self.content_length = None
        if self.content_length is not None:
            resp.content_length = int(self.content_length)
        elif status in (204, 304) or self.head_only:
            resp.content_length = None
        else:
            # No Content-Length on a response with a body: chunked or read-until-close.
            # Either way the downstream side re-frames it.
            resp.chunked = True
            self.until_close = not self.te_chunked
            self.rare = True
        self.resp = resp
        if status == 101:
            return
        self.exchange.on_response_head(resp)
        if self.head_only or status in (204, 304):
            self._complete(resp.keep_alive and not self.head_only)

    def on_body(self, body: bytes) -> None:
        # The exchange may have dropped this connection mid-read (a response it retries).
        if self.response_done or self.exchange is None:
            return
        self.exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.response_done or self.resp is None or self.resp.status == 101:
            return   # a 101 is finished by the upgrade that follows, not here
        self._complete(self.resp.keep_alive)

    def _complete(self, keep_alive: bool) -> None:
        self.response_done = True
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_end(keep_alive)

    # -- upgrade -----------------------------------------------------------------------------
    def _on_upgrade(self, rest: bytes) -> None:
        exchange = self.exchange
        if exchange is None or self.resp is None or self.resp.status != 101:
            self.close()
            return
        self.response_done = True
        exchange.on_upgraded(self, self.resp, rest)

    def start_tunnel(self, downstream_transport) -> None:
        """From now on, bytes pass through unparsed in both directions."""
        self.tunnel = downstream_transport
        self.exchange = None
        self.pool.forget(self)

    # -- ownership ---------------------------------------------------------------------------
    def release(self, keep_alive: bool, idle_timeout: float, now: float) -> None:
        """The exchange is done with this connection: pool it or close it."""
        self.exchange = None
        pool = self.pool
        limit = pool.circuit.max_requests_per_connection
        if (keep_alive and not self.is_closed() and pool.accepting
                and not (limit and self.requests_sent >= limit) and not self.plain_fallback):
            # A pooled connection must be reading, or the next response would never arrive.
            self.set_reading(True)
            self.state = ConnState.IDLE
            self.idle_deadline = now + idle_timeout
            pool.idle.append(self)
            if pool.circuit.pending:
                pool.circuit.hand_over(pool)
        else:
            self.close()

    def close(self) -> None:
        self.exchange = None
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.CLOSED
            transport = self.transport
            if transport is not None:
                if _unsent(transport):
                    # Request bytes the server is not reading (an attempt dropped for a retry
                    # or a timeout): close() would wait for them to drain, maybe forever.
                    transport.abort()
                else:
                    transport.close()
            self.pool.forget(self)


def _unsent(transport) -> int:
    """Bytes the transport still holds for the peer (0 for a transport that cannot tell)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return size() if size is not None else 0


class EndpointPool:
    """Connections from one cluster to one endpoint."""

    __slots__ = ("host", "port", "idle", "active", "accepting", "loop", "circuit", "endpoint", "dialer",
                 "by_host")

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
        # Set per snapshot: an MtlsDialer (mTLS) or OriginationDialer (DR SIMPLE / MUTUAL);
        # None: plaintext. by_host: its connections are per request host (auto SNI).
        self.dialer = None
        self.by_host = False

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
                    conn.state = ConnState.ACTIVE
                    return conn
            return None
        while idle:
            conn = idle.pop()
            if conn.state is ConnState.IDLE and not conn.transport.is_closing():
                conn.state = ConnState.ACTIVE
                return conn
        return None

    def connect(self, exchange, cluster) -> None:
        """Open a new connection for an exchange; it is told on_connected / on_connect_failed."""
        self.circuit.open += 1
        self.loop.create_task(self._connect(exchange, cluster))

    async def _connect(self, exchange, cluster) -> None:
        stats = cluster.stats
        stats.upstream_cx_total += 1
        try:
            if self.dialer is None:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(lambda: UpstreamHttp1(self), self.host, self.port),
                    cluster.connect_timeout)
            else:
                conn = await self.dialer.dial(self, lambda: UpstreamHttp1(self), cluster.connect_timeout,
                                              exchange.up_authority)
        except UpstreamTlsError as exc:
            stats.upstream_cx_connect_fail += 1
            self.circuit.closed_one()
            exchange.on_connect_failed(str(exc))
            return
        except asyncio.TimeoutError:
            stats.upstream_cx_connect_fail += 1
            stats.upstream_cx_connect_timeout += 1
            self.circuit.closed_one()
            exchange.on_connect_failed("connection timeout")
            return
        except OSError as exc:
            stats.upstream_cx_connect_fail += 1
            self.circuit.closed_one()
            exchange.on_connect_failed(f"connection failure: {exc.strerror or exc}")
            return
        keepalive = cluster.tcp_keepalive
        if keepalive is not None:
            set_keepalive(conn.transport, *keepalive)
        conn.state = ConnState.ACTIVE
        self.active.add(conn)
        exchange.on_connected(conn)

    def forget(self, conn: UpstreamHttp1) -> None:
        """The connection is closed or tunnelled: it no longer counts (idempotent)."""
        if conn in self.active:
            self.active.discard(conn)
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            self.circuit.closed_one()

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

    def pool_for(self, cluster_name: str, host: str, port: int, tls: object = False) -> EndpointPool:
        """The pool of one endpoint; `tls` tells connection kinds apart (False: plaintext)."""
        key = (cluster_name, host, port, tls)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = EndpointPool(host, port, self.loop, self.circuit_for(cluster_name))
        return pool

    def sweep(self, now: float) -> None:
        for pool in self.pools.values():
            if pool.idle:
                pool.close_idle(now)

    def close_all_idle(self) -> None:
        for pool in self.pools.values():
            pool.accepting = False
            pool.close_idle(None)
