"""The writing half of the downstream HTTP/1.1 codec: its DownstreamStream (codec/seams.py).

A base class of DownstreamHttp1, which owns every attribute used here (wbuf, resp_framing,
keep_alive, transport, active, flow) and the connection's state: this module only frames
responses (Content-Length as received, chunked for 1.1 clients when the length is not
known, close-delimited for 1.0), holds each upstream read's bytes for one write, and
writes local replies. The connection is the stream of its active request: an HTTP/1.1
connection answers one request at a time, so no per-request object is needed.
"""
from __future__ import annotations

from remora.proxy.codec.http1 import EOL, FIELD_LINE, LAST_CHUNK, chunk, status_line

# resp_framing: how the active response's body goes on the wire.
RESP_NONE = 0      # no response head written yet
RESP_RAW = 1       # as is: Content-Length, no body, or until close (HTTP/1.0)
RESP_CHUNKED = 2   # chunked transfer coding


class Http1ResponseWriter:
    """Response framing and writes for DownstreamHttp1 (see the module docstring)."""

    __slots__ = ()

    def send_response_head(self, status: int, reason: bytes, headers: list,
                           content_length: int | None) -> None:
        head = self.active.head
        parts = [status_line(status, reason), EOL.join(map(FIELD_LINE, headers)) + EOL if headers else b""]
        self.resp_framing = RESP_RAW
        if self.listener.draining:
            self.keep_alive = False
        if content_length is not None:
            parts.append(b"content-length: %d\r\n" % content_length)
        elif head.method != b"HEAD" and status not in (204, 304) and status >= 200:
            # A body of unknown length: chunked for 1.1, until close for a 1.0 client.
            if head.version == b"1.1":
                parts.append(b"transfer-encoding: chunked\r\n")
                self.resp_framing = RESP_CHUNKED
            else:
                self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        elif head.version == b"1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(EOL)
        # Held, not written: the body usually arrives in the same upstream read, and one
        # write for head and body saves a syscall per response.
        self.wbuf.append(b"".join(parts))

    def send_response_body(self, data: bytes) -> None:
        if self.resp_framing == RESP_CHUNKED:
            if data:
                self.wbuf += chunk(data)
        else:
            self.wbuf.append(data)

    def send_response_trailers(self, trailers: list) -> None:
        """Trailers go in the last chunk; a response not chunked has nowhere to carry them
        (HTTP/1.1 drops them, as Envoy does)."""
        if self.resp_framing == RESP_CHUNKED:
            self.wbuf.append(b"0\r\n" + (EOL.join(map(FIELD_LINE, trailers)) + EOL if trailers else b"") + EOL)
            self.resp_framing = RESP_RAW
        self.end_response()

    def flush(self) -> None:
        """Write what the current upstream read produced (called once per upstream read)."""
        wbuf = self.wbuf
        if wbuf:
            self.transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
            self.wbuf = []

    def end_response(self) -> None:
        if self.resp_framing == RESP_CHUNKED:
            self.wbuf.append(LAST_CHUNK)
        self.flush()
        self._response_done()

    def send_local_reply(self, status: int, body: bytes, extra: list | None) -> None:
        if not self.keep_alive or self.listener.draining or self.receiving is self.active:
            # Closing after it: asked for, draining, or the request body is still arriving
            # and the connection cannot be resynchronised.
            self.keep_alive = False
        parts = [status_line(status), b"content-length: %d\r\n" % len(body)]
        if body:
            parts.append(b"content-type: text/plain\r\n")
        for name, value in extra or ():
            parts += (name, b": ", value, EOL)
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(EOL)
        if body and self.active.head.method != b"HEAD":
            parts.append(body)
        self.transport.write(b"".join(parts))
        self._response_done()

    def abort(self) -> None:
        """The response cannot be completed: close so the client sees it was cut short."""
        self.active = None
        self.flush()
        self.transport.close()

