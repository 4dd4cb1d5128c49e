"""Python cost of one proxied request, without sockets: `python -m benchmarks.hotpath [--profile]`.

Drives the real DownstreamHttp1 -> Exchange -> UpstreamRequest -> UpstreamHttp1 path with fake transports
(a pooled upstream connection answering every request), so the number is the proxy's own
per-request Python work, free of syscalls and of the machine's noise. Use it to compare a
hot-path change before and after; the wrk scenarios measure the whole thing.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import uvloop

from remora.config.loader import load_mesh_text
from remora.proxy.codec.downstream import DownstreamHttp1
from remora.proxy.process.worker import ProxyOptions, Worker
from remora.proxy.upstream.http1_connection import UpstreamHttp1

MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: upstream}
spec:
  hosts: [upstream]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
"""
RESILIENCE = """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: upstream}
spec:
  hosts: [upstream]
  http:
  - timeout: 15s
    retries: {attempts: 2, retryOn: "connect-failure,refused-stream,503"}
    route: [{destination: {host: upstream}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: upstream}
spec:
  host: upstream
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: upstream\r\n\r\n"
# What a request from another sidecar looks like: it carries a trace context.
TRACED_REQUEST = (b"GET / HTTP/1.1\r\nHost: upstream\r\n"
                  b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 23:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n")


class FakeTransport:
    """Swallows writes; answers what the protocols ask of a transport."""

    def __init__(self) -> None:
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self.bytes_written += len(data)

    def writelines(self, parts) -> None:
        for p in parts:
            self.bytes_written += len(p)

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class SwitchingTransport(FakeTransport):
    """FakeTransport that follows a protocol switch (the HTTP/1 codec hands over to HTTP/2)."""

    protocol = None

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol


def h2load_requests(n: int) -> tuple[bytes, list[bytes]]:
    """The client's preface and SETTINGS, then one HEADERS frame per request, as h2load sends
    them (its pseudo-headers and user-agent; after the first, HPACK indexes them all), with a
    connection WINDOW_UPDATE every 100 responses as a reading client gives. Built with hpack
    and hyperframe alone: a client connection holding n streams would make the measured loop
    pay for its garbage collection."""
    from hpack import Encoder
    from hyperframe.frame import HeadersFrame, SettingsFrame, WindowUpdateFrame

    window = (1 << 30) - 1
    opening = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
               + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window}).serialize()
               + WindowUpdateFrame(0, window_increment=window - 65535).serialize())
    encoder = Encoder()
    block = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"upstream"),
             (b"user-agent", b"h2load nghttp2/1.52.0")]
    refill = WindowUpdateFrame(0, window_increment=100 * 12).serialize()
    frames = []
    for i in range(n):
        frame = HeadersFrame(1 + 2 * i, data=encoder.encode(block), flags=["END_HEADERS", "END_STREAM"]).serialize()
        frames.append(frame + refill if i % 100 == 99 else frame)
    return opening, frames


GRPC_MESH = MESH.replace("name: http, protocol: HTTP", "name: grpc, protocol: GRPC").replace("http: 9", "grpc: 9")
# The header blocks of grpc-2hop-mtls's two real peers, captured from h2load 1.52 and nginx 1.22
# (benchmarks/grpc_upstream.py's config): fake peers that index every field would make every
# block a replay and hide the decoding the real scenario pays for.
# h2load's first call: :path and content-length as literals without indexing (:path Huffman-coded); the
# other fields indexed from then on, so every later call sends the same block.
H2LOAD_FIRST_BLOCK = bytes.fromhex(
    "048c61254257c049cec70a8767af864186b6b426c28e9f837a8f9c541c722954d3a5358980aed897075f8b1d75d0"
    "620d263d4c4d656440027465864d833505b11f0f0d0139")
H2LOAD_BLOCK = bytes.fromhex("048c61254257c049cec70a8767af86c183c0bfbe0f0d0139")
# h2load's SETTINGS (no push, stream window 2^30 - 1) and connection WINDOW_UPDATE.
H2LOAD_SETTINGS = bytes.fromhex("00000c04000000000000020000000000043fffffff" "0000040800000000003fff0000")
# nginx: SETTINGS, a connection window of 2^31 - 1, the ACK of ours; per call a head of
# Huffman-coded literals (the 0x20 prefix of its first block empties the table, because our
# client names the table size), one DATA message, trailers as new-name literals, RST_STREAM
# NO_ERROR (it never reads the body it refused).
NGINX_OPENING = bytes.fromhex("000012040000000000000300000400000400010000000500ffffff"
                              "0000040800000000007fff0000" "000000040100000000")
NGINX_HEAD = bytes.fromhex(
    "887689aa6355e580ae212e1f6196d07abe9403aa5f29141004e2806ee05ab800298b46ff5f8b1d75d0620d263d4c4d"
    "65645c0234306c96d07abe9403aa5f29141004e2806ee059b8dbea62d1bf00832a47378bfe5c8c2e3407dd584f7f3f"
    "008919085ad2b583aa62a3848fd24a8f")
NGINX_TRAILERS = bytes.fromhex("00889acac8b21234da8f0130")
GRPC_REQUEST = b"\x00\x00\x00\x00\x04ping"         # one length-prefixed gRPC message (content-length 9)
GRPC_REPLY = b"\x00\x00\x00\x00\x23hello from the remora grpc upstream"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def grpc_calls(n: int) -> tuple[bytes, list[bytes], bytes, list[bytes]]:
    """Unary gRPC calls both ways, byte for byte as h2load and nginx send them: the client's
    preface and, per call, HEADERS + DATA; the upstream server's opening and, per call, its
    answer (HEADERS, one DATA message, trailers, RST_STREAM) on the upstream connection's
    stream (stream ids of both sides run 1, 3, 5...)."""
    calls, answers = [], []
    for i in range(n):
        sid = 1 + 2 * i
        calls.append(_frame(1, 0x4, sid, H2LOAD_FIRST_BLOCK if i == 0 else H2LOAD_BLOCK)
                     + _frame(0, 0x1, sid, GRPC_REQUEST))
        answers.append(_frame(1, 0x4, sid, (b"\x20" if i == 0 else b"") + NGINX_HEAD)
                       + _frame(0, 0, sid, GRPC_REPLY)
                       + _frame(1, 0x5, sid, NGINX_TRAILERS) + _frame(3, 0, sid, bytes(4)))
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + H2LOAD_SETTINGS, calls, NGINX_OPENING, answers


def _timed(down, up, exchanges, profile: bool) -> float:
    """Seconds to feed each (client bytes, upstream bytes) pair to the two protocols; with
    `profile`, cProfile's top functions are printed."""
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    start = time.perf_counter()
    for client_bytes, upstream_bytes in exchanges:
        down.data_received(client_bytes)
        up.data_received(upstream_bytes)
    elapsed = time.perf_counter() - start
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    return elapsed


