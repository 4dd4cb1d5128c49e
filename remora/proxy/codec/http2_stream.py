"""One HTTP/2 stream as its Exchange sees it: the response sink, and the request's flow control.

The Exchange was written against the HTTP/1 codec's sink (send_response_head / _body,
end_response, send_local_reply, abort, flush, pause_reading / resume_reading,
write_paused, last_activity, capture, active). Http2Stream offers exactly that for one
stream, so the router cannot tell the codecs apart; it is the one class to re-point at
the codec-neutral downstream seam (issue 14, codec/seams.py) when that lands.

Flow control, the rules of this module:
- Request body: a DATA frame's bytes are acknowledged to the session (WINDOW_UPDATE, stream and
  connection) once the Exchange took them, unless the Exchange holds the client
  (`pause_reading`: its upstream socket is full, or 64 KiB wait for a connection); held
  bytes are acknowledged at `resume_reading`. A slow upstream therefore closes the
  client's stream window: the proxy holds at most one window per stream.
- Response body: bytes are handed to the session only within the client's windows (stream and
  connection) and while the socket is not paused; the rest waits here, in order. Above
  OUT_HIGH bytes waiting, the Exchange stops reading its upstream
  (downstream_write_paused), and resumes below OUT_LOW. A window update, a settings change
  or the socket draining pumps again (DownstreamHttp2). Trailers and END_STREAM follow
  the last byte.
- The stream ends when both sides are done; a response that ends before the request
  body does resets the stream with NO_ERROR (RFC 9113 8.1), so the client stops sending.
"""
from __future__ import annotations

from collections import deque

from remora.proxy.codec.http2_frames import ErrorCode, Http2Error

OUT_HIGH = 64 << 10   # response bytes waiting for the client's window: stop reading the upstream
OUT_LOW = 16 << 10    # ... and read it again below this (asyncio's own write-buffer marks)
STATUS_FIELDS: dict = {}   # status -> its :status field, made once per code (three digits: bounded)


