"""Which HPACK blocks the HTTP/2 session replays without decoding or encoding them again.

A block is remembered when it left the table as it was and carries no per-request value
(header_compression.py's `reusable`): nginx's answers (literals without indexing, Huffman-coded)
and nghttp2's requests (:path and content-length never indexed) repeat byte for byte.
"""
from __future__ import annotations

import pytest
from hpack import Decoder
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hyperframe.frame import HeadersFrame

from remora.proxy.codec import http2_frames as f
from remora.proxy.codec.header_compression import CompressionError, HpackDecoder, HpackEncoder
from remora.proxy.codec.http2_server import ServerConnection

HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _huffman(value: bytes) -> bytes:
    coded = HUFFMAN.encode(value)
    return bytes((0x80 | len(coded),)) + coded


# :method POST, :scheme http (static); :authority and :path as literals without indexing
# (static names 1 and 4), Huffman-coded, the way nghttp2 sends a path.
REQUEST_BLOCK = b"\x83\x86" + b"\x01" + _huffman(b"svc") + b"\x04" + _huffman(b"/test.Echo/Unary")


class CountingDecoder(HpackDecoder):
    """An HpackDecoder that counts the blocks it really decodes."""

    def __init__(self, max_list_size: int) -> None:
        super().__init__(max_list_size)
        self.calls = 0
        self.sizes: list = []

    def decode(self, data: bytes) -> list | None:
        self.calls += 1
        self.sizes.append(len(data))
        return super().decode(data)


