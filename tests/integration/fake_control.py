"""A fake control server for sidecar tests: speaks remora.wire.protocol, pushes what the test says.

It keeps no config of its own. It records every Hello and DiscoveryRequest, lets the test
push a DiscoveryResponse on the newest stream and wait for the sidecar's ACK/NACK of it,
and can be stopped and started again on the same port (the control server dying and
coming back). It runs on its own event loop in a daemon thread, like tests' upstreams.
"""
from __future__ import annotations

import asyncio
import threading
import time

import yaml
from aiohttp import WSMsgType, web

from remora.wire import protocol
from tests.integration.upstreams import free_port


def documents(yaml_text: str) -> list[dict]:
    """Istio YAML (as the conftest helpers write it) -> resource documents for a push."""
    return [doc for doc in yaml.safe_load_all(yaml_text) if doc]


class FakeControl:
    """One loopback control server; the test drives every push."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hellos: list[protocol.Node] = []
        self.requests: list[tuple[int, protocol.DiscoveryRequest]] = []   # (stream number, request)
        self.streams = 0
        self._nonce = 0
        self._changed = threading.Condition()
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- up and down ----------------------------------------------------------------------------
    def start(self) -> "FakeControl":
        self._call(self._start())
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get(protocol.STREAM_PATH, self._stream)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    def stop(self) -> None:
        """The server dies: open streams are cut and the port stops listening."""
        self._call(self._stop())

    async def _stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        with self._changed:
            self.streams += 1
            number = self.streams
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = protocol.decode(frame.data)
                with self._changed:
                    if isinstance(message, protocol.Hello):
                        self.hellos.append(message.node)
                    elif isinstance(message, protocol.DiscoveryRequest):
                        self.requests.append((number, message))
                    self._changed.notify_all()
        finally:
            self._sockets.remove(ws)
        return ws

    # -- what the test does -------------------------------------------------------------------
    def push(self, type_url: str, version: str, resources: list[dict]) -> str:
        """Send a DiscoveryResponse on the newest stream; return its nonce."""
        self._nonce += 1
        nonce = f"n{self._nonce}"
        response = protocol.DiscoveryResponse(type_url=type_url, version_info=version,
                                              nonce=nonce, resources=resources)

        async def send() -> None:
            await self._sockets[-1].send_str(protocol.encode(response))
        self._call(send())
        return nonce

    def refuse(self, message: str) -> None:
        """Send a StreamError on the newest stream and close it, as a server refusing a node does."""
        async def send() -> None:
            ws = self._sockets[-1]
            await ws.send_str(protocol.encode(protocol.StreamError(message=message)))
            await ws.close()
        self._call(send())

    def wait_for(self, predicate, timeout: float = 15.0, what: str = "condition"):
        """Wait until predicate() is truthy (checked whenever the sidecar sends something)."""
        deadline = time.time() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; requests: {self.requests}")
                self._changed.wait(min(left, 0.2))

    def wait_stream(self, number: int, timeout: float = 15.0) -> None:
        """Wait until the sidecar opened stream `number` and subscribed to every type on it."""
        def subscribed():
            types = [r.type_url for n, r in self.requests if n == number and not r.response_nonce]
            return len(types) >= len(protocol.TYPE_ORDER)
        self.wait_for(subscribed, timeout, f"stream {number} subscriptions")

    def subscriptions(self, number: int) -> list[protocol.DiscoveryRequest]:
        """The requests without a nonce (initial subscriptions) sent on stream `number`."""
        with self._changed:
            return [r for n, r in self.requests if n == number and not r.response_nonce]

    def wait_reply(self, nonce: str, timeout: float = 15.0) -> protocol.DiscoveryRequest:
        """The sidecar's ACK or NACK of the push with `nonce`."""
        def reply():
            return next((r for _, r in self.requests if r.response_nonce == nonce), None)
        return self.wait_for(reply, timeout, f"the answer to push {nonce}")

    def push_all(self, version: str, clusters: list[dict], endpoints: list[dict],
                 routes: list[dict], policies: list[dict] | None = None) -> list[protocol.DiscoveryRequest]:
        """Push every type in TYPE_ORDER at one version; return the answers in that order."""
        nonces = [self.push(protocol.CLUSTERS, version, clusters),
                  self.push(protocol.ENDPOINTS, version, endpoints),
                  self.push(protocol.ROUTES, version, routes),
                  self.push(protocol.POLICIES, version, policies or [])]
        return [self.wait_reply(n) for n in nonces]
