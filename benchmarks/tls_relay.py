"""A bare byte relay, the floor of a sidecar's cost: `python -m benchmarks.tls_relay ...`.

The performance issue asks what a request costs below any proxy logic: the same sockets,
the same event loop (uvloop), the same TLS (Python's ssl through uvloop's SSL transport)
and the same allocator settings as a Remora sidecar, and nothing else: no HTTP parsing, no routing, no telemetry. Each
accepted connection gets its own upstream connection and bytes are copied both ways, with
the flow control a proxy needs (a peer that cannot take more pauses the other side's reads).

mesh-2hop-mtls runs a pair of these (`--proxies relay`): A takes plaintext and dials B over
mutual TLS with A's workload certificate; B accepts mutual TLS and dials the app in
plaintext. The ratio of Remora's CPU per request to the relay pair's is what Remora's own
work adds on top of what any Python proxy on this stack must pay.

`--admin-port` answers GET /ready with 200, as the harness waits on every sidecar.
"""
from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path

import uvloop

from remora.proxy.process.allocator import keep_tls_buffers_in_heap

CERT_CHAIN, KEY, ROOT = "cert-chain.pem", "key.pem", "root-cert.pem"


class Half(asyncio.Protocol):
    """One side of a relayed connection; `peer` is the other side's Half."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.pending: list[bytes] = []     # bytes that came before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # The peer's transport is full: stop reading here until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Downstream(Half):
    """An accepted connection: dial the upstream, then relay."""

    def __init__(self, target: tuple[str, int], client_tls: ssl.SSLContext | None, sni: str | None) -> None:
        super().__init__()
        self.target, self.client_tls, self.sni = target, client_tls, sni

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()   # nothing to do with bytes until the upstream answers
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                Half, *self.target, ssl=self.client_tls,
                server_hostname=self.sni if self.client_tls is not None else None)
        except OSError:
            self.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        for chunk in self.pending:
            upstream.transport.write(chunk)
        self.pending.clear()
        self.transport.resume_reading()


def contexts(cert_dir: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts with the workload certificate, both requiring the peer's."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False    # SPIFFE identities are URIs; the relay checks the chain only
    for context in (server, client):
        context.load_cert_chain(cert_dir / CERT_CHAIN, cert_dir / KEY)
        context.load_verify_locations(cert_dir / ROOT)
        context.verify_mode = ssl.CERT_REQUIRED
    return server, client


async def serve_ready(port: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nready\n")
        await writer.drain()
        writer.close()
    await asyncio.start_server(answer, "127.0.0.1", port)


async def main(args: argparse.Namespace) -> None:
    server_tls = client_tls = None
    if args.cert_dir:
        server_tls, client_tls = contexts(Path(args.cert_dir))
    host, _, port = args.to.rpartition(":")
    loop = asyncio.get_running_loop()
    await loop.create_server(
        lambda: Downstream((host, int(port)), client_tls if args.dial_tls else None, args.sni),
        "127.0.0.1", args.listen, ssl=server_tls if args.accept_tls else None, backlog=1024)
    await serve_ready(args.admin_port)
    await asyncio.Event().wait()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tls_relay", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--to", required=True, help="HOST:PORT to dial per connection")
    parser.add_argument("--admin-port", type=int, required=True, help="GET /ready answers 200")
    parser.add_argument("--cert-dir", help="cert-chain.pem, key.pem, root-cert.pem (Istio's names)")
    parser.add_argument("--accept-tls", action="store_true", help="accepted connections are mutual TLS")
    parser.add_argument("--dial-tls", action="store_true", help="dialled connections are mutual TLS")
    parser.add_argument("--sni", help="server name sent when dialling TLS")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # The same allocator settings as a Remora sidecar (process/allocator.py): without them
    # each TLS read's 256 KiB buffer is an mmap + mremap + munmap, which is not the floor.
    keep_tls_buffers_in_heap()
    uvloop.run(main(parse()))
