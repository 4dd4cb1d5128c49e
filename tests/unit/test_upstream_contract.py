"""Contract of the upstream seams (remora/proxy/upstream/seams.py), over real loopback sockets.

Every pool + connection kind runs the same tests: add a kind to POOL_KINDS (the HTTP/2
pool goes next to HTTP/1) and it must keep each rule below. A test drives an
UpstreamRequest (the attempt) against a scripted upstream server, with a RecordingStream
as the attempt's UpstreamCallbacks, or a RecordingWaiter as the pool's PoolCallbacks.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from remora.proxy.codec.message import RequestHead
from remora.proxy.router.deadlines import RequestDeadlines
from remora.proxy.upstream.circuit import Circuit
from remora.proxy.upstream.cluster import ClusterStats
from remora.proxy.upstream.pool import EndpointPool
from remora.proxy.upstream.seams import AttemptFailure
from remora.proxy.upstream.upstream_request import UpstreamRequest

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
OK_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
CLOSE = b""   # scripted reply: read the request, then close without answering
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


def http1_pool(loop, host: str, port: int, circuit: Circuit) -> EndpointPool:
    return EndpointPool(host, port, loop, circuit)


POOL_KINDS = {"http1": http1_pool}


class Upstream:
    """A loopback server answering each request head with the next scripted reply
    (None: never answer); it counts connections and what it read."""

    def __init__(self, replies: list[bytes | None]) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.closed = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                reply = self.replies.pop(0) if self.replies else OK
                if reply == CLOSE:
                    break
                if reply is not None:
                    writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


class RecordingStream:
    """The stream side (UpstreamCallbacks): records what its attempt reports, in order."""

    def __init__(self, authority: bytes = b"upstream") -> None:
        self.head = RequestHead(b"GET", b"/", b"1.1", [])
        self.head.authority = authority
        self.up_method, self.up_path, self.up_authority = b"GET", b"/", authority
        self.up_headers: list = []
        self.up_added = b""
        self.up_unique = b""
        self.peer_id = None
        self.request_done = True
        self.request_trailers = None
        self.events: list = []
        self.done = asyncio.get_running_loop().create_future()

    def _ended(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def on_upstream_host_selected(self, endpoint) -> None:
        self.events.append(("host", endpoint))

    def on_upstream_headers(self, resp) -> None:
        self.events.append(("headers", resp.status))

    def on_upstream_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def on_upstream_read_end(self) -> None:
        pass

    def on_upstream_end(self) -> None:
        self.events.append(("end",))
        self._ended()

    def on_attempt_failed(self, failure: AttemptFailure, detail: str) -> None:
        self.events.append(("failed", failure))
        self._ended()

    def on_upstream_upgraded(self, conn, resp, rest: bytes) -> None:
        self.events.append(("upgraded", resp.status))
        self._ended()

    def on_upstream_above_high_watermark(self) -> None:
        self.events.append(("hold",))

    def on_upstream_below_low_watermark(self) -> None:
        self.events.append(("let go",))

    def body(self) -> bytes:
        return b"".join(e[1] for e in self.events if e[0] == "data")


class RecordingWaiter:
    """The pool's caller (PoolCallbacks) without an attempt: records the answer."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.answers: list = []
        self.answered = asyncio.get_running_loop().create_future()

    def on_pool_ready(self, conn, reused: bool) -> None:
        self.answers.append(("ready", conn, reused))
        self.answered.set_result(None)

    def on_pool_failure(self, failure: AttemptFailure, detail: str) -> None:
        self.answers.append(("failure", failure, detail))
        self.answered.set_result(None)


def make_cluster():
    return SimpleNamespace(stats=ClusterStats(), connect_timeout=2.0, tcp_keepalive=None,
                           detector=SimpleNamespace(split=False))


@pytest.fixture(params=sorted(POOL_KINDS))
def kind(request):
    return POOL_KINDS[request.param]


@pytest.fixture
async def setup(kind):
    """(start an upstream with replies -> (pool, cluster, upstream)); everything closed after."""
    made: list = []

    async def start(replies=(), circuit: Circuit | None = None):
        upstream = Upstream(list(replies))
        port = await upstream.start()
        loop = asyncio.get_running_loop()
        pool = kind(loop, "127.0.0.1", port, circuit or Circuit("outbound|80||upstream"))
        made.append((pool, upstream))
        return pool, make_cluster(), upstream

    yield start
    for pool, upstream in made:
        pool.accepting = False
        for conn in list(pool.active):
            conn.close()
        await upstream.stop()
    await asyncio.sleep(0)


