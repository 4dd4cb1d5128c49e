"""The server side of an HTTP/2 connection, sans-IO: bytes in, events out, bytes to send.

DownstreamHttp2 (http2.py) feeds it every read and turns its events into calls on the
streams' Exchanges. It replaced h2's H2Connection on the server side: under h2load,
h2's validation layers, stream state tables and frame objects were more than half of
the proxy's CPU (docs/benchmarks.md). h2 remains the client in tests, and the reference
this module is checked against (tests/unit/test_http2_server.py).

What it enforces (RFC 9113, with Envoy's choices where the RFC leaves one):
- The preface, SETTINGS first, frame sizes within our SETTINGS_MAX_FRAME_SIZE (16 KiB),
  frame-type rules (stream 0 or not, lengths, CONTINUATION only right after its HEADERS).
- Request header blocks: HPACK (header_compression.py); pseudo-headers first, each once,
  only :method :scheme :path :authority, required ones present; lower-case token names;
  values without NUL/CR/LF or surrounding whitespace; no connection-specific fields, `te`
  only "trailers". A malformed block is a connection error (PROTOCOL_ERROR), as Envoy
  with override_stream_error_on_invalid_http_message off. Trailers: no pseudo-headers,
  END_STREAM required. DATA must add up to a content-length.
- Streams: client ids odd and increasing; more than SETTINGS_MAX_CONCURRENT_STREAMS open
  refuses the new one (RST_STREAM REFUSED_STREAM, the client may retry it). A header
  block over 8 CONTINUATION frames (nghttp2's limit) or twice the header-list limit in
  bytes ends the connection (ENHANCE_YOUR_CALM): the CONTINUATION flood.
- Flow control: receive windows are debited on DATA and credited only by
  `acknowledge_received_data` (what the proxy passed on), in WINDOW_UPDATEs of at least
  half a window, as h2 batches them. Send windows follow the client's SETTINGS and
  WINDOW_UPDATEs; `local_flow_control_window` says what may be sent now.
- A client's GOAWAY is an event, not the end: streams in flight may finish (the codec
  decides). Frames on streams already closed are ignored, their DATA still debited from
  and credited to the connection window.
This module holds the server's own part (a request header block and new streams); the
frame loop and everything both roles share is Http2Session (http2_session.py), the sending
half Http2Sending (http2_send.py); the client role is http2_client.py. On a connection
error, `receive_data` queues GOAWAY with the error code and raises Http2Error; nothing
more is read or sent after it.
"""
from __future__ import annotations

from remora.proxy.codec import http2_frames as wire
from remora.proxy.codec.http2_frames import ErrorCode, Http2Error, rst_stream_frame
from remora.proxy.codec.http2_send import StreamState
from remora.proxy.codec.http2_session import MAX_CONTINUATIONS, Http2Session
from remora.proxy.codec.http2_validation import check_request_fields, check_trailer_fields

__all__ = ["MAX_CONTINUATIONS", "ServerConnection"]


class ServerConnection(Http2Session):
    """One HTTP/2 server connection's protocol state (see the module docstring)."""

    @property
    def highest_inbound_stream_id(self) -> int:
        """The last stream the client opened (a GOAWAY names it)."""
        return self.highest_stream_id

    def _header_block(self, stream_id: int, end_stream: bool, block: bytes, events: list) -> None:
        # Every block is decoded, whatever becomes of it: the table must stay in step.
        stream = self.streams.get(stream_id)
        if stream is not None:                   # trailers
            if stream.remote_closed or not end_stream:
                self.decoder.decode(block)
                if stream.remote_closed:
                    raise Http2Error(f"HEADERS on half-closed stream {stream_id}", ErrorCode.STREAM_CLOSED)
                raise Http2Error("trailers without END_STREAM")
            headers, _ = self._decode_checked(block, check_trailer_fields)
            if headers is None:
                raise Http2Error("trailers over the header list limit", ErrorCode.ENHANCE_YOUR_CALM)
            self._check_body_length(stream_id, stream)
            events.append(wire.TrailersReceived((stream_id, headers)))
            self._close_remote(stream_id, stream)
            events.append(wire.StreamEnded((stream_id,)))
            return
        if stream_id <= self.highest_stream_id:
            self.decoder.decode(block)
            if stream_id in self.reset_by_us:
                return                           # late frames of a stream we reset
            raise Http2Error(f"HEADERS on closed stream {stream_id}", ErrorCode.STREAM_CLOSED)
        try:
            headers, content_length = self._decode_checked(block, check_request_fields)
        except Http2Error:
            self.highest_stream_id = stream_id   # malformed, but taken: the GOAWAY names it
            raise
        self.highest_stream_id = stream_id
        if len(self.streams) >= self.max_concurrent_streams:
            self.out.append(rst_stream_frame(stream_id, ErrorCode.REFUSED_STREAM))
            self._remember_reset(stream_id)
            return
        stream = StreamState(self.peer_initial_window, self.local_initial_window)
        stream.expected_length = content_length
        self.streams[stream_id] = stream
        events.append(wire.RequestReceived((stream_id, headers, end_stream)))
        if end_stream:
            if stream.expected_length:
                raise Http2Error(f"stream {stream_id} ended before its content-length")
            self._close_remote(stream_id, stream)
            events.append(wire.StreamEnded((stream_id,)))
