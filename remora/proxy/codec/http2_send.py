"""The sending half of an HTTP/2 session (Http2Session, http2_session.py, either role):
what the codecs call to send heads, bodies and trailers, give window back and end the
connection, and the per-stream state both halves share. Frames go to `out` until
`data_to_send`."""
from __future__ import annotations

from itertools import compress, count
from operator import itemgetter

from remora.proxy.codec.header_compression import NOT_INDEXED, HpackEncoder
from remora.proxy.codec.http2_frames import (
    CONTINUATION, DATA, END_HEADERS, END_STREAM, FRAME_HEADER, HEADERS, ErrorCode, Http2Error, Setting, frame,
    goaway_frame, rst_stream_frame, settings_frame, window_update_frame,
)
from remora.proxy.codec.http2_validation import FORBIDDEN_IN_VALUE, outbound_fields

FIRST = itemgetter(0)
END_STREAM_FLAG = bytes((END_STREAM,))   # a DATA frame's flags byte with END_STREAM and nothing else
REMEMBERED_RESETS = 1024       # streams we reset whose late frames are ignored, not errors
ENCODED_CACHE = 64             # header blocks remembered per connection (see _encode)


class StreamState:
    """One stream's flow-control windows and ends, as the connection tracks them."""

    __slots__ = ("send_window", "recv_window", "unacked", "remote_closed", "local_closed",
                 "expected_length", "received_length", "got_head")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0               # bytes passed on, not yet given back in a WINDOW_UPDATE
        self.remote_closed = False     # the client's END_STREAM arrived
        self.local_closed = False      # our END_STREAM went out
        self.expected_length: int | None = None   # the request's content-length
        self.received_length = 0
        self.got_head = False          # a client's: the final response head arrived (then trailers)


