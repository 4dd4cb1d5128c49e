"""The downstream codecs the contract suites run against, each behind one small harness.

A harness serves a codec on a real loopback socket with a recording listener (what the
codec asks of a Listener, codec/seams.py CodecListener) and gives the test a client that
speaks the codec's wire: send a request (whole, or a body streamed piece by piece), read
a response, stop reading, close. The recording listener hands every request head to a
RecordingStream (a RouterStream that records what the codec tells it and lets the test
answer through its DownstreamStream). The tests are written once against this API:
adding a codec means adding a harness to CODECS. HTTP/1.1 and HTTP/2 (h2c, with h2's
client as the peer) run them today.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
from httptools import HttpResponseParser

from remora.proxy.codec.downstream import DownstreamHttp1
from remora.proxy.codec.http2 import Http2Stats
from remora.proxy.codec.paths import PathNormalizer
from remora.proxy.process.listener import ListenerSettings, ListenerStats
from tests.integration.h2_client import keep_reading_after_goaway

TIMEOUT = 5.0


async def until(condition, timeout: float = TIMEOUT) -> None:
    """Wait (polling the loop) until condition() is true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class RecordingStream:
    """A RouterStream that records the codec's calls; the test answers through `sink`."""

    def __init__(self, sink, head) -> None:
        self.sink = sink
        self.head = head
        self.finished = False
        self.bytes_sent = 0
        self.events: list[tuple] = []
        self.hold_body = False         # pause_reading at the first body bytes

    # -- RouterStream ------------------------------------------------------------------------
    def start(self) -> None:
        self.events.append(("start",))

    def on_request_body(self, data: bytes) -> None:
        self.events.append(("body", bytes(data)))
        if self.hold_body:
            self.hold_body = False
            self.sink.pause_reading()

    def on_request_trailers(self, trailers: list) -> None:
        self.events.append(("trailers", trailers))

    def on_request_end(self) -> None:
        self.events.append(("end",))

    def downstream_write_paused(self, paused: bool) -> None:
        self.events.append(("write_paused", paused))

    def on_downstream_closed(self) -> None:
        self.events.append(("closed",))
        self.finished = True

    def on_stream_idle_timeout(self) -> None:
        self.events.append(("idle_timeout",))
        self.finished = True

    # -- what the test reads and does --------------------------------------------------------
    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]

    @property
    def body(self) -> bytes:
        return b"".join(event[1] for event in self.events if event[0] == "body")

    def respond(self, status: int = 200, body_parts=(b"ok",), content_length: int | None = -1,
                headers=()) -> None:
        """A whole response the way the Exchange sends it: head, body pieces, end, one flush each."""
        body = b"".join(body_parts)
        length = len(body) if content_length == -1 else content_length
        self.sink.send_response_head(status, b"", [(b"x-test", b"1"), *headers], length)
        for part in body_parts:
            self.bytes_sent += len(part)
            self.sink.send_response_body(part)
            self.sink.flush()
        self.finished = True
        self.sink.end_response()

    def local_reply(self, status: int, body: bytes, extra=None) -> None:
        """As Exchange.local_reply: finish, then hand the reply to the stream."""
        self.finished = True
        self.sink.send_local_reply(status, body, extra)

    def abort(self) -> None:
        """As Exchange after an upstream failure mid-response: finish, then abort."""
        self.finished = True
        self.sink.abort()


