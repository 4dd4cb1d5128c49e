"""HTTP/1 edge cases found by adversarial testing, over real loopback sockets: pipelining
with Connection: close, timeouts that bytes without progress must not refresh, the header
count limit, 204/304 framing, malformed bodies that must not reach the upstream, and the
client's upload resuming after a retry drops an upstream that stopped reading."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import httptools
import pytest

from tests.integration.conftest import destination_rule, service
from tests.integration.proxy_process import ProxyProcess, wait_until
from tests.integration.upstreams import LoopThread

# ---- upstreams of this module ----------------------------------------------------------------


def _heads(buf: bytearray):
    """Complete request heads in buf (bodies with Content-Length skipped): (head, consumed)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(buf) < end + 4 + length:
            return
        del buf[:end + 4 + length]
        yield head


class Recorder(asyncio.Protocol):
    """Answers 200 "ok" with keep-alive and records the request line of every head it sees."""

    seen: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for head in _heads(self.buf):
            Recorder.seen.append(head.split(b"\r\n", 1)[0])
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


class Closer(asyncio.Protocol):
    """Answers each request with its path, then closes: with `connection: close`, or (path
    /quiet-*) without saying so, or (path /nolen-*) without a length, the close ending the body."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for head in _heads(self.buf):
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/quiet-"):
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(path), path))
            elif path.startswith(b"/nolen-"):
                self.transport.write(b"HTTP/1.1 200 OK\r\n\r\n%s" % path)
            else:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                                     % (len(path), path))
            self.transport.close()
            return


class NoContent(asyncio.Protocol):
    """204 and 304 responses with framing headers they should not carry, by path."""

    ANSWERS = {
        b"/204-cl0": b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nx-kind: cl0\r\n\r\n",
        b"/204-cl5": b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
        b"/204-te": b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n",
        b"/304-cl": b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1234\r\netag: \"v1\"\r\n\r\n",
    }

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for head in _heads(self.buf):
            self.transport.write(self.ANSWERS[head.split(b" ", 2)[1]])


class Stuck(asyncio.Protocol):
    """Reads a request head, then neither reads nor answers (an upstream that hangs)."""

    heads = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            type(self).heads += 1
            self.transport.pause_reading()
            self.on_head()

    def on_head(self) -> None:
        pass


class Early503(Stuck):
    """Answers 503 shortly after a request head, without reading its body, and then keeps
    the connection open without reading (an upstream whose socket buffers fill up)."""

    heads = 0

    def on_head(self) -> None:
        asyncio.get_running_loop().call_later(
            1.0, self.transport.write, b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")


class Drip(asyncio.Protocol):
    """Answers with a chunked body of 10 chunks sent 500 ms apart (a slow but live upstream)."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            loop = asyncio.get_running_loop()
            for i in range(10):
                loop.call_later(0.5 * (i + 1), self.transport.write, b"5\r\ndrip%d\r\n" % i)
            loop.call_later(5.2, self.transport.write, b"0\r\n\r\n")


class EdgeUpstreams(LoopThread):
    """This module's raw upstreams on a background loop."""

    name = "edge upstreams"

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[str, int] = {}

    async def _start(self) -> None:
        for name, proto in (("recorder", Recorder), ("closer", Closer), ("nocontent", NoContent),
                            ("drip", Drip)):
            server = await self.loop.create_server(proto, "127.0.0.1", 0)
            self.ports[name] = server.sockets[0].getsockname()[1]
        for name, proto in (("early503", Early503), ("stuck", Stuck)):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # fills up quickly
            sock.bind(("127.0.0.1", 0))
            server = await self.loop.create_server(proto, sock=sock)
            self.ports[name] = proto.port = server.sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def edge(upstreams):
    """A sidecar with short timeouts; its inbound listener's app is the byte source."""
    ups = EdgeUpstreams().start()
    ports = {**upstreams.ports, **ups.ports}
    yaml = "".join(service(n, [(ports[n], {})]) for n in ("echo", "recorder", "closer", "nocontent", "source",
                                                                  "chaos", "drip"))
    yaml += service("twoway", [(ports["early503"], {"app": "twoway"}), (ports["sink"], {"app": "twoway"})])
    yaml += destination_rule("twoway", "{loadBalancer: {simple: ROUND_ROBIN}}")
    yaml += service("pertry", [(ports["stuck"], {"app": "pertry"}), (ports["sink"], {"app": "pertry"})])
    yaml += destination_rule("pertry", "{loadBalancer: {simple: ROUND_ROBIN}}")
    yaml += """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pertry}
spec:
  hosts: [pertry]
  http:
  - retries: {attempts: 2, perTryTimeout: 1500ms, retryOn: 5xx}
    route: [{destination: {host: pertry}}]
---
"""
    yaml += """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: twoway}
spec:
  hosts: [twoway]
  http:
  - retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: twoway}}]
---
"""
    p = ProxyProcess(yaml, "--request-headers-timeout", "1s", "--idle-timeout", "2s",
                     "--stream-idle-timeout", "3s", "--retry-buffer-bytes", str(8 << 20),
                     inbound_app_port=ports["source"]).wait_ready()
    yield p
    p.stop()
    ups.loop.call_soon_threadsafe(ups.loop.stop)


