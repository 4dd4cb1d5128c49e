"""The downstream HTTP/2 session (codec/http2_server.py) against h2's client, the reference.

Every exchange here is an h2 client connection talking to ServerConnection through bytes:
what h2 sends must be understood, what the server sends must be valid to h2, and what
RFC 9113 calls a connection error must end in GOAWAY with its code.
"""
from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame, DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame,
)

from remora.proxy.codec import http2_frames as f
from remora.proxy.codec.http2_frames import ErrorCode, Http2Error
from remora.proxy.codec.http2_server import MAX_CONTINUATIONS, ServerConnection

REQUEST = [(b":method", b"GET"), (b":path", b"/a"), (b":scheme", b"http"), (b":authority", b"svc")]


class Pair:
    """An h2 client and a ServerConnection joined by bytes."""

    def __init__(self, max_streams: int = 100) -> None:
        self.server = ServerConnection(max_streams, 60 * 1024)
        self.server.initiate_connection()
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.client_events: list = []
        self.pump()

    def pump(self, raw: bytes = b"") -> list:
        """Client bytes (and `raw` after them) to the server; the server's answer back."""
        events = self.server.receive_data(self.client.data_to_send() + raw)
        out = self.server.data_to_send()
        if out:
            self.client_events += self.client.receive_data(out)
            more = self.client.data_to_send()
            if more:
                events += self.server.receive_data(more)
                self.client_events += self.client.receive_data(self.server.data_to_send())
        return events

    def goaway(self):
        ends = [e for e in self.client_events if isinstance(e, h2.events.ConnectionTerminated)]
        return ends[-1] if ends else None


