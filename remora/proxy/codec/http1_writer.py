"""The writing half of the downstream HTTP/1.1 codec: the Exchange's ResponseSink.

A base class of DownstreamHttp1, which owns every attribute used here (wbuf,
resp_chunked, resp_close, keep_alive, transport, active) and the connection's state:
this module only frames responses (Content-Length as received, chunked for 1.1 clients
when the length is unknown, close-delimited for 1.0), holds each upstream read's bytes
for one write, and writes local replies. MeteredTransport counts a tunnel's bytes.
"""
from __future__ import annotations

from remora.proxy.codec.http1 import EOL, LAST_CHUNK, chunk, status_line


class Http1ResponseWriter:
    """Response framing and writes for DownstreamHttp1 (see the module docstring)."""

    __slots__ = ()

    def send_response_head(self, exchange, status: int, reason: bytes, headers: list,
                           content_length: int | None, chunked: bool) -> None:
        head = exchange.head
        parts = [status_line(status, reason),
                 b"".join([name + b": " + value + EOL for name, value in headers])]
        no_body = head.method == b"HEAD" or status in (204, 304) or status < 200
        self.resp_chunked = False
        self.resp_close = not self.keep_alive or self.listener.draining
        if content_length is not None:
            parts.append(b"content-length: %d\r\n" % content_length)
        elif chunked and not no_body:
            if head.version == b"1.1":
                parts.append(b"transfer-encoding: chunked\r\n")
                self.resp_chunked = True
            else:
                self.resp_close = True   # a 1.0 client reads the body until close
        if self.resp_close:
            parts.append(b"connection: close\r\n")
        elif head.version == b"1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(EOL)
        # Held, not written: the body usually arrives in the same upstream read, and one
        # write for head and body saves a syscall per response.
        self.wbuf.append(b"".join(parts))

    def send_response_body(self, data: bytes) -> None:
        if self.resp_chunked:
            if data:
                self.wbuf += chunk(data)
        else:
            self.wbuf.append(data)

    def flush(self) -> None:
        """Write what the current upstream read produced (called once per upstream read)."""
        wbuf = self.wbuf
        if wbuf:
            self.transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
            self.wbuf = []

    def end_response(self, exchange) -> None:
        if self.resp_chunked:
            self.wbuf.append(LAST_CHUNK)
        self.flush()
        self._response_done(exchange)

    def send_local_reply(self, exchange, status: int, body: bytes, extra: list | None) -> None:
        head = exchange.head
        close = not self.keep_alive or self.listener.draining or not exchange.request_done
        parts = [status_line(status), b"content-length: %d\r\n" % len(body)]
        if body:
            parts.append(b"content-type: text/plain\r\n")
        for name, value in extra or ():
            parts += (name, b": ", value, EOL)
        if close:
            parts.append(b"connection: close\r\n")
        parts.append(EOL)
        if body and head.method != b"HEAD":
            parts.append(body)
        self.resp_close = close
        self.transport.write(b"".join(parts))
        self._response_done(exchange)

    def abort(self, exchange) -> None:
        """The response cannot be completed: close so the client sees it was cut short."""
        if self.active is exchange:
            self.active = None
        self.flush()
        self.transport.close()


class MeteredTransport:
    """The downstream transport as a tunnel's upstream side writes to it, counting bytes."""

    __slots__ = ("transport", "meter")

    def __init__(self, transport, meter) -> None:
        self.transport = transport
        self.meter = meter

    def write(self, data: bytes) -> None:
        self.meter.sent += len(data)
        self.transport.write(data)

    def close(self) -> None:
        self.transport.close()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_closing(self) -> bool:
        return self.transport.is_closing()
