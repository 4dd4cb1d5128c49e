"""Minimal raw HTTP/1.1 client for tests that need to see exact bytes and connection state."""
from __future__ import annotations

import json
import socket
import ssl

import httptools


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.raw_headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self.complete = False

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def json(self):
        return json.loads(self.body)


class RawClient:
    """One keep-alive connection to the proxy; sends bytes, reads one response at a time."""

    def __init__(self, port: int, timeout: float = 10.0, tls: ssl.SSLContext | None = None,
                 source: str | None = None) -> None:
        """`tls`: speak TLS with this client context (the handshake happens here);
        `source`: the loopback address to connect from (e.g. 127.0.0.2)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, head_request: bool = False) -> Response:
        resp = Response()
        done = []

        class Cb:
            def on_header(self, name, value):
                resp.raw_headers.append((name.decode().lower(), value.decode()))
                resp.headers[name.decode().lower()] = value.decode()

            def on_headers_complete(self):
                resp.status = parser.get_status_code()
                if head_request:
                    done.append(True)

            def on_body(self, body):
                resp._body += body

            def on_message_complete(self):
                resp.complete = True
                done.append(True)

        parser = httptools.HttpResponseParser(Cb())
        data, self.buf = self.buf, b""
        while True:
            if data:
                if head_request:
                    idx = data.find(b"\r\n\r\n")
                    head, rest = (data[:idx + 4], data[idx + 4:]) if idx >= 0 else (data, b"")
                    parser.feed_data(head)
                    if done:
                        self.buf = rest
                        return resp
                    continue
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    pass
                if done:
                    return resp
            data = self.sock.recv(65536)
            if not data:
                try:
                    parser.feed_data(b"")
                except httptools.HttpParserError:
                    pass
                return resp

    def request(self, method: str, path: str, host: str, headers: dict | None = None,
                body: bytes = b"") -> Response:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return self.read_response(head_request=(method == "HEAD"))

    def is_closed_by_peer(self, timeout: float = 3.0) -> bool:
        """True when the proxy closed the connection (recv returns EOF)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