def attempt_for(stream, per_try: float = 0.0, deadlines=None) -> UpstreamRequest:
    return UpstreamRequest(stream, per_try, deadlines.per_try if deadlines else None)


async def run(pool, cluster, stream=None, fresh=False, **kw) -> RecordingStream:
    stream = stream or RecordingStream()
    attempt_for(stream, **kw).start(cluster, pool, fresh)
    await asyncio.wait_for(stream.done, 5)
    return stream


async def test_pool_answers_ready_with_a_new_connection(setup):
    """A pool with nothing idle opens a connection and answers on_pool_ready(conn, reused=False)."""
    pool, cluster, _ = await setup()
    waiter = RecordingWaiter(cluster)
    pool.request(waiter, b"upstream", False)
    await asyncio.wait_for(waiter.answered, 5)
    (answer,) = waiter.answers
    assert answer[0] == "ready" and answer[2] is False and answer[1].pool is pool
    assert cluster.stats.upstream_cx_total == 1
    answer[1].close()


async def test_pool_answers_failure_when_the_endpoint_refuses(setup):
    """A refused connect is answered on_pool_failure(CONNECT_FAILURE) and frees its circuit slot."""
    pool, cluster, upstream = await setup()
    await upstream.stop()           # nothing listens on the port any more
    waiter = RecordingWaiter(cluster)
    pool.request(waiter, b"upstream", False)
    await asyncio.wait_for(waiter.answered, 5)
    ((what, failure, detail),) = waiter.answers
    assert what == "failure" and failure is AttemptFailure.CONNECT_FAILURE and "connection failure" in detail
    assert pool.circuit.open == 0 and cluster.stats.upstream_cx_connect_fail == 1


async def test_full_pending_queue_is_answered_overflow_at_once(setup):
    """At max_connections with the pending queue full, the pool answers OVERFLOW synchronously."""
    circuit = Circuit("c")
    circuit.max_connections, circuit.max_pending = 1, 1
    pool, cluster, _ = await setup([None], circuit)
    first = RecordingStream()
    attempt_for(first).start(cluster, pool, False)      # opens the one connection
    waiting = RecordingWaiter(cluster)
    pool.request(waiting, b"upstream", False)           # parked
    refused = RecordingWaiter(cluster)
    pool.request(refused, b"upstream", False)
    assert refused.answers == [("failure", AttemptFailure.OVERFLOW, "overflow")]
    assert waiting.answers == [] and len(circuit.pending) == 1
    assert cluster.stats.upstream_rq_pending_overflow == 1 and cluster.stats.upstream_rq_pending_total == 1


async def test_a_waiter_gets_the_connection_another_attempt_returns(setup):
    """A parked request is answered on_pool_ready(reused=True) with the connection released after keep-alive."""
    circuit = Circuit("c")
    circuit.max_connections = 1
    pool, cluster, upstream = await setup([OK, OK], circuit)
    first, second = RecordingStream(), RecordingStream()
    attempt_for(first).start(cluster, pool, False)
    attempt_for(second).start(cluster, pool, False)
    assert len(circuit.pending) == 1
    await asyncio.wait_for(second.done, 5)
    assert first.events[-1] == ("end",) and second.events[-1] == ("end",)
    assert upstream.connections == 1 and not circuit.pending


async def test_response_head_data_end_in_order(setup):
    """An attempt reports headers, then every body byte as data, then end, and nothing after."""
    pool, cluster, _ = await setup([CHUNKED])
    stream = await run(pool, cluster)
    kinds = [e[0] for e in stream.events]
    assert kinds[0] == "headers" and kinds[-1] == "end" and set(kinds[1:-1]) == {"data"}
    assert stream.events[0] == ("headers", 200) and stream.body() == b"abcde"
    await asyncio.sleep(0.05)
    assert stream.events[-1] == ("end",)


async def test_keep_alive_connection_is_reused(setup):
    """After a keep-alive response the connection goes back to the pool and carries the next attempt."""
    pool, cluster, upstream = await setup([OK, OK])
    await run(pool, cluster)
    assert len(pool.idle) == 1 and pool.idle[0].is_idle()
    conn = pool.idle[0]
    waiter = RecordingWaiter(cluster)
    pool.request(waiter, b"upstream", False)
    assert waiter.answers == [("ready", conn, True)]
    pool.idle.append(conn)   # unused: back where it was for the next attempt
    second = await run(pool, cluster)
    assert second.body() == b"hello" and upstream.connections == 1 and len(upstream.requests) == 2


async def test_connection_close_response_is_not_pooled(setup):
    """A response with `Connection: close` ends the attempt and closes its connection; the next one dials anew."""
    pool, cluster, upstream = await setup([OK_CLOSE, OK])
    first = await run(pool, cluster)
    assert first.body() == b"hello" and pool.idle == []
    await run(pool, cluster)
    assert upstream.connections == 2


