"""The downstream HTTP/1.1 codec's timeouts, run by the worker's sweeper once a second.

A base class of DownstreamHttp1, which owns the connection state these read.
Timeouts (the sweeper, once a second; Envoy's semantics): IDLE closes after idle_timeout
counted from the end of the last response (bytes that start no request, like bare CRLFs,
do not count); HEADERS answers 408 after request_headers_timeout from the request's first
read; BODY and WAITING time out after stream_idle_timeout with no activity in either
direction: request bytes read, response bytes from the upstream, or response bytes the
client drained. A client that stops reading is not active, so it is cut off too.
"""
from __future__ import annotations

from remora.proxy.codec.http1 import CLOSED, HEADERS, IDLE, TUNNEL, BadRequest


class Http1Timeouts:
    """Idle, head and stream-idle timeouts of DownstreamHttp1 (see the module docstring)."""

    __slots__ = ()

    def check_timeouts(self, now: float, settings) -> None:
        state = self.state
        if state >= TUNNEL:
            return
        if self.flow.write_paused:
            # Response bytes wait for the client: progress is the buffer draining (and each
            # resume_writing). A client that reads nothing makes none and times out.
            size = self.transport.get_write_buffer_size()
            if size < self.drain_mark:
                self.last_activity = self.idle_since = now
            self.drain_mark = size
        active = self.active
        if active is not None:
            # The upstream's response head and body bytes are activity too (-1: no head yet).
            progress = active.bytes_sent if self.resp_framing else -1
            if progress != self.sent_mark:
                self.sent_mark = progress
                self.last_activity = now
        if state == IDLE:
            if now - self.idle_since > settings.idle_timeout:
                self.state = CLOSED
                self.transport.close()
        elif state == HEADERS:
            if now - self.request_start > settings.request_headers_timeout:
                self._reject(BadRequest(408, b"request header timeout"))
        elif now - self.last_activity > settings.stream_idle_timeout:
            # BODY or WAITING: Envoy's stream idle timeout, no activity in either direction.
            # Requests queued behind the active one end DC when the connection closes.
            self.keep_alive = False
            if active is not None:
                active.on_stream_idle_timeout()
            self.state = CLOSED
            self.transport.close()

    def begin_drain(self) -> None:
        """Nothing to send now: while the listener drains, responses carry `connection: close`."""

    def close_if_idle(self) -> bool:
        """Close the connection if no request is in flight (drain)."""
        if self.state == IDLE:
            self.state = CLOSED
            self.transport.close()
            return True
        return False