class Http2Sending:
    """Http2Session's outbound side (its state is set up by Http2Session.__init__)."""

    # Fields from HTTP/1 upstreams need HTTP/2's shape (lower-case names, no connection
    # fields); the client role's come already shaped (upstream/http2_request_head.py).
    shape_outbound_fields = True
    # Header blocks that leave the table unchanged are remembered (_encode); the client role's
    # request heads always carry a new x-request-id, so it skips the lookup.
    remember_encoded = True
    encoder: HpackEncoder
    encoded_blocks: dict        # tuple(fields) -> (encoder generation, block)
    streams: dict
    reset_by_us: dict
    out: list
    closed: bool
    highest_stream_id: int
    max_concurrent_streams: int
    max_header_list_size: int
    local_initial_window: int
    max_outbound_frame_size: int
    conn_send_window: int
    conn_recv_window: int
    conn_recv_max: int
    conn_unacked: int

    # -- sending -------------------------------------------------------------------------------
    def initiate_connection(self) -> None:
        self.out.append(settings_frame({
            Setting.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
            Setting.INITIAL_WINDOW_SIZE: self.local_initial_window,
            Setting.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
        }))

    def increment_flow_control_window(self, increment: int) -> None:
        """Grow the connection's receive window (once, at the start: see DownstreamHttp2)."""
        if increment > 0:
            self.conn_recv_window += increment
            self.conn_recv_max += increment
            self.out.append(window_update_frame(0, increment))

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def send_headers(self, stream_id: int, headers: list, end_stream: bool = False) -> None:
        """A response head, or trailers with end_stream (names lower-cased here)."""
        stream = self.streams.get(stream_id)     # open for sending (checked inline: every head)
        if stream is None or stream.local_closed or self.closed:
            raise Http2Error(f"stream {stream_id} is closed", ErrorCode.STREAM_CLOSED)
        if self.remember_encoded:
            block = self._encode(headers)
        else:
            block = self.encoder.encode(outbound_fields(headers) if self.shape_outbound_fields else headers)
        # send_block's framing, repeated rather than called: every head and trailers come here.
        length = len(block)
        if length > self.max_outbound_frame_size:
            self._frame_continued(stream_id, block, end_stream)
        else:     # one HEADERS frame (frame(), inlined)
            self.out.append(FRAME_HEADER.pack(length >> 8, length & 0xFF, HEADERS,
                                              END_HEADERS | END_STREAM if end_stream else END_HEADERS, stream_id)
                            + block)
        if end_stream:
            self._close_local(stream_id, stream)

    def send_block(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        """send_headers for a block already encoded, just now, by this session's encoder."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed or self.closed:
            raise Http2Error(f"stream {stream_id} is closed", ErrorCode.STREAM_CLOSED)
        length = len(block)
        if length > self.max_outbound_frame_size:
            self._frame_continued(stream_id, block, end_stream)
        else:     # one HEADERS frame (frame(), inlined: every request head)
            self.out.append(FRAME_HEADER.pack(length >> 8, length & 0xFF, HEADERS,
                                              END_HEADERS | END_STREAM if end_stream else END_HEADERS, stream_id)
                            + block)
        if end_stream:
            self._close_local(stream_id, stream)

    def _frame_continued(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """A block longer than the peer's frame size: HEADERS, then CONTINUATION frames."""
        size = self.max_outbound_frame_size
        self.out.append(frame(HEADERS, END_STREAM if end_stream else 0, stream_id, block[:size]))
        for start in range(size, len(block), size):
            last = start + size >= len(block)
            self.out.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[start:start + size]))

    def _encode(self, headers: list) -> bytes:
        """The HPACK block of `headers`. A block that leaves the table unchanged encodes to the
        same bytes while the table does not change: a response head or trailers repeated on
        every stream are remembered, not re-encoded (`reusable`, header_compression.py).
        Fields whose value changes from call to call (NOT_INDEXED: the
        x-envoy-upstream-service-time every answer carries) are literals that leave the
        table alone: the key names them without their value, the pieces between them are
        remembered, and only the values are encoded on each call."""
        encoder = self.encoder
        # The names are listed and searched in C (list, map, isdisjoint, compress): a head has a dozen
        # fields and one value to leave out (the service time), so a Python loop over the
        # fields was most of this method's work.
        names = list(map(FIRST, headers))
        if NOT_INDEXED.isdisjoint(names):
            key = tuple(headers)
            values = None
        else:
            key = list(headers)
            values = []
            # The positions of the NOT_INDEXED fields, in order, found in C as well.
            for position in compress(count(), map(NOT_INDEXED.__contains__, names)):
                field = headers[position]
                if FORBIDDEN_IN_VALUE.search(field[1]):     # as outbound_fields refuses it
                    raise Http2Error(f"response header {field[0]!r} has a forbidden byte", ErrorCode.INTERNAL_ERROR)
                values.append(field)
                key[position] = field[0]            # a name (bytes) marks where a value goes
            key = tuple(key)
        cache = self.encoded_blocks
        hit = cache.get(key)
        if hit is not None and hit[0] == encoder.generation and encoder.size_update is None:
            pieces = hit[1]
        else:
            pieces = self._encode_pieces(key)
            if encoder.reusable:
                if len(cache) >= ENCODED_CACHE:
                    cache.clear()
                cache[key] = (encoder.generation, pieces)
        if values is None:
            return pieces[0]
        if len(values) == 1:     # the common case: one service time between two pieces
            name, value = values[0]
            return pieces[0] + encoder.literal(name, value) + pieces[1]
        out = [pieces[0]]
        literal = encoder.literal
        for (name, value), piece in zip(values, pieces[1:]):
            out.append(literal(name, value))
            out.append(piece)
        return b"".join(out)

    def _encode_pieces(self, key: tuple) -> list:
        """The blocks of the runs of fields between the names in `key` (see _encode);
        encoder.reusable says whether they all left the table unchanged."""
        encoder = self.encoder
        runs: list = [[]]
        for item in key:
            if item.__class__ is bytes:      # a NOT_INDEXED name: a new run starts after it
                runs.append([])
            else:
                runs[-1].append(item)
        pieces = []
        reusable = True
        for run in runs:
            pieces.append(encoder.encode(outbound_fields(run) if self.shape_outbound_fields else run))
            reusable = reusable and encoder.reusable
        encoder.reusable = reusable
        return pieces

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Body bytes within `local_flow_control_window` and one frame's size (the caller's duty)."""
        stream = self.streams.get(stream_id)     # open for sending, and the frame, inline (every DATA)
        if stream is None or stream.local_closed or self.closed:
            raise Http2Error(f"stream {stream_id} is closed", ErrorCode.STREAM_CLOSED)
        size = len(data)
        if size > stream.send_window or size > self.conn_send_window or size > self.max_outbound_frame_size:
            raise Http2Error(f"{size} bytes exceed the window or frame size on stream {stream_id}",
                             ErrorCode.FLOW_CONTROL_ERROR)
        stream.send_window -= size
        self.conn_send_window -= size
        framed = FRAME_HEADER.pack(size >> 8, size & 0xFF, DATA, END_STREAM if end_stream else 0, stream_id) + data
        self.out.append(framed)
        if end_stream:
            stream.local_closed = True       # _close_local, inlined
            if stream.remote_closed:
                del self.streams[stream_id]
        else:
            self.open_data, self.open_data_stream = framed, stream_id

    def send_data_if_fits(self, stream_id: int, data: bytes) -> bool:
        """send_data (without END_STREAM) when the stream is open for sending and `data` fits
        its window, the connection's and one frame; else False, and nothing is sent. The
        direct (unqueued) send paths call this instead of checking first and sending after:
        one call and one stream lookup per message instead of two."""
        stream = self.streams.get(stream_id)
        size = len(data)
        if (stream is None or stream.local_closed or self.closed or size > stream.send_window
                or size > self.conn_send_window or size > self.max_outbound_frame_size):
            return False
        stream.send_window -= size
        self.conn_send_window -= size
        framed = FRAME_HEADER.pack(size >> 8, size & 0xFF, DATA, 0, stream_id) + data
        self.out.append(framed)
        self.open_data, self.open_data_stream = framed, stream_id
        return True

    def end_stream(self, stream_id: int) -> None:
        """send_data(stream_id, b"", end_stream=True) without its arithmetic (every request
        with a body ends so): an empty frame moves no window, and only a window already
        below zero refuses it, as send_data's check does."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed or self.closed:
            raise Http2Error(f"stream {stream_id} is closed", ErrorCode.STREAM_CLOSED)
        if stream.send_window < 0 or self.conn_send_window < 0:
            raise Http2Error(f"0 bytes exceed the window or frame size on stream {stream_id}",
                             ErrorCode.FLOW_CONTROL_ERROR)
        out = self.out
        last = out[-1] if out else None
        if last is self.open_data and last is not None and self.open_data_stream == stream_id:
            # This stream's DATA frame is the last one written and not sent yet: it carries
            # END_STREAM itself (its flags byte), as a client that knows its body ends there
            # sends it, instead of one more empty frame the peer must parse.
            out[-1] = last[:4] + END_STREAM_FLAG + last[5:]
            self.open_data = None
        else:
            out.append(FRAME_HEADER.pack(0, 0, DATA, END_STREAM, stream_id))
        stream.local_closed = True       # _close_local, inlined
        if stream.remote_closed:
            del self.streams[stream_id]

    def local_flow_control_window(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)     # open for sending
        if stream is None or stream.local_closed or self.closed:
            raise Http2Error(f"stream {stream_id} is closed", ErrorCode.STREAM_CLOSED)
        window = stream.send_window
        return window if window < self.conn_send_window else self.conn_send_window

    def reset_stream(self, stream_id: int, code: int) -> None:
        if self.closed or self.streams.pop(stream_id, None) is None:
            raise Http2Error(f"stream {stream_id} is closed", ErrorCode.STREAM_CLOSED)
        self.out.append(rst_stream_frame(stream_id, code))
        self._remember_reset(stream_id)

    def peer_last_stream_id(self) -> int:
        """The last stream the peer opened that a GOAWAY from us names (a client's: none)."""
        return self.highest_stream_id

    def close_connection(self, code: int = ErrorCode.NO_ERROR) -> None:
        """GOAWAY with `code`: nothing more is read or sent."""
        if not self.closed:
            self.out.append(goaway_frame(self.peer_last_stream_id(), code))
            self.closed = True

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        """`size` bytes of the stream's DATA were passed on: give window back, in batches."""
        if self.closed or size <= 0:
            return
        self.conn_unacked += size
        if self.conn_unacked >= self.conn_recv_max >> 1:
            self.out.append(window_update_frame(0, self.conn_unacked))
            self.conn_recv_window += self.conn_unacked
            self.conn_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return      # the client sends nothing more on it: no window to give
        stream.unacked += size
        if stream.unacked >= self.local_initial_window >> 1:
            self.out.append(window_update_frame(stream_id, stream.unacked))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def _close_local(self, stream_id: int, stream: StreamState) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream_id]

    def _close_remote(self, stream_id: int, stream: StreamState) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[stream_id]

    def _remember_reset(self, stream_id: int) -> None:
        resets = self.reset_by_us
        resets[stream_id] = None
        if len(resets) > REMEMBERED_RESETS:
            del resets[next(iter(resets))]
