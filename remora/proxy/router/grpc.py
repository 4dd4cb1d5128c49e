"""gRPC over HTTP/2, as Envoy's router treats it: recognising a call, its deadline, its
local replies and its message count. Pure functions; the codecs and the router call them.

- A call is a request whose content-type is `application/grpc` or `application/grpc+<fmt>`
  (gRPC-Web is `application/grpc-web*` and is not a gRPC call here).
- `grpc-timeout` (gRPC's PROTOCOL-HTTP2: 1-8 digits and a unit H M S m u n) caps the route
  timeout; a malformed value is ignored, as Envoy ignores it.
- A local reply to a call is trailers-only: HTTP 200, content-type application/grpc,
  grpc-status mapped from the HTTP status the way Envoy maps it
  (Grpc::Utility::httpToGrpcStatus) unless the reply has its own (fault abort grpcStatus),
  and grpc-message percent-encoded as the spec says.
- Messages are counted from the 5-byte length prefixes of the body, across any split of
  the bytes into chunks (Istio's istio_request_messages_total / _response_messages_total).
"""
from __future__ import annotations

import struct

GRPC_CONTENT_TYPE = b"application/grpc"

# google.rpc.Code names, as Istio's fault abort grpcStatus spells them
STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
UNKNOWN, INTERNAL, UNIMPLEMENTED, UNAVAILABLE = 2, 13, 12, 14
PERMISSION_DENIED, UNAUTHENTICATED = 7, 16

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# A message's length at the offset of its 5-byte prefix (the flag byte skipped), read in C.
MESSAGE_LENGTH = struct.Struct(">xL").unpack_from


def is_grpc(content_type: bytes | None) -> bool:
    """True for application/grpc and application/grpc+proto (not gRPC-Web)."""
    if not content_type or not content_type.startswith(GRPC_CONTENT_TYPE):
        return False
    rest = content_type[len(GRPC_CONTENT_TYPE):]
    return not rest or rest[:1] in (b"+", b";")


def grpc_status_for_http(status: int) -> int:
    """Envoy's httpToGrpcStatus: the gRPC status a local reply of this HTTP status carries."""
    if status == 400:
        return INTERNAL
    if status == 401:
        return UNAUTHENTICATED
    if status == 403:
        return PERMISSION_DENIED
    if status == 404:
        return UNIMPLEMENTED
    if status in (429, 502, 503, 504):
        return UNAVAILABLE
    return UNKNOWN


# Envoy's Grpc::Utility::grpcToHttpStatus: what outlier detection sees for a gRPC answer.
_HTTP_FOR_GRPC = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
                  9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


def http_status_for_grpc(grpc_status: int) -> int:
    """Envoy's grpcToHttpStatus (unknown codes count as 500)."""
    return _HTTP_FOR_GRPC.get(grpc_status, 500)


def grpc_status_code(name: str) -> int | None:
    """The code of a status name (`UNAVAILABLE`), or of a number given as text; None if neither."""
    if name.isdigit():
        return int(name)
    return STATUS_CODES.get(name.upper())


def parse_grpc_timeout(value: bytes | None) -> float | None:
    """Seconds from a grpc-timeout header (`100m`, `5S`), or None when absent or malformed."""
    if not value or len(value) > 9:
        return None
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def effective_timeout(route_timeout: float, grpc_timeout: float | None) -> float:
    """The route timeout capped by the call's deadline (0 means no route timeout)."""
    if grpc_timeout is None:
        return route_timeout
    if not route_timeout:
        return grpc_timeout
    return min(route_timeout, grpc_timeout)


def encode_grpc_message(text: bytes) -> bytes:
    """gRPC's grpc-message encoding: percent-encode bytes outside 0x20..0x7E, and '%'."""
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in text):
        return text
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text)


def local_reply_trailers(http_status: int, message: bytes, grpc_status: int | None = None) -> list:
    """The headers of a trailers-only gRPC local reply (besides :status 200)."""
    code = grpc_status if grpc_status is not None else grpc_status_for_http(http_status)
    headers = [(b"content-type", GRPC_CONTENT_TYPE), (b"grpc-status", b"%d" % code)]
    if message:
        headers.append((b"grpc-message", encode_grpc_message(message.strip())))
    return headers


class MessageCounter:
    """Counts gRPC messages in a body fed in arbitrary chunks (5-byte prefix: flag, length).

    Its state starts as the class attributes below and becomes the instance's at the first
    write: every gRPC call makes two counters, and an __init__ was a call and a frame each."""

    messages = 0
    _need = 0            # bytes of the current message's payload still to come
    _header = b""        # a prefix split across chunks

    def feed(self, data: bytes) -> None:
        n = len(data)
        if not self._header:
            # The common case, without a prefix split across chunks: jump from prefix to
            # prefix (a unary call's one message is one step).
            i = self._need
            while i + 5 <= n:
                self.messages += 1
                i += 5 + MESSAGE_LENGTH(data, i)[0]
            if i >= n:
                self._need = i - n
                return
            self._need = 0
            self._header = data[i:]     # a prefix cut short: the next chunk completes it below
            return
        i = 0
        while i < n:
            if self._need:
                step = min(self._need, n - i)
                self._need -= step
                i += step
                continue
            take = 5 - len(self._header)
            self._header += data[i:i + take]
            i += take
            if len(self._header) == 5:
                self.messages += 1
                self._need = int.from_bytes(self._header[1:5], "big")
                self._header = b""
