"""An upstream HTTP/2 request head: forwarded headers and the proxy's added lines as HTTP/2
fields (h2_fields), and as the HPACK block that opens the stream (RequestBlocks).

Shaping rules (RFC 9113 8.2): names lower-cased; connection-specific fields and `host`
dropped (`:authority` carries it); `te` only as "trailers" (gRPC needs it); values
without surrounding whitespace. Pseudo-headers come first (:method :scheme :authority
:path), then the forwarded headers, the added lines in their order, content-length, and
last the added lines new on every request (x-request-id, trace context:
header_compression.UNIQUE_PER_REQUEST). Kept last, they leave the rest of the block the same
bytes from call to call: a Remora peer decodes and checks that part once per connection
(codec/http2_session.py, `_decode_checked`), and only the new values each time.

RequestBlocks, one per UpstreamHttp2 (its owner), builds the block in pieces: the pseudo-
headers with the forwarded headers, then each added line, then content-length, then the
lines new on every request. HPACK is
sequential, so encoding the pieces one after the other gives the bytes encoding them all
at once gives. A piece whose encoding left the encoder's table as it was (indexed fields,
literals without indexing) is a pure function of its inputs while the table stays
unchanged, so it is remembered: the forwarded part by (method, path, authority, headers),
an added line by its bytes. Any change of the table (an insertion, an eviction, a size
update owed) forgets every piece. Lines new on every request (x-request-id, trace
context: header_compression.UNIQUE_PER_REQUEST) are encoded every time and never
remembered. Each memo is cleared when it reaches its limit.
"""
from __future__ import annotations

from remora.proxy.codec.header_compression import UNIQUE_PER_REQUEST, HpackEncoder

# RFC 9113 8.2.2: connection-specific fields never go on an HTTP/2 stream.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade", b"host", b"te"})
WHITESPACE = (b" ", b"\t")
HEADS_LIMIT = 64               # forwarded-header pieces a RequestBlocks remembers
LINES_LIMIT = 256              # added-line pieces it remembers


def h2_fields(headers: list, added: bytes) -> list:
    """(name, value) pairs for HTTP/2 from forwarded headers and ready-made header lines."""
    fields = []
    for name, value in headers:
        lower = name.lower()
        if lower not in HOP_BY_HOP:
            if value[:1] in WHITESPACE or value[-1:] in WHITESPACE:
                value = value.strip(b" \t")    # RFC 9113 8.2.1: no surrounding whitespace
            fields.append((lower, value))
        elif lower == b"te" and value.strip().lower() == b"trailers":
            fields.append((b"te", b"trailers"))   # the one TE value HTTP/2 allows (gRPC sends it)
    if added:
        for line in added.split(b"\r\n"):
            field = line_field(line)
            if field:
                fields.append(field)
    return fields


def line_field(line: bytes) -> tuple:
    """One ready-made header line as an HTTP/2 field; () when it has none (or a hop-by-hop one)."""
    name, sep, value = line.partition(b":")
    if sep and name.lower() not in HOP_BY_HOP:
        return (name.strip().lower(), value.strip())
    return ()


class RequestBlocks:
    """Request heads -> HPACK blocks on one connection, in remembered pieces (the module docstring)."""

    __slots__ = ("encoder", "generation", "heads", "lines")

    def __init__(self, encoder: HpackEncoder) -> None:
        self.encoder = encoder
        self.generation = encoder.generation   # the table state the pieces were encoded against
        self.heads: dict = {}     # (method, path, authority, tuple(headers)) -> piece
        self.lines: dict = {}     # added line -> piece (b"" for a line without a field)

    def block(self, scheme: bytes, method: bytes, path: bytes, authority: bytes, headers: list,
              added: bytes, content_length: int | None) -> bytes:
        """The block of h2_fields(headers, added) after the pseudo-headers, content-length
        after them, the UNIQUE_PER_REQUEST lines of `added` moved last (the module docstring)."""
        encoder = self.encoder
        if encoder.generation != self.generation or encoder.size_update is not None:
            self._forget()
        key = (method, path, authority, tuple(headers))
        piece = self.heads.get(key)
        if piece is None:
            fields = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", path)]
            fields += h2_fields(headers, b"")
            piece = self._encode(fields, self.heads, key, HEADS_LIMIT)
        if not added and content_length is None:
            return piece
        parts = [piece]
        unique = None
        if added:
            lines = self.lines
            for line in added.split(b"\r\n"):
                piece = lines.get(line)
                if piece is None:
                    name, _, value = line.partition(b":")
                    if name in UNIQUE_PER_REQUEST:
                        # New every time, never remembered; the proxy writes these names
                        # lower-case and bare, so line_field would only strip the value.
                        if unique is None:
                            unique = []
                        unique.append(encoder.literal(name, value.strip()))
                        continue
                    field = line_field(line)
                    if field:
                        piece = self._encode((field,), lines, line, LINES_LIMIT)
                    else:
                        piece = lines[line] = b""
                parts.append(piece)
        if content_length is not None:
            parts.append(encoder.encode(((b"content-length", b"%d" % content_length),)))
        if unique is not None:
            parts += unique
        return b"".join(parts)

    def _encode(self, fields, memo: dict, key, limit: int) -> bytes:
        """Encode a piece; remember it under `key` when the table did not change."""
        encoder = self.encoder
        piece = encoder.encode(fields)
        if encoder.generation != self.generation:
            self._forget()        # the pieces remembered so far name entries that moved
        else:
            if len(memo) >= limit:
                memo.clear()
            memo[key] = piece
        return piece

    def _forget(self) -> None:
        self.heads.clear()
        self.lines.clear()
        self.generation = self.encoder.generation
