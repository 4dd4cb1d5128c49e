"""A sidecar given several control servers (`--control A,B`): when its replica goes, it
streams from the next one within seconds, keeps serving throughout, and does not rebuild
its config for a version it already holds. (The two replicas here read the same config
directory, as replicas over one store would; the shared store itself is issue 18's etcd
work.)"""
from __future__ import annotations

import json
import time

import pytest

from tests.integration.client import RawClient
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_mesh_control import wait_for

pytestmark = pytest.mark.integration


def mesh(port: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"""


def status(sidecar: ProxyProcess, path: str = "/") -> int:
    client = RawClient(sidecar.outbound_port)
    try:
        return client.request("GET", path, "echo").status
    finally:
        client.close()


def xds(sidecar: ProxyProcess) -> dict:
    return json.loads(sidecar.admin_get("/config_dump"))["xds"]


def test_the_sidecar_fails_over_to_the_next_replica_and_keeps_serving(upstreams):
    """Stop the replica the sidecar streams from: it connects to the other within seconds,
    every request in between is answered, and the resent versions are not reapplied."""
    files = {"mesh.yaml": mesh(upstreams.ports["echo"])}
    a, b = ControlProcess(files), ControlProcess(files)
    sidecar = None
    try:
        a.wait_ready()
        b.wait_ready()
        sidecar = ProxyProcess(None, "--drain-seconds", "1", control=f"{a.url},{b.url}").wait_ready(30)
        assert xds(sidecar)["control"] == a.url and status(sidecar) == 200
        a.stop()
        stopped = time.monotonic()
        failures = 0
        while not (xds(sidecar)["connected"] and xds(sidecar)["control"] == b.url):
            failures += status(sidecar) != 200
            assert time.monotonic() - stopped < 10, xds(sidecar)
            time.sleep(0.1)
        assert failures == 0 and status(sidecar) == 200
        stats = dict(line.split(": ") for line in sidecar.admin_get("/stats").splitlines() if ": " in line)
        wait_for(lambda: int(dict(line.split(": ") for line in sidecar.admin_get("/stats").splitlines()
                                  if ": " in line)["control_plane.pushes_unchanged"]) >= 4,
                 "the other replica's resends to be ACKed without a rebuild")
        assert int(stats["control_plane.reconnects"]) >= 1
        assert "xds accepted" not in sidecar.stderr().split("connected to control server " + b.url)[-1]
    finally:
        if sidecar is not None:
            sidecar.stop()
        a.stop()
        b.stop()
