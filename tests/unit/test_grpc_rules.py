"""gRPC rules the router applies: call detection, grpc-timeout, Envoy's status mapping, counting."""
from __future__ import annotations

import struct

import pytest

from remora.proxy.router.grpc import (MessageCounter, effective_timeout, encode_grpc_message,
                                      grpc_status_code, grpc_status_for_http,
                                      http_status_for_grpc, is_grpc, local_reply_trailers,
                                      parse_grpc_timeout)
from remora.proxy.router.retry import ISTIO_DEFAULT_RETRY, RetryPolicy


@pytest.mark.parametrize("value, expected", [
    (b"application/grpc", True), (b"application/grpc+proto", True),
    (b"application/grpc;charset=utf-8", True), (b"application/grpc-web", False),
    (b"application/grpc-web+proto", False), (b"application/json", False), (None, False),
])
def test_grpc_calls_are_recognised_by_content_type(value, expected):
    """application/grpc and its +format variants are calls; gRPC-Web and others are not."""
    assert is_grpc(value) is expected


@pytest.mark.parametrize("status, code", [
    (400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14),
    (500, 2), (408, 2),
])
def test_http_status_maps_to_grpc_status_as_envoy_does(status, code):
    """Local replies carry Envoy's httpToGrpcStatus mapping."""
    assert grpc_status_for_http(status) == code


@pytest.mark.parametrize("code, status", [
    (0, 200), (1, 499), (4, 504), (7, 403), (8, 429), (12, 501), (13, 500), (14, 503), (16, 401), (99, 500),
])
def test_grpc_status_maps_to_http_for_outlier_detection_as_envoy_does(code, status):
    """Outlier detection sees a trailers-only answer as Envoy's grpcToHttpStatus twin."""
    assert http_status_for_grpc(code) == status


def test_grpc_retry_conditions_match_a_trailers_only_status():
    """retryOn gRPC names retry their status on an HTTP 200 answer; other statuses do not."""
    policy = RetryPolicy(2, None, frozenset({"unavailable", "resource-exhausted"}), frozenset())
    assert policy.retry_on_status(200, 14) and policy.retry_on_status(200, 8)
    assert not policy.retry_on_status(200, 13) and not policy.retry_on_status(200, None)
    # Istio's default policy retries `unavailable` and `cancelled`, not `internal`
    assert ISTIO_DEFAULT_RETRY.retry_on_status(200, 14) and ISTIO_DEFAULT_RETRY.retry_on_status(200, 1)
    assert not ISTIO_DEFAULT_RETRY.retry_on_status(200, 13)


@pytest.mark.parametrize("value, seconds", [
    (b"1S", 1.0), (b"100m", 0.1), (b"2M", 120.0), (b"1H", 3600.0), (b"5000u", 0.005),
    (b"99999999n", 0.099999999), (b"", None), (None, None), (b"10", None), (b"1x", None),
    (b"123456789S", None), (b"-1S", None),
])
def test_grpc_timeout_parses_the_spec_units_and_ignores_malformed_values(value, seconds):
    """grpc-timeout: 1-8 digits and one of H M S m u n; anything else is ignored."""
    got = parse_grpc_timeout(value)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def test_grpc_timeout_caps_the_route_timeout():
    """The call's deadline wins when shorter, and applies when the route has none."""
    assert effective_timeout(15.0, 0.5) == 0.5
    assert effective_timeout(1.0, 5.0) == 1.0
    assert effective_timeout(0.0, 2.0) == 2.0
    assert effective_timeout(3.0, None) == 3.0


def test_local_reply_is_trailers_only_with_mapped_status_and_encoded_message():
    """A 503 local reply becomes grpc-status 14 with its body as a percent-encoded message."""
    headers = dict(local_reply_trailers(503, b"no healthy upstream\n"))
    assert headers == {b"content-type": b"application/grpc", b"grpc-status": b"14",
                       b"grpc-message": b"no healthy upstream"}
    assert dict(local_reply_trailers(503, b"fault", grpc_status=8))[b"grpc-status"] == b"8"
    assert encode_grpc_message("50% caf\u00e9".encode()) == b"50%25 caf%C3%A9"


def test_status_names_and_numbers():
    """Istio's abort.grpcStatus names resolve to their codes; unknown names to None."""
    assert grpc_status_code("UNAVAILABLE") == 14
    assert grpc_status_code("deadline_exceeded") == 4
    assert grpc_status_code("14") == 14
    assert grpc_status_code("NOPE") is None


def test_messages_are_counted_across_any_chunking():
    """Three messages split at every byte boundary still count three."""
    body = b"".join(struct.pack(">?I", False, len(m)) + m for m in (b"", b"abc", b"x" * 300))
    for step in (1, 2, 3, 5, 7, len(body)):
        counter = MessageCounter()
        for i in range(0, len(body), step):
            counter.feed(body[i:i + step])
        assert counter.messages == 3, step
