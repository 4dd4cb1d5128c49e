"""The downstream HTTP/2 server codec: frames in, one Exchange per stream, responses back.

ServerConnection (http2_server.py) is the protocol state machine (sans-IO: bytes in,
events out, bytes via `data_to_send()`); this Protocol feeds it and turns its events into
calls on each stream's Http2Stream (http2_stream.py), the Exchange's sink for that stream.
A connection arrives here from DownstreamHttp1, which hands over on the client preface
(`PRI * HTTP/2.0...`, h2c prior knowledge) or on ALPN `h2` (inbound mTLS).

Rules:
- One write per event batch: what a client read made the session emit goes out in one
  transport.write at its end; anything written outside it (upstream reads for any of the
  streams, a timer, a connect failure) goes out in one write from one call_soon, so the
  answers of many streams that one loop iteration produced share a write.
- A stream's Exchange starts at the end of the read that brought its HEADERS (the
  DATA of that read is already queued in it), unless the client reset it meanwhile.
- Requests the proxy refuses (bad :path, missing :authority, too many headers) get a
  local reply on their stream (flag DPE); protocol errors (http2_server.py) end the connection
  with GOAWAY, as Envoy's default (override_stream_error_on_invalid_http_message off).
- Limits (docs/protocols.md): SETTINGS_MAX_CONCURRENT_STREAMS (--http2-max-concurrent-streams,
  100), SETTINGS_MAX_HEADER_LIST_SIZE 60 KiB (Envoy's max_request_headers_kb), stream
  window 64 KiB, connection window = streams x stream window (a paused stream can never
  starve the others). Rapid reset: Envoy's premature-reset rule, see `_check_premature_resets`.
- Drain: GOAWAY carrying the last stream id the proxy took, then the connection closes
  once those streams are done; later streams are refused (REFUSED_STREAM) and the
  client retries them elsewhere. Idle connections get GOAWAY and close after
  --idle-timeout; a stream with no activity for --stream-idle-timeout ends 408 SI or reset;
  a header block left without END_HEADERS for --request-headers-timeout ends the
  connection (GOAWAY NO_ERROR: the stream was never processed).
"""
from __future__ import annotations

import asyncio

from remora.proxy.codec.http1 import MAX_HEADER_BYTES, BadRequest
from remora.proxy.codec.http2_frames import (
    ConnectionTerminated, DataReceived, ErrorCode, Http2Error, PingReceived, RemoteSettingsChanged, RequestReceived,
    Setting, StreamEnded, StreamReset, TrailersReceived, WindowUpdated, goaway_frame,
)
from remora.proxy.codec.http2_request import VERSION, RequestHeads
from remora.proxy.codec.http2_server import ServerConnection
from remora.proxy.codec.http2_stream import Http2Stream
from remora.proxy.codec.http2_timeouts import CLOSED, CLOSING, OPEN, Http2Timeouts
from remora.proxy.codec.message import RequestHead
from remora.proxy.telemetry.counters import Counters, set_nodelay

ALPN_H2 = "h2"
STREAM_WINDOW = 65535          # per-stream receive window: request bytes held per stream
PREMATURE_RESET_SECONDS = 1.0  # Envoy: overload.premature_reset_min_stream_lifetime_seconds
MAX_OUTBOUND_CONTROL_FRAMES = 1000  # Envoy: http2_protocol_options.max_outbound_control_frames
MAX_CONTROL_FRAMES_PER_SECOND = 2000   # PING + SETTINGS a client may send per second
PREMATURE_RESET_STREAMS = 500  # Envoy: overload.premature_reset_total_stream_count
PREMATURE_RESETS_TO_CHECK = (PREMATURE_RESET_STREAMS + 1) // 2   # half of it (rounded up): the check can trip

class Http2Stats(Counters):
    """Envoy's HTTP/2 codec counters (rooted at `http2.`), per listener, summed on export."""

    __slots__ = ("rx_reset", "tx_reset", "goaway_sent", "streams_active", "protocol_error",
                 "outbound_control_flood")


