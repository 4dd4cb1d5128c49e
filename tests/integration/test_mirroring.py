"""Traffic mirroring (the istio.io Mirroring task's YAML) through a real sidecar: every
request reaches v1 and a copy reaches v2 with Host `httpbin-shadow`, body included; a v2
that never answers delays nothing."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.client import RawClient
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import LoopThread, free_port

pytestmark = pytest.mark.integration

TASK = Path(__file__).resolve().parents[1] / "fixtures" / "istio-samples" / "mirroring.yaml"


class Recorder(LoopThread):
    """httpbin v2 as the mirror sees it: records (Host, path, body); /stall never answers."""

    name = "mirror recorder"

    async def _start(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

        async def handle(request: web.Request) -> web.Response:
            self.seen.append((request.headers.get("Host"), request.path, await request.read()))
            if request.path.startswith("/stall"):
                await asyncio.sleep(3600)
            return web.Response(text="v2")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        async def shutdown() -> None:    # the stalled handler first: cleanup would wait for it
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def mesh(upstreams):
    recorder = Recorder().start()
    service = f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin]
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {upstreams.ports["v1"]}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {recorder.port}}}, labels: {{version: v2}}}}
---
"""
    sidecar = ProxyProcess(service + TASK.read_text(), "--drain-seconds", "1").wait_ready()
    yield sidecar, recorder
    sidecar.stop()
    recorder.stop()


def send(port: int, method: str, path: str, body: bytes = b""):
    client = RawClient(port)
    try:
        client.send(f"{method} {path} HTTP/1.1\r\nHost: httpbin:8000\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                    + body)
        return client.read_response()
    finally:
        client.close()


def wait_seen(recorder: Recorder, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(recorder.seen) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_every_request_is_answered_by_v1_and_copied_to_v2_as_shadow(mesh):
    """The client gets v1's answer; v2 gets a copy (Host httpbin-shadow:8000, same path and
    body) that the mirror cluster's stats count."""
    sidecar, recorder = mesh
    before = len(recorder.seen)
    for i in range(5):
        resp = send(sidecar.outbound_port, "POST", f"/post/{i}", b"payload-%d" % i)
        assert resp.status == 200 and resp.json()["server"] == "v1"
    wait_seen(recorder, before + 5)
    copies = recorder.seen[before:]
    assert sorted(copies) == sorted(("httpbin-shadow:8000", f"/post/{i}", b"payload-%d" % i) for i in range(5))
    stats = sidecar.admin_get("/stats")
    assert "cluster.outbound|8000|v2|httpbin.default.svc.cluster.local.upstream_rq_2xx: 5" in stats


def test_a_mirror_that_never_answers_delays_nothing(mesh):
    """v2 holds the shadow of /stall forever: the client still gets v1's answer at once."""
    sidecar, recorder = mesh
    before = len(recorder.seen)    # the module's other tests leave their copies here
    started = time.monotonic()
    resp = send(sidecar.outbound_port, "GET", "/stall")
    assert resp.status == 200 and resp.json()["server"] == "v1"
    assert time.monotonic() - started < 2.0
    wait_seen(recorder, before + 1)
    assert any(path == "/stall" for _, path, _ in recorder.seen[before:])
