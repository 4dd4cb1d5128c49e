"""The upstream HTTP/2 session (codec/http2_client.py) against h2's server, the reference.

An h2 server connection and a ClientConnection joined by bytes: requests the client sends
must be what h2 reads, responses h2 sends must come out as the events UpstreamHttp2 reads,
and what RFC 9113 calls malformed in a response must end the connection.
"""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import Encoder
from hyperframe.frame import HeadersFrame

from remora.proxy.codec import http2_frames as wire
from remora.proxy.codec.http2_client import ClientConnection
from remora.proxy.codec.http2_frames import ErrorCode, Http2Error

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/test.Echo/Unary"),
           (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"authorization", b"Bearer x")]


class Pair:
    """A ClientConnection and an h2 server joined by bytes."""

    def __init__(self, server_settings: dict | None = None) -> None:
        self.client = ClientConnection(64 * 1024, 1 << 20)
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.server.initiate_connection()
        if server_settings:
            self.server.update_settings(server_settings)
        self.client.initiate_connection()
        self.server_events: list = []
        self.events: list = []
        self.pump()

    def pump(self) -> list:
        """Bytes both ways until neither side has more; the client's new events."""
        new = []
        for _ in range(5):
            to_server = self.client.data_to_send()
            if to_server:
                self.server_events += self.server.receive_data(to_server)
            to_client = self.server.data_to_send()
            if to_client:
                new += self.client.receive_data(to_client)
            if not to_server and not to_client:
                break
        self.events += new
        return new

    def received(self, kind, stream_id: int) -> list:
        return [e for e in self.server_events if isinstance(e, kind) and e.stream_id == stream_id]


def test_unary_grpc_call_round_trip():
    """Request head, body and trailers reach h2 as sent; the response head, a message and
    grpc-status trailers come back as ResponseReceived, DataReceived, TrailersReceived, StreamEnded."""
    pair = Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(sid, REQUEST)
    pair.client.send_data(sid, b"\x00\x00\x00\x00\x02hi")
    pair.client.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
    pair.pump()
    assert pair.received(h2.events.RequestReceived, sid)[0].headers == REQUEST
    assert pair.received(h2.events.DataReceived, sid)[0].data == b"\x00\x00\x00\x00\x02hi"
    assert pair.received(h2.events.TrailersReceived, sid)[0].headers == [(b"x-trailer", b"1")]
    pair.server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    pair.server.send_data(sid, b"\x00\x00\x00\x00\x02ok")
    pair.server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    events = pair.pump()
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"], kinds
    assert events[0].headers == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert events[2].headers == [(b"grpc-status", b"0")] and sid not in pair.client.streams


def test_streams_are_odd_and_in_order_and_the_peer_limit_is_read():
    """Stream ids go 1, 3, 5; a stream id out of order is refused; the server's
    SETTINGS_MAX_CONCURRENT_STREAMS is what capacity is computed from."""
    pair = Pair({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 7})
    assert pair.client.peer_max_concurrent_streams == 7
    for expected in (1, 3, 5):
        sid = pair.client.get_next_available_stream_id()
        assert sid == expected
        pair.client.send_headers(sid, REQUEST, end_stream=True)
    with pytest.raises(Http2Error):
        pair.client.send_headers(11, REQUEST, end_stream=True)


