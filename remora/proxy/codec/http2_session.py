"""What both ends of an HTTP/2 connection do alike, sans-IO: the frame loop, flow control,
SETTINGS, PING, GOAWAY, RST_STREAM, CONTINUATION assembly and HPACK decoding.

ServerConnection (http2_server.py, the downstream codec's) and ClientConnection
(http2_client.py, the upstream pools') add what their role reads in a header block; the
sending half is Http2Sending (http2_send.py). The rules are written out in
http2_server.py's docstring; on a connection error `receive_data` queues GOAWAY with its
code and raises Http2Error, and nothing more is read or sent after it.
"""
from __future__ import annotations

import struct

from remora.proxy.codec import http2_frames as wire
from remora.proxy.codec.header_compression import UNIQUE_PER_REQUEST, CompressionError, HpackDecoder, HpackEncoder
from remora.proxy.codec.http2_frames import (
    ACK, CONTINUATION, DATA, DEFAULT_FRAME_SIZE, DEFAULT_WINDOW, END_HEADERS, END_STREAM, GOAWAY,
    HEADERS, MAX_WINDOW, PADDED, PING, PREFACE, PRIORITY, PRIORITY_FLAG, PUSH_PROMISE, RST_STREAM, SETTINGS,
    WINDOW_UPDATE, ErrorCode, Http2Error, Setting, frame, rst_stream_frame,
)
from remora.proxy.codec.http2_send import Http2Sending, StreamState
from remora.proxy.codec.http2_validation import check_field

MAX_CONTINUATIONS = 8          # nghttp2's limit on CONTINUATION frames per header block
BLOCK_CACHE = 64               # header blocks remembered per connection, with their check
UNLIMITED_STREAMS = (1 << 31) - 1
U32 = struct.Struct(">L")
# A frame header as read: the 24-bit length as its top byte and low 16 bits, so that one
# test of `top` and the low part checks SETTINGS_MAX_FRAME_SIZE (16384) without joining them.
READ_FRAME_HEADER = struct.Struct(">BHBBL")


