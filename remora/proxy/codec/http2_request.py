"""An HTTP/2 request's header block -> the codec-neutral RequestHead HTTP/1 also builds.

Rules (RFC 9113 8.3 and Envoy's HTTP/2 -> HTTP/1 behaviour), so that routing, policy,
telemetry and the HTTP/1 upstream see the same head whichever codec read the request:
- `:method`, `:path` (origin form; `*` only for OPTIONS), `:authority` or else `host` (the
  RequestHead's authority; `:authority` wins when both are present), `:scheme` (only
  checked: the mesh's scheme comes from x-forwarded-proto, as on HTTP/1).
- The path goes through the same request-target checks as HTTP/1 (fragment refused, the
  listener's PathNormalizer once, request_target.py): policy sees the normalized path and
  the normalized path goes upstream.
- Special headers are read exactly as HTTP/1 reads them (REQUEST_SPECIAL): x-request-id,
  x-forwarded-for/-proto, user-agent, trace context, the peer-metadata header, and the
  caller's x-forwarded-client-cert is dropped. `te: trailers` is kept (gRPC servers require
  it; Envoy keeps it too); `expect` is dropped.
- Several `cookie` fields are joined with "; " (RFC 9113 8.2.3): an HTTP/1 server reads one.
- Body framing: content-length when the client sent one (h2 checks the DATA adds up),
  else chunked upstream when the stream did not end with its HEADERS.
A connection remembers the heads of repeated blocks (RequestHeads): same fields in, same
head out, with a request id of its own.
h2 itself refuses connection-specific fields, upper-case names and bad pseudo-headers
(validate_inbound_headers) before this module sees the block.
"""
from __future__ import annotations

from operator import itemgetter

from remora.proxy.codec.http1 import (
    H_CL, H_EXPECT, H_HOST, H_PEER, H_REQID, H_TRACE, H_UA, H_XFF, H_XFP, BadRequest, REQUEST_SPECIAL,
)
from remora.proxy.codec.message import GrpcRequestHead, RequestHead
from remora.proxy.codec.request_target import checked_target, suspect_target
from remora.proxy.router.grpc import is_grpc
from remora.proxy.router.request_ids import new_request_id

# Fields that only set a head's request id and trace context (see RequestHeads).
PER_REQUEST = frozenset(name for name, code in REQUEST_SPECIAL.items() if code in (H_REQID, H_TRACE))
VERSION = b"2"     # RequestHead.version: the access log's %PROTOCOL% reads "HTTP/2", as Envoy's
MEMO_LIMIT = 64    # request shapes a RequestHeads remembers
FIRST = itemgetter(0)


def request_head(headers: list, stream_ended: bool, paths, max_headers: int) -> RequestHead:
    """The RequestHead of one HEADERS block (h2 gives names lower-cased, as bytes).

    Raises BadRequest (answered on this stream only) for what HTTP/1 would answer 4xx."""
    return _build(_shape(headers, stream_ended, paths, max_headers))


class RequestHeads:
    """request_head, remembered per downstream connection (one owner: DownstreamHttp2).

    A client repeating its calls sends the same header block, which the session hands over
    as the same field objects (its block cache, http2_session.py). The head is a pure
    function of those fields, the end of the stream, the listener's path rules and header
    limit, except for the request id the proxy draws when the client sent none: so what
    request_head reads from them (its "shape") is remembered by those inputs, and every
    stream still gets a head (and a header list) of its own, and its own request id.
    A request id and trace context (PER_REQUEST: new on every request, as a peer sidecar
    sends them) only set the shape's request_id and trace_in: the shape of the other
    fields is remembered, and those two are read from the block each time. Refused heads
    (BadRequest) are not remembered. The memo is cleared at MEMO_LIMIT."""

    __slots__ = ("memo",)

    def __init__(self) -> None:
        self.memo: dict = {}

    def head(self, headers: list, stream_ended: bool, paths, max_headers: int) -> RequestHead:
        own = None
        if PER_REQUEST.isdisjoint(map(FIRST, headers)):   # in C: a client's own calls carry none
            stable = headers
        else:
            stable = []
            for field in headers:
                if field[0] in PER_REQUEST:
                    if own is None:
                        own = []
                    own.append(field)
                else:
                    stable.append(field)
        memo = self.memo
        key = (tuple(stable), stream_ended, paths, max_headers)
        shape = memo.get(key)
        if own is None:
            if shape is None:
                shape = _shape(headers, stream_ended, paths, max_headers)
                if len(memo) >= MEMO_LIMIT:
                    memo.clear()
                memo[key] = shape
            return _build(shape)
        if len(headers) > max_headers + 4:
            raise BadRequest(431, b"too many request headers")
        if shape is None:
            shape = _shape(stable, stream_ended, paths, max_headers)
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            memo[key] = shape
        request_id = b""
        trace_in = None
        for name, value in own:       # as _shape reads them: the last id, every trace field
            if name == b"x-request-id":
                request_id = value
            else:
                trace_in = [(name, value)] if trace_in is None else trace_in + [(name, value)]
        return _build(shape, request_id, trace_in)


