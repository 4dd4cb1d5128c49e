"""The client side of an HTTP/2 connection, sans-IO: what the upstream pools' UpstreamHttp2
(upstream/http2_connection.py) drives, on the same frame layer, HPACK and flow control as
the downstream server (http2_session.py).

It replaced h2's client for the same reason ServerConnection replaced h2's server: on a
unary gRPC call through a sidecar, h2's client was more than half of the Python work
(docs/benchmarks.md). h2's server is the reference it is tested against
(tests/unit/test_http2_client.py).

Role rules (RFC 9113):
- Streams are ours: odd ids, in order (`get_next_available_stream_id`, opened by
  `send_headers`, or by `open_request_stream` / `open_next_stream` before `send_block`
  sends a head the caller encoded with this connection's encoder just then). Push is refused in our
  SETTINGS (ENABLE_PUSH 0), so PUSH_PROMISE and HEADERS on an even stream are connection
  errors.
- A response head has exactly one pseudo-header, a 3-digit :status, first; 1xx heads are
  skipped (the final head follows); a second block is trailers and must end the stream.
  Malformed heads are connection errors (as h2's validate_inbound_headers made them), and
  DATA must add up to a content-length (not checked when the head itself ends the stream:
  HEAD and 304 answers carry one without a body).
- A GOAWAY we send names no stream (the server opens none).
"""
from __future__ import annotations

from remora.proxy.codec import http2_frames as wire
from remora.proxy.codec.header_compression import DEFAULT_TABLE_SIZE
from remora.proxy.codec.http2_frames import DEFAULT_WINDOW, PREFACE, ErrorCode, Http2Error, Setting, settings_frame
from remora.proxy.codec.http2_send import StreamState
from remora.proxy.codec.http2_session import Http2Session
from remora.proxy.codec.http2_validation import check_response_fields, check_trailer_fields


class ClientConnection(Http2Session):
    """One HTTP/2 client connection's protocol state (see the module docstring)."""

    shape_outbound_fields = False    # request fields come from upstream/http2_request_head.py
    remember_encoded = False         # a request head carries a new x-request-id: never the same block

    def __init__(self, max_header_list_size: int, initial_window: int = DEFAULT_WINDOW) -> None:
        super().__init__(0, max_header_list_size, initial_window, preface_expected=False)
        self.next_stream_id = 1

    def initiate_connection(self) -> None:
        self.out.append(PREFACE + settings_frame({
            # The default, said aloud: nginx answers a peer that names a table size by
            # emptying its table (a size update to 0) instead of inserting every answer's
            # fields into ours, so its answers leave the table alone (header_compression.py).
            Setting.HEADER_TABLE_SIZE: DEFAULT_TABLE_SIZE,
            Setting.ENABLE_PUSH: 0,
            Setting.INITIAL_WINDOW_SIZE: self.local_initial_window,
            Setting.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
        }))

    def get_next_available_stream_id(self) -> int:
        return self.next_stream_id

    def peer_last_stream_id(self) -> int:
        return 0

    def send_headers(self, stream_id: int, headers: list, end_stream: bool = False) -> None:
        """A request head on a new stream (the next id), or request trailers on an open one."""
        if stream_id not in self.streams:
            self.open_request_stream(stream_id)
        super().send_headers(stream_id, headers, end_stream)

    def open_request_stream(self, stream_id: int) -> None:
        """Open `stream_id`, which must be the next stream (open_next_stream)."""
        if stream_id != self.next_stream_id:
            raise Http2Error(f"stream {stream_id} is not the next one to open", ErrorCode.STREAM_CLOSED)
        self.open_next_stream()

    def open_next_stream(self) -> int:
        """Open the next stream, whose head follows (send_headers, or send_block with a block
        encoded by this connection's encoder right now): the id it opened."""
        stream_id = self.next_stream_id
        if self.closed:
            raise Http2Error(f"stream {stream_id} is not the next one to open", ErrorCode.STREAM_CLOSED)
        self.streams[stream_id] = StreamState(self.peer_initial_window, self.local_initial_window)
        self.highest_stream_id = stream_id
        self.next_stream_id += 2
        return stream_id

    def locally_open(self, stream_id: int) -> bool:
        """Our half of the stream can still send (the request is not complete)."""
        stream = self.streams.get(stream_id)
        return stream is not None and not stream.local_closed

    def _header_block(self, stream_id: int, end_stream: bool, block: bytes, events: list) -> None:
        # Every block is decoded, whatever becomes of it: the table must stay in step.
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            self.decoder.decode(block)
            if stream is not None:
                raise Http2Error(f"HEADERS on half-closed stream {stream_id}", ErrorCode.STREAM_CLOSED)
            if stream_id > self.highest_stream_id:
                raise Http2Error(f"HEADERS on idle stream {stream_id}")
            return                               # a stream we reset: late frames are ignored
        if not stream.got_head:
            headers, checked = self._decode_checked(block, check_response_fields)
            if headers is None:
                raise Http2Error("response header list over SETTINGS_MAX_HEADER_LIST_SIZE")
            status, length = checked
            if status < 200:
                if end_stream:
                    raise Http2Error("an informational response ended the stream")
                return                           # 1xx: the final head follows
            stream.got_head = True
            stream.expected_length = None if end_stream else length
            events.append(wire.ResponseReceived((stream_id, headers, end_stream)))
        else:
            if not end_stream:
                if self.decoder.decode(block) is None:
                    raise Http2Error("trailers over SETTINGS_MAX_HEADER_LIST_SIZE")
                raise Http2Error("trailers without END_STREAM")
            headers, _ = self._decode_checked(block, check_trailer_fields)
            if headers is None:
                raise Http2Error("trailers over SETTINGS_MAX_HEADER_LIST_SIZE")
            self._check_body_length(stream_id, stream)
            events.append(wire.TrailersReceived((stream_id, headers)))
        if end_stream:
            stream.remote_closed = True      # _close_remote, inlined: every answer's end
            if stream.local_closed:
                del self.streams[stream_id]
            events.append(wire.StreamEnded((stream_id,)))
