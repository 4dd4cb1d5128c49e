"""A real gRPC server and client (grpcio) for the HTTP/2 tests: no generated code.

The service `test.Echo` is built from generic handlers with bytes in and bytes out, so the
tests need no protoc step:
- Unary: answers the request bytes; a request `fail:CODE` aborts with that status code name
  (`fail:UNAVAILABLE`), `sleep:SECONDS` waits first (deadline and timeout tests), `meta`
  answers the request's metadata (as `name=value` lines) and sends trailing metadata back.
- ServerStream: a request `N` (or `N:SIZE`) answers N messages of SIZE bytes (default 8).
- ClientStream: answers the number of messages and bytes received, `count=N bytes=B`.
- Bidi: echoes every message as it comes.
Each server counts what happened (`calls`, `cancelled`) so tests can see the far side.
`EchoServer(unavailable=True)` answers every unary call UNAVAILABLE (a failing endpoint).
"""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def _identity(data: bytes) -> bytes:
    return data


class EchoServer:
    """A grpcio server on 127.0.0.1 with the test.Echo service; a context manager."""

    def __init__(self, workers: int = 16, unavailable: bool = False) -> None:
        self.unavailable = unavailable
        self.calls: dict[str, int] = {}
        self.cancelled = 0
        self.lock = threading.Lock()
        self.cancel_seen = threading.Event()   # set when a handler saw its call cancelled
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(
                self._unary, _identity, _identity),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                self._server_stream, _identity, _identity),
            "ClientStream": grpc.stream_unary_rpc_method_handler(
                self._client_stream, _identity, _identity),
            "Bidi": grpc.stream_stream_rpc_method_handler(
                self._bidi, _identity, _identity),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> "EchoServer":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None).wait(5)

    def _unary(self, request: bytes, context) -> bytes:
        with self.lock:
            self.calls["Unary"] = self.calls.get("Unary", 0) + 1
        if self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "this endpoint is down")
        if request.startswith(b"fail:"):
            code = getattr(grpc.StatusCode, request[5:].decode())
            context.abort(code, f"asked to fail with {code.name}")
        if request.startswith(b"sleep:"):
            deadline = time.monotonic() + float(request[6:])
            while time.monotonic() < deadline:
                if not context.is_active():
                    with self.lock:
                        self.cancelled += 1
                    self.cancel_seen.set()
                    return b""
                time.sleep(0.02)
            return b"slept"
        if request == b"meta":
            context.set_trailing_metadata((("x-trailer", "t1"), ("x-trailer-bin", b"\x00\x01")))
            return "\n".join(f"{k}={v}" for k, v in context.invocation_metadata()).encode()
        return request

    def _server_stream(self, request: bytes, context):
        with self.lock:
            self.calls["ServerStream"] = self.calls.get("ServerStream", 0) + 1
        count, _, size = request.partition(b":")
        payload = b"m" * int(size or 8)
        done = threading.Event()

        def on_end() -> None:
            # Called when the call ends for any reason; before the last message went out, it
            # was cancelled (a handler blocked on flow control is never resumed to notice).
            if not done.is_set():
                with self.lock:
                    self.cancelled += 1
                self.cancel_seen.set()

        context.add_callback(on_end)
        for _ in range(int(count)):
            yield payload
        done.set()

    def _client_stream(self, requests, context) -> bytes:
        with self.lock:
            self.calls["ClientStream"] = self.calls.get("ClientStream", 0) + 1
        count = size = 0
        for message in requests:
            count += 1
            size += len(message)
        return b"count=%d bytes=%d" % (count, size)

    def _bidi(self, requests, context):
        with self.lock:
            self.calls["Bidi"] = self.calls.get("Bidi", 0) + 1
        yield from requests


def channel(port: int, authority: str | None = None) -> grpc.Channel:
    """An insecure channel to 127.0.0.1:port; `authority` sets :authority (the mesh host)."""
    options = [("grpc.enable_retries", 0)]
    if authority:
        options.append(("grpc.default_authority", authority))
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=options)


def method(ch: grpc.Channel, kind: str, name: str):
    """A callable for test.Echo/<name> of kind unary_unary, unary_stream, stream_unary or stream_stream."""
    factory = getattr(ch, kind)
    return factory(f"/{SERVICE}/{name}", request_serializer=_identity,
                   response_deserializer=_identity)
