"""UpstreamRequest: one attempt of a request at the upstream (Envoy's upstream_request.h).

The stream (router/exchange.py) makes one per attempt. It asks its endpoint's pool for a
connection, buffers request body bytes until the connection is ready, sends head and
body, arms its per-try timeout, and passes the response on to the stream through the
UpstreamCallbacks of seams.py (head and body straight from the connection, which it
names the stream as receiver; the rest through it). It never decides about retries, replies or the route.

Rules:
- It reports exactly one ending: on_upstream_end, on_attempt_failed or on_upstream_upgraded
  (nothing at all once cancelled).
- Flow control against its own connection: it holds the client (the stream's
  on_upstream_above_high_watermark) while its pending body is over PENDING_HIGH_WATER or
  its connection's socket buffer is full, and lets it go (below_low_watermark) when that
  passes, or when the attempt ends or is cancelled: a dropped connection never sends its
  resume_writing, so the hold cannot be left to it.
- cancel() leaves the pool's queue, and closes the connection (never pooled: its response
  was not read to the end); a connection answered after cancel goes back to the pool.
- A per-try deadline is a float checked by the worker's deadline wheel (router/deadlines.py):
  nothing to cancel; a finished attempt has dropped its stream and connection by then.
"""
from __future__ import annotations

from remora.proxy.upstream.outlier import Result
from remora.proxy.upstream.seams import AttemptFailure

PENDING_HIGH_WATER = 64 << 10  # request bytes buffered before the connection is ready
NOTHING = ()                   # an empty body list, shared: most requests never buffer a byte

# Lifecycle of an attempt: built (it may buffer body bytes already), asked the pool,
# carrying its request on a connection, ended.
NEW, WAITING, SENDING, DONE = range(4)


