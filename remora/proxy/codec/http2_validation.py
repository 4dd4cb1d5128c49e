"""Which HTTP/2 header fields a request may carry, and the shape responses go out in
(RFC 9113 8.2 and 8.3): the checks h2's validate/normalize options made, as the server
connection (http2_server.py) applies them to every block.
"""
from __future__ import annotations

import re
import string

from remora.proxy.codec.header_compression import UNIQUE_PER_REQUEST
from remora.proxy.codec.http2_frames import ErrorCode, Http2Error

# Lower-case tchar (RFC 9110 5.6.2): deleting them from a valid name leaves nothing.
NAME_CHARS = (string.ascii_lowercase + string.digits + "!#$%&'*+-.^_`|~").encode()
CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"))
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
FORBIDDEN_IN_VALUE = re.compile(rb"[\x00\r\n]")
# A value must not start or end with whitespace either. Checked by its two ends, not with
# `^[ \t]|[ \t]$` in the regex: that tries the alternatives at every position, 2 us for a
# traceparent, and every request from a peer sidecar brings a new one (and a request id).
EDGE_WHITESPACE = b" \t"
# Fields that passed _check_field, per process: the same fields come on every call (and the
# check is a pure function of the field), except values new on every request, which are
# checked each time and not kept. Cleared when full.
PASSED: set = set()
PASSED_LIMIT = 4096


def _check_field(name: bytes, value: bytes) -> None:
    if not name or name.translate(None, NAME_CHARS):
        raise Http2Error(f"invalid header name {name[:64]!r}")
    if name in CONNECTION_SPECIFIC:
        raise Http2Error(f"connection-specific header {name.decode()!r} in HTTP/2")
    if name == b"te" and value.lower() != b"trailers":
        raise Http2Error("te other than 'trailers' in HTTP/2")
    if FORBIDDEN_IN_VALUE.search(value) or (value and (value[0] in EDGE_WHITESPACE
                                                        or value[-1] in EDGE_WHITESPACE)):
        raise Http2Error(f"invalid value for header {name[:64]!r}")


check_field = _check_field      # one field alone, outside a list (http2_session.py's tail path)


def _check_new(field: tuple) -> None:
    """_check_field for a field not in PASSED; remember it unless it is new per request."""
    _check_field(field[0], field[1])
    if field[0] not in UNIQUE_PER_REQUEST:
        if len(PASSED) >= PASSED_LIMIT:
            PASSED.clear()
        PASSED.add(field)


def check_request_fields(headers: list) -> int | None:
    """Raise Http2Error (PROTOCOL_ERROR: a malformed request) or give the content-length."""
    seen: set = set()
    regular = False
    content_length = method = None
    passed = PASSED
    for field in headers:
        name, value = field
        if name[:1] == b":":
            if regular:
                raise Http2Error(f"pseudo-header {name.decode(errors='replace')} after a regular header")
            if name not in REQUEST_PSEUDO:
                raise Http2Error(f"pseudo-header {name[:64]!r} is not a request's")
            if name in seen:
                raise Http2Error(f"pseudo-header {name.decode()} twice")
            if FORBIDDEN_IN_VALUE.search(value):
                raise Http2Error(f"invalid value for {name.decode()}")
            seen.add(name)
            if name == b":method":
                method = value
            continue
        regular = True
        if field not in passed:
            _check_new(field)
        if name == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise Http2Error("invalid content-length")
            content_length = int(value)
    if method is None:
        raise Http2Error("request without :method")
    if method != b"CONNECT" and (b":scheme" not in seen or b":path" not in seen):
        raise Http2Error("request without :scheme or :path")
    return content_length


def check_response_fields(headers: list) -> tuple[int, int | None]:
    """A response head's :status and content-length; Http2Error (PROTOCOL_ERROR) if malformed."""
    status = None
    content_length = None
    passed = PASSED
    for index, field in enumerate(headers):
        name, value = field
        if name[:1] == b":":
            if name != b":status" or status is not None or index:
                raise Http2Error(f"pseudo-header {name[:64]!r} out of place in a response")
            if len(value) != 3 or not value.isdigit():
                raise Http2Error(f"invalid :status {value[:16]!r}")
            status = int(value)
            continue
        if field not in passed:
            _check_new(field)
        if name == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise Http2Error("invalid content-length in a response")
            content_length = int(value)
    if status is None:
        raise Http2Error("response without :status")
    return status, content_length


def check_trailer_fields(headers: list) -> None:
    for field in headers:
        if field[0][:1] == b":":
            raise Http2Error("pseudo-header in trailers")
        if field not in PASSED:
            _check_new(field)


def outbound_fields(headers: list) -> list:
    """A response head or trailers as HTTP/2 sends them: names lower-case (HTTP/1 upstreams
    send Mixed-Case), connection-specific fields dropped. A value with NUL, CR or LF cannot
    go out: INTERNAL_ERROR (the stream is reset)."""
    out = []
    for name, value in headers:
        name = name.lower()
        if name in CONNECTION_SPECIFIC:
            continue
        if FORBIDDEN_IN_VALUE.search(value):
            raise Http2Error(f"response header {name[:64]!r} has a forbidden byte", ErrorCode.INTERNAL_ERROR)
        out.append((name, value))
    return out
