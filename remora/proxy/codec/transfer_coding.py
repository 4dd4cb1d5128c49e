"""The one Transfer-Encoding rule of both HTTP/1 codecs (downstream requests, upstream responses).

Remora never forwards framing headers: it decodes the body (httptools removes `chunked`) and
re-frames it on the other side. So the only transfer coding it can pass on is `chunked` as
the final coding (RFC 9112 6.1, 6.3), applied once (RFC 9112 7: a sender must not chunk
twice). Each Transfer-Encoding field line is judged on its own, with its list elements
compared case-insensitively after trimming optional whitespace. Anything else is refused:
a request with 400, a response as an upstream protocol error (502 UPE), never read until
close and passed on with a coding the receiver cannot see.
"""
from __future__ import annotations

_CHUNKED = b"chunked"


def chunked_is_final(value: bytes) -> bool:
    """True when a Transfer-Encoding field value ends with `chunked` and names it only there."""
    if value == _CHUNKED:
        return True      # the usual value: one compare
    codings = [c.strip(b" \t").lower() for c in value.split(b",")]
    return codings[-1] == _CHUNKED and codings.count(_CHUNKED) == 1