# ---- client helpers ----------------------------------------------------------------------------


class Reply:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""


def responses(data: bytes) -> list[Reply]:
    """Every complete HTTP/1.1 response in data, in order."""
    out: list[Reply] = []

    class Callbacks:
        def on_message_begin(self):
            out.append(Reply())

        def on_header(self, name, value):
            out[-1].headers[name.decode().lower()] = value.decode()

        def on_headers_complete(self):
            out[-1].status = parser.get_status_code()

        def on_body(self, body):
            out[-1].body += body

    parser = httptools.HttpResponseParser(Callbacks())
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        pass
    return out


def established_to(port: int) -> int:
    """How many loopback TCP connections to `port` are ESTABLISHED (from /proc/net/tcp)."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, limit: float = 20.0) -> tuple[bytes, bool]:
    """Everything the proxy sends until it closes (True) or `limit` seconds pass (False)."""
    data = b""
    deadline = time.time() + limit
    while time.time() < deadline:
        sock.settimeout(max(0.05, deadline - time.time()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


# ---- 1. pipelining and Connection: close ----------------------------------------------------------


def test_pipelined_close_in_later_request_answers_each_then_closes(edge):
    """Pipelined requests where the second says close: both answered in order, then the connection closes."""
    sock = connect(edge.outbound_port)
    sock.sendall(b"GET /pipe-a HTTP/1.1\r\nHost: echo\r\n\r\n"
                 b"GET /pipe-b HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n"
                 b"GET /pipe-c HTTP/1.1\r\nHost: echo\r\n\r\n")
    data, closed = read_until_closed(sock)
    got = responses(data)
    assert closed
    assert [r.status for r in got] == [200, 200], data[:300]
    assert [r.headers["x-upstream"] for r in got] == ["echo", "echo"]
    assert [r.body.count(b"/pipe-a") for r in got] == [1, 0]
    assert b"/pipe-b" in got[1].body
    assert "connection" not in got[0].headers and got[1].headers["connection"] == "close"
    log = edge.access_log()
    assert '"GET /pipe-a HTTP/1.1" 200 - ' in log and '"GET /pipe-b HTTP/1.1" 200 - ' in log
    assert "/pipe-c" not in log


@pytest.mark.parametrize("kind", ["close", "quiet", "nolen"])
def test_pipelined_requests_to_an_upstream_that_closes_after_each_response(edge, kind):
    """An upstream closing after every response (saying so, silently, or ending the body by the close):
    each pipelined request still gets its response, in order."""
    sock = connect(edge.outbound_port)
    paths = [b"/%s-%d" % (kind.encode(), i) for i in range(3)]
    sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: closer\r\n\r\n" % path for path in paths))
    data = b""
    while len(responses(data)) < 3 or responses(data)[-1].body != paths[-1]:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    assert [r.body for r in responses(data)] == paths
    assert all("connection" not in r.headers for r in responses(data))
    answered = [line for line in edge.access_log().splitlines() if f" /{kind}-" in line]
    assert len(answered) == 3 and all('HTTP/1.1" 200 - ' in line for line in answered), answered


@pytest.mark.parametrize("bad", [
    b"GARBAGE\r\n\r\n",
    b"POST /pipe-bad-body HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_valid_request_before_a_malformed_pipelined_one_is_answered_first(edge, bad):
    """A valid request pipelined before a malformed one gets its response, then the 400, then close."""
    sock = connect(edge.outbound_port)
    sock.sendall(b"GET /slow?ms=200 HTTP/1.1\r\nHost: echo\r\n\r\n" + bad)
    data, closed = read_until_closed(sock)
    got = responses(data)
    assert closed
    assert [r.status for r in got] == [200, 400], data[:300]
    assert got[1].headers["connection"] == "close"
    if b"pipe-bad-body" in bad:
        assert '"POST /pipe-bad-body HTTP/1.1" 400 DPE ' in edge.access_log()


# ---- 2. timeouts that bytes without progress do not refresh ----------------------------------------


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
def test_bare_crlf_trickle_is_closed_by_the_idle_timeout(edge, listener):
    """A client sending only CRLF every 250 ms starts no request: the idle timeout (2 s) closes it."""
    sock = connect(edge.outbound_port if listener == "outbound" else edge.inbound_port)
    deadline = time.time() + 20
    closed = False
    while time.time() < deadline and not closed:
        try:
            sock.sendall(b"\r\n")
        except OSError:
            closed = True
            break
        _, closed = read_until_closed(sock, limit=0.25)
    assert closed, "a connection sending only CRLF stayed open for 20 s"


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
def test_client_that_never_reads_its_response_is_cut_off(edge, listener):
    """A client that never reads a large response is closed by the stream idle timeout (3 s), flag SI."""
    size = 64 << 20 if listener == "outbound" else (64 << 20) + 1
    sock = connect(edge.outbound_port if listener == "outbound" else edge.inbound_port, rcvbuf=4096)
    sock.sendall(b"GET /%d HTTP/1.1\r\nHost: source\r\n\r\n" % size)
    wait_until(lambda: f'"GET /{size} HTTP/1.1" 200 SI ' in edge.access_log(),
               "the stalled response to be cut with flag SI", edge)
    data, closed = read_until_closed(sock)
    assert closed and len(data) < size


def test_slow_reader_that_keeps_draining_is_not_cut(edge):
    """A client reading slowly but steadily for longer than the stream idle timeout gets the whole body."""
    size = 12 << 20
    sock = connect(edge.outbound_port, rcvbuf=32768)
    sock.sendall(b"GET /%d HTTP/1.1\r\nHost: source\r\n\r\n" % size)
    got = 0
    started = time.time()
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    while got < size and time.time() - started < 60:   # about 1.6 MB/s: 12 MiB take over 7 s
        chunk = sock.recv(min(16384, size - got))
        assert chunk, f"cut off after {got} of {size} bytes"
        got += len(chunk)
        time.sleep(0.01)
    assert got == size
    assert f'"GET /{size} HTTP/1.1" 200 - ' in edge.access_log()


def test_upstream_that_never_answers_gets_408_si(edge):
    """A request whose upstream sends nothing: the stream idle timeout (3 s) answers 408 "stream timeout", flag SI."""
    sock = connect(edge.outbound_port)
    sock.sendall(b"GET /hang HTTP/1.1\r\nHost: chaos\r\n\r\n")
    data, closed = read_until_closed(sock)
    (reply,) = responses(data)
    assert reply.status == 408 and reply.body == b"stream timeout" and closed
    assert '"GET /hang HTTP/1.1" 408 SI ' in edge.access_log()


def test_upstream_sending_slowly_is_not_cut(edge):
    """A response whose chunks come 500 ms apart for 5 s (past the 3 s stream idle timeout) arrives whole."""
    sock = connect(edge.outbound_port)
    sock.sendall(b"GET /drip HTTP/1.1\r\nHost: drip\r\n\r\n")
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, f"cut off after {data!r}"
        data += chunk
    assert responses(data)[0].body == b"".join(b"drip%d" % i for i in range(10))


# ---- 4. header count limit ------------------------------------------------------------------------


def test_ten_thousand_small_headers_get_431_dpe(edge):
    """A request with 10,000 tiny header lines (under the byte limit) is refused 431 DPE, not forwarded."""
    sock = connect(edge.outbound_port)
    sock.sendall(b"GET /many-headers HTTP/1.1\r\nHost: recorder\r\n" + b"a:b\r\n" * 10000 + b"\r\n")
    data, closed = read_until_closed(sock)
    (reply,) = responses(data)
    assert reply.status == 431 and closed
    assert '"- /many-headers HTTP/1.1" 431 DPE ' in edge.access_log()
    assert not any(b"/many-headers" in line for line in Recorder.seen)


def test_header_count_limit_is_100_lines(edge):
    """100 header lines (Host included) pass; 101 get 431 (Envoy's max_request_headers_count default)."""
    for count, status in ((100, 200), (101, 431)):
        sock = connect(edge.outbound_port)
        sock.sendall(b"GET /count-%d HTTP/1.1\r\nHost: recorder\r\n" % count
                     + b"".join(b"x-h%d: v\r\n" % i for i in range(count - 1)) + b"\r\n")
        reply = responses(sock.recv(65536))[0]
        assert reply.status == status, count
    stats = edge.admin_get("/stats?filter=http.outbound.downstream_cx_protocol_error")
    assert int(stats.split(":")[1]) >= 1


# ---- 5. 204 and 304 framing -------------------------------------------------------------------------


def test_204_never_carries_content_length_or_transfer_encoding(edge):
    """A 204 with Content-Length: 0 goes down without it; with a length or chunked it is a 502 UPE (as Envoy)."""
    sock = connect(edge.outbound_port)
    sock.sendall(b"GET /204-cl0 HTTP/1.1\r\nHost: nocontent\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    lower = head.lower()
    assert head.startswith(b"HTTP/1.1 204 ") and b"x-kind: cl0" in lower
    assert b"content-length" not in lower and b"transfer-encoding" not in lower
    for path in (b"/204-cl5", b"/204-te"):
        sock = connect(edge.outbound_port)
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: nocontent\r\n\r\n" % path)
        assert responses(sock.recv(65536))[0].status == 502, path
    assert '"GET /204-te HTTP/1.1" 502 UPE ' in edge.access_log()


def test_304_keeps_its_content_length_and_has_no_body(edge):
    """A 304's Content-Length (the selected representation's length) is kept, as Envoy does; no body follows."""
    sock = connect(edge.outbound_port)
    sock.sendall(b"GET /304-cl HTTP/1.1\r\nHost: nocontent\r\n\r\nGET /304-cl HTTP/1.1\r\nHost: nocontent\r\n\r\n")
    data = b""
    while len(responses(data)) < 2 or not data.endswith(b"\r\n\r\n"):
        data += sock.recv(65536)
    first, second = responses(data)
    assert first.status == second.status == 304
    assert first.headers["content-length"] == "1234" and first.body == b""
    assert "transfer-encoding" not in first.headers


# ---- 6. malformed body in the head's read -------------------------------------------------------------


@pytest.mark.parametrize("name,request_bytes", [
    ("bad-chunk", b"POST /bad-chunk HTTP/1.1\r\nHost: recorder\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("cl-te", b"POST /cl-te HTTP/1.1\r\nHost: recorder\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bad-cl", b"POST /bad-cl HTTP/1.1\r\nHost: recorder\r\nContent-Length: 5x\r\n\r\nhello"),
])
def test_malformed_body_in_the_same_read_never_reaches_the_upstream(edge, name, request_bytes):
    """A body found invalid in the read that brought its head: 400 DPE, and the upstream sees no request."""
    warm = connect(edge.outbound_port)   # leaves an idle pooled connection to the recorder
    warm.sendall(b"GET /warm-%s HTTP/1.1\r\nHost: recorder\r\n\r\n" % name.encode())
    assert responses(warm.recv(65536))[0].status == 200
    sock = connect(edge.outbound_port)
    sock.sendall(request_bytes)
    data, closed = read_until_closed(sock)
    assert responses(data)[0].status == 400 and closed
    time.sleep(0.3)
    assert not any(f"/{name}".encode() in line for line in Recorder.seen), Recorder.seen
    assert " 400 DPE " in edge.access_log()


# ---- 7. pause/resume across a retry -----------------------------------------------------------------------


@pytest.mark.parametrize("host,server", [("twoway", Early503), ("pertry", Stuck)])
def test_upload_resumes_after_retry_drops_an_upstream_that_stopped_reading(edge, host, server):
    """A 6 MiB upload whose first endpoint stops reading (then answers 503, or hangs past the
    per-try timeout) is retried on the other endpoint and completes.

    6 MiB (replayable: --retry-buffer-bytes 8 MiB) because loopback kernel buffers absorb
    about 3 MiB before the proxy's upstream socket reports pause_writing."""
    body = b"u" * (6 << 20)
    before = server.heads
    for i in range(2):   # round robin: one of the two starts on the endpoint that stops reading
        sock = connect(edge.outbound_port)
        sender = threading.Thread(target=lambda s=sock: s.sendall(
            b"POST /upload-%d HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
            % (i, host.encode(), len(body)) + body),
            daemon=True)
        sender.start()
        data = b""
        sock.settimeout(15)
        while not responses(data) or responses(data)[0].body != b"%d" % len(body):
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
        sender.join(5)
        got = responses(data)
        assert got and got[0].status == 200, f"upload {i}: {data[:200]!r}"
        assert got[0].body == b"%d" % len(body)
        sock.close()
    assert server.heads > before, "no attempt reached the endpoint that stops reading"
    # The dropped attempt's connection is aborted: a plain close() would wait forever for
    # the request bytes it still holds to drain into an upstream that does not read.
    wait_until(lambda: not established_to(server.port), "the proxy to drop the stalled upstream connection", edge)
    stats = edge.admin_get(f"/stats?filter={host}.*upstream_rq_retry")
    assert "upstream_rq_retry: 0" not in stats, stats
