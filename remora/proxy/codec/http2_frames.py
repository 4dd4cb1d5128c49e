"""HTTP/2 wire vocabulary for the downstream server (RFC 9113): frame types, flags, error
and setting codes, the frame writers, and the events ServerConnection (http2_server.py)
hands to the codec (http2.py).

Events are small slotted records named after h2's, with the fields the codec reads.
"""
from __future__ import annotations

import struct

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
class RequestReceived:
    """A new stream's request header block; `headers` is None when it was over the limit."""

    __slots__ = ("headers", "stream_ended", "stream_id")

    def __init__(self, stream_id: int, headers: list | None, stream_ended: bool) -> None:
        self.stream_id, self.headers, self.stream_ended = stream_id, headers, stream_ended


class ResponseReceived:
    """A response head on one of our streams (the client role)."""

    __slots__ = ("stream_id", "headers", "stream_ended")

    def __init__(self, stream_id: int, headers: list, stream_ended: bool) -> None:
        self.stream_id, self.headers, self.stream_ended = stream_id, headers, stream_ended


class TrailersReceived:
    __slots__ = ("headers", "stream_id")

    def __init__(self, stream_id: int, headers: list) -> None:
        self.stream_id, self.headers = stream_id, headers


class DataReceived:
    """Body bytes; `flow_controlled_length` (padding included) is what to acknowledge."""

    __slots__ = ("data", "flow_controlled_length", "stream_id")

    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        self.stream_id, self.data, self.flow_controlled_length = stream_id, data, flow_controlled_length


class StreamEnded:
    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset:
    """The client reset a stream (or the proxy did, for a stream error it found)."""

    __slots__ = ("error_code", "stream_id")

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id, self.error_code = stream_id, error_code


class WindowUpdated:
    """The client opened a send window: stream 0 is the connection's."""

    __slots__ = ("delta", "stream_id")

    def __init__(self, stream_id: int, delta: int) -> None:
        self.stream_id, self.delta = stream_id, delta


class RemoteSettingsChanged:
    __slots__ = ("changed_settings",)

    def __init__(self, changed_settings: dict) -> None:
        self.changed_settings = changed_settings


class PingReceived:
    __slots__ = ("ping_data",)

    def __init__(self, ping_data: bytes) -> None:
        self.ping_data = ping_data


class ConnectionTerminated:
    """The client's GOAWAY."""

    __slots__ = ("error_code", "last_stream_id")

    def __init__(self, error_code: int, last_stream_id: int) -> None:
        self.error_code, self.last_stream_id = error_code, last_stream_id
