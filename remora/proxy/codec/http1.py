"""HTTP/1.1 wire helpers shared by the downstream and upstream codecs.

Rules kept here, in one place:
- Framing headers (Content-Length, Transfer-Encoding) are never forwarded as received:
  each side re-frames the body it writes, so a disagreement between the two can never
  be smuggled through.
- Hop-by-hop headers (RFC 9110 7.6.1) are dropped on both directions: Connection and the
  names it lists, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade (Upgrade survives
  only on an upgrade request, handled by the caller).
- Status lines and common header lines are precomputed bytes.
"""
from __future__ import annotations

from http import HTTPStatus

from remora.proxy.codec.message import TRACE_HEADERS

# Lower-cased header names the codecs treat specially, mapped to a small code.
(H_HOST, H_CONNECTION, H_HOP, H_TE, H_CL, H_UPGRADE, H_EXPECT, H_REQID, H_XFF, H_UA, H_XFP, H_PEER, H_TRACE,
 H_XFCC) = range(14)
# Headers each side handles itself in both directions: framing, hop-by-hop, and the
# sidecars' metadata exchange (read and stripped, never forwarded; see peer_metadata.py).
RESPONSE_SPECIAL = {
    b"connection": H_CONNECTION,
    b"keep-alive": H_HOP,
    b"proxy-connection": H_HOP,
    b"te": H_HOP,
    b"trailer": H_HOP,
    b"transfer-encoding": H_TE,
    b"content-length": H_CL,
    b"upgrade": H_UPGRADE,
    b"x-remora-peer-metadata": H_PEER,
}
# Requests also carry what routing and the mesh headers need.
REQUEST_SPECIAL = {
    **RESPONSE_SPECIAL,
    b"host": H_HOST,
    b"expect": H_EXPECT,
    b"x-request-id": H_REQID,
    b"x-forwarded-for": H_XFF,
    b"user-agent": H_UA,
    b"x-forwarded-proto": H_XFP,
    # Trace context: re-written upstream for the proxy's span (names in message.py).
    **dict.fromkeys(TRACE_HEADERS, H_TRACE),
    # A caller's client-certificate claim is never believed: every occurrence is dropped on
    # both listeners (Envoy's SANITIZE); the inbound one sets its own on mTLS connections.
    b"x-forwarded-client-cert": H_XFCC,
}

# Lengths of the response names above: most response headers (Server, Date, Content-Type)
# have other lengths and skip the lower-casing entirely.
RESPONSE_SPECIAL_LENGTHS = frozenset(len(name) for name in RESPONSE_SPECIAL)

MAX_HEADER_BYTES = 60 * 1024

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}


def status_line(status: int, reason: bytes = b"") -> bytes:
    """The status line for a code, precomputed for every code Python knows."""
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Unknown")
    return line


def connection_tokens(value: bytes) -> list[bytes]:
    """Lower-cased tokens of a Connection header value."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def drop_named(headers: list, names: set[bytes]) -> list:
    """Headers without those whose lower-cased name is in names (Connection-listed ones)."""
    return [h for h in headers if h[0].lower() not in names]


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as pieces for writelines."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
# Sent on every upstream attempt; the first attempt's line ends the precomputed mesh headers.
FIRST_ATTEMPT = b"x-envoy-attempt-count: 1\r\n"
EOL = b"\r\n"
# `EOL.join(map(FIELD_LINE, fields)) + EOL` writes `name: value` lines for a non-empty list
# of (name, value) fields in C: a Python loop concatenating each line cost twice as much.
FIELD_LINE = b": ".join

# Downstream connection states (downstream.py owns them; http1_timeouts.py reads them).
IDLE, HEADERS, BODY, WAITING, TUNNEL, CLOSED = range(6)

# Why DownstreamHttp1 pauses reading: one FlowControl bit per pauser (codec/flow_control.py).
STREAM_HOLD = 1    # the router cannot take more request body now (DownstreamStream.pause_reading)
PIPELINED = 2      # a request waits behind the active one: read no further
UPGRADING = 4      # an upgrade request waits for the upstream's 101
REFUSING = 8       # no later request will be served (Connection: close, or a 4xx waits its turn)
TUNNEL_PEER = 16   # tunnel: the upstream side cannot take more


class BadRequest(Exception):
    """A request the proxy refuses before routing (status and detail for the reply)."""

    def __init__(self, status: int, detail: bytes) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