class Http2Session(Http2Sending):
    """One HTTP/2 connection's protocol state, either role (see the module docstring)."""

    def __init__(self, max_concurrent_streams: int, max_header_list_size: int,
                 initial_window: int = DEFAULT_WINDOW, preface_expected: bool = True) -> None:
        self.max_concurrent_streams = max_concurrent_streams   # ours (SETTINGS)
        self.peer_max_concurrent_streams = UNLIMITED_STREAMS
        self.max_header_list_size = max_header_list_size
        self.local_initial_window = initial_window
        self.decoder = HpackDecoder(max_header_list_size)
        self.encoder = HpackEncoder()
        self.streams: dict[int, StreamState] = {}
        self.reset_by_us: dict[int, None] = {}    # insertion-ordered: the oldest is dropped first
        self.highest_stream_id = 0                 # the highest stream id in use (idle above it)
        self.out: list[bytes] = []
        self.open_data: bytes | None = None        # the last DATA frame in `out`, sent without END_STREAM
        self.open_data_stream = 0                  # ... and its stream (http2_send.end_stream)
        self.buffer = b""
        self.preface_seen = preface_expected is False
        self.settings_seen = False
        self.closed = False
        self.partial: tuple | None = None          # (stream id, flags, [fragments], count, bytes)
        self.checked_blocks: dict = {}    # block -> (generation, check, fields, result, replay, list size)
        self.prefix_offset = 0            # where the last block's trailing unique fields began
        self.encoded_blocks: dict = {}              # fields -> (encoder generation, block): http2_send.py
        self.peer_initial_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        self.conn_send_window = DEFAULT_WINDOW
        self.conn_recv_window = DEFAULT_WINDOW
        self.conn_recv_max = DEFAULT_WINDOW
        self.conn_unacked = 0

    # -- receiving -------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list:
        if self.closed:
            return []
        events: list = []
        try:
            self._receive(data, events)
        except Http2Error as err:
            self.close_connection(err.code)
            raise
        except CompressionError as err:
            self.close_connection(ErrorCode.COMPRESSION_ERROR)
            raise Http2Error(str(err), ErrorCode.COMPRESSION_ERROR) from err
        return events

    def _receive(self, data: bytes, events: list) -> None:
        buffer = self.buffer + data if self.buffer else data
        pos = 0
        if not self.preface_seen:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(buffer):
                    raise Http2Error("invalid connection preface")
                self.buffer = buffer
                return
            if buffer[:len(PREFACE)] != PREFACE:
                raise Http2Error("invalid connection preface")
            self.preface_seen = True
            pos = len(PREFACE)
        end = len(buffer)
        last_header = end - 9      # the last position a whole frame header starts at
        unpack = READ_FRAME_HEADER.unpack_from
        # DATA, HEADERS, RST_STREAM and WINDOW_UPDATE (most frames: a gRPC server ends its
        # answers with RST_STREAM NO_ERROR, a bulk reader sends WINDOW_UPDATEs) skip _frame's
        # checks while they cannot apply: no header block is open and SETTINGS came first
        # (`direct`, updated when that changes). Nothing here closes the session (an error
        # raises), so the loop needs no check of it.
        direct = self.partial is None and self.settings_seen
        while pos <= last_header:
            top, length, kind, flags, stream_id = unpack(buffer, pos)
            if top or length > DEFAULT_FRAME_SIZE:
                raise Http2Error(f"a {(top << 16) | length}-byte frame exceeds SETTINGS_MAX_FRAME_SIZE",
                                 ErrorCode.FRAME_SIZE_ERROR)
            start = pos + 9
            pos = start + length
            if pos > end:
                pos = start - 9    # the frame is not whole yet: kept from its header on
                break
            payload = buffer[start:pos]
            if not direct:
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload, events)
                direct = self.partial is None and self.settings_seen
            elif kind == DATA:
                self._data(flags, stream_id & 0x7FFFFFFF, payload, events)
            elif kind == HEADERS:
                direct = self._headers(flags, stream_id & 0x7FFFFFFF, payload, events)
            elif kind == RST_STREAM:
                self._rst_stream(stream_id & 0x7FFFFFFF, payload, events)
            elif kind == WINDOW_UPDATE:
                self._window_update(stream_id & 0x7FFFFFFF, payload, events)
            else:
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload, events)
                direct = self.partial is None and self.settings_seen
        self.buffer = buffer[pos:] if pos < end else b""

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, events: list) -> None:
        if self.partial is not None and (kind != CONTINUATION or stream_id != self.partial[0]):
            raise Http2Error("a header block was interrupted before END_HEADERS")
        if not self.settings_seen:
            if kind != SETTINGS or flags & ACK:
                raise Http2Error("the connection preface must be SETTINGS first")
            self.settings_seen = True
        if kind == DATA:
            self._data(flags, stream_id, payload, events)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload, events)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload, events)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload, events)
        elif kind == RST_STREAM:
            self._rst_stream(stream_id, payload, events)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload, events)
        elif kind == PING:
            if stream_id:
                raise Http2Error("PING on a stream")
            if len(payload) != 8:
                raise Http2Error("PING of the wrong size", ErrorCode.FRAME_SIZE_ERROR)
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
                events.append(wire.PingReceived((payload,)))
        elif kind == PRIORITY:
            if not stream_id:
                raise Http2Error("PRIORITY on stream 0")
            if len(payload) != 5:
                raise Http2Error("PRIORITY of the wrong size", ErrorCode.FRAME_SIZE_ERROR)
        elif kind == GOAWAY:
            if stream_id or len(payload) < 8:
                raise Http2Error("malformed GOAWAY")
            last, code = struct.unpack_from(">LL", payload)
            events.append(wire.ConnectionTerminated((code, last & 0x7FFFFFFF)))
        elif kind == PUSH_PROMISE:
            raise Http2Error("PUSH_PROMISE: push is not enabled (a client never sends it)")
        # other frame types are ignored (RFC 9113 5.5)

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        """A PADDED frame's payload without its padding (callers check the flag first)."""
        if not payload or payload[0] >= len(payload):
            raise Http2Error("padding longer than the frame")
        return payload[1:len(payload) - payload[0]]

    def _data(self, flags: int, stream_id: int, payload: bytes, events: list) -> None:
        if not stream_id:
            raise Http2Error("DATA on stream 0")
        length = len(payload)
        self.conn_recv_window -= length
        if self.conn_recv_window < 0:
            raise Http2Error("DATA beyond the connection window", ErrorCode.FLOW_CONTROL_ERROR)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.highest_stream_id:
                raise Http2Error(f"DATA on idle stream {stream_id}")
            if stream is not None:     # half-closed (remote): a stream error (RFC 9113 6.1)
                self.streams.pop(stream_id)
                self.out.append(rst_stream_frame(stream_id, ErrorCode.STREAM_CLOSED))
                self._remember_reset(stream_id)
                events.append(wire.StreamReset((stream_id, ErrorCode.STREAM_CLOSED)))
            self.acknowledge_received_data(length, 0)   # the connection window only
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            raise Http2Error(f"DATA beyond stream {stream_id}'s window", ErrorCode.FLOW_CONTROL_ERROR)
        data = self._unpad(flags, payload) if flags & PADDED else payload
        stream.received_length += len(data)
        expected = stream.expected_length
        if expected is not None and (stream.received_length > expected
                                     or (flags & END_STREAM and stream.received_length != expected)):
            raise Http2Error(f"stream {stream_id}'s DATA does not add up to its content-length")
        events.append(wire.DataReceived((stream_id, data, length)))
        if flags & END_STREAM:
            stream.remote_closed = True      # _close_remote, inlined: every request's end
            if stream.local_closed:
                del self.streams[stream_id]
            events.append(wire.StreamEnded((stream_id,)))

    def _headers(self, flags: int, stream_id: int, payload: bytes, events: list) -> bool:
        """A HEADERS frame; True when its block is whole (False: CONTINUATION must follow)."""
        if not stream_id or not stream_id & 1:
            raise Http2Error(f"HEADERS on stream {stream_id}: client-initiated streams are odd")
        fragment = self._unpad(flags, payload) if flags & PADDED else payload
        if flags & PRIORITY_FLAG:
            if len(fragment) < 5:
                raise Http2Error("HEADERS too short for its priority")
            fragment = fragment[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, bool(flags & END_STREAM), fragment, events)
            return True
        self.partial = (stream_id, flags, [fragment], 0, len(fragment))
        return False

    def _continuation(self, flags: int, stream_id: int, payload: bytes, events: list) -> None:
        if self.partial is None:
            raise Http2Error("CONTINUATION without HEADERS")
        sid, first_flags, fragments, count, size = self.partial
        count += 1
        size += len(payload)
        if count > MAX_CONTINUATIONS or size > 2 * self.max_header_list_size:
            raise Http2Error("header block too long (CONTINUATION flood)", ErrorCode.ENHANCE_YOUR_CALM)
        fragments.append(payload)
        if flags & END_HEADERS:
            self.partial = None
            self._header_block(sid, bool(first_flags & END_STREAM), b"".join(fragments), events)
        else:
            self.partial = (sid, first_flags, fragments, count, size)

    def _window_update(self, stream_id: int, payload: bytes, events: list) -> None:
        if len(payload) != 4:
            raise Http2Error("WINDOW_UPDATE of the wrong size", ErrorCode.FRAME_SIZE_ERROR)
        increment = U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise Http2Error("WINDOW_UPDATE of 0 on the connection")
            self.conn_send_window += increment
            if self.conn_send_window > MAX_WINDOW:
                raise Http2Error("connection window above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR)
            events.append(wire.WindowUpdated((0, increment)))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.highest_stream_id:
                raise Http2Error(f"WINDOW_UPDATE on idle stream {stream_id}")
            return                               # closed: ignored
        if not increment or stream.send_window + increment > MAX_WINDOW:
            code = ErrorCode.FLOW_CONTROL_ERROR if increment else ErrorCode.PROTOCOL_ERROR
            self.streams.pop(stream_id)
            self.out.append(rst_stream_frame(stream_id, code))
            self._remember_reset(stream_id)
            events.append(wire.StreamReset((stream_id, code)))
            return
        stream.send_window += increment
        events.append(wire.WindowUpdated((stream_id, increment)))

    def _rst_stream(self, stream_id: int, payload: bytes, events: list) -> None:
        if not stream_id:
            raise Http2Error("RST_STREAM on stream 0")
        if len(payload) != 4:
            raise Http2Error("RST_STREAM of the wrong size", ErrorCode.FRAME_SIZE_ERROR)
        if stream_id > self.highest_stream_id:
            raise Http2Error(f"RST_STREAM on idle stream {stream_id}")
        if self.streams.pop(stream_id, None) is not None:
            events.append(wire.StreamReset((stream_id, U32.unpack(payload)[0])))

    def _settings(self, flags: int, stream_id: int, payload: bytes, events: list) -> None:
        if stream_id:
            raise Http2Error("SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise Http2Error("SETTINGS ACK with a payload", ErrorCode.FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise Http2Error("SETTINGS of the wrong size", ErrorCode.FRAME_SIZE_ERROR)
        changed = {}
        for offset in range(0, len(payload), 6):
            code, value = struct.unpack_from(">HL", payload, offset)
            if code == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Http2Error("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR)
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise Http2Error("a stream window above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR)
            elif code == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= wire.MAX_FRAME_SIZE:
                    raise Http2Error(f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.max_outbound_frame_size = value
            elif code == Setting.MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent_streams = value
            elif code == Setting.HEADER_TABLE_SIZE:
                self.encoder.set_max_table_size(value)
            elif code in (Setting.ENABLE_PUSH, Setting.ENABLE_CONNECT_PROTOCOL) and value > 1:
                raise Http2Error(f"setting {code} must be 0 or 1")
            changed[code] = value
        self.out.append(frame(SETTINGS, ACK, 0))
        events.append(wire.RemoteSettingsChanged((changed,)))

    def _decode_checked(self, block: bytes, check) -> tuple[list | None, object]:
        """The block's fields and `check(fields)` (None, None over the header-list limit).

        A peer repeating its requests or answers sends the same bytes every time once HPACK
        indexed them (or never indexes them, as nghttp2 does :path and nginx everything). A
        block that left the table as it was decodes to the same fields (passing the same
        check) while the table does not change: it is remembered with its check's result
        (`reusable`, header_compression.py's docstring). A block that reads no dynamic entry
        decodes to the same fields at any generation; replaying it inserts what it inserted
        (`replay`). A block ending in values new per request (a Remora peer's) is remembered
        up to them (`prefix`): see _decode_tail."""
        decoder = self.decoder
        cache = self.checked_blocks
        hit = cache.get(block)
        if hit is not None and hit[1] is check:
            replay = hit[4]
            if replay is not None:
                if replay:
                    decoder.insert(replay)
                return list(hit[2]), hit[3]
            if hit[0] == decoder.generation:
                return list(hit[2]), hit[3]
        offset = self.prefix_offset
        if offset and len(block) > offset:
            hit = cache.get(block[:offset])
            if hit is not None and hit[1] is check and (
                    hit[4] == () or (hit[4] is None and hit[0] == decoder.generation)):
                return self._decode_tail(block[offset:], hit, check)
        headers = decoder.decode(block)
        if headers is None:
            return None, None
        result = check(headers)
        if decoder.reusable or decoder.replay is not None:
            if len(cache) >= BLOCK_CACHE:
                cache.clear()
            cache[block] = (decoder.generation, check, tuple(headers), result, decoder.replay, decoder.list_size)
        elif decoder.prefix is not None:
            self._remember_prefix(block, headers, check, decoder.prefix)
        return headers, result

    def _remember_prefix(self, block: bytes, headers: list, check, prefix: tuple) -> None:
        """Remember a block's part before its trailing unique fields as a reusable block of
        its own (it decodes alone to the same fields and left the table unchanged)."""
        # The generation the prefix decodes in: the block's own trailing fields may have
        # changed the table since (inserted with indexing), and then it is never hit again.
        offset, size, count, generation = prefix
        fields = headers[:count]
        if not fields:
            return
        try:
            result = check(fields)   # the same as the block's: the unique fields add nothing to it
        except Http2Error:
            return
        cache = self.checked_blocks
        if len(cache) >= BLOCK_CACHE:
            cache.clear()
        cache[block[:offset]] = (generation, check, tuple(fields), result, None, size)
        self.prefix_offset = offset

    def _decode_tail(self, tail: bytes, hit: tuple, check) -> tuple[list | None, object]:
        """A block whose first bytes are a remembered prefix: decode only the rest, in the
        table state the prefix leaves (it left it unchanged). When the rest is unique fields
        only, the prefix's check result stands and each new field gets _check_field alone
        (they are never pseudo-headers nor content-length); otherwise the whole list is checked."""
        decoder = self.decoder
        if tail[0] & 0xE0 == 0x20:
            raise CompressionError("table size update after a field")
        fields = decoder.decode(tail)
        if fields is None or hit[5] + decoder.list_size > self.max_header_list_size:
            return None, None
        headers = list(hit[2])
        headers += fields
        for name, value in fields:
            if name not in UNIQUE_PER_REQUEST:
                return headers, check(headers)
        for name, value in fields:
            check_field(name, value)
        return headers, hit[3]

    def _check_body_length(self, stream_id: int, stream: StreamState) -> None:
        """At the end of a stream's body (its trailers): the DATA adds up to its content-length."""
        expected = stream.expected_length
        if expected is not None and stream.received_length != expected:
            raise Http2Error(f"stream {stream_id}'s DATA does not add up to its content-length")

    def _header_block(self, stream_id: int, end_stream: bool, block: bytes, events: list) -> None:
        raise NotImplementedError   # the role's: a request (server) or a response (client)
