"""Upstream HTTP/2 response heads (upstream/http2_response_head.py): the split the router
gets, remembered per head, and a gRPC trailers-only answer's status fields apart."""
from __future__ import annotations

from remora.proxy.upstream.http2_response_head import (HEADS_LIMIT, PEER_METADATA, ResponseHeads, grpc_status_of,
                                                       is_grpc, trailers_only)

HEAD = [(b":status", b"200"), (b"server", b"nginx"), (b"content-type", b"application/grpc"),
        (b"content-length", b"40"), (PEER_METADATA, b"meta"), (b"x-envoy-upstream-service-time", b"3")]


def test_split_leaves_out_pseudo_headers_metadata_and_content_length():
    """:status and content-length come as numbers, peer metadata apart, the rest forwarded in order."""
    status, fields, meta, length = ResponseHeads().split(list(HEAD))
    assert (status, meta, length) == (200, b"meta", 40)
    assert fields == ((b"server", b"nginx"), (b"content-type", b"application/grpc"),
                      (b"x-envoy-upstream-service-time", b"3"))


def test_a_malformed_content_length_reads_as_absent():
    """A content-length that is not a number is no length (the body is read to its end)."""
    assert ResponseHeads().split([(b":status", b"204"), (b"content-length", b"x")])[3] is None


def test_a_repeated_head_is_remembered_and_a_different_one_is_not_confused():
    """The same fields give the remembered split; another service time gives its own; the
    memo is cleared at its limit."""
    heads = ResponseHeads()
    first = heads.split(list(HEAD))
    assert heads.split(list(HEAD)) is first
    other = HEAD[:-1] + [(b"x-envoy-upstream-service-time", b"4")]
    assert heads.split(other)[1][-1] == (b"x-envoy-upstream-service-time", b"4")
    for i in range(HEADS_LIMIT):
        heads.split([(b":status", b"200"), (b"x-n", b"%d" % i)])
    assert len(heads.memo) <= HEADS_LIMIT


def test_trailers_only_answer_moves_its_status_fields_to_trailers():
    """grpc-status, grpc-message and its details go to the trailers; the status reads as a number."""
    headers = [(b"content-type", b"application/grpc"), (b"grpc-status", b"14"), (b"grpc-message", b"down")]
    assert is_grpc(headers)
    head, trailers = trailers_only(headers)
    assert head == [(b"content-type", b"application/grpc")]
    assert trailers == [(b"grpc-status", b"14"), (b"grpc-message", b"down")]
    assert grpc_status_of(trailers) == 14
    assert grpc_status_of([(b"grpc-status", b"x")]) == 2
