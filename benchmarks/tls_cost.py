"""What TLS costs on this stack, per round trip: `python -m benchmarks.tls_cost [-n N]`.

A sidecar's mTLS hop pays for TLS twice per request (one record written, one read) on each
side. This measures that cost without any proxy: one uvloop process, a client and an echo
server on loopback, 300-byte messages ping-ponged N times, the process's CPU per round trip
(both ends), for three ways of doing the same I/O:

- plain: uvloop's TCP transports, no TLS (the syscalls and the event loop alone);
- uvloop SSL transport: what Remora and the bare relay use (`ssl=` on create_server and
  create_connection): OpenSSL on memory BIOs, driven by uvloop's SSLProtocol;
- SSLSocket on the fd: OpenSSL reading and writing the socket itself (non-blocking
  `ssl.SSLSocket`, `loop.add_reader` with a Python callback).

The difference between the last two is what another TLS transport could save; the
difference between the first and the last, what TLS itself costs. The first two are run
again with 64 connections in flight at once (`--connections`), as wrk keeps them: every
round trip then works on a different connection's TLS state and buffers. Certificates come from
Remora's CA (benchmarks/certs.py) in a temporary directory; the allocator is set as in a
sidecar (process/allocator.py).
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import ssl
import tempfile
import threading
from pathlib import Path

import uvloop

from benchmarks.certs import issue_cert_dirs
from remora.proxy.process.allocator import keep_tls_buffers_in_heap

MESSAGE = b"x" * 300


def contexts(dirs: dict[str, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts that require each other's certificates, as between sidecars."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(dirs["server"] / "cert-chain.pem", dirs["server"] / "key.pem")
    server.load_verify_locations(dirs["server"] / "root-cert.pem")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(dirs["client"] / "cert-chain.pem", dirs["client"] / "key.pem")
    client.load_verify_locations(dirs["client"] / "root-cert.pem")
    client.check_hostname = False     # SPIFFE identities have no DNS name; verified by chain
    return server, client


def cpu_seconds() -> float:
    """This process's user + system CPU (getrusage: microseconds, where os.times has 10 ms ticks)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Pinger(asyncio.Protocol):
    """Sends the next message when the echo of the last arrives; `done` after `count`."""

    def __init__(self, count: int) -> None:
        self.count, self.seen = count, 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.seen += 1
        if self.seen == self.count:
            self.done.set_result(None)
        else:
            self.transport.write(MESSAGE)


async def with_transports(count: int, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None,
                          connections: int = 1) -> float:
    """CPU microseconds per round trip over uvloop transports (TLS when `tls` is given), the
    round trips spread over `connections` connections in flight at once (as wrk's 64 are)."""
    loop = asyncio.get_running_loop()
    server_ctx, client_ctx = tls if tls else (None, None)
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    pingers = []
    for _ in range(connections):
        _, pinger = await loop.create_connection(lambda: Pinger(count // connections), "127.0.0.1", port,
                                                 ssl=client_ctx)
        pingers.append(pinger)
    try:
        start = cpu_seconds()
        for pinger in pingers:
            pinger.transport.write(MESSAGE)
        await asyncio.gather(*(pinger.done for pinger in pingers))
        return (cpu_seconds() - start) / (count // connections * connections) * 1e6
    finally:
        for pinger in pingers:
            pinger.transport.close()
        server.close()
        await server.wait_closed()


async def with_ssl_sockets(count: int, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> float:
    """CPU microseconds per round trip with OpenSSL on the sockets and add_reader callbacks."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    raw_client = socket.create_connection(listener.getsockname())
    raw_server, _ = listener.accept()
    listener.close()
    for raw in (raw_client, raw_server):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)     # as uvloop sets it
    server = tls[0].wrap_socket(raw_server, server_side=True, do_handshake_on_connect=False)
    client = tls[1].wrap_socket(raw_client, do_handshake_on_connect=False)
    handshake = threading.Thread(target=server.do_handshake)
    handshake.start()
    client.do_handshake()
    handshake.join()
    server.setblocking(False)
    client.setblocking(False)
    done = loop.create_future()
    seen = 0

    def on_server_readable() -> None:
        while True:
            try:
                data = server.recv(256 * 1024)
            except ssl.SSLWantReadError:
                return
            server.send(data)
            if not server.pending():
                return

    def on_client_readable() -> None:
        nonlocal seen
        try:
            client.recv(256 * 1024)
        except ssl.SSLWantReadError:
            return
        seen += 1
        if seen == count:
            done.set_result(None)
        else:
            client.send(MESSAGE)

    loop.add_reader(server.fileno(), on_server_readable)
    loop.add_reader(client.fileno(), on_client_readable)
    try:
        start = cpu_seconds()
        client.send(MESSAGE)
        await done
        return (cpu_seconds() - start) / count * 1e6
    finally:
        loop.remove_reader(server.fileno())
        loop.remove_reader(client.fileno())
        server.close()
        client.close()


async def measure(count: int, rounds: int, tls: tuple[ssl.SSLContext, ssl.SSLContext],
                  connections: int = 64) -> dict[str, float]:
    """The best of `rounds` runs of each way, in CPU microseconds per round trip."""
    ways = {"plain (uvloop TCP transports)": lambda: with_transports(count, None),
            "uvloop SSL transport (memory BIOs)": lambda: with_transports(count, tls),
            "SSLSocket on the fd (add_reader)": lambda: with_ssl_sockets(count, tls),
            f"plain, {connections} connections at once": lambda: with_transports(count, None, connections),
            f"uvloop SSL, {connections} connections at once": lambda: with_transports(count, tls, connections)}
    return {name: min([await way() for _ in range(rounds)]) for name, way in ways.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="round trips per run (default 20,000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each way; the best is kept")
    parser.add_argument("--connections", type=int, default=64,
                        help="connections in flight at once for the last two ways (default 64, as wrk)")
    args = parser.parse_args()
    keep_tls_buffers_in_heap()
    with tempfile.TemporaryDirectory(prefix="remora-tls-cost-") as workdir:
        dirs = issue_cert_dirs(Path(workdir), "bench", ["server", "client"])
        results = uvloop.run(measure(args.n, args.rounds, contexts(dirs), args.connections))
    print(f"CPU per round trip, {len(MESSAGE)}-byte messages, both ends in one process "
          f"(best of {args.rounds} x {args.n:,}):")
    for name, micros in results.items():
        print(f"  {name:36s} {micros:6.1f} us")


if __name__ == "__main__":
    main()
