"""One upstream HTTP/2 stream, as the UpstreamConnection an attempt drives (seams.py).

The HTTP/2 pool hands an attempt an Http2StreamHandle instead of a connection of its own:
`start_request` opens the stream (request head as HTTP/2 fields: names lower-cased,
hop-by-hop headers dropped, Content-Length kept), body and end go out as DATA and
END_STREAM (or trailers), and the stream's events come back to the attempt with the same
calls an HTTP/1 connection makes (on_headers, on_data, on_read_end, on_complete,
on_connection_failed, on_write_paused). Releasing or closing the handle ends the stream
(RST_STREAM when it is still open); the connection itself stays with the pool.
The shaping of request heads is remembered per connection (RequestFields): the same
headers in give the same fields out.
"""
from __future__ import annotations

from remora.proxy.codec.header_compression import UNIQUE_PER_REQUEST
from remora.proxy.codec.http2_frames import ErrorCode
from remora.proxy.upstream.seams import AttemptFailure

# RFC 9113 8.2.2: connection-specific fields never go on an HTTP/2 stream.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade", b"host", b"te"})
WHITESPACE = (b" ", b"\t")
MEMO_LIMIT = 256               # shapes a RequestFields remembers, each kind


def h2_fields(headers: list, added: bytes) -> list:
    """(name, value) pairs for HTTP/2 from forwarded headers and ready-made header lines."""
    fields = []
    for name, value in headers:
        lower = name.lower()
        if lower not in HOP_BY_HOP:
            if value[:1] in WHITESPACE or value[-1:] in WHITESPACE:
                value = value.strip(b" \t")    # RFC 9113 8.2.1: no surrounding whitespace
            fields.append((lower, value))
        elif lower == b"te" and value.strip().lower() == b"trailers":
            fields.append((b"te", b"trailers"))   # the one TE value HTTP/2 allows (gRPC sends it)
    if added:
        for line in added.split(b"\r\n"):
            field = _line_field(line)
            if field:
                fields.append(field)
    return fields


def _line_field(line: bytes) -> tuple:
    """One ready-made header line as an HTTP/2 field; () when it has none (or a hop-by-hop one)."""
    name, sep, value = line.partition(b":")
    if sep and name.lower() not in HOP_BY_HOP:
        return (name.strip().lower(), value.strip())
    return ()


class RequestFields:
    """h2_fields, remembered per upstream connection (one owner: UpstreamHttp2).

    A client repeating its calls sends the same forwarded headers (the same field objects,
    out of the downstream session's block cache) and the proxy adds mostly the same lines
    (x-forwarded-for, x-forwarded-proto, user-agent, the attempt count). Both are pure
    inputs, so their shapes are remembered: the forwarded headers by their tuple, the added
    lines one by one. Lines new on every request (x-request-id, trace context) are shaped
    every time and never remembered. Each memo is cleared when it reaches MEMO_LIMIT."""

    __slots__ = ("heads", "lines")

    def __init__(self) -> None:
        self.heads: dict = {}     # tuple(forwarded headers) -> their fields (never handed out)
        self.lines: dict = {}     # added line -> its field, or ()

    def shape(self, headers: list, added: bytes) -> list:
        """h2_fields(headers, added), a new list the caller may extend."""
        key = tuple(headers)
        heads = self.heads
        shaped = heads.get(key)
        if shaped is None:
            if len(heads) >= MEMO_LIMIT:
                heads.clear()
            shaped = heads[key] = h2_fields(headers, b"")
        fields = shaped.copy()
        if added:
            lines = self.lines
            for line in added.split(b"\r\n"):
                field = lines.get(line)
                if field is None:
                    field = _line_field(line)
                    if not field or field[0] not in UNIQUE_PER_REQUEST:
                        if len(lines) >= MEMO_LIMIT:
                            lines.clear()
                        lines[line] = field
                if field:
                    fields.append(field)
        return fields


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
                      added: bytes, content_length: int | None, chunked: bool,
                      upgrade: bytes | None, head_only: bool) -> None:
        self.attempt = attempt
        self.receiver = receiver
        fields = self.conn.request_fields.shape(headers, added)
        if content_length is not None:
            fields.append((b"content-length", b"%d" % content_length))
        no_body = not chunked and not content_length
        self.stream_id = self.conn.open_stream(self, method, path, authority, fields, no_body)

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
        attempt = self.attempt
        if attempt is not None:
            self.receiver.on_upstream_data(data)
            if self.attempt is not None:
                attempt.on_read_end()

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
