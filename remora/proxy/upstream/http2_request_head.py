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
headers with the forwarded headers, then the router's added lines (one piece), then
content-length, then the lines new on every request, which the router hands over apart
(Listener.added_request_headers). HPACK is sequential, so encoding the pieces one after
the other gives the bytes encoding them all at once gives. A piece whose encoding left the
encoder's table as it was (indexed fields, literals without indexing) is a pure function of
its inputs while the table stays unchanged, so it is remembered: the forwarded part by
(method, path, authority, headers), the added lines by their bytes, content-length by its
number; and the three joined, by all of those together, when none of them changed the
table (a client's calls repeat them: one lookup per request). Any change of the table (an
insertion, an eviction, a size update owed) forgets every piece. Lines new on every
request (x-request-id, trace context) are encoded every time as literals and never
remembered. Each memo is cleared when it reaches its limit.
"""
from __future__ import annotations

from remora.proxy.codec.header_compression import HpackEncoder

# RFC 9113 8.2.2: connection-specific fields never go on an HTTP/2 stream.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade", b"host", b"te"})
WHITESPACE = (b" ", b"\t")
HEADS_LIMIT = 64               # forwarded-header pieces a RequestBlocks remembers
LINES_LIMIT = 256              # added-lines and content-length pieces it remembers


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

    __slots__ = ("encoder", "generation", "heads", "lines", "repeated")

    def __init__(self, encoder: HpackEncoder) -> None:
        self.encoder = encoder
        self.generation = encoder.generation   # the table state the pieces were encoded against
        self.heads: dict = {}     # (method, path, authority, tuple(headers)) -> piece
        self.lines: dict = {}     # added lines (bytes) or content-length (int) -> piece
        self.repeated: dict = {}  # heads' key + (added, content_length) -> the three pieces joined

    def block(self, scheme: bytes, method: bytes, path: bytes, authority: bytes, headers: list,
              added: bytes, unique: bytes, content_length: int | None) -> bytes:
        """The block of h2_fields(headers, added) after the pseudo-headers, content-length
        after them, then the `unique` lines (new on every request), as literals."""
        encoder = self.encoder
        if encoder.generation != self.generation or encoder.size_update is not None:
            self._forget()
        # Everything before the unique lines, in one lookup: a client's calls repeat it.
        key = (method, path, authority, tuple(headers), added, content_length)
        piece = self.repeated.get(key)
        if piece is None:
            piece = self._repeated(key, scheme)
        if not unique:
            return piece
        parts = [piece]
        # New on every request, never remembered: literals that leave the table alone.
        # The proxy writes these lines itself, names lower-case and "name: value".
        literal = encoder.literal
        for line in unique.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                parts.append(literal(name, value.strip()))
        return b"".join(parts)

    def _repeated(self, key: tuple, scheme: bytes) -> bytes:
        """The forwarded piece, the added lines' and content-length's, each from its memo or
        encoded; joined, and remembered as one when none of them changed the table."""
        method, path, authority, headers, added, content_length = key
        generation = self.generation
        head_key = key[:4]
        piece = self.heads.get(head_key)
        if piece is None:
            fields = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", path)]
            fields += h2_fields(headers, b"")
            piece = self._encode(fields, self.heads, head_key, HEADS_LIMIT)
        parts = [piece]
        if added:
            # The router's added lines repeat from request to request (the per-request ones
            # come apart, in `unique`): one piece for all of them, remembered by their bytes.
            piece = self.lines.get(added)
            if piece is None:
                piece = self._encode(h2_fields((), added), self.lines, added, LINES_LIMIT)
            parts.append(piece)
        if content_length is not None:
            # Remembered by the number (an int key: never one of the lines' bytes keys).
            piece = self.lines.get(content_length)
            if piece is None:
                piece = self._encode(((b"content-length", b"%d" % content_length),), self.lines, content_length,
                                     LINES_LIMIT)
            parts.append(piece)
        joined = b"".join(parts)
        if self.generation == generation:     # no piece changed the table (_encode forgets then)
            if len(self.repeated) >= HEADS_LIMIT:
                self.repeated.clear()
            self.repeated[key] = joined
        return joined

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
        self.repeated.clear()
        self.generation = self.encoder.generation
