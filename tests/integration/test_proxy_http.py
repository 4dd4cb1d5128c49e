"""HTTP/1.1 behaviour of the sidecar over real loopback sockets."""
from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time

import aiohttp

from tests.integration.client import RawClient
from tests.integration.upstreams import SinkServer, SourceServer


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


LARGE = 256 << 20       # more than every socket buffer on the way can hold (a few MiB each)
BACKLOG_BOUND = 96 << 20   # bytes the proxy may let pile up between a fast and a stalled end


def settle(progress, limit: int, quiet: float = 1.0, timeout: float = 60.0) -> int:
    """Poll progress() until it reaches `limit` or stops moving for `quiet` seconds; its last value."""
    last, moved, deadline = progress(), time.monotonic(), time.monotonic() + timeout
    while last < limit and time.monotonic() < deadline:
        time.sleep(0.1)
        now = progress()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved >= quiet:
            break
    return last


def source_response(c: RawClient, size: int) -> list[int]:
    """Ask the source upstream for `size` bytes on c, read nothing; its record in SourceServer.responses."""
    seen = len(SourceServer.responses)
    c.send(b"GET /%d HTTP/1.1\r\nHost: source\r\n\r\n" % size)
    settle(lambda: len(SourceServer.responses), seen + 1, quiet=10)
    assert len(SourceServer.responses) == seen + 1, "the source never got the request"
    return SourceServer.responses[seen]


def stalled_download(c: RawClient, size: int) -> list[int]:
    """Start a `size`-byte download on c that the client does not read: the source must soon
    stop (the proxy stops reading it), with at most BACKLOG_BOUND bytes in between."""
    response = source_response(c, size)
    backlog = settle(lambda: response[2], size)
    assert backlog < BACKLOG_BOUND, f"{backlog >> 20} MiB left the source for a client reading nothing"
    return response


def test_large_upload_and_download_keep_memory_flat(proxy):
    """256 MiB up to an upstream that stops reading, and down to a client that stops reading:
    the proxy stops reading the fast side (backpressure), so the bytes it takes in while the
    other side reads nothing, and its RSS, stay bounded; both bodies then arrive whole."""
    c = RawClient(proxy.outbound_port, timeout=120)
    c.request("GET", "/warm", "echo")
    before = proxy.rss_kib()
    stalled = len(SinkServer.stalled)
    c.send(b"POST /stall HTTP/1.1\r\nHost: sink\r\nContent-Length: %d\r\n\r\n" % LARGE)
    sent = [0]

    def upload() -> None:
        block = b"y" * (1 << 20)
        for _ in range(LARGE // len(block)):
            c.sock.sendall(block)
            sent[0] += len(block)

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    backlog = settle(lambda: sent[0], LARGE)
    growth_mib = (proxy.rss_kib() - before) / 1024
    assert backlog < BACKLOG_BOUND, f"the client sent {backlog >> 20} MiB to an upstream reading nothing"
    assert growth_mib < 64, f"proxy RSS grew {growth_mib:.1f} MiB while the upstream read nothing"
    assert len(SinkServer.stalled) == stalled + 1, "the sink never got the request"
    SinkServer.stalled.pop().release()
    sender.join(120)
    assert sent[0] == LARGE
    assert c.read_response().body == b"%d" % LARGE

    before = proxy.rss_kib()
    stalled_download(c, LARGE)
    growth_mib = (proxy.rss_kib() - before) / 1024
    assert growth_mib < 64, f"proxy RSS grew {growth_mib:.1f} MiB while the client read nothing"
    r = c.read_response()
    assert r.status == 200 and len(r.body) == LARGE


def test_refused_upgrade_gets_the_response_then_close(proxy):
    """An upgrade the upstream answers without 101 gets that response, then the connection closes."""
    c = RawClient(proxy.outbound_port)
    c.send(b"GET /not-ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and r.json()["path"] == "/not-ws"
    assert c.is_closed_by_peer()


def test_slow_reader_then_reused_connection_still_answers(proxy):
    """After a large response to a client that reads slowly (so the proxy had to stop reading
    the upstream), the same pooled upstream connection serves the next requests."""
    c = RawClient.__new__(RawClient)
    c.buf = b""
    c.sock = socket.socket()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connect: a small window
    c.sock.settimeout(30)
    c.sock.connect(("127.0.0.1", proxy.outbound_port))
    connection, size, _ = stalled_download(c, LARGE)
    r = c.read_response()
    assert r.status == 200 and len(r.body) == size
    assert r.headers["x-connection"] == str(connection)
    for _ in range(3):
        r = c.request("GET", "/%d" % 10, "source")
        assert r.status == 200 and r.body == b"x" * 10
        assert r.headers["x-connection"] == str(connection), "the upstream connection was not reused"
