"""What a downstream HTTP/2 connection remembers of the requests a peer sidecar repeats.

A peer's requests repeat but for their request id and trace context: the head's shape is
remembered without them (codec/http2_request.py, RequestHeads), and fields that passed the
RFC 9113 checks are not checked again (codec/http2_validation.py, PASSED).
"""
from __future__ import annotations

import pytest

from remora.proxy.codec import http2_validation
from remora.proxy.codec.http1 import BadRequest
from remora.proxy.codec.http2_frames import Http2Error
from remora.proxy.codec.http2_request import RequestHeads, request_head
from remora.proxy.codec.http2_validation import PASSED, check_request_fields
from remora.proxy.codec.paths import PathNormalizer

PATHS = PathNormalizer()
BASE = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/test.Echo/Unary"), (b":authority", b"svc"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def _call(request_id: bytes, span: bytes) -> list:
    return BASE + [(b"x-request-id", request_id), (b"x-forwarded-proto", b"http"),
                   (b"traceparent", b"00-" + b"a" * 32 + b"-" + span + b"-01"), (b"x-envoy-attempt-count", b"1")]


def test_request_id_and_trace_context_are_read_per_request_from_a_remembered_shape():
    """Two calls differing only in x-request-id and traceparent share one remembered shape,
    and each head has the id and trace context of its own block, as request_head gives."""
    heads = RequestHeads()
    for request_id, span in ((b"id-1", b"1" * 16), (b"id-2", b"2" * 16)):
        headers = _call(request_id, span)
        head = heads.head(headers, False, PATHS, 100)
        fresh = request_head(headers, False, PATHS, 100)
        assert head.request_id == request_id == fresh.request_id
        assert head.trace_in == fresh.trace_in == [headers[8]]
        assert head.headers == fresh.headers and head.path == fresh.path and head.grpc
    assert len(heads.memo) == 1


def test_the_header_count_limit_counts_the_per_request_fields():
    """The request id and trace fields still count toward the header limit."""
    with pytest.raises(BadRequest):
        RequestHeads().head(_call(b"id", b"1" * 16), False, PATHS, len(_call(b"id", b"1" * 16)) - 5)


def test_checked_fields_are_remembered_but_new_per_request_values_are_not():
    """A field that passed is remembered; a request id is checked every time, and a bad
    value is refused whatever was remembered before."""
    PASSED.clear()
    check_request_fields(_call(b"id-1", b"1" * 16))
    assert (b"te", b"trailers") in PASSED and (b"x-request-id", b"id-1") not in PASSED
    with pytest.raises(Http2Error):
        check_request_fields(_call(b"id\r\n", b"1" * 16))
    assert len(PASSED) <= http2_validation.PASSED_LIMIT
