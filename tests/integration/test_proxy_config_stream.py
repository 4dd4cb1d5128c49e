"""`remora proxy-config` over the control stream: the control server asks the sidecar, so a
sidecar whose admin server is on its own loopback (a pod, a compose namespace) is reachable."""
from __future__ import annotations

import asyncio

import pytest

from remora.wire import protocol
from remora.wire.protocol import ConfigDumpRequest, ConfigDumpResponse, Node
from tests.integration.conftest import service, virtual_service
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_control_cli import _columns
from tests.integration.xds_client import XdsTestClient

MESH = service("reviews", [(18080, {"version": "v1"})]) + virtual_service("reviews", "name: all")
UNREACHABLE_ADMIN = "10.255.255.1:15000"   # what a pod reports: nothing here can dial it


@pytest.fixture(scope="module")
def control():
    c = ControlProcess({"mesh.yaml": MESH}).wait_ready()
    yield c
    assert c.stop() == 0, c.stderr()


def test_real_sidecar_answers_over_the_stream(control):
    """A real sidecar under --control: proxy-config routes and clusters come over the control
    stream (the header says so), with the routes and clusters it serves."""
    sidecar = ProxyProcess(None, "--node-id", "reviews-pc.default", control=control.url).wait_ready()
    try:
        control.wait_until(lambda: control.sidecar("reviews-pc.default"), what="registration")
        routes = control.cli("proxy-config", "routes", "reviews-pc")
        assert routes.returncode == 0, routes.stderr
        first, *table = routes.stdout.splitlines()
        assert first.startswith("sidecar reviews-pc.default (over the control stream), config version ")
        assert ["default/reviews", "reviews", "all", "*", "reviews"] in [_columns(line) for line in table]
        clusters = control.cli("proxy-config", "clusters", "reviews-pc")
        assert any(line.split()[:4] == ["reviews.default.svc.cluster.local", "80", "-", "outbound"]
                   for line in clusters.stdout.splitlines()), clusters.stdout
    finally:
        assert sidecar.stop() == 0


async def test_cli_never_dials_the_reported_admin_address(control):
    """A sidecar that reports an admin address nobody can reach still answers proxy-config: the
    tables are built from what it sent over the stream."""
    node = Node(id="far-away.default", admin=UNREACHABLE_ADMIN, capabilities=[protocol.CONFIG_DUMP])
    c = await XdsTestClient(control.url, node).connect()
    dump = {"version": "v-far", "resources": {"VirtualService": [{
        "namespace": "default", "name": "far", "spec": {"hosts": ["far"], "http": [
            {"name": "only", "route": [{"destination": {"host": "far"}}]}]}}]}}

    async def answer_one() -> list[str]:
        while True:
            message = await c.recv()
            if isinstance(message, ConfigDumpRequest):
                await c.send(ConfigDumpResponse(request_id=message.request_id, documents={
                    "/config_dump": dump, "/clusters?format=json": []}))
                return message.paths

    try:
        await c.subscribe()
        control.wait_until(lambda: control.sidecar("far-away.default"), what="registration")
        answering = asyncio.create_task(answer_one())
        result = await asyncio.to_thread(control.cli, "proxy-config", "routes", "far-away")
        assert await answering == list(protocol.INTROSPECTION_PATHS)
        assert result.returncode == 0, result.stderr
        assert "sidecar far-away.default (over the control stream), config version v-far" in result.stdout
        assert "default/far" in result.stdout
    finally:
        await c.close()


async def test_sidecar_errors_are_relayed(control):
    """A sidecar that answers with an error: proxy-config exits 1 with the sidecar's reason."""
    node = Node(id="broken.default", capabilities=[protocol.CONFIG_DUMP])
    c = await XdsTestClient(control.url, node).connect()

    async def refuse_one() -> None:
        while True:
            message = await c.recv()
            if isinstance(message, ConfigDumpRequest):
                await c.send(ConfigDumpResponse(request_id=message.request_id, error="admin is on fire"))
                return

    try:
        await c.subscribe()
        control.wait_until(lambda: control.sidecar("broken.default"), what="registration")
        refusing = asyncio.create_task(refuse_one())
        result = await asyncio.to_thread(control.cli, "proxy-config", "routes", "broken")
        await refusing
        assert result.returncode == 1 and "admin is on fire" in result.stderr
    finally:
        await c.close()


def test_introspection_needs_the_admin_token(control):
    """The relay is an operator endpoint: without the admin token it is 401."""
    status, _ = control.request("GET", "/v1/sidecars/anyone/config_dump", auth=False)
    assert status == 401
    status, answer = control.request("GET", "/v1/sidecars/anyone/config_dump")
    assert status == 404 and "no connected sidecar" in answer["error"]
