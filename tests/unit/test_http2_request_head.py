"""Upstream HTTP/2 request heads (upstream/http2_request_head.py): the blocks RequestBlocks
builds from remembered pieces decode, with hpack's decoder as the reference, to exactly the
fields h2_fields gives, on one connection's encoder across table changes."""
from __future__ import annotations

import random

from hpack import Decoder

from remora.proxy.codec.header_compression import UNIQUE_PER_REQUEST, HpackEncoder
from remora.proxy.upstream.http2_request_head import RequestBlocks, h2_fields

FORWARDED = [[(b"Content-Type", b"application/grpc"), (b"TE", b"trailers")],
             [(b"accept", b" */* "), (b"Connection", b"close"), (b"x-custom", b"1")],
             [(b"cookie", b"a=1"), (b"authorization", b"Bearer t"), (b"Host", b"h")]]


def added_lines(rng: random.Random, i: int) -> tuple[bytes, bytes]:
    """(repeating lines, lines new per request), as Listener.added_request_headers gives them."""
    lines = [b"x-forwarded-for: 10.0.0.%d" % rng.randrange(3), b"x-forwarded-proto: http",
             b"user-agent: ua/%d" % rng.randrange(2), b"x-envoy-attempt-count: %d" % rng.randrange(1, 3)]
    unique = [b"x-request-id: id-%d" % i, b"traceparent: 00-%032x-%016x-00" % (i + 1, i + 7)]
    return b"".join(line + b"\r\n" for line in lines), b"".join(line + b"\r\n" for line in unique)


def expected(method, path, authority, headers, added, unique, content_length) -> list:
    fields = [(b":method", method), (b":scheme", b"http"), (b":authority", authority), (b":path", path)]
    fields += h2_fields(headers, added)
    if content_length is not None:
        fields.append((b"content-length", b"%d" % content_length))
    unique_fields = h2_fields((), unique)
    assert all(field[0] in UNIQUE_PER_REQUEST for field in unique_fields)
    return fields + unique_fields   # new per request: last


def test_blocks_decode_to_the_fields_across_table_changes():
    """Remembered pieces, fresh pieces, evictions (a small table), a size update owed and
    varying content-lengths: every block decodes to h2_fields' fields, in order."""
    rng = random.Random(7)
    encoder = HpackEncoder()
    blocks = RequestBlocks(encoder)
    decoder = Decoder()
    for i in range(600):
        if i == 200:
            encoder.set_max_table_size(256)     # the peer's SETTINGS_HEADER_TABLE_SIZE: evictions
            decoder.max_allowed_table_size = 256
        if i == 400:
            encoder.set_max_table_size(4096)
            decoder.max_allowed_table_size = 4096
        headers = FORWARDED[rng.randrange(len(FORWARDED))]
        path = b"/svc/M%d" % rng.randrange(3)
        added, unique = added_lines(rng, i) if rng.random() < 0.9 else (b"", b"")
        length = rng.choice([None, None, 5, 6, 1000 + i])
        block = blocks.block(b"http", b"POST", path, b"svc", headers, added, unique, length)
        assert decoder.decode(block, raw=True) == expected(b"POST", path, b"svc", headers, added, unique, length), i


def test_a_repeated_head_is_remembered_and_its_unique_lines_are_not():
    """Once the table holds a repeating head's fields, its pieces are remembered; the
    request id and trace context lines never are, yet the block still carries them."""
    encoder = HpackEncoder()
    blocks = RequestBlocks(encoder)
    decoder = Decoder()
    for i in range(3):
        added = b"x-forwarded-for: 1.2.3.4\r\nx-envoy-attempt-count: 1\r\n"
        unique = b"x-request-id: r%d\r\ntraceparent: 00-%032x-%016x-00\r\n" % (i, i + 1, i + 1)
        block = blocks.block(b"http", b"POST", b"/a", b"svc", FORWARDED[0], added, unique, None)
        assert decoder.decode(block, raw=True) == expected(b"POST", b"/a", b"svc", FORWARDED[0], added, unique, None)
    assert len(blocks.heads) == 1
    assert set(blocks.lines) == {b"x-forwarded-for: 1.2.3.4\r\nx-envoy-attempt-count: 1\r\n"}
