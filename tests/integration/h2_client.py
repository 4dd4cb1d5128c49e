"""A raw HTTP/2 test client: the h2 library's client state machine over a blocking socket.

Unlike curl, it can do what the tests need to control exactly: several streams at once,
bodies sent in pieces, RST_STREAM at a chosen moment, and flow control held (a client
that reads nothing: `acknowledge=False` grants no window beyond the initial one).
"""
from __future__ import annotations

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def keep_reading_after_goaway(conn: h2.connection.H2Connection) -> None:
    """A graceful GOAWAY lets the streams up to its last stream id finish (RFC 9113 6.8), but
    h2's state machine stops at any GOAWAY received: keep this client's open so the tests can
    read those streams' responses, as real clients (curl, grpc) do."""
    machine = conn.state_machine
    machine._transitions = dict(machine._transitions)
    key = (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY)
    machine._transitions[key] = (None, h2.connection.ConnectionState.CLIENT_OPEN)


class StreamResult:
    """What the client saw on one stream."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.trailers: dict[bytes, bytes] = {}
        self.ended = False
        self.reset_code: int | None = None

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None


class H2Client:
    """One HTTP/2 connection (h2c prior knowledge, or TLS with ALPN h2 when `context` is given)."""

    def __init__(self, port: int, timeout: float = 20.0, acknowledge: bool = True,
                 context: ssl.SSLContext | None = None, window: int | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as real HTTP/2 clients do
        if context is not None:
            sock = context.wrap_socket(sock)
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        self.sock = sock
        self.timeout = timeout
        self.acknowledge = acknowledge
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        keep_reading_after_goaway(self.conn)
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.streams: dict[int, StreamResult] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.remote_settings_seen = False
        self.closed = False
        self._send()

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, method: str, path: str, authority: str, headers: list | None = None,
              end: bool = True) -> int:
        """Open a stream with a request head; its id."""
        sid = self.conn.get_next_available_stream_id()
        block = [(b":method", method.encode()), (b":path", path.encode()), (b":scheme", b"http"),
                 (b":authority", authority.encode())]
        block += [(k.encode(), v.encode()) for k, v in headers or ()]
        self.conn.send_headers(sid, block, end_stream=end)
        self.streams[sid] = StreamResult()
        self._send()
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        """Send body bytes on a stream, waiting for window as needed."""
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump(lambda: self.conn.local_flow_control_window(sid) > 0 or self.streams[sid].done)
                if self.streams[sid].done:
                    return
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self._send()
        if end:
            self.conn.end_stream(sid)
            self._send()

    def reset(self, sid: int, code: int = 8) -> None:
        """RST_STREAM (CANCEL by default)."""
        self.conn.reset_stream(sid, code)
        self._send()

    def request(self, method: str, path: str, authority: str, body: bytes = b"",
                headers: list | None = None) -> StreamResult:
        sid = self.start(method, path, authority, headers, end=not body)
        if body:
            self.send(sid, body, end=True)
        return self.wait(sid)

    def wait(self, sid: int) -> StreamResult:
        self.pump(lambda: self.streams[sid].done)
        return self.streams[sid]

    def pump(self, until, timeout: float | None = None) -> None:
        """Read and handle frames until `until()` is true; AssertionError after the timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not until():
            if self.closed:
                raise AssertionError("connection closed before the condition held")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting on the HTTP/2 connection")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                continue
            self.feed(data)

    def feed(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            result = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived):
                result.headers = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                result.trailers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                result.body += event.data
                if self.acknowledge:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                result.ended = True
            elif isinstance(event, h2.events.StreamReset):
                if result is not None:
                    result.reset_code = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.remote_settings_seen = True
        self._send()

    def grant(self, sid: int) -> None:
        """Acknowledge everything received so far on a stream (a reader catching up)."""
        received = len(self.streams[sid].body)
        done = getattr(self, "_granted", {}).get(sid, 0)
        if received > done:
            self.conn.acknowledge_received_data(received - done, sid)
            self._granted = {**getattr(self, "_granted", {}), sid: received}
            self._send()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
