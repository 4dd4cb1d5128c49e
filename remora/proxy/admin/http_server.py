"""A small HTTP/1.1 server for the admin, Prometheus and health ports: asyncio Protocols and
httptools (the data path's parser), so a sidecar loads no web framework for them.

Rules this module keeps:

- Routes are exact (percent-decoded) paths, each mapping methods to an async handler
  ``handler(request) -> Response``. A GET route answers HEAD too (head only), as aiohttp's
  ``web.get`` did. An unknown path is 404; a known path with another method is 405 with
  ``Allow``; a handler's ``HttpError`` is its response; any other exception is a 500.
- Requests on one connection are answered one at a time, in order, so pipelining works;
  reading pauses while more than ``MAX_PIPELINED`` wait, so a client cannot queue
  unbounded work.
- No admin endpoint takes a body: request bodies are read and dropped, never buffered.
  A malformed request (or an upgrade) is answered 400 and the connection closed.
- Keep-alive as the client asks (HTTP/1.1: on unless ``Connection: close``); a connection
  idle for ``IDLE_SECONDS`` (aiohttp's keepalive_timeout) is closed.
- ``AdminHttpServer.cleanup()`` stops listening, closes idle connections, gives requests
  in flight ``SHUTDOWN_SECONDS`` to finish (admin answers are quick; the proxy's exit must
  not wait long), then aborts what is left.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

from httptools import HttpParserError, HttpRequestParser, parse_url

from remora.proxy import log_levels

log = log_levels.logger("admin")

IDLE_SECONDS = 75.0
SHUTDOWN_SECONDS = 2.0
MAX_PIPELINED = 16
TEXT = "text/plain; charset=utf-8"


class Request:
    """One request as a handler sees it: method, decoded path, query (first value wins)."""

    __slots__ = ("method", "path", "query", "keep_alive", "version")

    def __init__(self, method: str, path: str, query: dict[str, str], keep_alive: bool, version: str) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.keep_alive = keep_alive
        self.version = version


class Response:
    """A whole answer. ``after`` runs once its bytes are handed to the transport."""

    __slots__ = ("status", "body", "content_type", "headers", "after")

    def __init__(self, status: int = 200, body: bytes | str = b"", content_type: str = TEXT,
                 headers: tuple[tuple[str, str], ...] = (), after: Callable[[], None] | None = None) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers
        self.after = after

    def encode(self, head_only: bool, keep_alive: bool, version: str) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}",
                 f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if not keep_alive:
            lines.append("Connection: close")
        elif version == "1.0":   # HTTP/1.0 closes unless told otherwise
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


class HttpError(Exception):
    """Raised by a handler to answer with ``response`` (e.g. a 400 for a bad query)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


Handler = Callable[[Request], Awaitable[Response]]
Routes = dict[str, dict[str, Handler]]


async def dispatch(routes: Routes, request: Request) -> Response:
    """The route's answer to ``request``, or 404 / 405 / 500 in aiohttp's words."""
    methods = routes.get(request.path)
    if methods is None:
        return Response(404, "404: Not Found")
    handler = methods.get(request.method)
    if handler is None and request.method == "HEAD":
        handler = methods.get("GET")
    if handler is None:
        allow = sorted({*methods, *(("HEAD",) if "GET" in methods else ())})
        return Response(405, "405: Method Not Allowed", headers=(("Allow", ",".join(allow)),))
    try:
        return await handler(request)
    except HttpError as error:
        return error.response
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        return Response(500, "500 Internal Server Error\n\nServer got itself in trouble")


class _Connection(asyncio.Protocol):
    """One client connection: httptools parses in data_received, one task answers in order."""

    def __init__(self, server: AdminHttpServer) -> None:
        self.server = server
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request | None] = deque()   # None: a malformed request (400, close)
        self.task: asyncio.Task[None] | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.url = b""
        self.paused = False
        self.broken = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        # A handler already running finishes (as aiohttp's did); its answer is dropped.
        self.server.connections.discard(self)
        self.pending.clear()
        if self.idle is not None:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except HttpParserError:   # HttpParserUpgrade too: no admin endpoint upgrades
            self.broken = True
            self._queue(None)

    # -- httptools callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        parsed = parse_url(self.url)
        query: dict[str, str] = {}
        # parse_qsl turns '+' into a space, as aiohttp's (yarl's) query did.
        for key, value in parse_qsl((parsed.query or b"").decode("utf-8", "replace"), keep_blank_values=True):
            query.setdefault(key, value)
        path = unquote((parsed.path or b"/").decode("utf-8", "replace"))
        self._queue(Request(self.parser.get_method().decode("latin-1"), path, query,
                            self.parser.should_keep_alive(), self.parser.get_http_version()))

    # -- answering ----------------------------------------------------------------------------
    def _queue(self, request: Request | None) -> None:
        self.pending.append(request)
        if len(self.pending) > MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._answer())

    async def _answer(self) -> None:
        while self.pending:
            request = self.pending.popleft()
            if request is None:
                self._write(Response(400, "400: Bad Request"), False, False, "1.1")
                return
            response = await dispatch(self.server.routes, request)
            keep_alive = request.keep_alive and not self.server.closing
            if not self._write(response, request.method == "HEAD", keep_alive, request.version):
                return
        self.task = None
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._arm_idle()

    def _write(self, response: Response, head_only: bool, keep_alive: bool, version: str) -> bool:
        """Send ``response``; False when the connection is (now) closed."""
        transport = self.transport
        if transport.is_closing():
            self.task = None
            return False
        transport.write(response.encode(head_only, keep_alive, version))
        if response.after is not None:
            response.after()
        if not keep_alive:
            self.task = None
            transport.close()
        return keep_alive

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self.transport.close)


class AdminHttpServer:
    """A listening socket serving ``routes``; what start_admin & co. return."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.connections: set[_Connection] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)

    @property
    def addresses(self) -> list:
        """The bound socket addresses (port 0 picks a free port: read it here), as aiohttp's runner."""
        return [sock.getsockname() for sock in self._server.sockets] if self._server is not None else []

    async def cleanup(self) -> None:
        """Stop listening; idle connections close now, busy ones after their answer or the timeout."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_SECONDS
        while True:
            for conn in list(self.connections):
                if conn.task is None:
                    conn.transport.close()
                    self.connections.discard(conn)
            if not self.connections or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.transport.abort()
        self.connections.clear()


async def serve(routes: Routes, host: str, port: int) -> AdminHttpServer:
    """Listen on host:port and serve ``routes``; stop with ``await server.cleanup()``."""
    server = AdminHttpServer(routes)
    await server.start(host, port)
    return server
