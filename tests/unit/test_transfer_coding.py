"""Both HTTP/1 codecs judge Transfer-Encoding by one rule: only `chunked`, once and last, is forwardable."""
from __future__ import annotations

import pytest

from remora.proxy.codec.transfer_coding import chunked_is_final
from tests.unit.test_downstream_codec import assert_rejected, fed
from tests.unit.test_pool import answer

# Transfer-Encoding value -> forwardable (RFC 9112 6.1, 6.3, 7)
TABLE = [
    (b"chunked", True),
    (b"Chunked", True),
    (b"chunked ", True),
    (b"gzip, chunked", True),
    (b"gzip,chunked", True),
    (b"gzip", False),
    (b"identity", False),
    (b"xchunked", False),
    (b"chunked, gzip", False),
    (b"chunked, chunked", False),
    (b"chunked,", False),
]


@pytest.mark.parametrize("value,forwardable", TABLE)
def test_rule(value, forwardable):
    """chunked_is_final: chunked must be the final coding, named once, compared without case or OWS."""
    assert chunked_is_final(value) is forwardable


@pytest.mark.parametrize("value,forwardable", TABLE)
def test_downstream_requests_follow_the_rule(value, forwardable):
    """A request whose Transfer-Encoding breaks the rule is a 400 before routing; others are taken."""
    conn = fed(b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: " + value + b"\r\n\r\n0\r\n\r\n")
    if forwardable:
        assert len(conn.exchanges) == 1 and conn.exchanges[0].head.chunked
    else:
        assert_rejected(conn, 400)
        assert conn.exchanges == []


@pytest.mark.parametrize("value,forwardable", TABLE)
def test_upstream_responses_follow_the_rule(value, forwardable):
    """A response whose Transfer-Encoding breaks the rule is an upstream protocol error, never read until close."""
    exchange = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + b"\r\n\r\n0\r\n\r\n")
    if forwardable:
        (resp,) = exchange.heads
        assert resp.chunked and exchange.ends == [True] and exchange.errors == []
    else:
        assert exchange.heads == [] and len(exchange.errors) == 1