async def measure_grpc(n: int, profile: bool) -> float:
    """Python work per unary gRPC call: HTTP/2 downstream -> router -> HTTP/2 upstream."""
    worker = Worker(ProxyOptions(access_log="off"), load_mesh_text(GRPC_MESH))
    listener = worker.listeners[0]
    transport = SwitchingTransport()
    transport.protocol = down = DownstreamHttp1(listener)
    down.connection_made(transport)
    opening, calls, server_opening, answers = grpc_calls(n)
    down.data_received(opening)
    down = transport.protocol
    pool = worker.snapshot.clusters()[0].endpoints[0].pool
    up = pool._new_connection()
    up.connection_made(FakeTransport())
    up.data_received(server_opening)
    pool.active.add(up)
    pool.conns.append(up)
    elapsed = _timed(down, up, zip(calls, answers), profile)
    assert listener.stats.by_class[2] == n, f"calls did not complete: {listener.stats.by_class}"
    return elapsed / n * 1e6


async def measure(n: int, profile: bool, resilience: bool = False, istio_metrics: bool = True,
                  traced: bool = False, sampling: float | None = None, http2: bool = False) -> float:
    options = ProxyOptions(access_log="off", istio_metrics=istio_metrics)
    if sampling is not None:
        # Spans go to an exporter whose thread is not started: the queue fills, then drops.
        options.trace_sampling, options.otlp_endpoint = sampling, "http://127.0.0.1:9/v1/traces"
    worker = Worker(options, load_mesh_text(MESH + (RESILIENCE if resilience else "")))
    request = TRACED_REQUEST if traced else REQUEST
    listener = worker.listeners[0]
    down = DownstreamHttp1(listener)
    transport = SwitchingTransport()
    transport.protocol = down
    down.connection_made(transport)
    if http2:
        opening, frames = h2load_requests(n)
        down.data_received(opening)
        down = transport.protocol
    cluster = worker.snapshot.clusters()[0]
    pool = cluster.endpoints[0].pool
    up = UpstreamHttp1(pool)
    up.connection_made(FakeTransport())
    up.release(True)    # into the pool, idle, as after a first response
    exchanges = ((frame, RESPONSE) for frame in frames) if http2 else ((request, RESPONSE) for _ in range(n))
    elapsed = _timed(down, up, exchanges, profile)
    assert listener.stats.by_class[2] == n, "requests did not complete"
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--resilience", action="store_true",
                        help="route with retries + timeout and outlier detection (never triggered)")
    parser.add_argument("--no-istio-metrics", dest="istio_metrics", action="store_false",
                        help="without Istio's standard metrics (as `remora proxy --no-istio-metrics`)")
    parser.add_argument("--traceparent", action="store_true",
                        help="requests carry an (unsampled) W3C traceparent, as from another sidecar")
    parser.add_argument("--sampling", type=float, default=None, metavar="PERCENT",
                        help="sample new traces at PERCENT and record their spans (OTLP exporter idle)")
    parser.add_argument("--http2", action="store_true",
                        help="h2c requests (h2load's headers, one stream each) through the HTTP/2 codec")
    parser.add_argument("--grpc", action="store_true",
                        help="unary gRPC calls: HTTP/2 downstream -> router -> HTTP/2 upstream (no TLS)")
    args = parser.parse_args()
    if args.grpc:
        results = [uvloop.run(measure_grpc(args.n, args.profile)) for _ in range(1 if args.profile else 7)]
        print(f"python work per unary gRPC call, HTTP/2 both sides: {min(results):.2f} us "
              f"(best of {len(results)}, n={args.n})")
        return
    results = [uvloop.run(measure(args.n, args.profile, args.resilience, args.istio_metrics,
                                  args.traceparent, args.sampling, args.http2))
               for _ in range(1 if args.profile else 7)]
    label = "with retries+timeout+outlier detection" if args.resilience else "plain route"
    if not args.istio_metrics:
        label += ", no Istio metrics"
    if args.traceparent:
        label += ", traceparent in"
    if args.http2:
        label += ", HTTP/2 downstream"
    if args.sampling is not None:
        label += f", {args.sampling:g}% sampled with spans recorded"
    print(f"python work per request, {label}: {min(results):.2f} us (best of {len(results)}, n={args.n})")


if __name__ == "__main__":
    main()