def _kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def test_request_and_response_round_trip_through_h2():
    """A GET with a body-less END_STREAM becomes RequestReceived + StreamEnded; the response
    head, body and END_STREAM on the last DATA frame arrive at h2 intact."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST + [(b"user-agent", b"t")], end_stream=True)
    events = pair.pump()
    assert _kinds(events) == ["RequestReceived", "StreamEnded"]
    assert events[0].headers == REQUEST + [(b"user-agent", b"t")] and events[0].stream_ended
    pair.server.send_headers(1, [(b":status", b"200"), (b"Content-Type", b"text/plain"), (b"Connection", b"close")])
    pair.server.send_data(1, b"hello", end_stream=True)
    pair.pump()
    got = {type(e).__name__: e for e in pair.client_events}
    assert got["ResponseReceived"].headers == [(b":status", b"200"), (b"content-type", b"text/plain")]
    assert got["DataReceived"].data == b"hello" and "StreamEnded" in got
    assert 1 not in pair.server.streams, "a stream ended both ways is forgotten"


def test_hpack_dynamic_table_stays_in_step_over_many_responses():
    """Repeated and changing response fields over 300 streams (the table evicts) all decode in
    h2 exactly as sent; a block sent again costs one byte per field."""
    pair = Pair()
    for i in range(300):
        sid = 1 + 2 * i
        pair.client.send_headers(sid, REQUEST, end_stream=True)
        pair.pump()
        block = [(b":status", b"200"), (b"x-seq", b"%d" % i), (b"server", b"envoy"), (b"x-big", b"v" * (i % 50))]
        pair.server.send_headers(sid, block, end_stream=True)
        pair.pump()
        heads = [e for e in pair.client_events if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid]
        assert heads and heads[0].headers == block, i
    assert len(pair.server.encoder.encode(block)) == len(block)


def test_table_size_setting_from_the_client_is_obeyed():
    """SETTINGS_HEADER_TABLE_SIZE 0 from the client: the next block starts with a size update
    and h2 (whose decoder then allows no table) still decodes every response."""
    pair = Pair()
    pair.client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    pair.pump()
    for sid in (1, 3):
        pair.client.send_headers(sid, REQUEST, end_stream=True)
        pair.pump()
        pair.server.send_headers(sid, [(b":status", b"200"), (b"x-a", b"b")], end_stream=True)
        pair.pump()
    heads = [e.headers for e in pair.client_events if isinstance(e, h2.events.ResponseReceived)]
    assert heads == [[(b":status", b"200"), (b"x-a", b"b")]] * 2 and pair.goaway() is None


def test_request_body_flow_control_gives_window_back_only_when_acknowledged():
    """DATA debits the windows; nothing is returned until acknowledge_received_data, and then
    as WINDOW_UPDATEs h2 applies (the client may send a whole window again)."""
    pair = Pair()
    pair.client.send_headers(1, [(b":method", b"POST"), *REQUEST[1:]], end_stream=False)
    for size in (16384, 16384, 16384, 16383):
        pair.client.send_data(1, b"x" * size)
    events = pair.pump()
    assert sum(e.flow_controlled_length for e in events if isinstance(e, f.DataReceived)) == 65535
    assert pair.client.local_flow_control_window(1) == 0
    pair.server.acknowledge_received_data(65535, 1)
    pair.pump()
    assert pair.client.local_flow_control_window(1) == 65535


def test_send_window_follows_client_settings_and_window_updates():
    """The server never sends beyond the client's window: an INITIAL_WINDOW_SIZE of 10 allows
    10 bytes, a WINDOW_UPDATE of 5 five more, and more than that is refused."""
    pair = Pair()
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(b":status", b"200")])
    assert pair.server.local_flow_control_window(1) == 10
    pair.server.send_data(1, b"0123456789")
    with pytest.raises(Http2Error):
        pair.server.send_data(1, b"x")
    pair.pump(WindowUpdateFrame(1, window_increment=5).serialize())
    assert pair.server.local_flow_control_window(1) == 5


def test_client_reset_and_ping_and_goaway_are_events():
    """RST_STREAM ends the stream (StreamReset), PING is answered with the same data, and a
    client GOAWAY is reported, not acted on."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=False)
    pair.pump()
    events = pair.pump(RstStreamFrame(1, error_code=ErrorCode.CANCEL).serialize()
                       + PingFrame(0, opaque_data=b"12345678").serialize()
                       + struct.pack(">HBBBL", 0, 8, f.GOAWAY, 0, 0) + struct.pack(">LL", 1, 0))
    assert _kinds(events) == ["StreamReset", "PingReceived", "ConnectionTerminated"]
    acks = [e for e in pair.client_events if isinstance(e, h2.events.PingAckReceived)]
    assert acks and acks[0].ping_data == b"12345678" and not pair.server.closed


def test_streams_over_the_limit_are_refused_not_the_connection():
    """With SETTINGS_MAX_CONCURRENT_STREAMS 2 the third open stream gets RST_STREAM
    REFUSED_STREAM (the client may retry it), and the connection goes on."""
    pair = Pair(max_streams=2)
    for sid in (1, 3):
        pair.client.send_headers(sid, REQUEST, end_stream=False)
    # h2 itself keeps to the limit: the third HEADERS is written by hand.
    third = HeadersFrame(5, data=Encoder().encode(REQUEST), flags=["END_HEADERS"]).serialize()
    events = pair.server.receive_data(pair.client.data_to_send() + third)
    assert [e.stream_id for e in events if isinstance(e, f.RequestReceived)] == [1, 3]
    assert f.rst_stream_frame(5, ErrorCode.REFUSED_STREAM) in pair.server.data_to_send()
    assert not pair.server.closed


