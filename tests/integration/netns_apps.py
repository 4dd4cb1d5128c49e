"""Tiny apps run inside test namespaces: `python -m tests.integration.netns_apps http|echo PORT NAME`.

http: answers every GET with JSON {server, path, headers, peer}; echo: a TCP server that
sends back exactly what it receives (a client-first, non-HTTP protocol).
"""
from __future__ import annotations

import json
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def http_server(port: int, name: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps({"server": name, "path": self.path,
                               "headers": {k.lower(): v for k, v in self.headers.items()},
                               "peer": self.client_address[0]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def echo_server(port: int) -> None:
    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                self.request.sendall(data)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer(("0.0.0.0", port), Echo).serve_forever()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "http":
        http_server(port, sys.argv[3])
    else:
        echo_server(port)