async def test_cancel_closes_the_connection_and_frees_the_circuit(setup):
    """cancel() on an attempt awaiting its response closes the connection (never pooled) and reports nothing."""
    pool, cluster, upstream = await setup([None])
    stream = RecordingStream()
    attempt = attempt_for(stream)
    attempt.start(cluster, pool, False)
    for _ in range(500):
        if upstream.requests:
            break
        await asyncio.sleep(0.01)
    assert upstream.requests, "the request never reached the upstream"
    attempt.cancel()
    await asyncio.sleep(0.05)
    assert stream.events == [] and pool.idle == [] and pool.circuit.open == 0
    assert upstream.closed == 1


async def test_cancel_while_waiting_leaves_the_queue(setup):
    """cancel() on a parked attempt removes it from the circuit's queue; it is never answered."""
    circuit = Circuit("c")
    circuit.max_connections = 1
    pool, cluster, _ = await setup([OK, OK], circuit)
    first, parked = RecordingStream(), RecordingStream()
    attempt_for(first).start(cluster, pool, False)
    waiting = attempt_for(parked)
    waiting.start(cluster, pool, False)
    waiting.cancel()
    assert not circuit.pending
    await asyncio.wait_for(first.done, 5)
    await asyncio.sleep(0.05)
    assert parked.events == [] and len(pool.idle) == 1


async def test_cancel_during_connect_pools_the_late_connection(setup):
    """An attempt cancelled while its connection was opening hands that connection back to the pool."""
    pool, cluster, upstream = await setup()
    stream = RecordingStream()
    attempt = attempt_for(stream)
    attempt.start(cluster, pool, False)
    attempt.cancel()
    for _ in range(500):
        if pool.idle:
            break
        await asyncio.sleep(0.01)
    assert len(pool.idle) == 1 and pool.idle[0].is_idle() and stream.events == []
    assert upstream.requests == []


async def test_per_try_timeout_fails_the_attempt_and_closes_its_connection(setup):
    """With no answer within per_try, the attempt reports PER_TRY_TIMEOUT once and its connection is closed."""
    pool, cluster, upstream = await setup([None])
    deadlines = RequestDeadlines(asyncio.get_running_loop())
    stream = await run(pool, cluster, per_try=0.1, deadlines=deadlines)
    assert stream.events == [("failed", AttemptFailure.PER_TRY_TIMEOUT)]
    assert cluster.stats.upstream_rq_per_try_timeout == 1
    await asyncio.sleep(0.05)
    assert pool.idle == [] and upstream.closed == 1


async def test_pooled_connection_closed_before_any_byte_is_stale(setup):
    """A reused connection the server closes before any response byte reports STALE_CONNECTION (keep-alive race)."""
    pool, cluster, upstream = await setup([OK, CLOSE])
    await run(pool, cluster)
    stream = await run(pool, cluster)
    assert upstream.connections == 1
    assert stream.events == [("failed", AttemptFailure.STALE_CONNECTION)]


async def test_new_connection_closed_before_any_byte_is_a_termination(setup):
    """A connection closed by the server on its first request reports CONNECTION_TERMINATION."""
    pool, cluster, _ = await setup([CLOSE])
    stream = await run(pool, cluster)
    assert stream.events == [("failed", AttemptFailure.CONNECTION_TERMINATION)]
    assert pool.idle == [] and pool.circuit.open == 0


async def test_broken_response_is_a_protocol_error(setup):
    """Bytes that are not HTTP end the attempt with PROTOCOL_ERROR and close the connection."""
    pool, cluster, _ = await setup([b"NOT HTTP AT ALL\r\n\r\n"])
    stream = await run(pool, cluster)
    assert stream.events == [("failed", AttemptFailure.PROTOCOL_ERROR)]
    assert pool.idle == [] and pool.circuit.open == 0


async def test_pending_body_over_the_high_water_holds_the_client_until_cancel(setup):
    """Body bytes buffered past 64 KiB while waiting hold the client once; cancel() lets it go."""
    circuit = Circuit("c")
    circuit.max_connections = 1
    pool, cluster, _ = await setup([None], circuit)
    attempt_for(RecordingStream()).start(cluster, pool, False)    # takes the one connection
    stream = RecordingStream()
    waiting = attempt_for(stream)
    waiting.start(cluster, pool, False)
    for _ in range(3):
        waiting.send_body(b"x" * (32 << 10))
    assert stream.events == [("hold",)]
    waiting.cancel()
    assert stream.events == [("hold",), ("let go",)]