class RecordingListener:
    """What a codec asks of its listener (CodecListener), recording connections and streams."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.settings = ListenerSettings()
        self.paths = PathNormalizer("NONE")
        self.draining = False
        self.reply_header = None
        self.streams: list[RecordingStream] = []
        self.connections: list = []
        self.opened = self.closed = self.replaced = 0
        self.protocol_errors: list[int] = []
        self.stats = ListenerStats()
        self.http2 = Http2Stats()

    def new_exchange(self, stream, head, routed: bool = True) -> RecordingStream:
        recording = RecordingStream(stream, head)
        self.streams.append(recording)
        return recording

    def connection_opened(self, conn) -> None:
        self.opened += 1
        self.connections.append(conn)

    def connection_closed(self, conn) -> None:
        self.closed += 1

    def connection_replaced(self, old, new) -> None:
        self.connections[self.connections.index(old)] = new
        self.replaced += 1

    def count_protocol_error(self, status: int) -> None:
        self.protocol_errors.append(status)

    def local_spiffe_id(self) -> str | None:
        return None

    def tunnel_opened(self, exchange, resp):
        return None

    def tunnel_closed(self, meter) -> None:
        pass

    async def stream(self, index: int) -> RecordingStream:
        """The index-th request stream, once its head arrived."""
        await until(lambda: len(self.streams) > index)
        return self.streams[index]


@dataclass
class Response:
    status: int = 0
    headers: list = field(default_factory=list)
    body: bytes = b""
    trailers: list = field(default_factory=list)
    complete: bool = False     # the message ended as framed (False: cut short by a close)
    unacked: int = 0           # HTTP/2: response bytes the client has not given window back for


class _ResponseParsing:
    """httptools callbacks collecting responses; trailers are the fields after the body."""

    def __init__(self) -> None:
        self.done: list[Response] = []
        self.current = Response()
        self.in_body = False
        self.parser = HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.current.trailers if self.in_body else self.current.headers).append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()
        self.in_body = True

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.complete = True
        self.done.append(self.current)
        self.current = Response()
        self.in_body = False


class Http1Client:
    """An HTTP/1.1 client on a plain socket: one request at a time, keep-alive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parsing = _ResponseParsing()
        self.parser = self.parsing.parser
        self.eof = False

    async def request(self, method: bytes = b"GET", path: bytes = b"/", headers=(),
                      body: bytes | None = None, streamed: bool = False) -> None:
        """Send a head, and `body` whole (with its length); `streamed`: a body of unknown
        length follows through send_body / end_body."""
        lines = [method + b" " + path + b" HTTP/1.1", b"host: contract"]
        lines += [name + b": " + value for name, value in headers]
        if streamed:
            lines.append(b"transfer-encoding: chunked")
        elif body is not None:
            lines.append(b"content-length: %d" % len(body))
        self.writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        await self.writer.drain()

    async def send_body(self, piece: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await self.writer.drain()

    async def end_body(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def response(self, timeout: float = TIMEOUT) -> Response:
        """The next response, complete, or as far as it got when the connection closed."""
        async def read() -> Response:
            while not self.parsing.done:
                data = await self.reader.read(65536)
                if not data:
                    self.eof = True
                    cut, self.parsing.current = self.parsing.current, Response()
                    return cut
                self.parser.feed_data(data)
            return self.parsing.done.pop(0)
        return await asyncio.wait_for(read(), timeout)

    async def cut_off(self, timeout: float = TIMEOUT) -> bool:
        """True once the server ended what it was sending (HTTP/1.1: closed the connection)."""
        async def read() -> bool:
            while not self.eof:
                data = await self.reader.read(65536)
                if not data:
                    self.eof = True
                else:
                    self.parser.feed_data(data)
            return True
        return await asyncio.wait_for(read(), timeout)

    def close(self) -> None:
        self.writer.close()


class Http1Codec:
    """DownstreamHttp1 served on loopback, with Http1Client."""

    name = "http1"
    hold_allows = 0     # request bytes that may still arrive after pause_reading (none: reads stop)
    client = Http1Client

    @staticmethod
    def connected(listener: RecordingListener, clients: int) -> bool:
        """The codec has every client's connection (so listener.connections are its own)."""
        return listener.opened >= clients

    @asynccontextmanager
    async def serve(self):
        """Yields (listener, connect): connect() opens one client connection."""
        loop = asyncio.get_running_loop()
        listener = RecordingListener(loop)
        server = await loop.create_server(lambda: DownstreamHttp1(listener), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients: list[Http1Client] = []

        async def connect() -> Http1Client:
            # A small read buffer, so that a client that stops reading fills the proxy's soon.
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=16384)
            client = self.client(reader, writer)
            clients.append(client)
            await until(lambda: self.connected(listener, len(clients)))
            return client

        try:
            yield listener, connect
        finally:
            for client in clients:
                client.close()
            for conn in listener.connections:
                if conn.transport is not None:
                    conn.transport.abort()
            server.close()
            await server.wait_closed()


class Http2Client:
    """An h2c client (h2's client connection): one stream per request on one connection.

    A reader task handles frames as they come. Response DATA is acknowledged only once the
    test asks for a response, so until then the client "does not read", as HTTP/1's client
    does not; request body bytes go out as the server's windows allow, the rest waits."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        keep_reading_after_goaway(self.conn)     # a drain's GOAWAY lets streams in flight finish
        self.conn.initiate_connection()
        self.sid = 0
        self.responses: dict[int, Response] = {}
        self.reset: set[int] = set()
        self.pending = bytearray()      # request body waiting for window (current stream)
        self.end_pending = False
        self.acking = False
        self.eof = False
        self._write()
        self.task = asyncio.ensure_future(self._read())

    def _write(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def request(self, method: bytes = b"GET", path: bytes = b"/", headers=(),
                      body: bytes | None = None, streamed: bool = False) -> None:
        self.sid = self.conn.get_next_available_stream_id()
        self.responses[self.sid] = Response()
        block = [(b":method", method), (b":path", path), (b":scheme", b"http"), (b":authority", b"contract"),
                 *headers]
        if body is not None:
            block.append((b"content-length", b"%d" % len(body)))
        self.conn.send_headers(self.sid, block, end_stream=body is None and not streamed)
        self._write()
        if body is not None:
            await self.send_body(body)
            await self.end_body()

    async def send_body(self, piece: bytes) -> None:
        self.pending += piece
        self._send_pending()

    async def end_body(self) -> None:
        self.end_pending = True
        self._send_pending()

    def _send_pending(self) -> None:
        sid, conn = self.sid, self.conn
        if sid in self.reset or sid not in self.responses:
            return
        while self.pending:
            size = min(len(self.pending), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if size <= 0:
                break
            conn.send_data(sid, bytes(self.pending[:size]))
            del self.pending[:size]
        if not self.pending and self.end_pending:
            self.end_pending = False
            conn.end_stream(sid)
        self._write()

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.eof = True
                return
            for event in self.conn.receive_data(data):
                resp = self.responses.get(getattr(event, "stream_id", 0))
                if isinstance(event, h2.events.ResponseReceived):
                    resp.status = int(dict(event.headers)[b":status"])
                    resp.headers = [(n, v) for n, v in event.headers if not n.startswith(b":")]
                elif isinstance(event, h2.events.DataReceived):
                    resp.body += event.data
                    if self.acking:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    else:
                        resp.unacked += event.flow_controlled_length
                elif isinstance(event, h2.events.TrailersReceived):
                    resp.trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    resp.complete = True
                elif isinstance(event, h2.events.StreamReset):
                    self.reset.add(event.stream_id)
                elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    self._send_pending()
            self._write()

    def _ended(self, sid: int) -> bool:
        return self.responses[sid].complete or sid in self.reset or self.eof

    async def response(self, timeout: float = TIMEOUT) -> Response:
        """The current stream's response, complete, or as far as it got when it was reset."""
        sid = self.sid
        if not self.acking:
            self.acking = True     # the client reads from now on: give back what it held
            for stream_id, resp in self.responses.items():
                if resp.unacked:
                    self.conn.acknowledge_received_data(resp.unacked, stream_id)
                    resp.unacked = 0
            self._write()
        await until(lambda: self._ended(sid), timeout)
        return self.responses[sid]

    async def cut_off(self, timeout: float = TIMEOUT) -> bool:
        """True once the server ended what it was sending: RST_STREAM on the stream, or a close."""
        sid = self.sid
        await until(lambda: sid in self.reset or self.eof, timeout)
        return True

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


class Http2Codec(Http1Codec):
    """DownstreamHttp2 (reached as a real client reaches it: the HTTP/1 codec hands over on
    the h2c preface), with Http2Client."""

    name = "http2"
    hold_allows = 65535     # flow control lets in one stream window after pause_reading
    client = Http2Client

    @staticmethod
    def connected(listener: RecordingListener, clients: int) -> bool:
        return listener.replaced >= clients     # the preface arrived: DownstreamHttp2 took over


CODECS = [Http1Codec(), Http2Codec()]
