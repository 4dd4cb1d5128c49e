"""An app that speaks HTTP/1.1 and h2c prior knowledge on one port and answers each request
with the protocol it came in (`HTTP/1.1` or `HTTP/2`): what a useClientProtocol test needs.

A thread per connection over blocking sockets; the first 24 bytes tell the protocol (the
HTTP/2 preface), as a server that accepts both does. HTTP/2 requests are answered once they
end, and their trailers are recorded (`trailers`); HTTP/1 requests carry no body (GET).
"""
from __future__ import annotations

import socket
import threading

import h2.config
import h2.connection
import h2.events

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class DualProtocolServer:
    """127.0.0.1:port; a context manager; `seen` lists the protocol of each request."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        self.trailers: list[list] = []    # request trailers received over HTTP/2, per request
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "DualProtocolServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for conn in list(self.conns):
            conn.close()
        self.thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            first = b""
            while len(first) < len(PREFACE) and PREFACE.startswith(first):
                data = conn.recv(65536)
                if not data:
                    return
                first += data
            if first.startswith(PREFACE):
                self._http2(conn, first)
            else:
                self._http1(conn, first)
        except OSError:
            pass
        finally:
            conn.close()

    def _http1(self, conn: socket.socket, data: bytes) -> None:
        while True:
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            _, _, data = data.partition(b"\r\n\r\n")
            self.seen.append("HTTP/1.1")
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\ncontent-type: text/plain\r\n\r\nHTTP/1.1")

    def _http2(self, conn: socket.socket, data: bytes) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        h2c.initiate_connection()
        while data:
            for event in h2c.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.seen.append("HTTP/2")
                elif isinstance(event, h2.events.DataReceived):
                    h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    self.trailers.append(list(event.headers))
                elif isinstance(event, h2.events.StreamEnded):
                    # Answered once the request ended (its trailers, if any, are in by then).
                    h2c.send_headers(event.stream_id, [(b":status", b"200"), (b"content-length", b"6"),
                                                       (b"content-type", b"text/plain")])
                    h2c.send_data(event.stream_id, b"HTTP/2", end_stream=True)
            conn.sendall(h2c.data_to_send())
            data = conn.recv(65536)
