"""HTTP/1.1 behaviour of the sidecar over real loopback sockets."""
from __future__ import annotations

import asyncio
import hashlib
import socket

import aiohttp

from tests.integration.client import RawClient


def test_keep_alive_reuses_both_connections(proxy):
    """Several requests on one client connection are answered in order over one upstream connection."""
    c = RawClient(proxy.outbound_port)
    peers = set()
    for i in range(5):
        r = c.request("GET", f"/k{i}", "echo")
        assert r.status == 200
        assert r.json()["path"] == f"/k{i}"
        peers.add(r.json()["peer_port"])
    assert len(peers) == 1, "upstream connection was not reused"
    c.close()


def test_content_length_body_streams_up(proxy):
    """A Content-Length request body arrives upstream byte for byte."""
    body = bytes(range(256)) * 4000
    c = RawClient(proxy.outbound_port)
    r = c.request("POST", "/upload", "echo", body=body)
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body_is_reframed(proxy):
    """A chunked request body arrives upstream whole, and framing headers are Remora's own."""
    c = RawClient(proxy.outbound_port)
    c.send(b"POST /c HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    info = c.read_response().json()
    assert info["body_len"] == 11
    assert info["body_sha"] == hashlib.sha256(b"hello world").hexdigest()
    assert info["headers"].get("transfer-encoding") == "chunked"


def test_chunked_response_streams_down(proxy):
    """A chunked upstream response reaches the client complete, as chunked."""
    c = RawClient(proxy.outbound_port)
    r = c.request("GET", "/stream?n=50", "echo")
    assert r.status == 200 and r.complete
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.body == b"".join(b"chunk-%d;" % i for i in range(50))


def test_response_without_length_ends_at_close(proxy):
    """An upstream response delimited by close is delivered whole, re-framed as chunked for 1.1 clients."""
    c = RawClient(proxy.outbound_port)
    r = c.request("GET", "/", "nolen")
    assert r.status == 200 and r.complete
    assert r.body == b"until-close-body"
    assert r.headers["transfer-encoding"] == "chunked"
    # The client connection stays usable.
    assert c.request("GET", "/after", "echo").status == 200


def test_head_204_304_have_no_body(proxy):
    """HEAD, 204 and 304 responses carry no body, and the connection stays in sync."""
    c = RawClient(proxy.outbound_port)
    head = c.request("HEAD", "/h", "echo")
    assert head.status == 200 and head.body == b""
    for status in (204, 304):
        r = c.request("GET", f"/status/{status}", "echo")
        assert r.status == status and r.body == b""
    assert c.request("GET", "/next", "echo").json()["path"] == "/next"


def test_expect_100_continue(proxy):
    """A request with Expect: 100-continue gets 100 Continue before it sends the body."""
    c = RawClient(proxy.outbound_port)
    c.send(b"POST /e HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    c.sock.settimeout(5)
    interim = c.sock.recv(1024)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    c.buf = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    c.send(b"hello")
    info = c.read_response().json()
    assert info["body_len"] == 5
    assert "expect" not in info["headers"]


def test_hop_by_hop_headers_removed_and_mesh_headers_added(proxy):
    """Connection-listed and hop-by-hop headers never reach the upstream; XFF, XFP and x-request-id do."""
    c = RawClient(proxy.outbound_port)
    r = c.request("GET", "/h", "echo", headers={
        "Connection": "keep-alive, X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive", "TE": "trailers", "Trailer": "x", "Upgrade": "h2c",
        "X-Kept": "yes"})
    h = r.json()["headers"]
    for gone in ("x-private", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
        assert gone not in h, gone
    assert h["x-kept"] == "yes"
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert len(h["x-request-id"]) == 36


def test_request_id_and_forwarded_for_are_kept(proxy):
    """An incoming x-request-id is forwarded unchanged; x-forwarded-for gets the peer appended."""
    c = RawClient(proxy.outbound_port)
    h = c.request("GET", "/", "echo", headers={"x-request-id": "abc-123",
                                               "x-forwarded-for": "10.1.2.3"}).json()["headers"]
    assert h["x-request-id"] == "abc-123"
    assert h["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"


def test_absolute_form_request_as_http_proxy(proxy):
    """An app using the sidecar as http_proxy (absolute-form target) is routed by the URL's host."""
    c = RawClient(proxy.outbound_port)
    c.send(b"GET http://echo/abs?q=1 HTTP/1.1\r\nHost: ignored\r\n\r\n")
    info = c.read_response().json()
    assert info["path"] == "/abs?q=1"
    assert info["headers"]["host"] == "echo"


def test_http10_client_gets_close_delimited_stream(proxy):
    """An HTTP/1.0 client receives an unknown-length body delimited by close, not chunked."""
    c = RawClient(proxy.outbound_port)
    c.send(b"GET /stream?n=3 HTTP/1.0\r\nHost: echo\r\n\r\n")
    r = c.read_response()
    assert r.status == 200
    assert "transfer-encoding" not in r.headers
    assert r.body == b"chunk-0;chunk-1;chunk-2;"


def test_websocket_echo_is_tunnelled(proxy):
    """A WebSocket upgrade is passed to the endpoint and frames flow both ways after 101."""
    async def run():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{proxy.outbound_port}/ws",
                                          headers={"Host": "echo"}, timeout=aiohttp.ClientWSTimeout(ws_receive=10)) as ws:
                await ws.send_str("ping")
                assert (await ws.receive_str()) == "echo:ping"
                await ws.send_bytes(b"\x00\x01" * 40000)
                assert (await ws.receive_bytes()) == b"\x00\x01" * 40000
    asyncio.run(asyncio.wait_for(run(), 20))


def test_large_upload_and_download_keep_memory_flat(proxy):
    """Streaming 1 GiB up and 1 GiB down through the proxy grows its RSS by only a few MiB."""
    size = 1 << 30
    c = RawClient(proxy.outbound_port, timeout=120)
    c.request("GET", "/warm", "echo")
    before = proxy.rss_kib()
    c.send(b"POST /up HTTP/1.1\r\nHost: sink\r\nContent-Length: %d\r\n\r\n" % size)
    block = b"y" * (1 << 20)
    peak = before
    for i in range(size // len(block)):
        c.sock.sendall(block)
        if i % 128 == 0:
            peak = max(peak, proxy.rss_kib())
    r = c.read_response()
    assert r.body == b"%d" % size
    c.send(b"GET /%d HTTP/1.1\r\nHost: source\r\n\r\n" % size)
    got = 0
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.sock.recv(65536)
    got = len(head.split(b"\r\n\r\n", 1)[1])
    n = 0
    while got < size:
        data = c.sock.recv(1 << 20)
        assert data
        got += len(data)
        n += 1
        if n % 256 == 0:
            peak = max(peak, proxy.rss_kib())
    assert got == size
    growth_mib = (peak - before) / 1024
    assert growth_mib < 16, f"proxy RSS grew {growth_mib:.1f} MiB while streaming"


def test_refused_upgrade_gets_the_response_then_close(proxy):
    """An upgrade the upstream answers without 101 gets that response, then the connection closes."""
    c = RawClient(proxy.outbound_port)
    c.send(b"GET /not-ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and r.json()["path"] == "/not-ws"
    assert c.is_closed_by_peer()


def test_slow_reader_then_reused_connection_still_answers(proxy):
    """After a large response to a client that reads slowly, the pooled upstream connection serves the next request."""
    import time
    c = RawClient.__new__(RawClient)
    c.buf = b""
    c.sock = socket.socket()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connect: a small window
    c.sock.settimeout(30)
    c.sock.connect(("127.0.0.1", proxy.outbound_port))
    c.send(b"GET /%d HTTP/1.1\r\nHost: source\r\n\r\n" % (8 << 20))
    time.sleep(0.5)     # let the proxy hit backpressure and pause the upstream
    r = c.read_response()
    assert r.status == 200 and len(r.body) == 8 << 20
    for i in range(3):
        r = c.request("GET", "/%d" % 10, "source")
        assert r.status == 200 and r.body == b"x" * 10
