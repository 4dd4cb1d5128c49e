"""An upstream HTTP/2 client connection: many streams on one transport (ClientConnection,
codec/http2_client.py, sans-IO inside).

Rules this module owns (one owner: the connection; streams never touch the session themselves):
- A stream is opened only while `capacity()` > 0: the lower of the peer's
  SETTINGS_MAX_CONCURRENT_STREAMS and the cluster's limit (DestinationRule
  maxConcurrentStreams), minus streams open; none once GOAWAY arrived or the connection
  closed.
- Sending respects the peer's flow-control windows: what does not fit waits in the
  stream's queue and goes out on WINDOW_UPDATE; a stream whose queue passes
  SEND_QUEUE_HIGH tells its owner to stop producing (`upstream_write_paused(True)`), and
  is told to go on when the queue drains.
- Receiving: WINDOW_UPDATE follows consumption, not receipt. Data is acknowledged as soon as
  it is handed to the stream's owner, unless that owner paused the stream
  (`set_stream_reading(id, False)`: the client downstream is slow); then the credit is held
  until it resumes, so the server stops at the stream window (STREAM_WINDOW) and the proxy
  holds at most that much per stream.
- GOAWAY: streams above last_stream_id never reached the application and fail as refused
  (retriable, Envoy's refused-stream); those below finish. Transport loss fails every open
  stream, saying whether response bytes had arrived (a retry is only allowed before).
- Writes are coalesced: whatever the streams queued in one loop iteration (many requests
  that arrived in one downstream read, the window updates of one upstream read) goes out
  in one write, from one call_soon; each write is a TLS record and a syscall. Closing
  writes what is queued first.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from remora.proxy.codec import http2_frames as wire
from remora.proxy.codec.http2_client import ClientConnection
from remora.proxy.codec.http2_frames import ErrorCode, Http2Error, Setting
from remora.proxy.codec.message import ResponseHead
from remora.proxy.telemetry.counters import set_nodelay
from remora.proxy.upstream.http2_request_head import RequestBlocks
from remora.proxy.upstream.http2_response_head import ResponseHeads, grpc_status_of, is_grpc, trailers_only

STREAM_WINDOW = 1 << 20          # our SETTINGS_INITIAL_WINDOW_SIZE: 1 MiB per stream
CONNECTION_WINDOW = 16 << 20     # the connection window we grant at start
SEND_QUEUE_HIGH = 256 << 10      # queued request bytes per stream before its producer pauses
MAX_HEADER_LIST = 64 << 10       # SETTINGS_MAX_HEADER_LIST_SIZE we announce (Envoy: 60 KiB)
UNLIMITED = 1 << 31


class StreamEvents(Protocol):
    """What an upstream HTTP/2 stream reports to its owner (the attempt)."""

    def on_response_head(self, resp: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_trailers(self, trailers: list) -> None: ...
    def on_response_end(self) -> None: ...
    def on_stream_reset(self, error_code: int, refused: bool, got_bytes: bool) -> None: ...
    def upstream_write_paused(self, paused: bool) -> None: ...


class _Stream:
    """The connection's book-keeping for one stream."""

    __slots__ = ("events", "queue", "queued", "end_queued", "trailers", "reading", "held",
                 "got_bytes", "paused_producer")

    def __init__(self, events: StreamEvents) -> None:
        self.events = events
        self.queue: list[bytes] = []      # request bytes waiting for flow-control window
        self.queued = 0
        self.end_queued = False           # END_STREAM goes after the queue
        self.trailers: list | None = None
        self.reading = True
        self.held = 0                     # received bytes not acknowledged (owner paused)
        self.got_bytes = False
        self.paused_producer = False


