"""A test sidecar that speaks the stream protocol by hand: hello, subscribe, ACK, NACK.

Unlike the real xDS client it never applies anything: a test decides when to ACK or NACK
and sees every message the server sends, in order.
"""
from __future__ import annotations

import asyncio

import aiohttp

from remora.wire import protocol
from remora.wire.protocol import DiscoveryRequest, DiscoveryResponse, Hello, Node


class XdsTestClient:
    """One stream to the control server."""

    def __init__(self, url: str, node: Node) -> None:
        self.url = url
        self.node = node
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.latest: dict[str, DiscoveryResponse] = {}

    async def connect(self, hello: bool = True) -> "XdsTestClient":
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.url + protocol.STREAM_PATH, max_msg_size=0)
        if hello:
            await self.send(Hello(node=self.node))
        return self

    async def send(self, message) -> None:
        await self.ws.send_str(protocol.encode(message))

    async def subscribe(self, *type_urls: str) -> None:
        for type_url in type_urls or protocol.TYPE_ORDER:
            await self.send(DiscoveryRequest(type_url=type_url))

    async def recv(self, timeout: float = 15.0):
        """The next message, decoded; None if the server closed the stream."""
        message = await self.ws.receive(timeout=timeout)
        if message.type != aiohttp.WSMsgType.TEXT:
            return None
        decoded = protocol.decode(message.data)
        if isinstance(decoded, DiscoveryResponse):
            self.latest[decoded.type_url] = decoded
        return decoded

    async def response(self, type_url: str | None = None, timeout: float = 15.0) -> DiscoveryResponse:
        """The next DiscoveryResponse (of `type_url` if given; others are skipped but kept in `latest`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - loop.time()))
            assert isinstance(message, DiscoveryResponse), f"expected a response, got {message!r}"
            if type_url is None or message.type_url == type_url:
                return message

    async def no_message(self, wait: float = 1.0) -> None:
        """Assert that nothing arrives within `wait` seconds."""
        try:
            message = await self.recv(timeout=wait)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected message: {message!r}")

    async def ack(self, response: DiscoveryResponse) -> None:
        await self.send(DiscoveryRequest(type_url=response.type_url, version_info=response.version_info,
                                         response_nonce=response.nonce))

    async def nack(self, response: DiscoveryResponse, detail: str, held: str = "") -> None:
        await self.send(DiscoveryRequest(type_url=response.type_url, version_info=held,
                                         response_nonce=response.nonce, error_detail=detail))

    async def sync(self) -> dict[str, DiscoveryResponse]:
        """Subscribe to every type and ACK the first response of each."""
        await self.subscribe()
        for type_url in protocol.TYPE_ORDER:
            await self.ack(await self.response(type_url))
        return dict(self.latest)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()


def names(response: DiscoveryResponse) -> list[str]:
    """Kind/namespace/name of each resource in a response."""
    return [f"{r['kind']}/{r['metadata']['namespace']}/{r['metadata']['name']}" for r in response.resources]
