"""The sidecar's answer to a ConfigDumpRequest: only the introspection paths, read from its own
admin server over loopback, failures sent back as the answer's error."""
from __future__ import annotations

import json

from aiohttp import web

from remora.proxy.control.snapshot_store import SnapshotStore
from remora.proxy.control.xds_client import ControlBoot, XdsClient, admin_url
from remora.proxy.control.xds_state import XdsState
from remora.wire import protocol


class FakeWs:
    """Collects what the client sends on the stream."""

    def __init__(self) -> None:
        self.sent: list = []

    async def send_str(self, text: str) -> None:
        self.sent.append(protocol.decode(text))


def client_for(admin: str, tmp_path) -> XdsClient:
    node = protocol.Node(id="n", admin=admin, capabilities=[protocol.CONFIG_DUMP])
    async def apply(candidate):  # never called here
        raise AssertionError
    return XdsClient("http://127.0.0.1:1", node, ControlBoot(XdsState(), SnapshotStore(str(tmp_path)), None, False),
                     apply)


def test_admin_url_reaches_a_wildcard_bind_on_loopback():
    """0.0.0.0 and :: binds are dialled on 127.0.0.1; a named address is kept (IPv6 bracketed)."""
    assert admin_url("0.0.0.0:15000") == "http://127.0.0.1:15000"
    assert admin_url("[::]:15000") == "http://127.0.0.1:15000"
    assert admin_url("127.0.0.1:4000") == "http://127.0.0.1:4000"
    assert admin_url("[::1]:4000") == "http://[::1]:4000"


async def test_answers_with_its_admin_views(unused_tcp_port, tmp_path):
    """The answer holds the admin server's JSON at each requested path."""
    port = unused_tcp_port
    async def config_dump(request):
        return web.json_response({"version": "v7"})

    async def clusters(request):
        return web.json_response([{"name": "c", "q": request.query.get("format")}])

    app = web.Application()
    app.router.add_get("/config_dump", config_dump)
    app.router.add_get("/clusters", clusters)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        ws = FakeWs()
        await client_for(f"127.0.0.1:{port}", tmp_path)._answer_config_dump(
            ws, protocol.ConfigDumpRequest(request_id="9", paths=list(protocol.INTROSPECTION_PATHS)))
        (answer,) = ws.sent
        assert answer.request_id == "9" and answer.error is None
        assert answer.documents == {"/config_dump": {"version": "v7"},
                                    "/clusters?format=json": [{"name": "c", "q": "json"}]}
    finally:
        await runner.cleanup()


async def test_refuses_paths_outside_the_introspection_list(tmp_path):
    """A request for any other admin path (e.g. /quitquitquit) is answered with an error, and
    the admin server is not called."""
    ws = FakeWs()
    await client_for("127.0.0.1:1", tmp_path)._answer_config_dump(
        ws, protocol.ConfigDumpRequest(request_id="1", paths=["/config_dump", "/quitquitquit"]))
    (answer,) = ws.sent
    assert answer.error == "not an introspection path: /quitquitquit" and answer.documents == {}


async def test_unreachable_admin_becomes_the_error(tmp_path):
    """An admin server that does not answer: the error names the address instead of raising."""
    ws = FakeWs()
    await client_for("127.0.0.1:1", tmp_path)._answer_config_dump(
        ws, protocol.ConfigDumpRequest(request_id="2", paths=["/config_dump"]))
    (answer,) = ws.sent
    assert answer.error.startswith("cannot read its admin server 127.0.0.1:1") and not answer.documents
    json.dumps(answer.error)   # plain text the control server can relay


async def test_a_dump_too_large_for_the_stream_becomes_an_error(tmp_path, monkeypatch):
    """A config dump larger than the frame the server reads is not sent (it would cost the
    stream): the answer says so instead."""
    async def huge(base, paths):
        return {"/config_dump": {"blob": "x" * 2000}}
    monkeypatch.setattr("remora.proxy.control.xds_client.read_admin", huge)
    monkeypatch.setattr(protocol, "MAX_SIDECAR_FRAME", 1000)
    ws = FakeWs()
    await client_for("127.0.0.1:1", tmp_path)._answer_config_dump(
        ws, protocol.ConfigDumpRequest(request_id="3", paths=["/config_dump"]))
    (answer,) = ws.sent
    assert answer.documents == {} and "larger than the stream's 1000 byte frame limit" in answer.error