class Http2Stream:
    """The Exchange's sink for one HTTP/2 stream (see the module docstring)."""

    __slots__ = ("conn", "deadline_owner", "stream_id", "active", "last_activity", "opened_at", "capture", "tls",
                 "peer_cert", "write_paused", "reading_paused", "unacked", "out", "out_bytes", "ending",
                 "trailers", "response_done", "request_done", "reset", "closed")

    def __init__(self, conn, stream_id: int, now: float) -> None:
        self.conn = conn
        self.deadline_owner = conn    # the wheel keeps the connection, not this stream (router/deadlines.py)
        self.stream_id = stream_id
        self.active = None            # the Exchange (the deadline wheel reads `active`)
        self.last_activity = now      # the Exchange's start time, and the stream-idle clock
        self.opened_at = now          # a reset sooner than PREMATURE_RESET_SECONDS is premature
        self.capture = conn.capture   # who is on the other end, as the seam of issue 14 reads it
        self.tls = conn.tls
        self.peer_cert = conn.peer_cert
        self.write_paused = False     # response bytes above OUT_HIGH: the upstream is not read
        self.reading_paused = False   # the Exchange holds the request body: nothing acknowledged
        self.unacked = 0              # request bytes received while held
        self.out: deque = deque()     # response bytes outside the client's window
        self.out_bytes = 0
        self.ending = False           # END_STREAM (or trailers) once `out` is empty
        self.trailers: list | None = None
        self.response_done = False    # END_STREAM (or RST_STREAM) sent
        self.request_done = False     # the client's END_STREAM received
        self.reset = False            # the stream was reset, by either side
        self.closed = False           # forgotten by the connection

    # -- request side, called by DownstreamHttp2 ----------------------------------------------
    def on_data(self, data: bytes, flow_controlled: int) -> None:
        self.last_activity = self.conn.loop.time()
        exchange = self.active
        if data and exchange is not None and not exchange.finished:
            # Never an empty piece: on a chunked upstream body it would read as the last chunk.
            exchange.on_request_body(data)
        if self.reading_paused:
            self.unacked += flow_controlled    # acknowledged when the Exchange resumes
        elif flow_controlled:                  # conn.acknowledge, inlined: every DATA frame
            self.conn.session.acknowledge_received_data(flow_controlled, self.stream_id)

    def on_request_trailers(self, trailers: list) -> None:
        exchange = self.active
        if exchange is not None and not exchange.finished:
            exchange.on_request_trailers(trailers)

    def on_request_end(self) -> None:
        self.request_done = True
        exchange = self.active
        if exchange is not None and not exchange.finished:
            exchange.on_request_end()
        if self.response_done:
            self.conn.forget(self)

    def on_reset(self) -> None:
        """The client reset the stream: the Exchange cancels its upstream request (DC)."""
        self.reset = True
        self.response_done = True     # nothing more may be written on it
        self.out.clear()
        self.out_bytes = 0
        exchange = self.active
        if exchange is not None and not exchange.finished:
            exchange.on_downstream_closed()
        self.conn.forget(self)

    # -- the Exchange's sink: request-side backpressure ---------------------------------------------
    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.conn.acknowledge(unacked, self.stream_id)
            self.conn.wrote()

    # -- the Exchange's sink: the response ------------------------------------------------
    def send_response_head(self, status: int, reason: bytes, headers: list,
                           content_length: int | None) -> None:
        field = STATUS_FIELDS.get(status)
        if field is None:
            field = (b":status", b"%d" % status)
            if 100 <= status < 1000:
                STATUS_FIELDS[status] = field
        block = [field]
        block += headers   # names lower-cased by the session (http2_validation.outbound_fields)
        if content_length is not None:
            block.append((b"content-length", b"%d" % content_length))
        self._headers(block, end=False)

    def send_response_body(self, data: bytes) -> None:
        if self.response_done or not data:
            return
        conn = self.conn
        if not self.out and not conn.output_paused:
            # Nothing waits before these bytes: when they fit the windows and one frame they
            # go to the session now (pump's loop, without the queue: a message of a call).
            if conn.session.send_data_if_fits(self.stream_id, data):
                self.last_activity = conn.loop.time()
                conn.wrote()
                return
        self.out.append(data)
        self.out_bytes += len(data)
        self.pump()
        if self.out_bytes > OUT_HIGH and not self.write_paused:
            self.write_paused = True
            if self.active is not None:
                self.active.downstream_write_paused(True)

    def send_response_trailers(self, trailers: list) -> None:
        """Trailers for the response (gRPC's grpc-status); they end it (the seam's rule): sent
        after the last body byte, with END_STREAM. A later end_response changes nothing."""
        if self.response_done:
            return
        self.trailers = trailers
        self.ending = True
        if self.out:
            self.pump()       # after the body bytes still waiting for the client's window
            return
        # Nothing waits (a gRPC answer's message went out at once): pump's ending, without
        # its loop. (With `out` empty, pump has already let go of any write pause.)
        self._headers(trailers, end=True)
        if not self.response_done:
            self._response_sent()

    def end_response(self) -> None:
        self.ending = True
        self.pump()

    def send_local_reply(self, status: int, body: bytes, extra: list | None) -> None:
        block = [(b":status", b"%d" % status), (b"content-length", b"%d" % len(body))]
        if body:
            block.append((b"content-type", b"text/plain"))
        block += extra or ()
        exchange = self.active
        head_only = not body or (exchange is not None and exchange.head.method == b"HEAD")
        self._headers(block, end=head_only)
        if not head_only:
            self.out.append(body)
            self.out_bytes += len(body)
            self.ending = True
            self.pump()
        elif not self.response_done:
            self._response_sent()

    def abort(self) -> None:
        """The response cannot be completed (upstream reset after bytes went down, timeout):
        reset this stream only; the client sees it cut short, the other streams go on."""
        self.reset_stream(ErrorCode.INTERNAL_ERROR)

    def flush(self) -> None:
        """What an upstream read produced goes out with every other stream's output of this
        loop iteration, in one write (DownstreamHttp2.wrote): a connection answering many
        streams from one HTTP/2 upstream read writes once, not once per stream."""
        self.conn.wrote()

    def start_tunnel(self, upstream, resp, rest: bytes) -> None:
        # HTTP/2 requests never carry Upgrade (the session refuses the header), so no upstream 101.
        raise AssertionError("no upgrade on an HTTP/2 stream")

    # -- writing ---------------------------------------------------------------------------
    def _headers(self, block: list, end: bool) -> None:
        if self.response_done:
            return
        try:
            self.conn.session.send_headers(self.stream_id, block, end_stream=end)
        except Http2Error:
            # A header the session refuses (an upstream's value with a forbidden byte): the stream
            # cannot be answered as asked.
            self.reset_stream(ErrorCode.INTERNAL_ERROR)
            return
        self.last_activity = self.conn.loop.time()
        self.conn.wrote()

    def pump(self) -> None:
        """Hand waiting bytes to the session within the client's windows; END_STREAM rides on
        the last DATA frame when no trailers follow (the session's end_stream sets it there)."""
        if self.response_done:
            return
        conn = self.conn
        out = self.out
        if out and not conn.output_paused:
            session = conn.session
            sid = self.stream_id
            try:
                window = session.local_flow_control_window(sid)
            except Http2Error:     # the session holds the stream closed: nothing can be sent on it
                self.reset_stream(ErrorCode.INTERNAL_ERROR)
                return
            frame = session.max_outbound_frame_size
            sent = 0
            while out and window > 0:
                piece = out[0]
                size = min(len(piece), window, frame)
                if size == len(piece):
                    out.popleft()
                else:
                    out[0] = piece[size:]
                    piece = piece[:size]
                window -= size
                sent += size
                session.send_data(sid, piece)
            if sent:
                self.out_bytes -= sent
                self.last_activity = conn.loop.time()
                conn.wrote()
        if not out and self.ending:
            if self.trailers is not None:
                self._headers(self.trailers, end=True)
            else:
                try:
                    self.conn.session.end_stream(self.stream_id)
                except Http2Error:
                    self.reset_stream(ErrorCode.INTERNAL_ERROR)
                    return
                self.conn.wrote()
            if not self.response_done:
                self._response_sent()
        if self.write_paused and self.out_bytes <= OUT_LOW:
            self.write_paused = False
            if self.active is not None and not self.response_done:
                self.active.downstream_write_paused(False)

    def _response_sent(self) -> None:
        self.response_done = True
        if self.reading_paused:
            self.resume_reading()    # the codec releases the router's hold when the response ends
        if not self.request_done:
            # The answer is complete but the client is still sending: tell it to stop.
            self.reset_stream(ErrorCode.NO_ERROR)
        else:
            self.conn.forget(self)

    def reset_stream(self, code: int) -> None:
        """RST_STREAM from the proxy: this stream only."""
        self.response_done = True
        self.out.clear()
        self.out_bytes = 0
        if not self.reset:
            self.reset = True
            try:
                self.conn.session.reset_stream(self.stream_id, code)
            except Http2Error:
                pass     # already closed in the session (both ends done): nothing to reset
            self.conn.stream_reset_sent(code)
            self.conn.wrote()
        self.conn.forget(self)
