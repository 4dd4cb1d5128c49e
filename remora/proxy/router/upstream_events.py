"""The stream's side of the upstream seam: what an Exchange does with what its attempt
reports (the UpstreamCallbacks of upstream/seams.py), as Envoy's router.cc onUpstream*.

A base class of Exchange (router/exchange.py), which owns every attribute used here; this
module only decides, per event: forward the response head and body to the sink, retry
(RetryState, retry_state.py: the route's policy, the budget, a replayable body), resend
once after the keep-alive race, or fail (a local reply before any response byte went
down, an abort after).
"""
from __future__ import annotations

from remora.proxy.codec.http1 import FIRST_ATTEMPT
from remora.proxy.codec.message import ResponseHead
from remora.proxy.router.grpc import http_status_for_grpc
from remora.proxy.router.retry import Failure
from remora.proxy.router.retry_state import RetryState
from remora.proxy.upstream.outlier import Result
from remora.proxy.upstream.seams import AttemptFailure

NOT_CONNECTED = b"upstream connect error or disconnect/reset before headers. reset reason: "
# How a failed attempt is retried and answered: (retry condition, status, body, flag).
FAILURE_REPLIES = {
    AttemptFailure.CONNECT_FAILURE: (Failure.CONNECT_FAILURE, 503, NOT_CONNECTED, "UF"),
    AttemptFailure.CONNECTION_TERMINATION: (Failure.RESET, 503, NOT_CONNECTED + b"connection termination", "UC"),
    AttemptFailure.STALE_CONNECTION: (Failure.RESET, 503, NOT_CONNECTED + b"connection termination", "UC"),
    AttemptFailure.REFUSED_STREAM: (Failure.REFUSED_STREAM, 503, NOT_CONNECTED + b"remote refused stream reset", "UC"),
    AttemptFailure.PROTOCOL_ERROR: (Failure.RESET, 502, b"upstream sent an invalid HTTP response", "UPE"),
    AttemptFailure.PER_TRY_TIMEOUT: (Failure.PER_TRY_TIMEOUT, 504, b"upstream request timeout", "UT"),
}

class UpstreamEvents:
    """UpstreamCallbacks and retries for Exchange (see the module docstring)."""

    __slots__ = ()

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
        headers = resp.headers
        grpc_status = resp.grpc_status
        # Envoy's router: outlier detection sees a trailers-only gRPC answer as its HTTP twin
        # (UNAVAILABLE as 503), and the retry policy's gRPC conditions apply to it.
        seen = status if grpc_status is None else http_status_for_grpc(grpc_status)
        detector = self.cluster.detector
        if detector.enabled:
            detector.report_status(self.endpoint, seen)
        if (status >= 300 or grpc_status) and self._retry(None, status, grpc_status):
            # A retriable answer is never forwarded: drop the connection, try again.
            self._drop_attempt()
            self._endpoint_done(error=seen >= 500)
            return
        if self.retry_state is not None and self.retry_state.exhausted:
            self.add_flag("URX")
        upstream_time = self.upstream_time = b"%d" % int(
            (self.listener.loop.time() - self.upstream.started_at) * 1000)
        self.response_started = True
        self.status = status
        self.cluster.stats.count_status(status)
        if grpc_status is not None:  # a trailers-only answer carries grpc-status in its head
            self.grpc_status = b"%d" % grpc_status
        if self.route.response_ops is not None:
            headers = self.route.response_ops.apply(headers)
        if self.dest.response_ops is not None:
            headers = self.dest.response_ops.apply(headers)
        if self.route.cors is not None:
            headers = self.route.cors.response_headers(self.head, headers)
        headers.append((b"x-envoy-upstream-service-time", upstream_time))
        self.peer_metadata = resp.peer_metadata
        if self.head.peer_metadata is not None and self.listener.reply_header is not None:
            headers.append(self.listener.reply_header)    # a mesh peer asked: tell it who we are
        self.sink.send_response_head(resp.status, resp.reason, headers, resp.content_length)

    def on_upstream_data(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        if self.head.grpc:
            self.response_messages.feed(data)
        self.sink.send_response_body(data)

    def on_upstream_trailers(self, trailers: list) -> None:
        """Response trailers (gRPC status): they end the response (the seam's rule), so the
        exchange completes here and the attempt's on_upstream_end that follows is ignored."""
        if self.finished:
            return
        if self.head.grpc:
            for name, value in trailers:
                if name == b"grpc-status":
                    self.grpc_status = value
        self._complete(trailers)

    def on_upstream_read_end(self) -> None:
        self.sink.flush()

    def on_upstream_end(self) -> None:
        if not self.finished:
            self._complete(None)

    def _complete(self, trailers: list | None) -> None:
        self.upstream = None      # done: _finish must not cancel it (it releases its stream)
        status = self.status
        ep = self.endpoint
        if ep is not None:        # _endpoint_done, inlined: this is every response's path
            ep.active_requests -= 1
            if status >= 500:
                ep.errors += 1
            self.endpoint = None
        if status < 500 and self.retry_state is not None and self.retry_state.retries:
            self.cluster.stats.upstream_rq_retry_success += 1
        self._finish()
        if trailers is None:
            self.sink.end_response()
        else:
            self.sink.send_response_trailers(trailers)

    def on_attempt_failed(self, failure: AttemptFailure, detail: str) -> None:
        """The attempt ended without a complete response: retry, resend, or give up."""
        self.upstream = None
        if failure is AttemptFailure.OVERFLOW:
            self._overflow()           # never retried
            return
        stats = self.cluster.stats
        if (failure is AttemptFailure.STALE_CONNECTION and not self.race_retried
                and self.replay is not None and not self.response_started):
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
        self.sink.start_tunnel(conn, resp, rest)

    # -- retries -------------------------------------------------------------------------------
    def _retry(self, failure: Failure | None, status: int, grpc_status: int | None = None) -> bool:
        """Schedule another attempt when the route's policy, the budget and the body allow it."""
        policy = self.route.retry_policy
        if self.response_started or not policy.enabled:
            return False
        cluster = self.cluster
        retry_state = self.retry_state
        if retry_state is None:
            retry_state = self.retry_state = RetryState(policy, cluster.circuit.retry_budget)
        if not retry_state.should_retry(failure, status, self.replay is not None, cluster.stats,
                                        len(cluster.circuit.pending), grpc_status):
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
            self.sink.abort()
        else:
            self.local_reply(status, body, flag)