class UpstreamHttp2(asyncio.Protocol):
    """One HTTP/2 client connection; the pool hands out its stream capacity."""

    def __init__(self, on_capacity=None, on_closed=None, max_streams: int = UNLIMITED,
                 authority_scheme: bytes = b"http") -> None:
        self.session = ClientConnection(MAX_HEADER_LIST, STREAM_WINDOW)
        self.request_blocks = RequestBlocks(self.session.encoder)   # request heads (http2_request_head.py)
        self.response_heads = ResponseHeads()       # response heads, split (http2_response_head.py)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.max_streams = max_streams
        self.scheme = authority_scheme
        self.on_capacity = on_capacity    # called when a stream ends or settings change
        self.on_closed = on_closed        # called once when the transport is gone
        self.goaway = False               # no new streams: GOAWAY received, or drained by the pool (max duration)
        self.closed = False
        self.streams_opened = 0
        self.requests_limit = 0           # maxRequestsPerConnection (0: none)
        self.write_paused = False
        self.flush_scheduled = False      # a call_soon write is pending (see the module docstring)
        self.idle_since = 0.0             # loop time the last stream ended
        # Set by a TLS dialer (upstream_tls.py), as on HTTP/1 connections.
        self.peer_id: str | None = None
        self.no_reuse = False
        self.tls_host: str | None = None
        self.created_at = 0.0             # loop time it connected (maxConnectionDuration)

    @property
    def retired(self) -> bool:
        """Takes no new stream: GOAWAY seen, closed, or maxRequestsPerConnection used up."""
        return (self.goaway or self.closed
                or bool(self.requests_limit and self.streams_opened >= self.requests_limit))

    # -- capacity ------------------------------------------------------------------------
    def capacity(self) -> int:
        """Streams that may still be opened now."""
        if self.goaway or self.closed or self.transport is None \
                or (self.requests_limit and self.streams_opened >= self.requests_limit):   # retired, inline
            return 0
        peer = self.session.peer_max_concurrent_streams
        return max(0, min(peer, self.max_streams) - len(self.streams))

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)
        session = self.session
        session.initiate_connection()
        session.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive_data(data)
        except Http2Error:
            self._write_now()      # the session queued a GOAWAY naming the error
            self._fail_all(ErrorCode.PROTOCOL_ERROR)
            self.transport.close()
            return
        for event in events:
            handler = _HANDLERS.get(event.__class__)
            if handler is not None:
                handler(self, event)
        self._flush()

    def connection_lost(self, exc) -> None:
        self._fail_all(ErrorCode.CONNECT_ERROR)
        if self.on_closed is not None:
            on_closed, self.on_closed = self.on_closed, None
            on_closed(self)

    def pause_writing(self) -> None:
        # The socket's buffer is full: every stream's producer waits.
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream.events.upstream_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            if not stream.paused_producer:
                stream.events.upstream_write_paused(False)

    # -- the attempt's calls ---------------------------------------------------------------
    def open_stream(self, events: StreamEvents, method: bytes, path: bytes, authority: bytes,
                    headers: list, end_stream: bool) -> int:
        """Send a request head on a new stream; returns the stream id (capacity() must be > 0)."""
        session = self.session
        stream_id = session.get_next_available_stream_id()
        head = [(b":method", method), (b":scheme", self.scheme), (b":authority", authority),
                (b":path", path)]
        head += headers
        self.streams[stream_id] = _Stream(events)
        self.streams_opened += 1
        session.send_headers(stream_id, head, end_stream=end_stream)
        self._flush()
        return stream_id

    def open_request(self, events: StreamEvents, method: bytes, path: bytes, authority: bytes, headers: list,
                     added: bytes, unique: bytes, content_length: int | None, end_stream: bool) -> int:
        """open_stream for a head given as forwarded headers and added header lines: its
        fields and block come from RequestBlocks (http2_request_head.py)."""
        session = self.session
        stream_id = session.open_next_stream()
        self.streams[stream_id] = _Stream(events)
        self.streams_opened += 1
        block = self.request_blocks.block(self.scheme, method, path, authority, headers, added, unique,
                                           content_length)
        session.send_block(stream_id, block, end_stream)
        self._flush()
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue request body bytes; they go out as the peer's windows allow."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if data and not stream.queue and not end_stream:
            # Nothing waits before these bytes: when they fit the windows and one frame,
            # they go out now, without the queue (the common case: a small message).
            # (A stream the session holds closed does not fit: _send_queued drops its bytes.)
            if self.session.send_data_if_fits(stream_id, data):
                self._flush()
                return
        if data:
            stream.queue.append(data)
            stream.queued += len(data)
        stream.end_queued = stream.end_queued or end_stream
        self._send_queued(stream_id, stream)
        self._flush()

    def end_stream(self, stream_id: int, trailers: list | None = None) -> None:
        """The request is complete (with trailers, for gRPC clients that send them)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.queue and not trailers:
            # Nothing waits: END_STREAM goes now (_send_queued's ending, without its loop).
            stream.trailers = None
            stream.end_queued = True
            try:
                self.session.end_stream(stream_id)
                stream.end_queued = False
            except Http2Error:
                pass
            self._flush()
            return
        stream.trailers = trailers
        stream.end_queued = True
        self._send_queued(stream_id, stream)
        self._flush()

    def reset_stream(self, stream_id: int, code: int = ErrorCode.CANCEL) -> None:
        """Cancel a stream (timeout, client gone): RST_STREAM, and forget it."""
        if self.streams.pop(stream_id, None) is None:
            return
        try:
            self.session.reset_stream(stream_id, code)
        except Http2Error:
            pass
        self._flush()
        self._capacity_freed()

    def set_stream_reading(self, stream_id: int, on: bool) -> None:
        """Hold (False) or release (True) the flow-control credit of bytes received on a stream."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.reading == on:
            return
        stream.reading = on
        if on and stream.held:
            held, stream.held = stream.held, 0
            self._acknowledge(stream_id, held)
            self._flush()

    def close(self) -> None:
        """Close the connection (GOAWAY first, so the server knows no more streams come)."""
        if self.closed:
            return
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.session.close_connection()
                self._write_now()
            except Http2Error:
                pass
            self.transport.close()
        self._fail_all(ErrorCode.CANCEL)

    # -- internals -----------------------------------------------------------------------
    def _flush(self) -> None:
        """Bytes are queued in the session: one write at the end of this loop iteration."""
        if not self.flush_scheduled and self.transport is not None:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_now)

    def _write_now(self) -> None:
        self.flush_scheduled = False
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _send_queued(self, stream_id: int, stream: _Stream) -> None:
        session = self.session
        queue = stream.queue
        try:
            while queue:
                window = min(session.local_flow_control_window(stream_id), session.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = queue[0]
                if len(chunk) > window:
                    queue[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    queue.pop(0)
                stream.queued -= len(chunk)
                session.send_data(stream_id, chunk)
            if not queue and stream.end_queued:
                if stream.trailers:
                    session.send_headers(stream_id, stream.trailers, end_stream=True)
                else:
                    session.end_stream(stream_id)
                stream.end_queued = False
                stream.trailers = None
        except Http2Error:
            queue.clear()
            stream.queued = 0
            return
        paused = stream.queued > SEND_QUEUE_HIGH
        if paused != stream.paused_producer:
            stream.paused_producer = paused
            if not self.write_paused:
                stream.events.upstream_write_paused(paused)

    def _acknowledge(self, stream_id: int, length: int) -> None:
        # A stream already over still gives the connection window its credit (the session's rule).
        self.session.acknowledge_received_data(length, stream_id)

    def _capacity_freed(self) -> None:
        if not self.streams and self.transport is not None:
            self.idle_since = asyncio.get_running_loop().time()
        if self.on_capacity is not None:
            self.on_capacity(self)

    def _fail_all(self, code: int) -> None:
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.events.on_stream_reset(code, False, stream.got_bytes)

    # -- session events -------------------------------------------------------------------------
    def _on_response(self, event: wire.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        status, fields, peer_meta, length = self.response_heads.split(event.headers)
        headers = list(fields)      # the router's to change (it adds its own fields)
        stream.got_bytes = True
        trailers = None
        if event.stream_ended and status == 200 and is_grpc(headers):
            headers, trailers = trailers_only(headers)
        resp = ResponseHead(status, b"", headers)
        resp.peer_metadata = peer_meta
        if trailers:      # the router's retry and outlier rules read a trailers-only status
            resp.grpc_status = grpc_status_of(trailers)
        resp.content_length = length
        resp.chunked = length is None and (not event.stream_ended or trailers is not None)
        stream.events.on_response_head(resp)
        if trailers and event.stream_id in self.streams:
            stream.events.on_response_trailers(trailers)

    def _on_data(self, event: wire.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        length = event.flow_controlled_length
        if stream is None:
            self._acknowledge(event.stream_id, length)
            return
        stream.events.on_response_body(event.data)
        if stream.reading:      # _acknowledge, inlined: every DATA frame
            self.session.acknowledge_received_data(length, event.stream_id)
        else:
            stream.held += length

    def _on_trailers(self, event: wire.TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.events.on_response_trailers(list(event.headers))

    def _on_ended(self, event: wire.StreamEnded) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is None:
            return
        if stream.queue or stream.end_queued or self.session.locally_open(event.stream_id):
            # The server answered before the whole request went out (RFC 9113 8.1): the
            # rest is not wanted; cancel our half so the stream slot is freed on both sides.
            try:
                self.session.reset_stream(event.stream_id, ErrorCode.CANCEL)
            except Http2Error:
                pass
        stream.events.on_response_end()
        self._capacity_freed()

    def _on_reset(self, event: wire.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            refused = event.error_code == ErrorCode.REFUSED_STREAM
            stream.events.on_stream_reset(event.error_code, refused, stream.got_bytes)
            self._capacity_freed()

    def _on_window(self, event: wire.WindowUpdated) -> None:
        if not event.stream_id:
            self._send_all_queued()
            return
        stream = self.streams.get(event.stream_id)
        if stream is not None and (stream.queue or stream.end_queued):
            self._send_queued(event.stream_id, stream)

    def _send_all_queued(self) -> None:
        for stream_id, stream in list(self.streams.items()):
            if stream.queue or stream.end_queued:
                self._send_queued(stream_id, stream)

    def _on_settings(self, event: wire.RemoteSettingsChanged) -> None:
        if Setting.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._send_all_queued()     # a larger initial window opens every stream's window
        self._capacity_freed()

    def _on_goaway(self, event: wire.ConnectionTerminated) -> None:
        self.goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream_id in [s for s in self.streams if s > last]:
            stream = self.streams.pop(stream_id)
            # Never processed by the server: safe to retry elsewhere (refused-stream).
            stream.events.on_stream_reset(ErrorCode.REFUSED_STREAM, True, False)
        if self.on_capacity is not None:
            self.on_capacity(self)      # retired now: the pool stops handing it out
        if not self.streams and self.transport is not None:
            self._write_now()
            self.transport.close()


_HANDLERS = {
    wire.ResponseReceived: UpstreamHttp2._on_response,
    wire.DataReceived: UpstreamHttp2._on_data,
    wire.TrailersReceived: UpstreamHttp2._on_trailers,
    wire.StreamEnded: UpstreamHttp2._on_ended,
    wire.StreamReset: UpstreamHttp2._on_reset,
    wire.WindowUpdated: UpstreamHttp2._on_window,
    wire.RemoteSettingsChanged: UpstreamHttp2._on_settings,
    wire.ConnectionTerminated: UpstreamHttp2._on_goaway,
}
