"""One request/response exchange, independent of the downstream codec: the router
(Envoy's router.h filter) and the request record.

The downstream codec (HTTP/1.1 now, HTTP/2 later) hands an Exchange a RequestHead, body
chunks and an end; the Exchange applies faults, picks the route destination and endpoint,
rewrites the request, and runs one UpstreamRequest per attempt (upstream/upstream_request.py,
which gets the connection from the pool and carries the request). It hears back through
the UpstreamCallbacks of upstream/seams.py and decides: forward the response, retry
(RetryState, router/retry_state.py), or answer locally. It fills the request record (the
Exchange is a RequestInfo: status, flags, bytes, timings, upstream host, peers, trace)
that access log, Istio metrics and tracing read when it ends. It talks back to the codec
only through the ResponseSink methods: send_response_head, send_response_body, flush,
end_response, send_local_reply, abort, pause_reading, resume_reading, start_tunnel.

Rules:
- Every exchange ends exactly once (`_finish`), with a response, a local reply or an abort;
  its attempt in flight, if any, is cancelled then.
- What telemetry needs lives in the RequestInfo slots, and nowhere else on the Exchange.
- The request body is kept for replay up to --retry-buffer-bytes (1 MiB); past that it is
  streamed only, and the request can no longer be resent (retry_or_shadow_abandoned).
- A pooled connection that closes before any response byte was read is the keep-alive
  race: the request is resent once on a fresh connection when its body is replayable.
- Once a response byte went downstream, an upstream failure can only abort the
  downstream connection (the client sees a truncated response, never a second head).
- Overflow (a full pending queue) is never retried: 503 UO with x-envoy-overloaded.
"""
from __future__ import annotations

from remora.proxy.codec.http1 import FIRST_ATTEMPT
from remora.proxy.codec.message import RequestHead, ResponseHead
from remora.proxy.router.retry import Failure
from remora.proxy.router.retry_state import RetryState
from remora.proxy.telemetry.access_log import join_flags
from remora.proxy.telemetry.request_info import RequestInfo
from remora.proxy.telemetry.tracing import begin as begin_trace
from remora.proxy.upstream.outlier import Result
from remora.proxy.upstream.seams import AttemptFailure
from remora.proxy.upstream.upstream_request import UpstreamRequest

NOT_CONNECTED = b"upstream connect error or disconnect/reset before headers. reset reason: "
# How a failed attempt is retried and answered: (retry condition, status, body, flag).
FAILURE_REPLIES = {
    AttemptFailure.CONNECT_FAILURE: (Failure.CONNECT_FAILURE, 503, NOT_CONNECTED, "UF"),
    AttemptFailure.CONNECTION_TERMINATION: (Failure.RESET, 503, NOT_CONNECTED + b"connection termination", "UC"),
    AttemptFailure.STALE_CONNECTION: (Failure.RESET, 503, NOT_CONNECTED + b"connection termination", "UC"),
    AttemptFailure.PROTOCOL_ERROR: (Failure.RESET, 502, b"upstream sent an invalid HTTP response", "UPE"),
    AttemptFailure.PER_TRY_TIMEOUT: (Failure.PER_TRY_TIMEOUT, 504, b"upstream request timeout", "UT"),
}