def test_oversized_header_list_is_decoded_but_marked():
    """A header list over the limit comes as RequestReceived with headers None (answered 431
    by the codec); the HPACK table still follows, so the next request decodes."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST + [(b"x-%d" % i, b"v" * 1000) for i in range(70)], end_stream=True)
    pair.client.send_headers(3, REQUEST, end_stream=True)
    events = pair.pump()
    requests = [e for e in events if isinstance(e, f.RequestReceived)]
    assert [e.headers for e in requests] == [None, REQUEST]


MALFORMED = {
    "upper-case name": REQUEST + [(b"X-Upper", b"1")],
    "connection header": REQUEST + [(b"connection", b"keep-alive")],
    "te gzip": REQUEST + [(b"te", b"gzip")],
    "pseudo after regular": [REQUEST[0], (b"x", b"1"), *REQUEST[1:]],
    "unknown pseudo": REQUEST + [(b":status", b"200")],
    "duplicate pseudo": REQUEST + [(b":path", b"/b")],
    "no :path": REQUEST[:1] + REQUEST[2:],
    "newline in value": REQUEST + [(b"x", b"a\nb")],
    "leading space in value": REQUEST + [(b"x", b" a")],
    "bad content-length": REQUEST + [(b"content-length", b"1x")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_a_connection_error(case):
    """What RFC 9113 8.2/8.3 calls malformed ends the connection with GOAWAY PROTOCOL_ERROR
    (Envoy's default), raised to the codec."""
    pair = Pair()
    block = Encoder().encode(MALFORMED[case])
    with pytest.raises(Http2Error):
        pair.server.receive_data(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert pair.server.data_to_send().endswith(f.goaway_frame(1, ErrorCode.PROTOCOL_ERROR)) and pair.server.closed


def test_body_must_add_up_to_content_length():
    """DATA longer than the content-length the request declared is a connection error."""
    pair = Pair()
    pair.client.send_headers(1, [(b":method", b"POST"), *REQUEST[1:], (b"content-length", b"3")])
    pair.pump()
    with pytest.raises(Http2Error):
        pair.pump(DataFrame(1, data=b"abcd", flags=["END_STREAM"]).serialize())


FRAME_ERRORS = {
    "DATA on stream 0": (struct.pack(">HBBBL", 0, 1, f.DATA, 0, 0) + b"x", ErrorCode.PROTOCOL_ERROR),
    "even stream": (HeadersFrame(2, data=b"\x82", flags=["END_HEADERS"]).serialize(), ErrorCode.PROTOCOL_ERROR),
    "frame too large": (struct.pack(">HBBBL", 0x100, 1, f.DATA, 0, 1), ErrorCode.FRAME_SIZE_ERROR),
    "PING wrong size": (struct.pack(">HBBBL", 0, 4, f.PING, 0, 0) + b"1234", ErrorCode.FRAME_SIZE_ERROR),
    "window overflow": (WindowUpdateFrame(0, window_increment=(1 << 31) - 1).serialize(),
                        ErrorCode.FLOW_CONTROL_ERROR),
    "bad HPACK index": (HeadersFrame(1, data=b"\xff\x7f", flags=["END_HEADERS"]).serialize(),
                        ErrorCode.COMPRESSION_ERROR),
    "CONTINUATION alone": (ContinuationFrame(1, data=b"", flags=["END_HEADERS"]).serialize(), ErrorCode.PROTOCOL_ERROR),
    "RST on idle stream": (RstStreamFrame(7, error_code=0).serialize(), ErrorCode.PROTOCOL_ERROR),
    "SETTINGS bad frame size": (SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 100}).serialize(),
                                ErrorCode.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("case", sorted(FRAME_ERRORS))
def test_frame_level_connection_errors_send_goaway_with_their_code(case):
    """Each connection error of RFC 9113 ends in GOAWAY carrying its own error code."""
    raw, code = FRAME_ERRORS[case]
    pair = Pair()
    with pytest.raises(Http2Error):
        pair.server.receive_data(raw)
    assert pair.server.data_to_send().endswith(f.goaway_frame(0, code)) and pair.server.closed


def test_continuation_flood_is_ended():
    """A header block spread over more than 8 CONTINUATION frames ends the connection with
    ENHANCE_YOUR_CALM (nghttp2's limit; the CONTINUATION flood)."""
    pair = Pair()
    raw = HeadersFrame(1, data=b"", flags=[]).serialize()
    raw += b"".join(ContinuationFrame(1, data=b"").serialize() for _ in range(MAX_CONTINUATIONS + 1))
    with pytest.raises(Http2Error):
        pair.server.receive_data(raw)
    assert pair.server.data_to_send().endswith(f.goaway_frame(0, ErrorCode.ENHANCE_YOUR_CALM))


def test_header_block_split_over_continuations_and_reads():
    """HEADERS + CONTINUATION, fed one byte per read, make one request."""
    pair = Pair()
    block = Encoder().encode(REQUEST)
    raw = (HeadersFrame(1, data=block[:3]).serialize()
           + ContinuationFrame(1, data=block[3:], flags=["END_HEADERS"]).serialize()
           + DataFrame(1, data=b"", flags=["END_STREAM"]).serialize())
    events = []
    for i in range(len(raw)):
        events += pair.server.receive_data(raw[i:i + 1])
    assert _kinds(events) == ["RequestReceived", "DataReceived", "StreamEnded"] and events[0].headers == REQUEST


def test_bad_preface_is_refused():
    """Bytes that are not the client preface end the connection before any frame."""
    server = ServerConnection(100, 60 * 1024)
    with pytest.raises(Http2Error):
        server.receive_data(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")


def test_remembered_blocks_follow_the_table():
    """A request block replayed after the client's table changed decodes as the table now
    says (as hpack's reference decoder does), not as it did when first seen; repeated
    response heads, remembered encoded, still decode in h2 when new fields come between."""
    from hpack import Decoder

    pair = Pair()
    reference = Decoder()
    static = b"\x82\x84\x86\x01\x03svc"     # :method GET, :path /, :scheme http (static), :authority literal
    first = static + b"\x40\x03x-a\x011"       # x-a: 1 added to the table (index 62)
    repeat = static + b"\xbe"                  # index 62: leaves the table as it is, so remembered
    shifted = static + b"\x40\x03x-a\x012"     # x-a: 2 added: index 62 is now x-a: 2
    seen = []
    for i, block in enumerate([first, repeat, shifted, repeat]):
        events = pair.server.receive_data(HeadersFrame(1 + 2 * i, data=block, flags=["END_HEADERS", "END_STREAM"])
                                          .serialize())
        request = [e for e in events if isinstance(e, f.RequestReceived)][0]
        assert request.headers == [tuple(field) for field in reference.decode(block, raw=True)], i
        seen.append(request.headers[-1])
    assert seen == [(b"x-a", b"1"), (b"x-a", b"1"), (b"x-a", b"2"), (b"x-a", b"2")]
    for i, extra in enumerate([[], [], [(b"x-new", b"1")], []]):
        block = [(b":status", b"200"), (b"content-type", b"application/grpc")] + extra
        pair.server.send_headers(1 + 2 * i, block, end_stream=True)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    for sid in range(1, 9, 2):
        client.send_headers(sid, REQUEST, end_stream=True)
    client.data_to_send()
    heads = [e.headers for e in client.receive_data(pair.server.data_to_send())
             if isinstance(e, h2.events.ResponseReceived)]
    assert [len(h) for h in heads] == [2, 2, 3, 2] and heads[0] == heads[1] == heads[3]
    assert heads[2][2] == (b"x-new", b"1")


def test_remembered_response_blocks_follow_evictions():
    """With a small table (the client's SETTINGS_HEADER_TABLE_SIZE 70), a field too large for
    it empties the table: a response head remembered before that is encoded again, and
    every response still decodes in h2."""
    pair = Pair()
    pair.client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 70})
    pair.pump()
    small = [(b":status", b"200"), (b"x-a", b"b")]
    large = [(b":status", b"200"), (b"x-big", b"v" * 50)]
    blocks = [small, small, large, small]
    for i, block in enumerate(blocks):
        sid = 1 + 2 * i
        pair.client.send_headers(sid, REQUEST, end_stream=True)
        pair.pump()
        pair.server.send_headers(sid, block, end_stream=True)
        pair.pump()
    heads = [e.headers for e in pair.client_events if isinstance(e, h2.events.ResponseReceived)]
    assert heads == blocks and pair.goaway() is None
