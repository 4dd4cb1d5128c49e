"""StreamSession bookkeeping without sockets: subscriptions, ACK/NACK, stale nonces, what is resent."""
from __future__ import annotations

import asyncio

from remora.config.loader import load_mesh_text
from remora.wire import protocol
from remora.xds.metrics import ControlMetrics
from remora.wire.protocol import CLUSTERS, ROUTES, DiscoveryRequest, Node
from remora.xds.registry import Registry
from remora.xds.snapshots import SnapshotCache
from remora.xds.stream import StreamSession, TypeState

SE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec: {hosts: [reviews], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 10.0.0.1}]}
"""
VS = """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec: {hosts: [reviews], http: [{timeout: TIMEOUT, route: [{destination: {host: reviews}}]}]}
"""


class FakeWebSocket:
    def __init__(self) -> None:
        self.sent: list = []

    async def send_str(self, text: str) -> None:
        self.sent.append(protocol.decode(text))


async def session_with(config_text: str):
    holder = {"cache": SnapshotCache(load_mesh_text(config_text))}
    registry = Registry(10.0)
    ws = FakeWebSocket()
    session = StreamSession(ws, registry.connect(Node(id="n")), lambda: holder["cache"], ControlMetrics(),
                            lambda message: None)
    task = asyncio.create_task(session._push_loop())
    return session, ws, holder, task


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_subscription_is_answered_and_nack_is_not_resent_until_content_changes():
    """A NACKed version is never sent again; the next new version of that type is."""
    session, ws, holder, task = await session_with(SE + VS.replace("TIMEOUT", "1s"))
    session.on_request(DiscoveryRequest(type_url=ROUTES))
    await settle()
    [first] = ws.sent
    session.on_request(DiscoveryRequest(type_url=ROUTES, version_info="", response_nonce=first.nonce,
                                        error_detail="bad"))
    assert session.types[ROUTES].status(first.version_info) == "NACKED: bad"
    holder["cache"] = SnapshotCache(load_mesh_text(SE + VS.replace("TIMEOUT", "1s")))  # same content
    session.notify()
    await settle()
    assert len(ws.sent) == 1
    holder["cache"] = SnapshotCache(load_mesh_text(SE + VS.replace("TIMEOUT", "2s")))
    session.notify()
    await settle()
    assert len(ws.sent) == 2 and ws.sent[1].version_info != first.version_info
    task.cancel()


async def test_stale_nonce_is_ignored_and_current_nonce_acks():
    """Only a request carrying the latest nonce of its type counts as ACK."""
    session, ws, holder, task = await session_with(SE)
    session.on_request(DiscoveryRequest(type_url=CLUSTERS))
    await settle()
    [response] = ws.sent
    session.on_request(DiscoveryRequest(type_url=CLUSTERS, version_info=response.version_info, response_nonce="old"))
    assert session.types[CLUSTERS].acked_version == ""
    session.on_request(DiscoveryRequest(type_url=CLUSTERS, version_info=response.version_info,
                                        response_nonce=response.nonce))
    assert session.types[CLUSTERS].status(response.version_info) == "SYNCED"
    task.cancel()


async def test_unsubscribed_types_are_not_pushed():
    """A config change pushes only the types the sidecar subscribed to."""
    session, ws, holder, task = await session_with(SE)
    session.on_request(DiscoveryRequest(type_url=ROUTES))
    await settle()
    holder["cache"] = SnapshotCache(load_mesh_text(SE.replace("10.0.0.1", "10.0.0.2")))
    session.notify()
    await settle()
    assert [m.type_url for m in ws.sent] == [ROUTES]
    task.cancel()


def test_type_status_texts():
    """Status reads SYNCED, STALE (acked vX, sent vY), NACKED: detail, or NOT SUBSCRIBED."""
    state = TypeState()
    assert state.status("v1") == "NOT SUBSCRIBED"
    state.subscribed, state.sent_version = True, "v2"
    assert state.status("v2") == "STALE (acked -, sent v2)"
    state.acked_version = "v2"
    assert state.status("v2") == "SYNCED"
    assert state.status("v3") == "STALE (acked v2, sent v2)"
    state.record_nack("v2", "boom")
    assert state.status("v2") == "NACKED: boom"


class SlowWebSocket(FakeWebSocket):
    """A sidecar whose socket drains only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.drained = asyncio.Event()

    async def send_str(self, text: str) -> None:
        self.sent.append(protocol.decode(text))
        await self.drained.wait()


async def test_the_push_throttle_bounds_how_many_streams_send_at_once():
    """With one push slot, a second sidecar's push waits until the first one's frame has drained."""
    cache = SnapshotCache(load_mesh_text(SE))
    registry, slots = Registry(10.0), asyncio.Semaphore(1)
    sockets = [SlowWebSocket(), SlowWebSocket()]
    sessions = [StreamSession(ws, registry.connect(Node(id=f"n{i}")), lambda: cache, ControlMetrics(),
                              lambda message: None, slots) for i, ws in enumerate(sockets)]
    tasks = [asyncio.create_task(session._push_loop()) for session in sessions]
    for session in sessions:
        session.on_request(DiscoveryRequest(type_url=CLUSTERS))
    await settle()
    assert [len(ws.sent) for ws in sockets] == [1, 0]
    sockets[0].drained.set()
    await settle()
    assert [len(ws.sent) for ws in sockets] == [1, 1]
    for task in tasks:
        task.cancel()