class Exchange(RequestInfo):
    """The lifecycle of one proxied request, and its request record.

    The Exchange *is* its RequestInfo (the base class): the record's fields are the ones
    the exchange carries anyway, written once, with no second object per request and no
    indirection on the hot path. Consumers are handed the exchange as a RequestInfo and
    read only the record's slots (tests/unit/test_request_info.py feeds them a bare one).
    """

    __slots__ = (
        "sink", "listener", "block", "port", "dest", "endpoint", "upstream", "replay",
        "request_done", "response_started", "finished", "up_added", "race_retried", "up_method",
        "up_path", "up_authority", "up_headers", "timer", "abort_status", "retry_state", "deadline",
    )

    def __init__(self, sink, head: RequestHead, listener, route, block, port: int) -> None:
        self.sink = sink
        self.listener = listener
        self.block = block
        self.port = port
        self.dest = None
        self.endpoint = None
        self.upstream: UpstreamRequest | None = None   # the attempt in flight
        self.replay: list[bytes] | tuple | None = ()   # the body kept for a resend
        self.request_done = not head.has_body and head.upgrade is None
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
        self.race_retried = False
        self.timer = None              # the fault delay, when one is drawn
        self.abort_status = 0
        self.retry_state: RetryState | None = None   # made at the first retriable failure
        self.deadline = 0.0            # loop time of the route timeout (0: none)

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
            self.listener.deadlines.route.add(self.deadline, self.sink)

    def on_route_timeout(self) -> None:
        if self.finished:
            return
        self.cluster.stats.upstream_rq_timeout += 1
        self._drop_attempt()     # a timed-out connection is never returned to the pool
        self._endpoint_done(error=True)
        if self.response_started:
            self.add_flag("UT")
            self._finish()
            self.sink.abort(self)
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
        """Start an attempt at an endpoint the failed attempts did not use, if one is healthy."""
        cluster = self.cluster
        retry_state = self.retry_state
        ep = cluster.pick(self._hash_key() if cluster.hash_policy is not None else None,
                          retry_state.tried if retry_state is not None else ())
        if ep is None or (ep.ejected and not cluster.balancer.panic):
            # Envoy: with every host ejected and no panic, there is no healthy upstream.
            cluster.stats.upstream_cx_none_healthy += 1
            self.local_reply(503, b"no healthy upstream", "UH")
            return
        self.endpoint = ep
        ep.active_requests += 1
        ep.total_requests += 1
        self.upstream_host = ep.key
        attempt = self.upstream
        if attempt is None:
            attempt = self.upstream = self._new_attempt(())
        attempt.start(cluster, ep.pool, fresh or self.head.upgrade is not None)

    def _new_attempt(self, pending) -> UpstreamRequest:
        attempt = UpstreamRequest(self, self.route.retry_policy.per_try_timeout,
                                  self.listener.deadlines.per_try, pending)
        if self.sink.write_paused:
            attempt.set_downstream_paused(True)   # the client is still slow from the previous response
        return attempt

    def _overflow(self) -> None:
        """Circuit breaker overflow: fail fast, as Envoy does (503 UO, x-envoy-overloaded)."""
        self.local_reply(503, NOT_CONNECTED + b"overflow", "UO", [(b"x-envoy-overloaded", b"true")])

    def _drop_attempt(self) -> None:
        attempt = self.upstream
        if attempt is not None:
            self.upstream = None
            attempt.cancel()

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
        attempt = self.upstream
        if attempt is None:
            if self.retry_state is not None and self.retry_state.in_backoff():
                return                 # the retry resends the replay, this included
            # Not routed yet (a fault delay): the attempt-to-be buffers it.
            attempt = self.upstream = self._new_attempt(())
        attempt.send_body(data)

    def on_request_end(self) -> None:
        self.request_done = True
        if self.dest is not None:
            self._arm_timeout()
        attempt = self.upstream
        if attempt is not None and not self.finished and self.head.has_body:
            attempt.end_body()

    def downstream_write_paused(self, paused: bool) -> None:
        """The client is slow (or caught up): stop (or resume) reading the upstream."""
        attempt = self.upstream
        if attempt is not None:
            attempt.set_downstream_paused(paused)

    # -- UpstreamCallbacks: what the attempt reports ----------------------------------------
    def on_upstream_host_selected(self, endpoint) -> None:
        self._endpoint_done(error=False)
        self.endpoint = endpoint
        endpoint.active_requests += 1
        endpoint.total_requests += 1
        self.upstream_host = endpoint.key

    def on_upstream_above_high_watermark(self) -> None:
        self.sink.pause_reading()

    def on_upstream_below_low_watermark(self) -> None:
        self.sink.resume_reading()

    def on_upstream_headers(self, resp: ResponseHead) -> None:
        status = resp.status
        detector = self.cluster.detector
        if detector.enabled:
            detector.report_status(self.endpoint, status)
        if status >= 300 and self._retry(None, status):
            # A retriable answer is never forwarded: drop the connection, try again.
            self._drop_attempt()
            self._endpoint_done(error=status >= 500)
            return
        if self.retry_state is not None and self.retry_state.exhausted:
            self.add_flag("URX")
        upstream_time = self.upstream_time = b"%d" % int(
            (self.listener.loop.time() - self.upstream.started_at) * 1000)
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
        self.sink.send_response_head(self, resp.status, resp.reason, headers,
                                     resp.content_length, resp.chunked)

    def on_upstream_data(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        self.sink.send_response_body(data)

    def on_upstream_read_end(self) -> None:
        self.sink.flush()

    def on_upstream_end(self) -> None:
        self.upstream = None
        status = self.status
        self._endpoint_done(error=status >= 500)
        if status < 500 and self.retry_state is not None and self.retry_state.retries:
            self.cluster.stats.upstream_rq_retry_success += 1
        self._finish()
        self.sink.end_response(self)

    def on_attempt_failed(self, failure: AttemptFailure, detail: str) -> None:
        """The attempt ended without a complete response: retry, resend, or give up."""
        self.upstream = None
        if failure is AttemptFailure.OVERFLOW:
            self._overflow()           # never retried
            return
        stats = self.cluster.stats
        if failure is AttemptFailure.STALE_CONNECTION:
            if not self.race_retried and self.replay is not None and not self.response_started:
                # The keep-alive race: the server closed an idle connection as we reused it.
                self.race_retried = True
                self._endpoint_done(error=False)
                self.upstream = self._new_attempt(list(self.replay))
                self._attempt(fresh=True)
                return
        if failure is AttemptFailure.STALE_CONNECTION or failure is AttemptFailure.CONNECTION_TERMINATION:
            stats.upstream_rq_rx_reset += 1
        elif failure is AttemptFailure.PROTOCOL_ERROR:
            stats.upstream_cx_protocol_error += 1
        condition, status, body, flag = FAILURE_REPLIES[failure]
        if failure is AttemptFailure.CONNECT_FAILURE:
            body += detail.encode()
        ep = self.endpoint
        detector = self.cluster.detector
        if ep is not None and detector.enabled:
            detector.report(ep, Result.LOCAL_ORIGIN_FAILURE)
        if self._retry(condition, 0):
            self._endpoint_done(error=True)
            return
        if self.retry_state is not None and self.retry_state.exhausted:
            flag += ",URX"
        self._fail(status, body, flag)

    def on_upstream_upgraded(self, conn, resp: ResponseHead, rest: bytes) -> None:
        """The upstream accepted the upgrade: splice the two connections together."""
        self.upstream = None
        self.status = 101
        self.peer_metadata = resp.peer_metadata
        self.response_started = True
        self.cluster.stats.count_status(101)
        self._endpoint_done(error=False)
        self._finish()
        self.sink.start_tunnel(self, conn, resp, rest)

    # -- retries -------------------------------------------------------------------------------
    def _retry(self, failure: Failure | None, status: int) -> bool:
        """Schedule another attempt when the route's policy, the budget and the body allow it."""
        policy = self.route.retry_policy
        if self.response_started or not policy.enabled:
            return False
        cluster = self.cluster
        retry_state = self.retry_state
        if retry_state is None:
            retry_state = self.retry_state = RetryState(policy, cluster.circuit.retry_budget)
        if not retry_state.should_retry(failure, status, self.replay is not None, cluster.stats,
                                        len(cluster.circuit.pending)):
            return False
        # The mesh header lines end with the attempt count (Listener.added_request_headers).
        self.up_added = (self.up_added[:-len(FIRST_ATTEMPT)]
                         + b"x-envoy-attempt-count: %d\r\n" % (retry_state.retries + 1))
        retry_state.back_off(self.listener.loop, self.endpoint, self._retry_now)
        return True

    def _retry_now(self) -> None:
        self.retry_state.backoff_over()
        if self.finished:
            return
        if self.replay is None:
            # The body grew past the replay limit during the backoff: it cannot be resent.
            self.cluster.stats.retry_or_shadow_abandoned += 1
            self._fail(503, NOT_CONNECTED + b"connection termination", "UC")
            return
        self.upstream = self._new_attempt(list(self.replay))
        self._attempt(fresh=False)

    def _fail(self, status: int, body: bytes, flag: str) -> None:
        """An upstream failure: a local reply if nothing went down yet, else cut the client off."""
        self._endpoint_done(error=True)
        if self.response_started:
            self.add_flag(flag)
            self._finish()
            self.sink.abort(self)
        else:
            self.local_reply(status, body, flag)

    # -- downstream events -------------------------------------------------------------------
    def on_downstream_closed(self) -> None:
        """The client went away: stop everything and log DC."""
        if self.finished:
            return
        self._drop_attempt()
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
        self._drop_attempt()
        self._endpoint_done(error=False)
        self.add_flag("SI")
        self._finish()

    # -- endings -----------------------------------------------------------------------------
    def local_reply(self, status: int, body: bytes, flag: str, extra: list | None = None) -> None:
        """Answer from the proxy itself (Envoy's local reply), then finish."""
        if self.finished:
            return
        self._drop_attempt()
        self._endpoint_done(error=False)
        self.add_flag(flag)
        self.status = status
        self.bytes_sent = len(body)
        if self.head.peer_metadata is not None and self.listener.reply_header is not None:
            extra = [*(extra or ()), self.listener.reply_header]
        self._finish()
        self.sink.send_local_reply(self, status, body, extra)

    def _endpoint_done(self, error: bool) -> None:
        ep = self.endpoint
        if ep is not None:
            ep.active_requests -= 1
            if error:
                ep.errors += 1
            self.endpoint = None

    def _finish(self) -> None:
        self.finished = True
        if self.upstream is not None:
            self._drop_attempt()   # lets go of the client if the attempt held it
        if self.retry_state is not None:
            self.retry_state.release()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.cluster is not None:
            self.cluster.stats.upstream_rq_active -= 1
        self.listener.exchange_finished(self)
