"""An upstream HTTP/2 response head, split for the router: `:status`, the forwarded fields,
the answering sidecar's metadata and content-length (ResponseHeads), and a gRPC
trailers-only answer's status fields apart (trailers_only).

Rules: pseudo-headers are not forwarded (the session checked there is only `:status`);
PEER_METADATA is read, never forwarded; content-length is framing, carried as
ResponseHead.content_length as HTTP/1's codec does (a malformed one, which the session
refuses anyway, reads as absent).

An upstream answers the same head again and again (nginx: the same fields every time, up
to its once-a-second date; a Remora peer: the same fields but its service time), and the
session hands over a decoded head as a new list of the same fields. ResponseHeads, one per
UpstreamHttp2, remembers the split per head (the tuple of its fields is the key): a head
it has seen costs a lookup and a list copy instead of a pass over its fields with four
comparisons each. The memo is cleared when it reaches its limit.
"""
from __future__ import annotations

PEER_METADATA = b"x-remora-peer-metadata"   # telemetry/peer_metadata.py HEADER
GRPC_STATUS_FIELDS = frozenset({b"grpc-status", b"grpc-message", b"grpc-status-details-bin"})
HEADS_LIMIT = 256     # response heads remembered per connection (service times vary: a few hundred)


class ResponseHeads:
    """Response fields -> (status, forwarded fields, peer metadata, content-length), remembered."""

    __slots__ = ("memo",)

    def __init__(self) -> None:
        self.memo: dict = {}

    def split(self, fields: list) -> tuple:
        """(status, forwarded fields as a tuple, peer metadata or None, content-length or None)."""
        key = tuple(fields)
        hit = self.memo.get(key)
        if hit is None:
            hit = _split(fields)
            memo = self.memo
            if len(memo) >= HEADS_LIMIT:
                memo.clear()
            memo[key] = hit
        return hit


def _split(fields: list) -> tuple:
    status, headers, peer_meta, length = 0, [], None, None
    for name, value in fields:
        if name == b":status":
            status = int(value)
        elif name == PEER_METADATA:
            peer_meta = value     # the answering sidecar's metadata: read, never forwarded
        elif name == b"content-length":
            length = value
        elif not name.startswith(b":"):
            headers.append((name, value))
    try:
        length = int(length) if length is not None else None
    except ValueError:
        length = None
    return status, tuple(headers), peer_meta, length


def trailers_only(headers: list) -> tuple[list, list]:
    """A gRPC trailers-only answer's head as (head fields, trailers): its status fields are
    trailers, so a downstream HTTP/2 codec ends the stream with them (a client reads
    grpc-status there)."""
    return ([(n, v) for n, v in headers if n not in GRPC_STATUS_FIELDS],
            [(n, v) for n, v in headers if n in GRPC_STATUS_FIELDS])


def grpc_status_of(trailers: list) -> int:
    """A trailers-only answer's grpc-status as a number (malformed counts as UNKNOWN, 2)."""
    for name, value in trailers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else 2
    return 2


def is_grpc(headers: list) -> bool:
    return any(n == b"content-type" and v.startswith(b"application/grpc") for n, v in headers)
