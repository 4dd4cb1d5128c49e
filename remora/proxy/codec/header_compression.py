"""HPACK (RFC 7541) for the downstream HTTP/2 server: a decoder for request header blocks
and an encoder for response header blocks, one pair per connection.

Why not the `hpack` package: it logs every header at debug level, builds a Python object
per table search and validates through several layers, which made HPACK a tenth of the
proxy's CPU under h2load. This module keeps only what a server needs; the `hpack`
package stays the reference in tests (tests/unit/test_header_compression.py) and lends
its static table and Huffman decoder.

Rules:
- Decoding: a block that breaks HPACK (bad index, truncated string, bad Huffman, a table
  size update above our limit or after the first field) raises CompressionError, which
  ends the connection with COMPRESSION_ERROR: the dynamic table can no longer be trusted.
- A header list above `max_list_size` (RFC 7541 4.1 sizes: name + value + 32 each) is
  still decoded to the end, so the table stays in step with the client's, but its fields
  are dropped and the decoder answers None: the stream is refused (431), not the
  connection (the HPACK bomb ends at the limit, not at 80 MiB).
- Encoding: names and values go as raw strings (no Huffman: loopback and pod networks do
  not need the bytes saved and the CPU is the scarce thing). Fields are added to the
  dynamic table, so a response's repeated fields cost one byte each, except credentials
  and cookies (never indexed, as nghttp2 does), values new on every request (request ids,
  trace context) and values above 256 bytes (literal, unindexed: they would evict the
  fields that repeat).
- Both coders count their table's changes (`generation`: an insertion, an eviction, a size
  change) and say whether the last block can be replayed (`reusable`): it left the table as
  it was (indexed fields and literals without indexing only) and carries no
  UNIQUE_PER_REQUEST field. The session remembers such a block (http2_session.py,
  http2_send.py) and replays it while the generation is unchanged, without decoding or
  encoding again. Literals without indexing are common in blocks that repeat: nghttp2
  (h2load, curl) never indexes :path and content-length, nginx indexes nothing and
  Huffman-codes every value; a block with a new request id every time is not worth
  remembering.
- A block that reads nothing from the dynamic table (static indexes and literals only)
  decodes to the same fields whatever the table holds: the decoder gives the fields it
  inserts (`replay`), and the session replays such a block at any generation by inserting
  them again, without Huffman-decoding or checking it. nginx answers that way when the
  client's SETTINGS do not name a table size: every field a Huffman-coded literal "with
  incremental indexing", never referenced afterwards.
- A block that ends in UNIQUE_PER_REQUEST fields only (a Remora peer's requests: its request
  id and trace context go last) says where they start (`prefix`), if the part before them
  left the table unchanged: the session remembers that part as a block of its own and, for
  the next block that starts with the same bytes, decodes only the new values.
- x-envoy-upstream-service-time goes as a literal without indexing (NOT_INDEXED): its value
  changes from call to call among a few hundred, and indexed it would churn the table (and
  so every remembered block) on most responses.
- Within a block, the encoder keeps each indexed field's bytes while the table is unchanged
  (`memo`, cleared at any table change) and each literal name's prefix (`literal_names`:
  it does not depend on the table), so a field it has seen costs one lookup.
  `literal` encodes a UNIQUE_PER_REQUEST field alone, as encode would (the upstream
  request blocks of upstream/http2_request_head.py are built from such pieces).
"""
from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC = HeaderTable.STATIC_TABLE           # 61 (name, value) pairs, index 1..61
STATIC_COUNT = len(STATIC)
ENTRY_OVERHEAD = 32                         # RFC 7541 4.1
DEFAULT_TABLE_SIZE = 4096
MAX_INDEXED_VALUE = 256
MAX_LITERAL_NAMES = 256             # literal-field name prefixes an encoder remembers
NEVER_INDEXED = frozenset((b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"))
# Values new on every request: added to the table they would only evict the fields that
# repeat (and cost an insertion each), so they go as literals without indexing.
UNIQUE_PER_REQUEST = frozenset((b"x-request-id", b"traceparent", b"tracestate", b"b3", b"x-b3-traceid",
                                b"x-b3-spanid", b"x-b3-parentspanid", b"x-client-trace-id"))
# Values that repeat, but change too often to index (the module docstring).
NOT_INDEXED = frozenset((b"x-envoy-upstream-service-time",))
UNINDEXED_NAMES = NEVER_INDEXED | UNIQUE_PER_REQUEST | NOT_INDEXED
STATIC_EXACT = {}
STATIC_NAME = {}
for _i, (_name, _value) in enumerate(STATIC, 1):
    STATIC_EXACT.setdefault((_name, _value), _i)
    STATIC_NAME.setdefault(_name, _i)


class CompressionError(Exception):
    """The header block does not decode: a connection error (COMPRESSION_ERROR)."""


def _integer(data: bytes, pos: int, mask: int) -> tuple[int, int]:
    """An HPACK integer whose prefix is `mask` (2^N - 1) at data[pos] -> (value, next pos)."""
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 28:        # truncated, or larger than any length we accept
            raise CompressionError("bad integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise CompressionError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 0x7F)
    end = pos + length
    if end > len(data):
        raise CompressionError("truncated string")
    text = data[pos:end]
    if huffman:
        try:
            text = decode_huffman(text)
        except Exception as err:    # hpack's HPACKDecodingError
            raise CompressionError("bad huffman string") from err
    return text, end


class HpackDecoder:
    """Request header blocks -> [(name, value)] (bytes), with the client's dynamic table."""

    __slots__ = ("generation", "list_size", "max_list_size", "max_table_size", "prefix", "replay", "reusable",
                 "table", "table_limit", "table_size")

    def __init__(self, max_list_size: int) -> None:
        self.table: deque = deque()       # newest first: dynamic index 62 is table[0]
        self.table_size = 0
        self.generation = 0               # bumped on every table change (the module docstring)
        self.reusable = False             # the last block can be replayed (the module docstring)
        self.replay: tuple | None = None  # what the last block inserts, if it reads no dynamic entry
        self.prefix: tuple | None = None  # (offset, list size, fields, generation): see decode
        self.list_size = 0                # the last block's header list size (RFC 7541 4.1)
        self.max_table_size = DEFAULT_TABLE_SIZE   # what our SETTINGS allow (the default)
        # The size the peer's last table size update chose (RFC 7541 4.2), within the above:
        # nginx sets it to 0 and then sends its fields "with incremental indexing", which
        # leave an empty table empty (and its blocks reusable).
        self.table_limit = DEFAULT_TABLE_SIZE
        self.max_list_size = max_list_size

    def decode(self, data: bytes) -> list | None:
        """The block's fields, or None when they exceed max_list_size (see the module docstring)."""
        headers: list = []
        size = 0
        pos = 0
        end = len(data)
        generation = self.generation
        unique = False          # a UNIQUE_PER_REQUEST field: the block will not come again
        dynamic = False         # it read the dynamic table (or resized it)
        inserts = []
        tail = None             # where the trailing run of UNIQUE_PER_REQUEST fields starts
        while pos < end:
            byte = data[pos]
            start = pos
            before = self.generation
            if byte & 0x80:                           # indexed field
                index, pos = _integer(data, pos, 0x7F)
                if index > STATIC_COUNT:
                    dynamic = True
                field = self._field(index)
                tail = None
            elif byte & 0x60 == 0x20:                 # dynamic table size update
                dynamic = True
                if headers or size:
                    raise CompressionError("table size update after a field")
                new_size, pos = _integer(data, pos, 0x1F)
                if new_size > self.max_table_size:
                    raise CompressionError("table size update above SETTINGS_HEADER_TABLE_SIZE")
                self._shrink(new_size)
                self.table_limit = new_size
                self.generation += 1
                continue
            else:                                     # literal: added to the table, or not indexed
                added = byte & 0x40
                index, pos = _integer(data, pos, 0x3F if added else 0x0F)
                if index > STATIC_COUNT:
                    dynamic = True
                name, pos = _string(data, pos) if index == 0 else (self._field(index)[0], pos)
                value, pos = _string(data, pos)
                field = (name, value)
                if added:
                    self._add(field)
                    inserts.append(field)
                if name in UNIQUE_PER_REQUEST:
                    unique = True
                    if tail is None:
                        tail = (start, before, size, len(headers) if headers is not None else 0)
                else:
                    tail = None
            size += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if headers is not None:
                if size > self.max_list_size:
                    headers = None      # keep decoding: the table must follow the client's
                else:
                    headers.append(field)
        self.reusable = not unique and generation == self.generation
        self.replay = None if unique or dynamic else tuple(inserts)
        self.list_size = size
        # The block up to its trailing UNIQUE_PER_REQUEST fields, when that part left the
        # table unchanged: (byte offset, its list size, its field count, the table generation
        # it decodes in), for the session.
        self.prefix = (tail[0], tail[2], tail[3], generation) if tail is not None and tail[1] == generation else None
        return headers

    def insert(self, fields: tuple) -> None:
        """Add the fields a `replay` block inserts, in order, as decoding it would."""
        if not self.table_limit and not self.table:
            return      # nginx's table emptied to size 0: what it inserts leaves it empty (_add)
        for field in fields:
            self._add(field)

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= STATIC_COUNT:
            return STATIC[index - 1]
        try:
            return self.table[index - STATIC_COUNT - 1]
        except IndexError:
            raise CompressionError(f"header index {index} is not in the table") from None

    def _add(self, field: tuple[bytes, bytes]) -> None:
        entry = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if entry > self.table_limit:
            if self.table:           # an empty table stays as it was: no generation
                self.generation += 1
                self.table.clear()   # RFC 7541 4.4: an entry larger than the table empties it
                self.table_size = 0
            return
        self.generation += 1
        self.table.appendleft(field)
        self.table_size += entry
        self._shrink(self.table_limit)

    def _shrink(self, limit: int) -> None:
        table = self.table
        while self.table_size > limit:
            name, value = table.pop()
            self.table_size -= len(name) + len(value) + ENTRY_OVERHEAD


def _encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# A string's one-byte length prefix (no Huffman), made once: `literal` and `_encode_string`
# write one for every field they encode.
SHORT_LENGTHS = tuple(bytes((length,)) for length in range(0x7F))


def _encode_string(text: bytes) -> bytes:
    length = len(text)
    if length < 0x7F:
        return SHORT_LENGTHS[length] + text
    return _encode_integer(length, 7, 0) + text


class HpackEncoder:
    """[(name, value)] (bytes, names lower-case) -> a response header block."""

    __slots__ = ("entries", "generation", "inserted", "literal_names", "max_table_size",
                 "memo", "memo_generation", "positions", "reusable", "size_update", "table_size")

    def __init__(self) -> None:
        self.positions: dict = {}     # (name, value) -> insertion number of its newest copy
        self.entries: deque = deque()  # (field, size, insertion number), oldest first
        self.inserted = 0             # fields added so far: the newest has number inserted - 1
        self.table_size = 0
        self.max_table_size = DEFAULT_TABLE_SIZE
        self.size_update: int | None = None   # a table size update owed at the next block
        self.generation = 0           # bumped on every table change (the module docstring)
        self.reusable = False         # the last block can be replayed (the module docstring)
        # The bytes of each indexed field while the table is unchanged (`memo_generation`):
        # a field is then one lookup. It only holds fields the table (static or dynamic)
        # has, so it is as bounded as the table.
        self.memo: dict = {}
        self.memo_generation = 0
        # The literal-without-indexing prefix (representation and name) per name: it names
        # a static index or the name itself, so it never changes with the table.
        self.literal_names: dict = {}

    def set_max_table_size(self, peer_limit: int) -> None:
        """The client's SETTINGS_HEADER_TABLE_SIZE: our table stays within it (and 4096)."""
        size = min(peer_limit, DEFAULT_TABLE_SIZE)
        if size != self.max_table_size:
            self.max_table_size = size
            self._evict(size)
            self.size_update = size
            self.generation += 1

    def encode(self, headers: list) -> bytes:
        out = []
        reusable = self.size_update is None
        if not reusable:
            out.append(_encode_integer(self.size_update, 5, 0x20))
            self.size_update = None
        memo = self.memo
        if self.memo_generation != self.generation:
            memo.clear()
            self.memo_generation = self.generation
        for field in headers:
            rep = memo.get(field)
            if rep is not None:
                out.append(rep)
                continue
            index = STATIC_EXACT.get(field)
            if index is not None:
                rep = memo[field] = bytes((0x80 | index,))      # static indexes are all < 127
                out.append(rep)
                continue
            number = self.positions.get(field)
            if number is not None:
                rep = memo[field] = _encode_integer(self.inserted - number + STATIC_COUNT, 7, 0x80)
                out.append(rep)
                continue
            name, value = field
            if name in UNINDEXED_NAMES or len(value) > MAX_INDEXED_VALUE:
                prefix = self.literal_names.get(name)
                if prefix is None:
                    prefix = self._literal_name(name)
                out.append(prefix)
                out.append(_encode_string(value))
                if name in UNIQUE_PER_REQUEST:
                    reusable = False
                continue
            reusable = False
            name_index = STATIC_NAME.get(name, 0)
            out.append(_encode_integer(name_index, 6, 0x40))
            if not name_index:
                out.append(_encode_string(name))
            out.append(_encode_string(value))
            self._add(field)
            memo.clear()        # dynamic indexes moved up by one
            self.memo_generation = self.generation
        self.reusable = reusable
        return b"".join(out)

    def literal(self, name: bytes, value: bytes) -> bytes:
        """What encode gives a field whose name is in UNINDEXED_NAMES and in neither table
        (a literal without indexing): the table is left as it was."""
        prefix = self.literal_names.get(name)
        if prefix is None:
            prefix = self._literal_name(name)
        length = len(value)
        return prefix + (SHORT_LENGTHS[length] if length < 0x7F else _encode_integer(length, 7, 0)) + value

    def _literal_name(self, name: bytes) -> bytes:
        """A literal field's representation up to its value, without indexing (never indexed
        for credentials); remembered per name (bounded: names seen are few, and capped)."""
        name_index = STATIC_NAME.get(name, 0)
        prefix = _encode_integer(name_index, 4, 0x10 if name in NEVER_INDEXED else 0x00)
        if not name_index:
            prefix += _encode_string(name)
        if len(self.literal_names) >= MAX_LITERAL_NAMES:
            self.literal_names.clear()
        self.literal_names[name] = prefix
        return prefix

    def _add(self, field: tuple[bytes, bytes]) -> None:
        self.generation += 1
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self.max_table_size:
            self._evict(0)     # the peer empties its table too (RFC 7541 4.4)
            return
        self._evict(self.max_table_size - size)
        self.positions[field] = self.inserted
        self.entries.append((field, size, self.inserted))
        self.inserted += 1
        self.table_size += size

    def _evict(self, limit: int) -> None:
        entries = self.entries
        positions = self.positions
        while self.table_size > limit:
            field, size, number = entries.popleft()
            self.table_size -= size
            if positions.get(field) == number:
                del positions[field]
