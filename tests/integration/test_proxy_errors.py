"""Malformed requests, failing upstreams and timeouts: the right status, flag and connection state."""
from __future__ import annotations

import time

import pytest

from tests.integration.client import RawClient

SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl": b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "bare-lf-in-header": b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: b\nX-B: c\r\n\r\n",
    "bare-cr-in-header": b"GET / HTTP/1.1\r\nHost: echo\rX-A: b\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: b\r\n c\r\n\r\n",
    "te-not-chunked": b"POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_vectors_get_400_and_close(proxy, name):
    """Each request-smuggling vector is answered 400 and the connection is closed."""
    c = RawClient(proxy.outbound_port)
    c.send(SMUGGLING[name])
    r = c.read_response()
    assert r.status == 400, name
    assert r.headers.get("connection") == "close"
    assert c.is_closed_by_peer()


def test_smuggled_request_never_reaches_upstream(proxy):
    """A request hidden behind CL+TE is not forwarded as a second request."""
    c = RawClient(proxy.outbound_port)
    c.send(b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n")
    assert c.read_response().status == 400
    assert c.is_closed_by_peer()
    assert "/smuggled" not in proxy.access_log()


def test_oversized_header_block_gets_431(proxy):
    """A request head over 60 KiB is answered 431 and the connection is closed."""
    c = RawClient(proxy.outbound_port)
    c.send(b"GET / HTTP/1.1\r\nHost: echo\r\n" + b"X-Big: " + b"a" * 8000 + b"\r\n" * 1)
    for i in range(10):
        c.send(b"X-Big-%d: " % i + b"a" * 8000 + b"\r\n")
    c.send(b"\r\n")
    r = c.read_response()
    assert r.status == 431
    assert c.is_closed_by_peer()


def test_endless_header_line_gets_431(proxy):
    """A header line that never ends is cut off at the size limit, not buffered forever."""
    c = RawClient(proxy.outbound_port)
    c.send(b"GET / HTTP/1.1\r\nHost: echo\r\nX-Endless: ")
    for _ in range(20):
        try:
            c.send(b"a" * 16384)
        except OSError:
            break
    r = c.read_response()
    assert r.status == 431


def test_malformed_request_logged_with_dpe(proxy):
    """A malformed request shows up in the access log with response flag DPE."""
    c = RawClient(proxy.outbound_port)
    c.send(b"GET / HTTP/1.1\r\nHost: echo\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert c.read_response().status == 400
    assert " 400 DPE " in proxy.access_log()


def test_unknown_host_gets_404_nr(proxy):
    """A Host no service or VirtualService names is answered 404 with flag NR."""
    c = RawClient(proxy.outbound_port)
    r = c.request("GET", "/nr-check", "no-such-service")
    assert r.status == 404
    assert c.request("GET", "/", "echo").status == 200, "connection must stay usable"
    assert '"GET /nr-check HTTP/1.1" 404 NR' in proxy.access_log()


def test_upstream_down_gets_503_uf(proxy):
    """Connecting to an endpoint that refuses gives 503 with flag UF."""
    c = RawClient(proxy.outbound_port)
    r = c.request("GET", "/uf-check", "down")
    assert r.status == 503
    assert b"upstream connect error" in r.body
    assert '"GET /uf-check HTTP/1.1" 503 UF' in proxy.access_log()


def test_no_endpoints_gets_503_uh(proxy):
    """A service whose cluster has no endpoint gives 503 'no healthy upstream' with flag UH."""
    c = RawClient(proxy.outbound_port)
    r = c.request("GET", "/uh-check", "empty")
    assert r.status == 503 and r.body == b"no healthy upstream"
    assert '"GET /uh-check HTTP/1.1" 503 UH' in proxy.access_log()


def test_invalid_upstream_response_gets_502_upe(proxy):
    """An upstream answering something that is not HTTP gives 502 with flag UPE."""
    c = RawClient(proxy.outbound_port)
    r = c.request("GET", "/upe-check", "garbage")
    assert r.status == 502
    assert '"GET /upe-check HTTP/1.1" 502 UPE' in proxy.access_log()


def test_keep_alive_race_is_resent_not_503(proxy):
    """A pooled connection the upstream closes as it is reused is retried on a fresh one, never a 503."""
    c = RawClient(proxy.outbound_port)
    for i in range(6):
        r = c.request("GET", f"/race{i}", "race")
        assert r.status == 200, f"request {i} got {r.status}"
        assert r.body == b"ok"
    c.request("POST", "/race-post", "race", body=b"payload")


def test_slow_client_head_times_out_with_408(proxy):
    """A client that never finishes its request head is answered 408 and closed (timeout 1 s)."""
    c = RawClient(proxy.outbound_port)
    c.send(b"GET / HTTP/1.1\r\nHost: ec")
    start = time.time()
    r = c.read_response()
    assert r.status == 408
    assert time.time() - start < 5
    assert c.is_closed_by_peer()


def test_idle_keep_alive_connection_is_closed(proxy):
    """A kept-alive client connection idle past the idle timeout (2 s) is closed by the proxy."""
    c = RawClient(proxy.outbound_port)
    assert c.request("GET", "/", "echo").status == 200
    assert c.is_closed_by_peer(timeout=6)


def test_early_response_while_body_uploading_closes(proxy):
    """When the response completes before the request body, the connection is closed after it."""
    c = RawClient(proxy.outbound_port)
    c.send(b"POST /x HTTP/1.1\r\nHost: no-such-service\r\nContent-Length: 100000\r\n\r\n" + b"a" * 100)
    r = c.read_response()
    assert r.status == 404
    assert c.is_closed_by_peer()