class DownstreamHttp2(Http2Timeouts, asyncio.Protocol):
    """One HTTP/2 client connection on a listener (see the module docstring)."""

    def __init__(self, listener, tls: bool = False) -> None:
        self.control_window_start = 0.0   # PING/SETTINGS rate: start of the current second
        self.control_in_window = 0
        self.control_backlog = 0    # PING/SETTINGS ACKs queued while the socket is backed up
        self.listener = listener
        self.loop = listener.loop
        self.settings = settings = listener.settings
        self.stats: Http2Stats = listener.http2
        self.transport = None
        self.tls = tls
        self.capture = None            # set by the HTTP/1 codec it came from (intercept/capture.py)
        self.peer_cert = None
        self.peer_ip = b""
        self.state = OPEN
        self.max_streams = settings.http2_max_concurrent_streams
        self.session = ServerConnection(self.max_streams, MAX_HEADER_BYTES, STREAM_WINDOW)
        self.streams: dict[int, Http2Stream] = {}
        self.heads = RequestHeads()     # request heads remembered by their fields (http2_request.py)
        self.starting: list[Http2Stream] = []   # exchanges that start at the end of this read
        self.in_batch = False
        self.flush_scheduled = False
        self.output_paused = False      # the socket's write buffer is full
        self.goaway_last_id: int | None = None   # the GOAWAY sent: streams above it are refused
        self.close_when_done = False
        self.last_activity = self.idle_since = self.loop.time()
        self.closed_streams = 0
        self.headers_since: float | None = None   # a header block is incomplete since then
        self.premature_resets = 0

    # -- takeover and asyncio callbacks ---------------------------------------------------
    def take_over(self, http1, transport, first_bytes: bytes) -> None:
        """Continue a connection the HTTP/1 codec accepted (its counters already counted it)."""
        self.capture = http1.capture
        self.peer_cert = http1.peer_cert
        self.peer_ip = http1.peer_ip
        self.listener.connection_replaced(http1, self)
        self.listener.stats.downstream_cx_http2_total += 1
        self.listener.stats.downstream_cx_http2_active += 1
        self._start(transport)
        if first_bytes:
            self.data_received(first_bytes)

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0].encode() if isinstance(peer, tuple) else b""
        set_nodelay(transport)
        self.listener.connection_opened(self)
        self.listener.stats.downstream_cx_http2_total += 1
        self.listener.stats.downstream_cx_http2_active += 1
        self._start(transport)

    def _start(self, transport) -> None:
        self.transport = transport
        session = self.session
        session.initiate_connection()
        # The connection window covers every stream's window, so streams the proxy holds
        # (slow upstreams) can never block the others (the module docstring).
        session.increment_flow_control_window(self.max_streams * STREAM_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.in_batch = True
        try:
            events = self.session.receive_data(data)
        except Http2Error:    # a connection error
            # The session queued a GOAWAY with the error: send it and close (streams end DC).
            self.stats.protocol_error += 1
            self.listener.count_protocol_error(400)
            self.in_batch = False
            self._close_after_flush()
            return
        for event in events:
            kind = event.__class__
            if kind is DataReceived:
                stream = self.streams.get(event.stream_id)
                if stream is None:     # answered and forgotten: only the connection window
                    self.acknowledge(event.flow_controlled_length, event.stream_id)
                else:
                    stream.on_data(event.data, event.flow_controlled_length)
            elif kind is RequestReceived:
                self._on_request(event)
            elif kind is StreamEnded:       # before trailers: every request ends, few have trailers
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_request_end()
            elif kind is TrailersReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_request_trailers(event.headers)
            elif kind is StreamReset:
                self._on_reset(event)
            elif kind is WindowUpdated:
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.pump()
                else:
                    self._pump_all()
            elif kind is RemoteSettingsChanged or kind is PingReceived:
                if self._control_flood():
                    self.stats.outbound_control_flood += 1
                    self.in_batch = False
                    self.transport.abort()
                    return
                if kind is RemoteSettingsChanged \
                        and Setting.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._pump_all()
            elif kind is ConnectionTerminated:
                if event.error_code == ErrorCode.NO_ERROR:
                    # The client's graceful GOAWAY: the streams in flight finish, then the
                    # connection closes (ours says which streams were taken).
                    self.send_goaway()
                else:
                    self._close_after_flush()     # an error: the streams in flight end (DC)
        # PingReceived is answered by the server connection itself.
        # A header block cut before END_HEADERS holds the whole connection (only its
        # CONTINUATION may follow): --request-headers-timeout counts from its first read.
        if self.session.partial is None:
            self.headers_since = None
        elif self.headers_since is None:
            self.headers_since = self.last_activity
        starting, self.starting = self.starting, []
        for stream in starting:
            exchange = stream.active     # None once the stream was forgotten (reset meanwhile)
            if exchange is not None and not exchange.finished and not stream.reset and not self.close_when_done:
                exchange.start()
        self.in_batch = False
        self.flush()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.listener.connection_closed(self)
        self.listener.stats.downstream_cx_http2_active -= 1
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.closed = True
            self.stats.streams_active -= 1
            exchange = stream.active
            if exchange is not None and not exchange.finished:
                exchange.on_downstream_closed()

    def _control_flood(self) -> bool:
        """One PING or SETTINGS (each makes the session queue an ACK): True once the client floods.

        Envoy's max_outbound_control_frames: more than 1000 ACKs owed while the socket is
        backed up (the client does not read them). And a rate, since a Python event loop
        answering them holds every other client: more than MAX_CONTROL_FRAMES_PER_SECOND in
        one second, which no client needs."""
        now = self.last_activity
        if now - self.control_window_start >= 1.0:
            self.control_window_start, self.control_in_window = now, 0
        self.control_in_window += 1
        if self.output_paused:
            self.control_backlog += 1
        return (self.control_backlog > MAX_OUTBOUND_CONTROL_FRAMES
                or self.control_in_window > MAX_CONTROL_FRAMES_PER_SECOND)

    def pause_writing(self) -> None:
        # Response bytes wait in their streams (each pauses its own upstream above OUT_HIGH).
        self.output_paused = True

    def resume_writing(self) -> None:
        self.output_paused = False
        self.control_backlog = 0
        self.last_activity = self.loop.time()
        self._pump_all()
        self.flush()

    # -- streams ---------------------------------------------------------------------------
    def _on_request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if self.goaway_last_id is not None and sid > self.goaway_last_id:
            # Opened after our GOAWAY: never processed, so the client may retry it elsewhere.
            self._reset(sid, ErrorCode.REFUSED_STREAM)
            return
        listener = self.listener
        stream = Http2Stream(self, sid, self.last_activity)
        self.streams[sid] = stream
        self.stats.streams_active += 1
        listener.stats.downstream_rq_http2_total += 1
        try:
            if event.headers is None:
                raise BadRequest(431, b"request headers too large")
            head = self.heads.head(event.headers, event.stream_ended, listener.paths,
                                   self.settings.max_request_headers_count)
        except BadRequest as err:
            listener.count_protocol_error(err.status)
            head = RequestHead(b"-", b"-", b"", [], VERSION)
            head.peer_ip = self.peer_ip
            exchange = stream.active = listener.new_exchange(stream, head, routed=False)
            exchange.local_reply(err.status, err.detail, "DPE")
            return
        head.peer_ip = self.peer_ip
        head.peer_cert = self.peer_cert
        stream.active = exchange = listener.new_exchange(stream, head)
        if not exchange.finished:
            self.starting.append(stream)

    def _on_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        self.stats.rx_reset += 1
        if stream is None:
            return
        if self.loop.time() - stream.opened_at < PREMATURE_RESET_SECONDS:
            self.premature_resets += 1
        stream.on_reset()

    def forget(self, stream: Http2Stream) -> None:
        """The stream is over on both sides: drop it, credit what it held, check the limits."""
        if stream.closed:
            return
        stream.closed = True
        # The stream and its Exchange point at each other: letting go here frees both (and
        # what hangs from them) by reference counting, instead of leaving a cycle per stream
        # to the cyclic GC. Everything that reads `active` afterwards checks for None.
        stream.active = None
        self.streams.pop(stream.stream_id, None)
        self.stats.streams_active -= 1
        if stream.unacked:
            self.acknowledge(stream.unacked, stream.stream_id)   # the connection window only
            stream.unacked = 0
        if not self.streams:
            self.idle_since = self.loop.time()
        self.closed_streams += 1
        if self.premature_resets >= PREMATURE_RESETS_TO_CHECK:
            self._check_premature_resets()      # (below half the threshold it cannot trip)
        if self.state == CLOSED:
            return
        if self.listener.draining and self.goaway_last_id is None:
            self.send_goaway()     # as HTTP/1 answers `connection: close` while draining
        if self.goaway_last_id is not None and not self.streams:
            self._close_after_flush()

    def _check_premature_resets(self) -> None:
        """Envoy's premature-reset check (CVE-2023-44487, rapid reset): once 500 streams
        closed, more than half of them reset by the client within 1 s of opening closes
        the connection; before 500, as soon as 250 such resets make that outcome certain.
        forget() counts the closed stream and calls this from 250 premature resets on."""
        premature = self.premature_resets
        if self.closed_streams >= PREMATURE_RESET_STREAMS and premature * 2 < self.closed_streams:
            return
        if self.state != CLOSED and not self.close_when_done:
            self.listener.stats.downstream_rq_too_many_premature_resets += 1
            self._fatal_goaway(ErrorCode.ENHANCE_YOUR_CALM)

    def _pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.out or stream.ending:
                stream.pump()

    def _reset(self, sid: int, code: int) -> None:
        try:
            self.session.reset_stream(sid, code)
        except Http2Error:
            return
        self.stream_reset_sent(code)

    def stream_reset_sent(self, code: int) -> None:
        self.stats.tx_reset += 1

    def acknowledge(self, size: int, sid: int) -> None:
        """Give the client its window back for `size` bytes the proxy no longer holds."""
        if size:
            self.session.acknowledge_received_data(size, sid)   # a closed session ignores it

    # -- writing -----------------------------------------------------------------------------
    def wrote(self) -> None:
        """The session has bytes to send: they go with this batch's write, or with one call_soon."""
        if not self.in_batch and not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = self.session.data_to_send()
        if data:
            transport.write(data)
        if self.close_when_done:
            self.state = CLOSING
            transport.close()

    def _close_after_flush(self) -> None:
        self.close_when_done = True
        self.wrote()
        if not self.in_batch:
            self.flush()

    def send_goaway(self) -> None:
        """Graceful GOAWAY (drain): streams up to the last one taken finish; no new ones.

        The session's close_connection ends it (nothing more sent), which would forbid
        answering the streams in flight, so the frame is written here, after the session's
        pending bytes."""
        if self.goaway_last_id is not None or self.transport is None or self.transport.is_closing():
            return
        self.goaway_last_id = self.session.highest_inbound_stream_id
        self.flush()
        self.transport.write(goaway_frame(self.goaway_last_id, ErrorCode.NO_ERROR))
        self.stats.goaway_sent += 1
        if not self.streams:
            self._close_after_flush()

    def _fatal_goaway(self, code: int) -> None:
        """GOAWAY with an error and close: the streams in flight end (DC)."""
        try:
            self.session.close_connection(code)
        except Http2Error:
            pass
        self.stats.goaway_sent += 1
        self._close_after_flush()