def test_informational_head_is_skipped_and_trailers_only_answer_ends_the_stream():
    """A 100 Continue is not a response; a head with END_STREAM (gRPC trailers-only) is the
    response and the end."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(b":status", b"100")])
    pair.server.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                 (b"grpc-status", b"14")], end_stream=True)
    events = pair.pump()
    assert [type(e).__name__ for e in events] == ["ResponseReceived", "StreamEnded"]
    assert events[0].stream_ended and (b"grpc-status", b"14") in events[0].headers


def test_reset_goaway_and_window_updates_are_events():
    """A server RST_STREAM, WINDOW_UPDATE and GOAWAY (with its last stream id) reach UpstreamHttp2 as events."""
    pair = Pair()
    for sid in (1, 3):
        pair.client.send_headers(sid, REQUEST)
    pair.pump()
    pair.server.reset_stream(1, ErrorCode.REFUSED_STREAM)
    pair.server.increment_flow_control_window(1000, stream_id=3)
    pair.server.close_connection(ErrorCode.NO_ERROR, last_stream_id=1)
    events = pair.pump()
    resets = [e for e in events if isinstance(e, wire.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(1, ErrorCode.REFUSED_STREAM)]
    assert any(isinstance(e, wire.WindowUpdated) and e.stream_id == 3 and e.delta == 1000 for e in events)
    goaway = [e for e in events if isinstance(e, wire.ConnectionTerminated)]
    assert goaway and goaway[0].last_stream_id == 1 and not pair.client.locally_open(1)
    assert pair.client.locally_open(3)


def test_response_body_window_is_given_back_when_acknowledged():
    """Response DATA is credited back (WINDOW_UPDATE) only when acknowledged, so h2's
    server can send a whole stream window again after that."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(b":status", b"200")])
    window = pair.server.local_flow_control_window(1)
    for _ in range(window // 16384):
        pair.server.send_data(1, b"x" * 16384)
    received = sum(e.flow_controlled_length for e in pair.pump() if isinstance(e, wire.DataReceived))
    assert pair.server.local_flow_control_window(1) == window - received
    pair.client.acknowledge_received_data(received, 1)
    pair.pump()
    assert pair.server.local_flow_control_window(1) == window


def test_server_table_size_zero_is_obeyed_by_the_request_encoder():
    """With SETTINGS_HEADER_TABLE_SIZE 0 from the server, h2 still decodes every request."""
    pair = Pair({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    for i in range(4):
        sid = pair.client.get_next_available_stream_id()
        pair.client.send_headers(sid, REQUEST + [(b"x-request-id", b"%d" % i)], end_stream=True)
        pair.pump()
        assert pair.received(h2.events.RequestReceived, sid)[0].headers == REQUEST + [(b"x-request-id", b"%d" % i)]


MALFORMED_HEADS = {
    "no status": [(b"content-type", b"text/plain")],
    "request pseudo": [(b":status", b"200"), (b":path", b"/")],
    "status not 3 digits": [(b":status", b"2000")],
    "upper-case name": [(b":status", b"200"), (b"Server", b"x")],
    "connection header": [(b":status", b"200"), (b"connection", b"close")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HEADS))
def test_malformed_response_head_is_a_connection_error(case):
    """A malformed response head ends the connection with GOAWAY PROTOCOL_ERROR."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    raw = HeadersFrame(1, data=Encoder().encode(MALFORMED_HEADS[case]), flags=["END_HEADERS"]).serialize()
    with pytest.raises(Http2Error):
        pair.client.receive_data(raw)
    assert pair.client.data_to_send().endswith(wire.goaway_frame(0, ErrorCode.PROTOCOL_ERROR))


def test_push_promise_is_refused():
    """A PUSH_PROMISE (push is disabled in our SETTINGS) ends the connection."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    with pytest.raises(Http2Error):
        pair.client.receive_data(wire.frame(wire.PUSH_PROMISE, wire.END_HEADERS, 1, b"\x00\x00\x00\x02\x82"))


def test_response_body_must_add_up_to_content_length():
    """DATA shorter than the response's content-length at END_STREAM is a connection error."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    pair.server.send_headers(1, [(b":status", b"200"), (b"content-length", b"10")])
    pair.pump()
    with pytest.raises(Http2Error):
        pair.client.receive_data(wire.frame(wire.DATA, wire.END_STREAM, 1, b"short"))


def test_send_data_if_fits_sends_only_what_the_windows_take_now():
    """send_data_if_fits(stream, data) sends only on an open stream, within its window, the
    connection's and one frame, and otherwise sends nothing: what the direct (unqueued) send
    paths rely on instead of queueing."""
    pair = Pair({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    pair.client.send_headers(1, REQUEST)
    pair.pump()
    assert not pair.client.send_data_if_fits(1, b"x" * 1001)
    assert not pair.client.send_data_if_fits(3, b"x")            # not a stream of this connection
    assert not pair.client.data_to_send()                        # nothing sent for those
    assert pair.client.send_data_if_fits(1, b"x" * 600)
    assert not pair.client.send_data_if_fits(1, b"x" * 401)
    assert pair.client.send_data_if_fits(1, b"x" * 400)
    pair.pump()
    assert sum(e.flow_controlled_length for e in pair.server_events if isinstance(e, h2.events.DataReceived)) == 1000
    pair.server.increment_flow_control_window(100_000, stream_id=1)
    pair.server.increment_flow_control_window(100_000)
    pair.pump()
    assert not pair.client.send_data_if_fits(1, b"x" * (pair.client.max_outbound_frame_size + 1))  # one frame at most
    pair.client.send_data(1, b"", end_stream=True)
    assert not pair.client.send_data_if_fits(1, b"x")             # closed for sending


def _frames(data: bytes) -> list[tuple[int, int, int, int]]:
    """(type, flags, stream id, length) of each frame in `data`."""
    found, at = [], 0
    while at < len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        found.append((data[at + 3], data[at + 4], int.from_bytes(data[at + 5:at + 9], "big") & 0x7FFFFFFF, length))
        at += 9 + length
    return found


def test_end_stream_rides_on_the_stream_s_unsent_data_frame():
    """A body's last DATA frame not yet sent carries END_STREAM itself (one frame, as h2load
    and Envoy send a complete body), and h2 sees the data and the end of the stream; once it
    was sent, or another frame followed it, END_STREAM is an empty DATA frame of its own."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST)
    pair.client.send_headers(3, REQUEST)
    pair.pump()
    assert pair.client.send_data_if_fits(1, b"\x00\x00\x00\x00\x02hi")
    pair.client.end_stream(1)
    sent = pair.client.data_to_send()
    assert _frames(sent) == [(wire.DATA, wire.END_STREAM, 1, 7)]
    pair.server_events += pair.server.receive_data(sent)
    assert pair.received(h2.events.DataReceived, 1)[0].data == b"\x00\x00\x00\x00\x02hi"
    assert pair.received(h2.events.StreamEnded, 1)
    pair.client.send_data(3, b"abc")
    assert _frames(pair.client.data_to_send()) == [(wire.DATA, 0, 3, 3)]
    pair.client.end_stream(3)                                  # the DATA frame already went out
    assert _frames(pair.client.data_to_send()) == [(wire.DATA, wire.END_STREAM, 3, 0)]


def test_end_stream_does_not_touch_another_stream_s_data_frame():
    """END_STREAM of one stream never lands on the DATA frame another stream wrote last."""
    pair = Pair()
    pair.client.send_headers(1, REQUEST)
    pair.client.send_headers(3, REQUEST)
    pair.pump()
    pair.client.send_data(1, b"one")
    pair.client.send_data(3, b"three")
    pair.client.end_stream(1)
    assert _frames(pair.client.data_to_send()) == [
        (wire.DATA, 0, 1, 3), (wire.DATA, 0, 3, 5), (wire.DATA, wire.END_STREAM, 1, 0)]
