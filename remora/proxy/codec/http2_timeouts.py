"""The downstream HTTP/2 codec's drain and timeouts: what the worker's sweeper (once a
second), its drain and the route-deadline wheel ask of a DownstreamHttp2 connection.

A base class of DownstreamHttp2 (http2.py), which owns the state these read; the rules are
in http2.py's docstring (idle connections, idle streams, unfinished header blocks, drain).
"""
from __future__ import annotations

from remora.proxy.codec.http2_frames import ErrorCode
from remora.proxy.router.deadlines import time_out_if_due

# DownstreamHttp2's connection states (CLOSING: close asked, not done), here for its base class.
OPEN, CLOSING, CLOSED = "open", "closing", "closed"


class Http2Timeouts:
    """Drain, idle, stream-idle and header-block timeouts of DownstreamHttp2."""

    __slots__ = ()

    def begin_drain(self) -> None:
        self.send_goaway()

    def close_if_idle(self) -> bool:
        """Drain: GOAWAY now; close at once when no stream is in flight."""
        self.send_goaway()
        return not self.streams

    def route_deadline_due(self, now: float) -> None:
        """The route-deadline wheel's look at this connection: the streams' exchanges are keyed
        by it, never kept themselves (router/deadlines.py)."""
        for stream in list(self.streams.values()):
            time_out_if_due(stream.active, now)

    def check_timeouts(self, now: float, settings) -> None:
        if self.state == CLOSED or self.close_when_done:
            return
        if self.headers_since is not None and now - self.headers_since > settings.request_headers_timeout:
            # As HTTP/1 answers 408: the stream was never opened, so GOAWAY NO_ERROR tells
            # the client it was not processed (safe to retry) and the connection closes.
            self.listener.count_protocol_error(408)
            self._fatal_goaway(ErrorCode.NO_ERROR)
            return
        if not self.streams:
            if now - self.idle_since > settings.idle_timeout:
                self._fatal_goaway(ErrorCode.NO_ERROR)
            return
        limit = settings.stream_idle_timeout
        for stream in list(self.streams.values()):
            if now - stream.last_activity > limit:
                exchange = stream.active
                if exchange is not None and not exchange.finished:
                    exchange.on_stream_idle_timeout()   # 408 SI, or SI after the head
                if not stream.response_done:
                    stream.reset_stream(ErrorCode.CANCEL)
