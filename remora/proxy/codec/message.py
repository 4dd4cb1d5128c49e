"""Codec-neutral request and response heads.

HTTP/1.1 today and HTTP/2 later both turn wire bytes into these objects, so the router,
clusters, retries and telemetry never see framing. Header names keep the case they
arrived with (HTTP/1 peers sometimes care); lookups by name are case-insensitive and
build a lower-cased index only when something asks, because most requests never do.
"""
from __future__ import annotations

# The lower-cased request header names that carry a trace context (W3C, B3 single and
# multi). A codec collects them into RequestHead.trace_in instead of forwarding them
# (they are re-written for the proxy's span); tracing.py reads them from there. A plain
# tuple here, so that neither the codec nor tracing imports the other.
TRACE_HEADERS: tuple[bytes, ...] = (
    b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid",
    b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags",
)


class RequestHead:
    """What routing needs to know about a request, after hop-by-hop headers are gone."""

    __slots__ = (
        "method", "path", "authority", "scheme", "headers", "version",
        "content_length", "chunked", "upgrade", "request_id", "user_agent",
        "forwarded_for", "peer_ip", "peer_metadata", "trace_in", "peer_cert", "_index",
    )

    def __init__(self, method: bytes, path: bytes, authority: bytes, headers: list,
                 version: bytes = b"1.1") -> None:
        self.method = method
        self.path = path            # origin-form target: path and query, as received
        self.authority = authority  # Host (or the absolute-form URL's authority)
        self.scheme = b"http"
        self.headers = headers      # [(name, value)] forwardable end-to-end headers
        self.version = version
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.request_id: bytes = b""
        self.user_agent: bytes = b""
        self.forwarded_for: bytes = b""
        self.peer_ip: bytes = b""
        self.peer_metadata: bytes | None = None   # the calling sidecar's x-remora-peer-metadata
        self.trace_in: list | None = None   # [(lower-case name, value)] of trace headers
        self.peer_cert = None       # inbound mTLS: the connection's PeerCertificate; None on plaintext
        self._index: dict[bytes, bytes] | None = None

    # gRPC call (content-type application/grpc[+fmt]): a class attribute, so HTTP/1 requests
    # pay nothing; the HTTP/2 codec builds a GrpcRequestHead for calls.
    grpc = False

    @property
    def has_body(self) -> bool:
        """True when a request body follows the head."""
        return self.chunked or bool(self.content_length)

    def header(self, lower_name: bytes) -> bytes | None:
        """The first value of a header, by lower-case name, or None."""
        index = self._index
        if index is None:
            index = {}
            for name, value in self.headers:
                index.setdefault(name.lower(), value)
            index.setdefault(b"host", self.authority)
            index.setdefault(b"x-request-id", self.request_id)
            if self.user_agent:
                index.setdefault(b"user-agent", self.user_agent)
            for name, value in self.trace_in or ():
                index.setdefault(name, value)
            self._index = index
        return index.get(lower_name)

    def path_only(self) -> bytes:
        """The path without the query string (what route matching looks at)."""
        q = self.path.find(b"?")
        return self.path if q < 0 else self.path[:q]

    def query(self) -> bytes:
        """The raw query string without '?', or b''."""
        q = self.path.find(b"?")
        return b"" if q < 0 else self.path[q + 1:]


class ResponseHead:
    """A response head as the upstream sent it, hop-by-hop and framing headers removed."""

    __slots__ = ("status", "reason", "headers", "content_length", "chunked", "keep_alive",
                 "peer_metadata", "grpc_status")

    def __init__(self, status: int, reason: bytes, headers: list) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.peer_metadata: bytes | None = None   # the answering sidecar's x-remora-peer-metadata
        self.grpc_status: int | None = None       # a trailers-only gRPC answer's status


class GrpcRequestHead(RequestHead):
    """The head of a gRPC call: local replies are gRPC-shaped, metrics say `grpc`."""

    __slots__ = ()
    grpc = True

    def grpc_timeout(self) -> bytes | None:
        """The call's grpc-timeout, as header() gives it: a call came over HTTP/2, whose
        names are lower-case already, so a scan of its few fields instead of the index."""
        if self._index is not None:
            return self._index.get(b"grpc-timeout")
        for name, value in self.headers:
            if name == b"grpc-timeout":
                return value
        return None