def test_literals_without_indexing_are_replayed_from_the_cache():
    """A block of literals without indexing leaves the table alone, so the session decodes it
    once and replays the fields (and their check) for every later stream."""
    server = ServerConnection(100, 60 * 1024)
    server.decoder = CountingDecoder(60 * 1024)
    server.receive_data(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
    heads = []
    for sid in (1, 3, 5):
        events = server.receive_data(HeadersFrame(sid, data=REQUEST_BLOCK, flags=["END_HEADERS", "END_STREAM"])
                                     .serialize())
        heads += [e.headers for e in events if isinstance(e, f.RequestReceived)]
    assert server.decoder.calls == 1 and len(heads) == 3 and heads[0] == heads[2]
    assert heads[0] == [tuple(field) for field in Decoder().decode(REQUEST_BLOCK, raw=True)]


def test_a_request_id_literal_is_not_remembered():
    """A block carrying x-request-id (new on every request) is decoded but not reusable."""
    decoder = HpackDecoder(60 * 1024)
    decoder.decode(REQUEST_BLOCK)
    assert decoder.reusable
    decoder.decode(REQUEST_BLOCK + b"\x00\x0cx-request-id\x03abc")
    assert not decoder.reusable and decoder.generation == 0


def test_upstream_service_time_is_not_indexed():
    """x-envoy-upstream-service-time goes as a literal without indexing: the table and the
    remembered blocks stay valid from one response to the next, and h2's decoder agrees."""
    encoder = HpackEncoder()
    reference = Decoder()
    for ms in (b"3", b"12", b"3"):
        fields = [(b":status", b"200"), (b"x-envoy-upstream-service-time", ms)]
        block = encoder.encode(fields)
        assert encoder.reusable and encoder.generation == 0
        assert [tuple(field) for field in reference.decode(block, raw=True)] == fields


def test_fields_indexed_into_an_empty_table_leave_it_alone():
    """After nginx's table size update to 0, its fields "with incremental indexing" leave the
    table empty: the answers that follow are reusable, and index 62 no longer exists."""
    decoder = HpackDecoder(60 * 1024)
    head = b"\x88" + b"\x76" + _huffman(b"nginx") + b"\x5f" + _huffman(b"application/grpc")
    assert decoder.decode(b"\x20" + head) == [(b":status", b"200"), (b"server", b"nginx"),
                                              (b"content-type", b"application/grpc")]
    generation = decoder.generation
    decoder.decode(head)
    assert decoder.reusable and decoder.generation == generation and not decoder.table
    with pytest.raises(CompressionError):
        decoder.decode(b"\xbe")


def test_blocks_that_read_no_dynamic_entry_replay_their_inserts():
    """nginx's answers without a table size update insert every field and reference none: the
    session decodes one once, and each replay leaves the table as decoding it would."""
    server = ServerConnection(100, 60 * 1024)
    server.decoder = CountingDecoder(60 * 1024)
    server.receive_data(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
    reference = HpackDecoder(60 * 1024)
    block = REQUEST_BLOCK + b"\x40\x03x-a" + _huffman(b"1") + b"\x5f" + _huffman(b"application/grpc")
    for sid in (1, 3, 5):
        events = server.receive_data(HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"])
                                     .serialize())
        heads = [e.headers for e in events if isinstance(e, f.RequestReceived)]
        assert heads == [reference.decode(block)]
    assert server.decoder.calls == 1 and server.decoder.generation == 6
    assert list(server.decoder.table) == list(reference.table) and len(reference.table) == 6



def test_replays_into_a_table_emptied_to_size_zero_leave_it_empty():
    """nginx's answers after its size update to 0: the first block empties the table, the
    replays of the next ones insert nothing and keep the generation (their cache stays valid),
    and the decoder still reads what hpack's reads."""
    server = ServerConnection(100, 60 * 1024)
    server.decoder = CountingDecoder(60 * 1024)
    server.receive_data(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
    server.receive_data(HeadersFrame(1, data=REQUEST_BLOCK + b"\x40\x03x-b\x012",
                                     flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert len(server.decoder.table) == 1
    block = REQUEST_BLOCK + b"\x40\x03x-a" + _huffman(b"1")
    reference = Decoder()
    reference.decode(REQUEST_BLOCK + b"\x40\x03x-b\x012")
    for sid in (3, 5, 7):
        data = (b"\x20" if sid == 3 else b"") + block
        events = server.receive_data(HeadersFrame(sid, data=data, flags=["END_HEADERS", "END_STREAM"]).serialize())
        heads = [e.headers for e in events if isinstance(e, f.RequestReceived)]
        assert heads == [[tuple(field) for field in reference.decode(data, raw=True)]]
        if sid == 5:
            generation = server.decoder.generation
    assert not server.decoder.table and server.decoder.generation == generation
    assert server.decoder.calls == 3     # the first (size update), the second (decoded once), no more

class CountingEncoder(HpackEncoder):
    """An HpackEncoder that counts the field lists it really encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def encode(self, headers: list) -> bytes:
        self.calls += 1
        return super().encode(headers)


def test_heads_with_a_new_service_time_reuse_the_pieces_around_it():
    """Answers that differ only in x-envoy-upstream-service-time are encoded once: later ones
    are the remembered pieces around a new literal, and h2's decoder reads every one."""
    server = ServerConnection(100, 60 * 1024)
    server.encoder = CountingEncoder()
    server.receive_data(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
    server.data_to_send()
    sent = []
    for sid, ms in ((1, b"3"), (3, b"12"), (5, b"7")):
        server.receive_data(HeadersFrame(sid, data=REQUEST_BLOCK, flags=["END_HEADERS", "END_STREAM"]).serialize())
        head = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                (b"x-envoy-upstream-service-time", ms), (b"x-b", b"c")]
        server.send_headers(sid, head, end_stream=True)
        sent.append(head)
    out = server.data_to_send()
    reference, decoded, pos = Decoder(), [], 0
    while pos < len(out):
        length = int.from_bytes(out[pos:pos + 3], "big")
        if out[pos + 3] == f.HEADERS:
            decoded.append([tuple(field) for field in reference.decode(out[pos + 9:pos + 9 + length], raw=True)])
        pos += 9 + length
    assert decoded == sent
    # The first answer adds its fields to the table (not remembered), the second is indexed
    # and remembered in two pieces, the third only encodes its literal.
    assert server.encoder.calls == 4


def _peer_block(blocks, i: int) -> bytes:
    added = b"x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nx-envoy-attempt-count: 1\r\n"
    unique = b"x-request-id: id-%d\r\ntraceparent: 00-%032x-%016x-01\r\n" % (i, i + 1, i + 1)
    return blocks.block(b"http", b"POST", b"/test.Echo/Unary", b"svc",
                        [(b"content-type", b"application/grpc"), (b"te", b"trailers")], added, unique, 40)


def test_a_peer_sidecars_requests_decode_only_their_new_values():
    """A Remora peer's request blocks end in their request id and trace context: after the
    table settles, the part before them is remembered and only the new values are decoded;
    every request still reads as hpack's decoder reads it."""
    from remora.proxy.upstream.http2_request_head import RequestBlocks

    server = ServerConnection(100, 60 * 1024)
    server.decoder = CountingDecoder(60 * 1024)
    server.receive_data(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
    blocks, reference = RequestBlocks(HpackEncoder()), Decoder()
    whole = []
    for i in range(6):
        block = _peer_block(blocks, i)
        whole.append(len(block))
        events = server.receive_data(HeadersFrame(1 + 2 * i, data=block, flags=["END_HEADERS"]).serialize())
        head = [e for e in events if isinstance(e, f.RequestReceived)][0].headers
        assert head == [tuple(field) for field in reference.decode(block, raw=True)]
        assert head[-2:] == [(b"x-request-id", b"id-%d" % i), (b"traceparent", b"00-%032x-%016x-01" % (i + 1, i + 1))]
    # The first block fills the table; the second is decoded whole and its prefix kept; from
    # the third on, only the bytes of the two new fields are decoded.
    sizes = server.decoder.sizes
    assert sizes[:2] == whole[:2] and all(size < block for size, block in zip(sizes[2:], whole[2:]))
    assert len(sizes) == 6 and len(server.checked_blocks) == 1


def test_a_table_size_update_after_a_remembered_prefix_is_refused():
    """Bytes after a remembered prefix that start with a table size update are refused as a
    whole block would be (the update is not first): COMPRESSION_ERROR."""
    from remora.proxy.codec.http2_frames import Http2Error
    from remora.proxy.upstream.http2_request_head import RequestBlocks

    server = ServerConnection(100, 60 * 1024)
    server.receive_data(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
    blocks = RequestBlocks(HpackEncoder())
    for i in range(2):
        server.receive_data(HeadersFrame(1 + 2 * i, data=_peer_block(blocks, i), flags=["END_HEADERS"]).serialize())
    prefix = next(iter(server.checked_blocks))
    with pytest.raises(Http2Error):
        server.receive_data(HeadersFrame(5, data=prefix + b"\x20", flags=["END_HEADERS"]).serialize())


def test_the_client_names_its_table_size():
    """The client's SETTINGS name the default table size, so that nginx empties its table
    and stops inserting every answer's fields into ours."""
    from hyperframe.frame import Frame

    from remora.proxy.codec.http2_client import ClientConnection

    client = ClientConnection(60 * 1024)
    client.initiate_connection()
    data = client.data_to_send()[len(f.PREFACE):]
    settings, length = Frame.parse_frame_header(memoryview(data[:9]))
    settings.parse_body(memoryview(data[9:9 + length]))
    assert settings.settings[0x1] == 4096     # SETTINGS_HEADER_TABLE_SIZE


def test_a_prefix_is_not_reused_once_its_own_tail_moved_the_table():
    """A tail inserted with indexing shifts the dynamic indexes the prefix reads: the next
    block with the same prefix bytes decodes in the new table, as hpack's decoder does."""
    server = ServerConnection(100, 60 * 1024)
    server.receive_data(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
    reference = Decoder()
    pseudo = b"\x83\x86\x84\x01\x03svc"
    prefix = pseudo + b"\xbe"                  # index 62: the newest entry of the table
    blocks = [pseudo + b"\x40\x03x-a\x011"] + [prefix + b"\x40\x0cx-request-id\x02r%d" % i for i in (1, 2, 3)]
    for i, block in enumerate(blocks):
        events = server.receive_data(HeadersFrame(1 + 2 * i, data=block, flags=["END_HEADERS", "END_STREAM"])
                                     .serialize())
        head = [e for e in events if isinstance(e, f.RequestReceived)][0].headers
        assert head == [tuple(field) for field in reference.decode(block, raw=True)], i
