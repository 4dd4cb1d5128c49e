"""One request/response exchange, independent of the downstream codec: the router
(Envoy's router.h filter) and the request record.

The downstream codec (HTTP/1.1 now, HTTP/2 later) hands an Exchange a RequestHead, body
chunks and an end; the Exchange applies faults, picks the route destination and endpoint,
rewrites the request, and runs one UpstreamRequest per attempt (upstream/upstream_request.py,
which gets the connection from the pool and carries the request). What the attempt
reports (the UpstreamCallbacks of upstream/seams.py) is handled by its base class
UpstreamEvents (upstream_events.py): forward the response, retry, or fail. It fills the request record (the
Exchange is a RequestInfo: status, flags, bytes, timings, upstream host, peers, trace)
that access log, Istio metrics and tracing read when it ends. It is the codec's
RouterStream and talks back to the codec only through its DownstreamStream (`sink`); both
are declared in codec/seams.py, so it never knows which codec it serves.

Rules:
- Every exchange ends exactly once (`_finish`), with a response, a local reply or an abort;
  its attempt in flight, if any, is cancelled then.
- Its lifecycle flags are its own: `request_done` (the codec delivered the request end),
  `response_started`, `finished`; the codec owns the wire state and reads only `finished`.
- Holding the client (`sink.pause_reading`, idempotent, owned by the codec's flow control)
  is the attempt's: it holds while its body waits for a connection or its socket is full
  and lets go when that passes or it ends; the codec releases any hold when the response
  completes, so a finished exchange never holds the client.
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

from logging import DEBUG

from remora.proxy.codec.message import RequestHead
from remora.proxy.codec.seams import DownstreamStream
from remora.proxy.router.grpc import (MessageCounter, effective_timeout, local_reply_trailers,
                                      parse_grpc_timeout)
from remora.proxy.router.retry_state import RetryState
from remora.proxy.router.seams import ExchangeHost
from remora.proxy.router.shadow import send_shadows
from remora.proxy.router.upstream_events import NOT_CONNECTED, UpstreamEvents
from remora.proxy.telemetry.access_log import join_flags
from remora.proxy.telemetry.request_info import RequestInfo
from remora.proxy.telemetry.tracing import begin as begin_trace
from remora.proxy.upstream.upstream_request import UpstreamRequest
from remora.proxy.log_levels import logger

_http_log = logger("http")


class Exchange(UpstreamEvents, RequestInfo):
    """The lifecycle of one proxied request, and its request record.

    The Exchange *is* its RequestInfo (the base class): the record's fields are the ones
    the exchange carries anyway, written once, with no second object per request and no
    indirection on the hot path. Consumers are handed the exchange as a RequestInfo and
    read only the record's slots (tests/unit/test_request_info.py feeds them a bare one).
    """

    __slots__ = (
        "sink", "listener", "block", "port", "dest", "endpoint", "upstream", "replay",
        "request_done", "request_trailers", "response_started", "finished", "up_added", "up_unique",
        "race_retried", "up_method", "up_path", "up_authority", "up_headers", "timer", "abort_status",
        "retry_state", "deadline",
    )

    def __init__(self, sink: DownstreamStream, head: RequestHead, listener: ExchangeHost, route, block,
                 port: int) -> None:
        self.sink = sink
        self.listener = listener
        self.block = block
        self.port = port
        self.dest = None
        self.endpoint = None
        self.upstream: UpstreamRequest | None = None   # the attempt in flight
        self.replay: list[bytes] | tuple | None = ()   # the body kept for a resend
        self.request_done = False      # on_request_end (before start for a request without a body)
        self.request_trailers = None   # on_request_trailers: resent with every attempt's end
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
        if head.grpc:                  # istio_request_messages_total / istio_response_messages_total
            self.request_messages = MessageCounter()
            self.response_messages = MessageCounter()

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Apply the route's fault injection, then route the request."""
        route = self.route
        if route is None:
            self.local_reply(404, b"", "NR")
            return
        if route.cors is not None:       # Envoy's CORS filter runs before faults and the router
            extra = route.cors.preflight_answer(self.head)
            if extra is not None:
                self.details = "cors_preflight"
                self.local_reply(200, b"", "", extra)
                return
        if route.answer is not None:     # directResponse, redirect, httpsRedirect
            status, body, extra = route.answer.reply(self.head)
            self.details = route.answer.details
            self.local_reply(status, body, "", extra)
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
        self.local_reply(self.abort_status, b"fault filter abort", "FI",
                         grpc_status=self.route.fault.abort_grpc)

    def add_flag(self, flag: str) -> None:
        """Add a response flag (several are joined in Envoy's order)."""
        self.flags = flag if self.flags == "-" else join_flags([*self.flags.split(","), flag])

    def _arm_timeout(self) -> None:
        """Start the route timeout once the whole request is in (Envoy's rule)."""
        timeout = self.route.timeout
        if self.head.grpc:        # the call's own deadline caps the route timeout
            grpc_timeout = self.head.grpc_timeout()
            if grpc_timeout is not None:
                timeout = effective_timeout(timeout, parse_grpc_timeout(grpc_timeout))
        if timeout and not self.deadline and not self.finished:
            self.deadline = self.listener.loop.time() + timeout
            self.listener.deadlines.route.add(self.deadline, self.sink.deadline_owner)

    def on_route_timeout(self) -> None:
        if self.finished:
            return
        self.cluster.stats.upstream_rq_timeout += 1
        self._drop_attempt()     # a timed-out connection is never returned to the pool
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
        self.up_added, self.up_unique = self.listener.added_request_headers(head, cluster, self.trace)
        self._attempt(fresh=False)
        if route.mirrors is not None and self.request_done:
            send_shadows(self, route.mirrors)      # a request without a body: whole already

    def _attempt(self, fresh: bool) -> None:
        """Start an attempt at an endpoint the failed attempts did not use, if one is healthy."""
        cluster = self.cluster
        retry_state = self.retry_state
        tried = retry_state.tried if retry_state is not None else ()
        if tried and self.route.retry_policy.retry_remote_localities:
            # retryRemoteLocalities: the retry goes to a locality level not tried yet.
            ep = cluster.pick_elsewhere(cluster.hash_policy.key(self.head) if cluster.hash_policy is not None
                                        else None, tried)
        else:
            ep = cluster.pick(cluster.hash_policy.key(self.head) if cluster.hash_policy is not None else None,
                              tried)
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
            # _new_attempt inlined: this is every request's path.
            attempt = self.upstream = UpstreamRequest(self, self.route.retry_policy.per_try_timeout,
                                                      self.listener.deadlines.per_try)
            if self.sink.write_paused:
                attempt.set_downstream_paused(True)
        # useClientProtocol: a request that came over HTTP/2 goes upstream over HTTP/2.
        pool = ep.h2_pool if cluster.client_protocol and self.head.version == b"2" else ep.pool
        attempt.start(cluster, pool, fresh or self.head.upgrade is not None)

    def _new_attempt(self, pending) -> UpstreamRequest:
        """An attempt not started yet, holding `pending` body bytes (a resend: the replay)."""
        attempt = UpstreamRequest(self, self.route.retry_policy.per_try_timeout,
                                  self.listener.deadlines.per_try, pending)
        if self.sink.write_paused:
            attempt.set_downstream_paused(True)   # the client is still slow from the previous response
        return attempt

    def _overflow(self) -> None:
        """Circuit breaker overflow: fail fast, as Envoy does (503 UO, x-envoy-overloaded)."""
        self.local_reply(503, NOT_CONNECTED + b"overflow", "UO", [(b"x-envoy-overloaded", b"true")])

    def _drop_attempt(self) -> None:
        """Cancel the attempt in flight, if any (its connection is closed, never pooled)."""
        attempt = self.upstream
        if attempt is not None:
            self.upstream = None
            attempt.cancel()

    # -- request body from downstream --------------------------------------------------------
    def on_request_body(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self.head.grpc:
            self.request_messages.feed(data)
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
            if self.route is None:
                return                 # answered 404 (or about to be)
            if self.retry_state is not None and self.retry_state.in_backoff():
                return                 # the retry resends the replay, this included
            # Not routed yet (the end of the head's read, a fault delay): the attempt-to-be buffers it.
            attempt = self.upstream = self._new_attempt(())
        attempt.send_body(data)

    def on_request_trailers(self, trailers: list) -> None:
        self.request_trailers = trailers

    def on_request_end(self) -> None:
        self.request_done = True
        if self.dest is not None:
            self._arm_timeout()
            if self.route.mirrors is not None:
                send_shadows(self, self.route.mirrors)     # the body is whole now
        attempt = self.upstream
        if attempt is not None and not self.finished and self.head.has_body:
            attempt.end_body()

    def downstream_write_paused(self, paused: bool) -> None:
        """The client is slow (or caught up): stop (or resume) reading the upstream."""
        attempt = self.upstream
        if attempt is not None:
            attempt.set_downstream_paused(paused)

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
    def local_reply(self, status: int, body: bytes, flag: str, extra: list | None = None,
                    grpc_status: int | None = None) -> None:
        """Answer from the proxy itself (Envoy's local reply), then finish. A gRPC call (or a
        fault abort with grpcStatus) gets it gRPC-shaped: trailers-only, HTTP 200, grpc-status
        mapped from `status` as Envoy maps it, the body as grpc-message."""
        if self.finished:
            return
        self._drop_attempt()
        self._endpoint_done(error=False)
        if flag:
            self.add_flag(flag)
        if _http_log.isEnabledFor(DEBUG):
            _log_local_reply(self, status, body)
        if self.head.grpc or grpc_status is not None:
            extra = [*local_reply_trailers(status, body, grpc_status), *(extra or ())]
            self.grpc_status = extra[1][1]
            status, body = 200, b""
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


def _log_local_reply(exchange: Exchange, status: int, body: bytes) -> None:
    """`--component-log-level http:debug`: why the proxy answered instead of the upstream."""
    head = exchange.head
    cluster = exchange.cluster.name if exchange.cluster is not None else "-"
    _http_log.debug("http: local reply %d %s to %s %s%s (cluster %s, details %s): %s",
                    status, exchange.flags, head.method.decode("latin-1"),
                    head.authority.decode("latin-1"), head.path.decode("latin-1"), cluster,
                    exchange.details, body[:200].decode("utf-8", "replace").strip() or "-")
