"""One request/response exchange, independent of the downstream codec.

The downstream codec (HTTP/1.1 now, HTTP/2 later) hands an Exchange a RequestHead, body
chunks and an end; the Exchange picks the route destination and endpoint, gets a pooled
or new upstream connection, streams the body up and the response down, and fills the
request record (the Exchange is a RequestInfo: status, flags, bytes, timings, upstream
host, peers, trace) that access log, Istio metrics and tracing read when it ends. It is
the codec's RouterStream and talks back to the codec only through its DownstreamStream
(`sink`); both are declared in codec/seams.py, so it never knows which codec it serves.

Rules:
- Every exchange ends exactly once (`_finish`), with a response, a local reply or an abort.
- Its lifecycle flags are its own: `request_done` (the codec delivered the request end),
  `response_started`, `finished`; the codec owns the wire state and reads only `finished`.
- Holding the client (`sink.pause_reading`: 64 KiB wait for a connection, or the upstream
  socket is full) is idempotent and owned by the codec's flow control: a new attempt
  releases it as it resends the buffered body, and the codec releases it when the
  response completes, so a finished exchange never holds the client.
- What telemetry needs lives in the RequestInfo slots, and nowhere else on the Exchange.
- The request body is kept for replay up to --retry-buffer-bytes (1 MiB); past that it is
  streamed only, and the request can no longer be resent (retry_or_shadow_abandoned).
- A reused connection that closes before any response byte was read is the keep-alive
  race: the request is resent once on a fresh connection when its body is replayable.
- Once a response byte went downstream, an upstream failure can only abort the
  downstream connection (the client sees a truncated response, never a second head).
"""
from __future__ import annotations

from remora.proxy.codec.http1 import FIRST_ATTEMPT
from remora.proxy.codec.message import RequestHead, ResponseHead
from remora.proxy.codec.seams import DownstreamStream
from remora.proxy.upstream.outlier import Result
from remora.proxy.router.retry import Failure, backoff_delay
from remora.proxy.telemetry.request_info import RequestInfo
from remora.proxy.telemetry.access_log import join_flags
from remora.proxy.telemetry.tracing import begin as begin_trace

PENDING_HIGH_WATER = 64 << 10  # request bytes buffered before the upstream is ready
NOTHING = ()                   # an empty body list, shared: most requests never buffer a byte


