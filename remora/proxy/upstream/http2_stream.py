"""One upstream HTTP/2 stream, as the UpstreamConnection an attempt drives (seams.py).

The HTTP/2 pool hands an attempt an Http2StreamHandle instead of a connection of its own:
`start_request` opens the stream (request head as HTTP/2 fields: names lower-cased,
hop-by-hop headers dropped, Content-Length kept), body and end go out as DATA and
END_STREAM (or trailers), and the stream's events come back to the attempt with the same
calls an HTTP/1 connection makes (on_headers, on_data, on_read_end, on_complete,
on_connection_failed, on_write_paused). Releasing or closing the handle ends the stream
(RST_STREAM when it is still open); the connection itself stays with the pool.
The request head's fields and HPACK block come from http2_request_head.py (h2_fields,
and RequestBlocks, which remembers its pieces per connection).
"""
from __future__ import annotations

from remora.proxy.codec.http2_frames import ErrorCode
from remora.proxy.upstream.http2_request_head import h2_fields
from remora.proxy.upstream.seams import AttemptFailure

__all__ = ["Http2StreamHandle", "h2_fields"]

class Http2StreamHandle:
    """An attempt's view of one stream on a shared UpstreamHttp2 connection."""

    __slots__ = ("conn", "pool", "attempt", "receiver", "stream_id", "done")

    def __init__(self, conn, pool) -> None:
        self.conn = conn
        self.pool = pool
        self.attempt = None
        self.receiver = None    # the stream (router): response head and body go to it directly
        self.stream_id = 0
        self.done = False

    @property
    def peer_id(self) -> str | None:
        return self.conn.peer_id

    # -- UpstreamConnection ----------------------------------------------------------------
    def start_request(self, attempt, receiver, method: bytes, path: bytes, authority: bytes, headers: list,
                      added: bytes, unique: bytes, content_length: int | None, chunked: bool,
                      upgrade: bytes | None, head_only: bool) -> None:
        self.attempt = attempt
        self.receiver = receiver
        no_body = not chunked and not content_length
        self.stream_id = self.conn.open_request(self, method, path, authority, headers, added, unique,
                                                content_length, no_body)

    def send_body(self, data: bytes, chunked: bool) -> None:
        if not self.done:
            self.conn.send_data(self.stream_id, data)

    def end_body(self, chunked: bool, trailers: list | None = None) -> None:
        if not self.done:
            self.conn.end_stream(self.stream_id, trailers)

    def set_reading(self, on: bool) -> None:
        if not self.done:
            self.conn.set_stream_reading(self.stream_id, on)

    def release(self, reusable: bool) -> None:
        """The attempt is done with the stream (its response ended)."""
        self._finish(reset=not reusable)

    def close(self) -> None:
        """The attempt dropped the stream (timeout, retry, client gone): reset it."""
        self._finish(reset=True)

    def _finish(self, reset: bool) -> None:
        if self.done:
            return
        self.done = True
        self.attempt = self.receiver = None
        if reset and self.stream_id:
            self.conn.reset_stream(self.stream_id, ErrorCode.CANCEL)

    # -- StreamEvents (from the connection) ----------------------------------------------------
    def on_response_head(self, resp) -> None:
        if self.attempt is not None:
            self.receiver.on_upstream_headers(resp)

    def on_response_body(self, data: bytes) -> None:
        if self.attempt is not None:
            receiver = self.receiver
            receiver.on_upstream_data(data)
            if self.attempt is not None:
                receiver.on_upstream_read_end()     # what attempt.on_read_end would pass on

    def on_response_trailers(self, trailers: list) -> None:
        if self.attempt is not None:
            self.receiver.on_upstream_trailers(trailers)

    def on_response_end(self) -> None:
        attempt = self.attempt
        if attempt is not None:
            attempt.on_complete(True)      # it releases the handle
        else:
            self._finish(reset=False)

    def on_stream_reset(self, error_code: int, refused: bool, got_bytes: bool) -> None:
        attempt, self.attempt, self.receiver = self.attempt, None, None
        self.done = True
        if attempt is None:
            return
        if refused:
            attempt.on_connection_failed(AttemptFailure.REFUSED_STREAM, "remote refused stream reset")
        else:
            detail = ("remote reset" if error_code != ErrorCode.CONNECT_ERROR
                      else "connection termination")
            attempt.on_connection_failed(AttemptFailure.CONNECTION_TERMINATION, detail)

    def upstream_write_paused(self, paused: bool) -> None:
        if self.attempt is not None:
            self.attempt.on_write_paused(paused)
