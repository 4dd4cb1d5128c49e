"""One sidecar's stream after its Hello: subscriptions, pushes, ACK/NACK bookkeeping.

Rules (the protocol module's docstring is the contract):
- A DiscoveryRequest with an empty nonce subscribes to a type (or re-subscribes): the
  current version of that type is sent, whatever version the sidecar says it holds.
- A request whose nonce is not the last one sent for its type is stale: ignored.
- With the current nonce it is an ACK (no error_detail) or a NACK. Both are recorded per
  type; a NACKed version is never sent again on this stream: the type is pushed again only
  when its content changes to another version.
- One writer: every send happens in the session's push task, woken by `notify()` (config
  change), by a subscription or by a queued introspection request; it always sends the latest snapshot, so a slow sidecar
  skips intermediate versions instead of queueing them, and never delays the others.
- Types go out in protocol.TYPE_ORDER (clusters, endpoints, routes, policies).
- At most --push-throttle streams send at once (istiod's PILOT_PUSH_THROTTLE, 100): a push
  holds its slot until the frame has drained to the socket, so a config of several MB
  pushed to a thousand sidecars at once is never held in memory for all of them.
- `config_dump()` asks the sidecar for its admin views over this stream (only if its Node
  announced the capability); the answer is matched by request id, and a sidecar that does
  not answer in time fails only that call, never the stream.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from remora.wire import protocol
from remora.wire.protocol import ConfigDumpRequest, ConfigDumpResponse, DiscoveryRequest, Node, StreamError
from remora.xds.metrics import ControlMetrics
from remora.xds.registry import Registration
from remora.xds.snapshots import ScopeKey, Snapshot, SnapshotCache

MAX_NACKED_REMEMBERED = 32
CONFIG_DUMP_TIMEOUT = 10.0


class ConfigDumpFailed(Exception):
    """The sidecar could not answer a config dump request; the message says why."""


@dataclass
class TypeState:
    """Where one type stands with one sidecar."""

    subscribed: bool = False
    resend: bool = False               # a (re)subscription asks for the current version
    sent_version: str = ""
    sent_nonce: str = ""
    sent_changed_at: float | None = None  # loop time of the change behind the version sent
    sent_count: int = 0
    acked_version: str = ""
    nacked: dict[str, str] = field(default_factory=dict)   # version -> error_detail, newest last

    def status(self, current_version: str) -> str:
        """SYNCED, STALE (acked vX, sent vY) or NACKED: detail, as `remora status` prints it."""
        if not self.subscribed:
            return "NOT SUBSCRIBED"
        if self.sent_version in self.nacked:
            return f"NACKED: {self.nacked[self.sent_version]}"
        if self.acked_version == self.sent_version == current_version:
            return "SYNCED"
        return f"STALE (acked {self.acked_version or '-'}, sent {self.sent_version or '-'})"

    def record_nack(self, version: str, detail: str) -> None:
        self.nacked.pop(version, None)
        self.nacked[version] = detail
        while len(self.nacked) > MAX_NACKED_REMEMBERED:
            del self.nacked[next(iter(self.nacked))]


class StreamSession:
    """The server side of one sidecar's WebSocket, from its Hello to its close."""

    def __init__(self, ws: web.WebSocketResponse, registration: Registration,
                 current: Callable[[], SnapshotCache], metrics: ControlMetrics,
                 log: Callable[[str], None], push_slots: asyncio.Semaphore | None = None) -> None:
        self.ws = ws
        self.registration = registration
        self.node: Node = registration.node
        self.scope = ScopeKey.of(self.node)
        self.current = current
        self.metrics = metrics
        self.log = log
        self.types = {type_url: TypeState() for type_url in protocol.TYPE_ORDER}
        self._nonces = itertools.count(1)
        self._wake = asyncio.Event()
        self._dumps: dict[str, asyncio.Future] = {}   # request id -> the caller waiting for it
        self._outbox: list[str] = []   # frames other than pushes, sent by the push task (one writer)
        self.push_slots = push_slots or asyncio.Semaphore(1 << 30)   # shared by every stream of the server

    def notify(self) -> None:
        """A new config version exists: push what changed for this sidecar."""
        self._wake.set()

    async def run(self) -> None:
        """Serve the stream until the sidecar closes it or breaks the protocol."""
        pusher = asyncio.create_task(self._push_loop())
        try:
            async for message in self.ws:
                self.registration.last_seen = time.time()
                if message.type != WSMsgType.TEXT:
                    if message.type == WSMsgType.BINARY:
                        await self.refuse("binary frames are not part of the protocol; send JSON text frames")
                    break
                try:
                    request = protocol.decode(message.data)
                except protocol.ProtocolError as error:
                    await self.refuse(str(error))
                    break
                if isinstance(request, ConfigDumpResponse):
                    waiter = self._dumps.pop(request.request_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(request)
                    continue
                if not isinstance(request, DiscoveryRequest):
                    await self.refuse(f"expected a request after hello, got {type(request).__name__}")
                    break
                if request.type_url not in self.types:
                    await self.refuse(f"unknown type_url {request.type_url!r}; known: {', '.join(protocol.TYPE_ORDER)}")
                    break
                self.on_request(request)
        finally:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
            for waiter in self._dumps.values():
                if not waiter.done():
                    waiter.set_exception(ConfigDumpFailed(f"{self.node.id} disconnected"))
            self._dumps.clear()

    async def config_dump(self, paths: list[str], timeout: float = CONFIG_DUMP_TIMEOUT) -> dict:
        """What the sidecar's admin server shows at `paths` (path -> JSON), asked over the stream."""
        if protocol.CONFIG_DUMP not in self.node.capabilities:
            raise ConfigDumpFailed(f"{self.node.id} (remora {self.node.remora_version or 'unknown'}) cannot send "
                                   "its config over the stream")
        request_id = str(next(self._nonces))
        waiter = asyncio.get_running_loop().create_future()
        self._dumps[request_id] = waiter
        try:
            self._outbox.append(protocol.encode(ConfigDumpRequest(request_id=request_id, paths=paths)))
            self._wake.set()
            answer = await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise ConfigDumpFailed(f"{self.node.id} did not answer within {timeout:g}s") from None
        finally:
            self._dumps.pop(request_id, None)
        if answer.error:
            raise ConfigDumpFailed(f"{self.node.id}: {answer.error}")
        return answer.documents

    async def refuse(self, message: str) -> None:
        self.log(f"stream of {self.node.id}: {message}")
        await send_error(self.ws, message)

    def on_request(self, request: DiscoveryRequest) -> None:
        """Record a subscription, ACK or NACK (stale nonces are ignored)."""
        state = self.types[request.type_url]
        if not request.response_nonce:
            state.subscribed = True
            state.resend = True
            self._wake.set()
            return
        if request.response_nonce != state.sent_nonce:
            return  # an answer to an older push: the newer one is still on its way
        if request.is_nack:
            state.record_nack(state.sent_version, request.error_detail or "")
            self.metrics.nacks.labels(request.type_url).inc()
            self.log(f"{self.node.id} NACKed {request.type_url} version {state.sent_version}: {request.error_detail}")
            return
        state.acked_version = request.version_info
        if state.sent_changed_at is not None and request.version_info == state.sent_version:
            self.metrics.push_latency.labels(request.type_url).observe(asyncio.get_running_loop().time() - state.sent_changed_at)
            state.sent_changed_at = None

    async def _push_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                await self.ws.send_str(self._outbox.pop(0))
            cache = self.current()
            snapshot = cache.get(self.scope)
            for type_url in protocol.TYPE_ORDER:
                state = self.types[type_url]
                version = snapshot.versions[type_url]
                if not state.subscribed:
                    continue
                if state.resend or (version != state.sent_version and version not in state.nacked):
                    await self._send(state, type_url, snapshot, cache.changed_at if not state.resend else None)

    async def _send(self, state: TypeState, type_url: str, snapshot: Snapshot, changed_at: float | None) -> None:
        nonce = str(next(self._nonces))
        state.resend = False
        state.sent_version = snapshot.versions[type_url]
        state.sent_nonce = nonce
        state.sent_changed_at = changed_at
        state.sent_count += 1
        self.metrics.pushes.labels(type_url).inc()
        async with self.push_slots:   # the frame is made and sent (drained) inside the slot
            await self.ws.send_str(snapshot.response_frame(type_url, nonce))

    def status(self) -> dict:
        """This sidecar's per-type state for /v1/status."""
        snapshot = self.current().get(self.scope)
        return {type_url: {"status": state.status(snapshot.versions[type_url]),
                           "current": snapshot.versions[type_url], "sent": state.sent_version,
                           "acked": state.acked_version, "pushes": state.sent_count,
                           "resources": snapshot.counts[type_url],
                           "nacked": dict(state.nacked)}
                for type_url, state in self.types.items()}


async def send_error(ws: web.WebSocketResponse, message: str) -> None:
    """Tell the sidecar why the stream ends, then close it."""
    if not ws.closed:
        try:
            await ws.send_str(protocol.encode(StreamError(message=message)))
            await ws.close()
        except (ConnectionError, RuntimeError):
            pass