class UpstreamRequest:
    """One attempt: a connection from the pool, the request on it, the response back."""

    __slots__ = ("stream", "cluster", "pool", "conn", "state", "pending", "pending_bytes",
                 "holding", "started_at", "try_deadline", "per_try", "wheel", "downstream_paused")

    def __init__(self, stream, per_try: float, wheel, pending: list | tuple = NOTHING) -> None:
        self.stream = stream
        self.per_try = per_try          # seconds (0: none), armed when the request is sent
        if per_try:
            self.wheel = wheel          # the worker's per-try DeadlineWheel
        self.conn = None
        self.state = NEW
        self.pending = pending          # body bytes waiting for the connection
        if pending:
            self.pending_bytes = sum(map(len, pending))   # else written with the first piece
        self.holding = False            # this attempt holds the client (on_upstream_above_high_watermark)
        self.downstream_paused = False  # the client is slow: read the upstream only when it catches up
        # Written when known: cluster and pool (start), started_at (the loop time the
        # request went out) and try_deadline (on_pool_ready).

    # -- asking the pool ---------------------------------------------------------------
    def start(self, cluster, pool, fresh: bool) -> None:
        """Ask `pool` for a connection (`fresh`: never an idle one); `cluster` is the
        request's snapshot of the pool's cluster (stats, timeouts, outlier detection)."""
        self.cluster = cluster
        self.pool = pool
        self.state = WAITING
        pool.request(self, self.stream.up_authority, fresh)

    def on_pool_ready(self, conn, reused: bool) -> None:
        if self.state != WAITING:
            conn.release(True)   # cancelled while it was being opened: keep it for others
            return
        self.state = SENDING
        self.conn = conn
        stream = self.stream
        pool = conn.pool
        if pool is not self.pool:
            # A connection handed over from another endpoint of the cluster: follow it.
            self.pool = pool
            stream.on_upstream_host_selected(pool.endpoint)
        stream.peer_id = conn.peer_id
        if self.downstream_paused:
            conn.set_reading(False)
        now = self.started_at = pool.loop.time()
        head = stream.head
        conn.start_request(self, stream, stream.up_method, stream.up_path, stream.up_authority,
                           stream.up_headers, stream.up_added, stream.up_unique, head.content_length, head.chunked,
                           head.upgrade, head.method == b"HEAD")
        if self.per_try:
            self.try_deadline = now + self.per_try
            self.wheel.add(self.try_deadline, self)
        detector = self.cluster.detector
        if detector.split:
            detector.report(pool.endpoint, Result.LOCAL_ORIGIN_SUCCESS)
        pending = self.pending
        if pending:
            chunked = head.chunked
            for piece in pending:
                conn.send_body(piece, chunked)
            self.pending = NOTHING
        if stream.request_done and head.has_body:
            conn.end_body(head.chunked, stream.request_trailers)
        if self.holding:
            self._let_go()

    def on_pool_failure(self, failure: AttemptFailure, detail: str) -> None:
        if self.state == WAITING:
            stream = self.stream
            self._end()
            stream.on_attempt_failed(failure, detail)

    # -- request body from the stream ----------------------------------------------------
    def send_body(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.send_body(data, self.stream.head.chunked)
            return
        if self.pending:
            self.pending.append(data)
            self.pending_bytes += len(data)
        else:
            self.pending = [data]
            self.pending_bytes = len(data)
        if self.pending_bytes > PENDING_HIGH_WATER and not self.holding:
            self.holding = True
            self.stream.on_upstream_above_high_watermark()

    def end_body(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.end_body(self.stream.head.chunked, self.stream.request_trailers)

    def set_downstream_paused(self, paused: bool) -> None:
        """The client is slow (or caught up): stop (or resume) reading the upstream."""
        self.downstream_paused = paused
        conn = self.conn
        if conn is not None:
            conn.set_reading(not paused)

    # -- from the connection -------------------------------------------------------------
    def on_write_paused(self, paused: bool) -> None:
        """The connection's socket buffer is full (or drained): hold (or release) the client."""
        if paused:
            if not self.holding:
                self.holding = True
                self.stream.on_upstream_above_high_watermark()
        elif self.holding:
            self._let_go()

    def on_read_end(self) -> None:
        self.stream.on_upstream_read_end()

    def on_complete(self, keep_alive: bool) -> None:
        if self.state != SENDING:
            return
        conn, self.conn = self.conn, None
        stream = self.stream
        # A connection whose request was not fully sent cannot carry another one.
        conn.release(keep_alive and stream.request_done)
        self.state = DONE         # _end, inlined: this is every response's path
        if self.holding:
            self._let_go()
        if self.per_try:
            self.try_deadline = 0.0
            self.stream = None
        stream.on_upstream_end()

    def on_connection_failed(self, failure: AttemptFailure, detail: str) -> None:
        if self.state == SENDING:
            self.conn = None
            stream = self.stream
            self._end()
            stream.on_attempt_failed(failure, detail)

    def on_upgraded(self, conn, resp, rest: bytes) -> None:
        self.conn = None
        stream = self.stream
        self._end()
        stream.on_upstream_upgraded(conn, resp, rest)

    def on_per_try_timeout(self) -> None:
        """Called by the deadline wheel once try_deadline passed (router/deadlines.py)."""
        if self.state != SENDING:
            return
        stream = self.stream
        self.cancel()
        self.cluster.stats.upstream_rq_per_try_timeout += 1
        stream.on_attempt_failed(AttemptFailure.PER_TRY_TIMEOUT, "upstream request timeout")

    # -- ending ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """The stream drops this attempt: leave the queue, close the connection, let the client go."""
        state = self.state
        if state == DONE:
            return
        if state == WAITING:
            self.pool.cancel(self)
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()   # its response is unread: never reused
        self._end()

    def _end(self) -> None:
        """Done: release the client; with a per-try deadline armed, drop the stream too
        (the deadline wheel keeps this object until the deadline, not the request)."""
        self.state = DONE
        if self.holding:
            self._let_go()
        if self.per_try:
            self.try_deadline = 0.0
            self.stream = None

    def _let_go(self) -> None:
        self.holding = False
        self.stream.on_upstream_below_low_watermark()
