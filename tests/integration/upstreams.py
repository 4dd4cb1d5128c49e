"""Test upstream servers on loopback, run on a background event loop thread.

- echo (aiohttp): answers JSON describing what it received; /ws is a WebSocket echo;
  /stream?n= sends a chunked body; /status/N answers with status N; /slow?ms= waits.
- raw asyncio servers for what aiohttp would not do on purpose: a server that closes a
  kept-alive connection when the second request arrives (the keep-alive race), one that
  answers garbage, one that answers without a length and closes, and byte sink/source
  servers for large bodies.
"""
from __future__ import annotations

import asyncio
import hashlib
import threading

from aiohttp import WSMsgType, web

from benchmarks.procs import free_port  # noqa: F401  (the tests' import path)


def make_echo_app(name: str) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(f"{name}:{msg.data}")
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            return ws
        if request.path.startswith("/status/"):
            return web.Response(status=int(request.path.rsplit("/", 1)[1]))
        if request.path == "/stream":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            n = int(request.query.get("n", "10"))
            for i in range(n):
                await resp.write(b"chunk-%d;" % i)
            await resp.write_eof()
            return resp
        if request.path == "/slow":
            await asyncio.sleep(int(request.query.get("ms", "500")) / 1000)
        body = await request.read()
        peer = request.transport.get_extra_info("peername")
        info = {
            "server": name, "method": request.method, "path": request.path_qs,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "header_list": [k.lower() for k in request.headers.keys()],
            "body_len": len(body), "body_sha": hashlib.sha256(body).hexdigest(),
            "peer_port": peer[1] if peer else None,
        }
        return web.json_response(info, headers={"x-upstream": name})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


class RaceServer(asyncio.Protocol):
    """Answers the first request of a connection with keep-alive, then closes the
    connection as soon as a second request arrives, without answering it."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = b""
        self.served = 0

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            if self.served:
                self.transport.close()
                return
            self.served += 1
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


class GarbageServer(asyncio.Protocol):
    """Answers every request with bytes that are not HTTP."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"NOT HTTP AT ALL\r\n\r\n")


class NoLengthServer(asyncio.Protocol):
    """Answers with neither Content-Length nor chunked, and ends the body by closing."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
            self.transport.write(b"until-close-body")
            self.transport.close()


class FailingServer(asyncio.Protocol):
    """Answers 503 to every request (or to every second one when flaky), keeping the connection."""

    flaky = False
    count = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            self.buf = self.buf[length:]
            type(self).count += 1
            if self.flaky and type(self).count % 2 == 0:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-upstream: flaky\r\n\r\nflaky")
            else:
                self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nfail")


class FlakyServer(FailingServer):
    """Every second request fails with 503."""

    flaky = True
    count = 0


class ChaosServer(asyncio.Protocol):
    """Misbehaves per request path: /close (no answer), /reset-mid (cut the body short),
    /hang (never answer), /slow (answer after 300 ms), /invalid (not HTTP),
    /idle-close (answer, then close the kept-alive connection); anything else: 200."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        path = head.split(b" ", 2)[1]
        loop = asyncio.get_running_loop()
        ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        if path == b"/close":
            self.transport.close()
        elif path == b"/reset-mid":
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            loop.call_later(0.05, self.transport.abort)
        elif path == b"/hang":
            pass
        elif path == b"/slow":
            loop.call_later(0.3, self.transport.write, ok)
        elif path == b"/invalid":
            self.transport.write(b"HTTP/1.1 abc\r\n\r\n")
        elif path == b"/idle-close":
            self.transport.write(ok)
            loop.call_later(0.05, self.transport.close)
        else:
            self.transport.write(ok)


class SinkServer(asyncio.Protocol):
    """Counts a Content-Length request body without keeping it, answers the count. A path
    starting /stall stops reading right after the head (the connection joins `stalled`)
    until `release()`: a receiver slower than any sender."""

    stalled: list["SinkServer"] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.head = b""
        self.remaining = None
        self.count = 0

    def release(self) -> None:
        """Read again (callable from any thread)."""
        self.loop.call_soon_threadsafe(self.transport.resume_reading)

    def data_received(self, data: bytes) -> None:
        if self.remaining is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    self.remaining = int(v)
            self.head = b""
            if head.split(b" ", 2)[1].startswith(b"/stall"):
                self.transport.pause_reading()
                SinkServer.stalled.append(self)
        self.count += len(data)
        self.remaining -= len(data)
        if self.remaining <= 0:
            body = b"%d" % self.count
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.remaining, self.count = None, 0


class SourceServer(asyncio.Protocol):
    """Sends N bytes (path /N) with Content-Length, respecting the socket's backpressure.
    Each connection has a number, sent as `x-connection`; each response is recorded in
    `responses` as [connection number, N, bytes handed to the socket so far]."""

    connections = 0
    responses: list[list[int]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        SourceServer.connections += 1
        self.number = SourceServer.connections
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            n = int(data.split(b" ", 2)[1].strip(b"/"))
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-connection: %d\r\n\r\n"
                                 % (n, self.number))
            record = [self.number, n, 0]
            SourceServer.responses.append(record)
            asyncio.get_running_loop().create_task(self._send(n, record))

    async def _send(self, n: int, record: list[int]) -> None:
        block = b"x" * (256 << 10)
        while n > 0 and not self.transport.is_closing():
            await self.can_write.wait()
            piece = block if n >= len(block) else block[:n]
            self.transport.write(piece)
            n -= len(piece)
            record[2] += len(piece)


class LoopThread:
    """Test servers on their own event loop in a daemon thread: subclasses set them up in
    `_start()` (run on that loop before `start()` returns)."""

    name = "test servers"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError(f"{self.name} did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        raise NotImplementedError


class Upstreams(LoopThread):
    """All test upstreams, started on their own loop in a daemon thread."""

    name = "test upstreams"

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[str, int] = {}

    async def _start(self) -> None:
        for name in ("echo", "v1", "v2", "drain"):
            runner = web.AppRunner(make_echo_app(name), access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.ports[name] = port
        for name, proto in (("race", RaceServer), ("garbage", GarbageServer),
                            ("nolen", NoLengthServer), ("sink", SinkServer), ("source", SourceServer),
                            ("fail", FailingServer), ("flaky", FlakyServer), ("chaos", ChaosServer)):
            server = await self.loop.create_server(proto, "127.0.0.1", 0)
            self.ports[name] = server.sockets[0].getsockname()[1]
        self.ports["down"] = free_port()   # nothing listens here

    def stop(self) -> None:
        """Cancel what is still running on the upstreams' loop, then stop it."""
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self._thread.join(10)