def _build(shape: tuple, own_id: bytes = b"", own_trace: list | None = None) -> RequestHead:
    """A new RequestHead from a shape (_shape); its header list is its own. A shape made
    without the block's request id and trace context gets them as own_id and own_trace."""
    (cls, method, path, authority, kept, content_length, chunked, request_id, user_agent, xff, peer_meta,
     trace_in, xfp) = shape
    if own_id:
        request_id = own_id
    if own_trace is not None:
        trace_in = own_trace
    head = cls(method, path, authority, list(kept), VERSION)
    if content_length is not None:
        head.content_length = content_length
    elif chunked:
        head.chunked = True   # length unknown: the HTTP/1 upstream gets a chunked body
    head.request_id = request_id or new_request_id()
    head.user_agent = user_agent
    head.forwarded_for = xff
    head.peer_metadata = peer_meta
    head.trace_in = trace_in
    if xfp:
        head.scheme = xfp
    return head


def _shape(headers: list, stream_ended: bool, paths, max_headers: int) -> tuple:
    """What request_head reads from a block, as a tuple (raises BadRequest)."""
    if len(headers) > max_headers + 4:    # + the four request pseudo-headers
        raise BadRequest(431, b"too many request headers")
    method = path = authority = host = None
    kept: list = []
    cookies: list | None = None
    content_length = None
    request_id = user_agent = xff = xfp = b""
    peer_meta = None
    trace_in = None
    grpc = False
    special = REQUEST_SPECIAL
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue          # :scheme (and :protocol, refused by h2 unless enabled)
        code = special.get(name)
        if code is None:
            if name == b"cookie":
                cookies = [value] if cookies is None else cookies + [value]
            else:
                if name == b"content-type" and is_grpc(value):
                    grpc = True
                kept.append((name, value))
        elif code == H_HOST:
            host = value
        elif code == H_UA:
            user_agent = value
        elif code == H_REQID:
            request_id = value
        elif code == H_XFF:
            xff = value if not xff else xff + b", " + value
        elif code == H_XFP:
            xfp = value
        elif code == H_PEER:
            peer_meta = value
        elif code == H_TRACE:
            trace_in = [(name, value)] if trace_in is None else trace_in + [(name, value)]
        elif code == H_CL:
            try:
                content_length = int(value)
            except ValueError:
                raise BadRequest(400, b"invalid content-length") from None
        elif code == H_EXPECT:
            pass              # the proxy streams the body anyway; HTTP/1 drops it upstream too
        elif name == b"te" and value.lower() == b"trailers":
            kept.append((name, value))   # Envoy keeps TE: trailers (gRPC servers require it)
        # other te, x-forwarded-client-cert, connection-specific names: dropped
    if method == b"CONNECT":      # (it has no :path) as on HTTP/1: Remora does not tunnel CONNECT
        raise BadRequest(405, b"CONNECT is not supported")
    if method is None or path is None:
        raise BadRequest(400, b"missing :method or :path")
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        raise BadRequest(400, b"invalid :path")
    if suspect_target(path) is not None:
        # Fragments refused and the path normalized once, as for HTTP/1 (request_target.py).
        path = checked_target(path, paths)
    if authority is None:
        authority = host
    if not authority or b" " in authority or b"\t" in authority:
        raise BadRequest(400, b"missing or invalid :authority")
    if cookies is not None:
        kept.append((b"cookie", b"; ".join(cookies)))
    return (GrpcRequestHead if grpc else RequestHead, method, path, authority, tuple(kept), content_length,
            content_length is None and not stream_ended, request_id, user_agent, xff, peer_meta,
            trace_in, xfp)