class Exchange(RequestInfo):
    """The lifecycle of one proxied request, and its request record.

    The Exchange *is* its RequestInfo (the base class): the record's fields are the ones
    the exchange carries anyway, written once, with no second object per request and no
    indirection on the hot path. Consumers are handed the exchange as a RequestInfo and
    read only the record's slots (tests/unit/test_request_info.py feeds them a bare one).
    """

    __slots__ = (
        "sink", "listener", "block", "port", "dest", "endpoint",
        "conn", "pending", "pending_bytes", "replay", "request_done", "response_started",
        "finished", "up_added", "upstream_start", "reused", "race_retried", "up_method",
        "up_path", "up_authority", "up_headers", "timer", "abort_status",
        "waiting_in", "retries", "tried", "try_timer", "retry_acquired", "exhausted", "deadline",
        "try_deadline",
    )

    def __init__(self, sink: DownstreamStream, head: RequestHead, listener, route, block, port: int) -> None:
        self.sink = sink
        self.listener = listener
        self.block = block
        self.port = port
        self.dest = None
        self.endpoint = None
        self.conn = None
        self.pending: list[bytes] | tuple = NOTHING   # body bytes waiting for a connection
        self.pending_bytes = 0
        self.replay: list[bytes] | tuple | None = NOTHING   # the body kept for a resend
        self.request_done = False      # on_request_end (before start for a request without a body)
        self.response_started = False
        self.finished = False
        # The request record (RequestInfo's slots, written here rather than through its
        # __init__ to save a call per request; test_request_info checks none is missed).
        # It starts at the read that completed the head; the proxy's span is drawn now.
        self.head = head
        self.route = route
        self.started_at = self.ended_at = sink.last_activity
        self.status = 0
        self.flags = "-"
        self.details = "-"
        self.bytes_received = 0
        self.bytes_sent = 0
        self.upstream_time = b""
        self.upstream_host = "-"
        self.cluster = None
        self.peer_metadata = None
        self.peer_id = None
        self.trace = begin_trace(head.trace_in, listener.sample_ratio)
        self.upstream_start = 0.0
        self.reused = False
        self.race_retried = False
        self.timer = None              # the fault delay, when one is drawn
        self.abort_status = 0
        self.waiting_in = None         # the Circuit whose pending queue holds us
        self.retries = 0               # retries started so far (attempt = retries + 1)
        self.tried: list | None = None # endpoints of failed attempts (a retry avoids them)
        self.try_timer = None          # per-try timeout, or the backoff before a retry
        self.retry_acquired = False    # holding a slot of the cluster's retry budget
        self.exhausted = False         # a retriable failure came after the last retry (URX)
        self.deadline = 0.0            # loop time of the route timeout (0: none)
        self.try_deadline = 0.0        # loop time of this attempt's per-try timeout (0: none)

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Apply the route's fault injection, then route the request."""
        route = self.route
        if route is None:
            self.local_reply(404, b"", "NR")
            return
        if route.fault is not None:
            delay, self.abort_status = route.fault.draw()
            if delay:
                self.add_flag("DI")
                self.timer = self.listener.loop.call_later(delay, self._after_delay)
                return
            if self.abort_status:
                self._fault_abort()
                return
        self._route()

    def _after_delay(self) -> None:
        self.timer = None
        if self.finished:
            return
        if self.abort_status:
            self._fault_abort()
        else:
            self._route()

    def _fault_abort(self) -> None:
        """Envoy's fault abort: the request never reaches the upstream."""
        self.local_reply(self.abort_status, b"fault filter abort", "FI")

    def add_flag(self, flag: str) -> None:
        """Add a response flag (several are joined in Envoy's order)."""
        self.flags = flag if self.flags == "-" else join_flags([*self.flags.split(","), flag])

    def _arm_timeout(self) -> None:
        """Start the route timeout once the whole request is in (Envoy's rule)."""
        timeout = self.route.timeout
        if timeout and not self.deadline and not self.finished:
            self.deadline = self.listener.loop.time() + timeout
            self.listener.worker.deadlines.route.add(self.deadline, self.sink)

    def on_route_timeout(self) -> None:
        if self.finished:
            return
        self.cluster.stats.upstream_rq_timeout += 1
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()     # a timed-out connection is never returned to the pool
        self._endpoint_done(error=True)
        if self.response_started:
            self.add_flag("UT")
            self._finish()
            self.sink.abort()
        else:
            self.local_reply(504, b"upstream request timeout", "UT")

    def _route(self) -> None:
        """Pick the destination and send the request on its way."""
        route, head = self.route, self.head
        if self.request_done:
            self._arm_timeout()
        dest = self.dest = route.choose()
        cluster = self.cluster = dest.cluster_for(self.port)
        stats = cluster.stats
        stats.upstream_rq_total += 1
        stats.upstream_rq_active += 1
        if stats.upstream_rq_active > cluster.circuit.max_requests:
            stats.upstream_rq_pending_overflow += 1
            self._overflow()
            return
        path = head.path
        if route.rewrite_uri is not None or route.regex_rewrite is not None:
            path = route.rewrite_path(path, self.block)
        self.up_path = path
        self.up_method = head.method
        self.up_authority = route.rewrite_authority or head.authority
        headers = head.headers
        if route.request_ops is not None:
            headers = route.request_ops.apply(headers)
        if dest.request_ops is not None:
            headers = dest.request_ops.apply(headers)
        self.up_headers = headers
        self.up_added = self.listener.added_request_headers(head, cluster, self.trace)
        self._attempt(fresh=False)

    def _hash_key(self) -> bytes | None:
        policy = self.cluster.hash_policy
        if policy is None:
            return None
        head = self.head
        if policy.header is not None:
            return head.header(policy.header)
        if policy.cookie is not None:
            cookies = head.header(b"cookie") or b""
            for part in cookies.split(b";"):
                name, _, value = part.strip().partition(b"=")
                if name == policy.cookie:
                    return value
            return None
        if policy.query_param is not None:
            from urllib.parse import parse_qsl
            return dict(parse_qsl(head.query())).get(policy.query_param)
        return head.peer_ip if policy.source_ip else None

    def _attempt(self, fresh: bool) -> None:
        cluster = self.cluster
        ep = cluster.pick(self._hash_key() if cluster.hash_policy is not None else None,
                          self.tried or ())
        if ep is None or (ep.ejected and not cluster.balancer.panic):
            # Envoy: with every host ejected and no panic, there is no healthy upstream.
            cluster.stats.upstream_cx_none_healthy += 1
            self.local_reply(503, b"no healthy upstream", "UH")
            return
        self.endpoint = ep
        ep.active_requests += 1
        ep.total_requests += 1
        self.upstream_host = ep.key
        conn = None if fresh or self.head.upgrade is not None else ep.pool.acquire(self.up_authority)
        if conn is not None:
            self.reused = True
            self._send_on(conn)
            return
        self.reused = False
        circuit = cluster.circuit
        if circuit.open >= circuit.max_connections:
            # Envoy: a request that needs a connection over max_connections waits, in a
            # queue bounded by max_pending_requests; past that it fails fast with UO.
            cluster.stats.upstream_cx_overflow += 1
            if len(circuit.pending) >= circuit.max_pending:
                cluster.stats.upstream_rq_pending_overflow += 1
                self._overflow()
                return
            cluster.stats.upstream_rq_pending_total += 1
            circuit.pending.append(self)
            self.waiting_in = circuit
            return
        ep.pool.connect(self, cluster)

    def _overflow(self) -> None:
        """Circuit breaker overflow: fail fast, as Envoy does (503 UO, x-envoy-overloaded)."""
        self.local_reply(503, b"upstream connect error or disconnect/reset before headers. "
                              b"reset reason: overflow", "UO", [(b"x-envoy-overloaded", b"true")])

    def on_pooled_connection(self, conn) -> None:
        """Leaving the pending queue with a connection another request just released."""
        self.waiting_in = None
        ep = conn.pool.endpoint
        if ep is not self.endpoint:
            # The free connection may be to another endpoint of the cluster: follow it.
            self._endpoint_done(error=False)
            self.endpoint = ep
            ep.active_requests += 1
            ep.total_requests += 1
            self.upstream_host = ep.key
        self.reused = True
        self._send_on(conn)

    def on_connection_slot(self) -> None:
        """Leaving the pending queue because a connection closed: open our own."""
        self.waiting_in = None
        self.endpoint.pool.connect(self, self.cluster)

    # -- upstream connection events -----------------------------------------------------
    def on_connected(self, conn) -> None:
        if self.finished:
            conn.release(True, self.cluster.idle_timeout, self.listener.loop.time())
            return
        self._send_on(conn)

    def on_connect_failed(self, reason: str) -> None:
        if self.finished:
            return
        self._attempt_failed(Failure.CONNECT_FAILURE, 503, b"upstream connect error or disconnect/"
                             b"reset before headers. reset reason: " + reason.encode(), "UF")

    def _send_on(self, conn) -> None:
        self.conn = conn
        self.peer_id = conn.peer_id
        if self.sink.write_paused:
            conn.set_reading(False)   # the client is still slow from the previous response
        self.upstream_start = self.listener.loop.time()
        head = self.head
        conn.send_request_head(self, self.up_method, self.up_path, self.up_authority,
                               self.up_headers, self.up_added, head.content_length, head.chunked,
                               head.upgrade, head.method == b"HEAD")
        per_try = self.route.retry_policy.per_try_timeout
        if per_try:
            self.try_deadline = self.upstream_start + per_try
            self.listener.worker.deadlines.per_try.add(self.try_deadline, self.sink)
        detector = self.cluster.detector
        if detector.split:
            detector.report(self.endpoint, Result.LOCAL_ORIGIN_SUCCESS)
        chunked = head.chunked
        pending = self.pending
        if pending:
            # A hold for these bytes, or for an earlier attempt's full socket (a dropped
            # attempt never sends resume_writing; its retry always resends a body), ends
            # here: released first, so that a socket these writes fill holds the client again.
            self.sink.resume_reading()
            for piece in pending:
                conn.send_body(piece, chunked)
            self.pending = NOTHING
            self.pending_bytes = 0
        if self.request_done and head.has_body:
            conn.end_body(chunked)

    # -- request body from downstream --------------------------------------------------------
    def on_request_body(self, data: bytes) -> None:
        self.bytes_received += len(data)
        replay = self.replay
        if replay is not None:
            if self.bytes_received > self.listener.replay_limit:
                self.replay = None     # too long to resend: stream only
            elif replay:
                replay.append(data)
            else:
                self.replay = [data]
        if self.finished:
            return
        conn = self.conn
        if conn is not None:
            conn.send_body(data, self.head.chunked)
        else:
            pending = self.pending
            if pending:
                pending.append(data)
            else:
                self.pending = [data]
            self.pending_bytes += len(data)
            if self.pending_bytes > PENDING_HIGH_WATER:
                self.sink.pause_reading()

    def on_request_end(self) -> None:
        self.request_done = True
        if self.dest is not None:
            self._arm_timeout()
        if self.conn is not None and not self.finished and self.head.has_body:
            self.conn.end_body(self.head.chunked)

    def upstream_write_paused(self, paused: bool) -> None:
        """The upstream socket buffer is full (or drained): hold (or resume) the client.

        The connection may be dropped before it drains (a retry, a per-try timeout): its
        resume_writing never comes, and the next attempt (_send_on) or the end of the
        response (the codec) releases the client.
        """
        if paused:
            self.sink.pause_reading()
        else:
            self.sink.resume_reading()

    def downstream_write_paused(self, paused: bool) -> None:
        """The client is slow (or caught up): stop (or resume) reading the upstream."""
        conn = self.conn
        if conn is not None:
            conn.set_reading(not paused)

    # -- response from upstream ---------------------------------------------------------------
    def on_response_head(self, resp: ResponseHead) -> None:
        if self.finished:
            return
        status = resp.status
        detector = self.cluster.detector
        if detector.enabled:
            detector.report_status(self.endpoint, status)
        if status >= 300 and self._retry(status=status):
            # A retriable answer is never forwarded: drop the connection, try again.
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.close()
            self._endpoint_done(error=status >= 500)
            return
        if self.exhausted:
            self.add_flag("URX")
        now = self.listener.loop.time()
        upstream_time = self.upstream_time = b"%d" % int((now - self.upstream_start) * 1000)
        self.response_started = True
        self.status = status
        self.cluster.stats.count_status(status)
        headers = resp.headers
        if self.route.response_ops is not None:
            headers = self.route.response_ops.apply(headers)
        if self.dest.response_ops is not None:
            headers = self.dest.response_ops.apply(headers)
        headers.append((b"x-envoy-upstream-service-time", upstream_time))
        self.peer_metadata = resp.peer_metadata
        if self.head.peer_metadata is not None and self.listener.reply_header is not None:
            headers.append(self.listener.reply_header)    # a mesh peer asked: tell it who we are
        self.sink.send_response_head(resp.status, resp.reason, headers, resp.content_length)

    def on_response_body(self, data: bytes) -> None:
        if not self.finished:
            self.bytes_sent += len(data)
            self.sink.send_response_body(data)

    def on_response_end(self, keep_alive: bool) -> None:
        if self.finished:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            # A connection whose request body was not fully sent cannot be reused.
            conn.release(keep_alive and self.request_done, self.cluster.idle_timeout,
                         self.listener.loop.time())
        status = self.status
        self._endpoint_done(error=status >= 500)
        if self.retries and status < 500:
            self.cluster.stats.upstream_rq_retry_success += 1
        self._finish()
        self.sink.end_response()

    def on_upstream_lost(self, got_bytes: bool) -> None:
        """The upstream connection closed before the response completed."""
        if self.finished:
            return
        self.conn = None
        if (not got_bytes and self.reused and not self.race_retried
                and self.replay is not None and not self.response_started):
            # The keep-alive race: the server closed an idle connection as we reused it.
            self.race_retried = True
            self._endpoint_done(error=False)
            self.pending = list(self.replay)
            self.pending_bytes = sum(map(len, self.pending))
            self._attempt(fresh=True)
            return
        self.cluster.stats.upstream_rq_rx_reset += 1
        self._attempt_failed(Failure.RESET, 503, b"upstream connect error or disconnect/reset "
                             b"before headers. reset reason: connection termination", "UC")

    def on_upstream_protocol_error(self, detail: str) -> None:
        if self.finished:
            return
        self.conn = None
        self.cluster.stats.upstream_cx_protocol_error += 1
        self._attempt_failed(Failure.RESET, 502, b"upstream sent an invalid HTTP response", "UPE")

    def on_per_try_timeout(self) -> None:
        """This attempt's per-try deadline passed (the deadline wheel checked it is ours)."""
        self.try_deadline = 0.0
        if self.finished or self.try_timer is not None:
            return   # finished, or waiting out a backoff: no attempt in flight
        self.cluster.stats.upstream_rq_per_try_timeout += 1
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._attempt_failed(Failure.PER_TRY_TIMEOUT, 504, b"upstream request timeout", "UT")

    # -- retries -------------------------------------------------------------------------------
    def _attempt_failed(self, failure: Failure, status: int, body: bytes, flag: str) -> None:
        """This attempt failed: tell outlier detection, then retry or give up."""
        self.try_deadline = 0.0
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        ep = self.endpoint
        detector = self.cluster.detector
        if ep is not None and detector.enabled:
            detector.report(ep, Result.LOCAL_ORIGIN_FAILURE)
        if self._retry(failure=failure):
            self._endpoint_done(error=True)
            return
        if self.exhausted:
            flag += ",URX"
        self._fail(status, body, flag)

    def _retry(self, failure: Failure | None = None, status: int = 0) -> bool:
        """Schedule another attempt when the route's policy, the budget and the body allow it."""
        policy = self.route.retry_policy
        if self.response_started or not policy.enabled:
            return False
        if not (policy.retry_on_failure(failure) if failure is not None
                else policy.retry_on_status(status)):
            return False
        if self.retries >= policy.num_retries:
            self.exhausted = True
            return False
        stats = self.cluster.stats
        if self.replay is None:
            stats.retry_or_shadow_abandoned += 1     # body too long to resend
            return False
        circuit = self.cluster.circuit
        budget = circuit.retry_budget
        if self.retry_acquired:
            budget.release()
            self.retry_acquired = False
        if not budget.try_acquire(stats.upstream_rq_active + len(circuit.pending)):
            stats.upstream_rq_retry_overflow += 1
            return False
        self.retry_acquired = True
        self.retries += 1
        stats.upstream_rq_retry += 1
        # The mesh header lines end with the attempt count (Listener.added_request_headers).
        self.up_added = (self.up_added[:-len(FIRST_ATTEMPT)]
                         + b"x-envoy-attempt-count: %d\r\n" % (self.retries + 1))
        if self.endpoint is not None:
            self.tried = (self.tried or []) + [self.endpoint]
        if self.try_timer is not None:
            self.try_timer.cancel()
        self.try_timer = self.listener.loop.call_later(backoff_delay(self.retries - 1), self._retry_now)
        return True

    def _retry_now(self) -> None:
        self.try_timer = None
        if self.finished:
            return
        self.pending = list(self.replay)
        self.pending_bytes = sum(map(len, self.pending))
        self._attempt(fresh=False)

    def _fail(self, status: int, body: bytes, flag: str) -> None:
        """An upstream failure: a local reply if nothing went down yet, else cut the client off."""
        self._endpoint_done(error=True)
        if self.response_started:
            self.add_flag(flag)
            self._finish()
            self.sink.abort()
        else:
            self.local_reply(status, body, flag)

    def on_upgraded(self, conn, resp: ResponseHead, rest: bytes) -> None:
        """The upstream accepted the upgrade: splice the two connections together."""
        self.conn = None
        self.status = 101
        self.peer_metadata = resp.peer_metadata
        self.response_started = True
        self.cluster.stats.count_status(101)
        self._endpoint_done(error=False)
        self._finish()
        self.sink.start_tunnel(conn, resp, rest)

    # -- downstream events -------------------------------------------------------------------
    def on_downstream_closed(self) -> None:
        """The client went away: stop everything and log DC."""
        if self.finished:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        if self.endpoint is not None:
            self._endpoint_done(error=False)
        self.add_flag("DC")
        self._finish()

    def on_stream_idle_timeout(self) -> None:
        """Envoy's stream idle timeout: 408 "stream timeout" before the response started,
        else the response is cut short; flag SI either way."""
        if self.finished:
            return
        if not self.response_started:
            self.local_reply(408, b"stream timeout", "SI")
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._endpoint_done(error=False)
        self.add_flag("SI")
        self._finish()

    # -- endings -----------------------------------------------------------------------------
    def local_reply(self, status: int, body: bytes, flag: str, extra: list | None = None) -> None:
        """Answer from the proxy itself (Envoy's local reply), then finish."""
        if self.finished:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._endpoint_done(error=False)
        self.add_flag(flag)
        self.status = status
        self.bytes_sent = len(body)
        if self.head.peer_metadata is not None and self.listener.reply_header is not None:
            extra = [*(extra or ()), self.listener.reply_header]
        self._finish()
        self.sink.send_local_reply(status, body, extra)

    def _endpoint_done(self, error: bool) -> None:
        ep = self.endpoint
        if ep is not None:
            ep.active_requests -= 1
            if error:
                ep.errors += 1
            self.endpoint = None

    def _finish(self) -> None:
        self.finished = True
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.retry_acquired:
            self.cluster.circuit.retry_budget.release()
            self.retry_acquired = False
        if self.waiting_in is not None:
            self.waiting_in.pending.remove(self)
            self.waiting_in = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.cluster is not None:
            self.cluster.stats.upstream_rq_active -= 1
        self.listener.exchange_finished(self)
