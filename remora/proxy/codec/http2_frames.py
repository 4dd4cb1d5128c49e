"""HTTP/2 wire vocabulary for the downstream server (RFC 9113): frame types, flags, error
and setting codes, the frame writers, and the events ServerConnection (http2_server.py)
hands to the codec (http2.py).

Events are small records named after h2's, with the fields the codec reads (tuples: see _Event).
"""
from __future__ import annotations

import struct
from operator import itemgetter

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"   # the client connection preface (RFC 9113 3.4)
FRAME_HEADER = struct.Struct(">HBBBL")         # length (24 bits as 16 + 8), type, flags, stream id
DEFAULT_WINDOW = 65535
MAX_WINDOW = (1 << 31) - 1
DEFAULT_FRAME_SIZE = 16384
MAX_FRAME_SIZE = (1 << 24) - 1

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20


class ErrorCode:
    """RFC 9113 7 error codes."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting:
    """RFC 9113 6.5.2 setting identifiers (and RFC 8441's)."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6
    ENABLE_CONNECT_PROTOCOL = 0x8


class Http2Error(Exception):
    """Something the connection cannot do or take; `code` is the RFC 9113 error code."""

    def __init__(self, message: str, code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return FRAME_HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


def settings_frame(values: dict) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", code, value) for code, value in values.items()))


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment))


def rst_stream_frame(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">L", code))


def goaway_frame(last_stream_id: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">LL", last_stream_id, code))


# -- events --------------------------------------------------------------------------------
class _Event(tuple):
    """An event is a tuple of its fields, built in C (`DataReceived((stream_id, data, length))`):
    a session emits several per request, and a Python __init__ for each was a call and a
    frame per event. Fields are read by name through itemgetter properties (C as well)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}{tuple.__repr__(self)}"


class RequestReceived(_Event):
    """A new stream's request header block; `headers` is None when it was over the limit."""

    __slots__ = ()
    stream_id = property(itemgetter(0))
    headers = property(itemgetter(1))
    stream_ended = property(itemgetter(2))


class ResponseReceived(_Event):
    """A response head on one of our streams (the client role)."""

    __slots__ = ()
    stream_id = property(itemgetter(0))
    headers = property(itemgetter(1))
    stream_ended = property(itemgetter(2))


class TrailersReceived(_Event):
    __slots__ = ()
    stream_id = property(itemgetter(0))
    headers = property(itemgetter(1))


class DataReceived(_Event):
    """Body bytes; `flow_controlled_length` (padding included) is what to acknowledge."""

    __slots__ = ()
    stream_id = property(itemgetter(0))
    data = property(itemgetter(1))
    flow_controlled_length = property(itemgetter(2))


class StreamEnded(_Event):
    __slots__ = ()
    stream_id = property(itemgetter(0))


class StreamReset(_Event):
    """The client reset a stream (or the proxy did, for a stream error it found)."""

    __slots__ = ()
    stream_id = property(itemgetter(0))
    error_code = property(itemgetter(1))


class WindowUpdated(_Event):
    """The client opened a send window: stream 0 is the connection's."""

    __slots__ = ()
    stream_id = property(itemgetter(0))
    delta = property(itemgetter(1))


class RemoteSettingsChanged(_Event):
    __slots__ = ()
    changed_settings = property(itemgetter(0))


class PingReceived(_Event):
    __slots__ = ()
    ping_data = property(itemgetter(0))


class ConnectionTerminated(_Event):
    """The client's GOAWAY."""

    __slots__ = ()
    error_code = property(itemgetter(0))
    last_stream_id = property(itemgetter(1))
