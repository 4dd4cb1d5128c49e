"""End to end: `remora control` feeding real `remora proxy` sidecars that register themselves.

One control server, two registered reviews sidecars (v1, v2, each in front of a test
upstream) and one client sidecar, all real processes on loopback. The tests change
config at runtime (apply, file edit), stop sidecars and the control server, and check what
a client of the mesh sees: the right answer, and never a failed request.
"""
from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration

MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def route_to(*weights: tuple[str, int], name: str = "reviews") -> str:
    """A reviews VirtualService splitting over subsets with the given weights."""
    dests = "".join(f"\n    - {{destination: {{host: reviews, subset: {s}}}, weight: {w}}}" for s, w in weights)
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:{dests}
"""


def ask(sidecar: ProxyProcess) -> tuple[int, str]:
    """One request to reviews through the sidecar's outbound listener: (status, upstream name)."""
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.outbound_port, timeout=10)
    try:
        conn.request("GET", "/reviews/0", headers={"Host": "reviews:9080"})
        resp = conn.getresponse()
        body = resp.read()
        name = json.loads(body)["server"] if resp.status == 200 else body.decode(errors="replace")
        return resp.status, name
    finally:
        conn.close()


def wait_answers(sidecar: ProxyProcess, expected: set[str], timeout: float = 20.0, run: int = 10) -> None:
    """Poll until `run` consecutive answers all come from `expected` and cover all of it."""
    deadline = time.time() + timeout
    seen: list[tuple[int, str]] = []
    while time.time() < deadline:
        seen = [ask(sidecar) for _ in range(run)]
        if all(status == 200 and name in expected for status, name in seen) and {n for _, n in seen} == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"wanted answers from {sorted(expected)}, last saw {seen}")


def endpoint_count(sidecar: ProxyProcess, cluster_prefix: str = "outbound|9080||reviews") -> int:
    clusters = json.loads(sidecar.admin_get("/clusters?format=json"))
    return sum(len(c["endpoints"]) for c in clusters if c["name"].startswith(cluster_prefix))


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Mesh:
    """The control server and the sidecars of one test."""

    def __init__(self, upstreams, grace: str = "10s") -> None:
        self.sidecars: list[ProxyProcess] = []
        self.control = ControlProcess({"mesh.yaml": MESH}, grace=grace)
        try:
            self.control.wait_ready()
            url = self.control.url
            self.reviews = {}
            for version in ("v1", "v2"):
                self.reviews[version] = self._start(
                    "--service", "reviews", "--labels", f"app=reviews,version={version}",
                    "--node-id", f"reviews-{version}", inbound_app_port=upstreams.ports[version], control=url)
            self.client = self._start("--service", "productpage", "--node-id", "productpage", control=url)
            for sidecar in self.sidecars:
                sidecar.wait_ready()
            wait_for(lambda: endpoint_count(self.client) == 2, "both reviews sidecars to be registered")
        except BaseException:
            self.stop()   # a failed start must not leave processes behind
            raise

    def _start(self, *args: str, **kw) -> ProxyProcess:
        sidecar = ProxyProcess(None, *args, "--drain-seconds", "1", **kw)
        self.sidecars.append(sidecar)
        return sidecar

    def stop(self) -> None:
        for sidecar in reversed(self.sidecars):
            sidecar.stop()
        self.control.stop()


@pytest.fixture
def mesh(upstreams):
    m = Mesh(upstreams)
    yield m
    m.stop()


def test_registered_sidecars_are_endpoints_and_apply_shifts_traffic(mesh):
    """Registered sidecars serve their service; `remora apply` shifts traffic; a bad apply changes nothing."""
    wait_answers(mesh.client, {"v1", "v2"})
    result = mesh.control.cli("apply", "-f", "-", stdin=route_to(("v2", 100)))
    assert result.returncode == 0, result.stderr
    assert "VirtualService/default/reviews created" in result.stdout
    wait_answers(mesh.client, {"v2"})

    bad = mesh.control.cli("apply", "-f", "-", stdin=route_to(("v1", 50), ("v9", 50)))
    assert bad.returncode == 1
    assert "VirtualService/default/reviews: spec.http[0].route[1].destination.subset" in bad.stderr + bad.stdout
    time.sleep(0.5)   # a debounced push would have gone out by now
    wait_answers(mesh.client, {"v2"})
    status = mesh.control.status()
    assert {s["id"] for s in status["sidecars"]} >= {"productpage", "reviews-v1", "reviews-v2"}


def test_file_change_is_pushed_to_the_sidecars(mesh):
    """Editing a file in --config-dir reaches the sidecars without any command."""
    mesh.control.write_file("route.yaml", route_to(("v1", 100)))
    wait_answers(mesh.client, {"v1"})
    mesh.control.write_file("route.yaml", route_to(("v2", 100)))
    wait_answers(mesh.client, {"v2"})


def test_control_server_restart_fails_no_request(mesh):
    """Requests keep succeeding while the control server is down and after it comes back."""
    wait_answers(mesh.client, {"v1", "v2"})
    failures: list[tuple[int, str]] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, name = ask(mesh.client)
            answered[0] += 1
            if status != 200:
                failures.append((status, name))
            time.sleep(0.01)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        assert mesh.control.stop() == 0
        time.sleep(1.5)
        mesh.control.start_again()
        wait_for(lambda: {s["id"] for s in mesh.control.status()["sidecars"]}
                 >= {"productpage", "reviews-v1", "reviews-v2"}, "every sidecar to reconnect")
        time.sleep(1.0)   # and the pushes after the reconnect
    finally:
        stop.set()
        thread.join(30)
    assert answered[0] > 20
    assert failures == []
    assert endpoint_count(mesh.client) == 2


def test_departed_sidecar_is_removed_after_the_grace_period(upstreams):
    """A sidecar that stops is dropped from everyone's endpoints once the grace period ends."""
    mesh = Mesh(upstreams, grace="1s")
    try:
        assert mesh.reviews["v2"].stop() == 0
        wait_for(lambda: endpoint_count(mesh.client) == 1, "the v2 endpoint to be removed")
        wait_answers(mesh.client, {"v1"})
    finally:
        mesh.stop()


def test_sidecar_starts_from_its_disk_snapshot_while_control_is_down(mesh):
    """With the control server down, a restarted sidecar serves from the snapshot it kept."""
    wait_answers(mesh.client, {"v1", "v2"})
    state_dir = mesh.client.state_dir
    assert mesh.client.stop() == 0
    assert mesh.control.stop() == 0
    again = ProxyProcess(None, "--service", "productpage", "--node-id", "productpage-2",
                         control=mesh.control.url, state_dir=state_dir)
    try:
        again.wait_ready()
        wait_answers(again, {"v1", "v2"})
        assert json.loads(again.admin_get("/config_dump"))["xds"]["connected"] is False
    finally:
        assert again.stop() == 0
