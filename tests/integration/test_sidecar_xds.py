"""`remora proxy --control`: the sidecar end of the control stream, against a fake control server."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import pytest

from remora.wire import protocol
from tests.integration.client import RawClient
from tests.integration.fake_control import FakeControl, documents
from tests.integration.proxy_process import ProxyProcess

CLUSTERS = documents("""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
""")


def endpoints(ports: dict[str, int]) -> list[dict]:
    """A WorkloadEntry per echo upstream (v1, v2), selected by the echo ServiceEntry."""
    return [{"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
             "metadata": {"name": f"echo-{v}", "namespace": "default"},
             "spec": {"address": "127.0.0.1", "ports": {"http": ports[v]},
                      "labels": {"app": "echo", "version": v}}} for v in ("v1", "v2")]


def routes(subset: str, weight: int = 100) -> list[dict]:
    """A VirtualService sending echo's traffic to one subset (weight < 0 makes it invalid)."""
    return [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "echo", "namespace": "default"},
             "spec": {"hosts": ["echo"], "http": [{"route": [
                 {"destination": {"host": "echo", "subset": subset}, "weight": weight}]}]}}]


def served_by(port: int) -> str:
    """Which echo upstream answered a request to echo through the sidecar."""
    c = RawClient(port)
    try:
        resp = c.request("GET", "/", "echo")
        assert resp.status == 200, resp.body
        return resp.json()["server"]
    finally:
        c.close()


def admin_json(p: ProxyProcess, path: str):
    return json.loads(p.admin_get(path))


def stats(p: ProxyProcess) -> dict[str, int]:
    return {s["name"]: s["value"] for s in admin_json(p, "/stats?format=json")["stats"]}


def wait_until(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class ClientLoop:
    """Requests to echo through the sidecar in a background thread until stopped; counts failures."""

    def __init__(self, port: int, path: str = "/") -> None:
        self.port, self.path = port, path
        self.ok = 0
        self.failures: list[str] = []
        self.servers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c = RawClient(self.port)
                for _ in range(10):       # some keep-alive, some fresh connections
                    resp = c.request("GET", self.path, "echo")
                    if resp.status == 200:
                        self.ok += 1
                        self.servers.append(resp.json()["server"])
                    else:
                        self.failures.append(f"{resp.status} {resp.body[:80]!r}")
                c.close()
            except OSError as error:
                self.failures.append(repr(error))

    def stop(self) -> "ClientLoop":
        self._stop.set()
        self._thread.join(30)
        return self


@pytest.fixture
def control():
    fake = FakeControl().start()
    yield fake
    fake.close()


def start_sidecar(control_url: str, *extra: str, state_dir: str | None = None, **kw) -> ProxyProcess:
    return ProxyProcess(None, "--access-log", "off", "--drain-seconds", "2", *extra,
                        control=control_url, state_dir=state_dir, **kw).wait_admin()


def configure(control: FakeControl, ports: dict[str, int], version: str = "v1", subset: str = "v1"):
    answers = control.push_all(version, CLUSTERS, endpoints(ports), routes(subset))
    assert [a.error_detail for a in answers] == [None] * len(protocol.TYPE_ORDER), answers
    return answers


@contextlib.contextmanager
def configured_sidecar(control: FakeControl, ports: dict[str, int], *extra: str,
                       version: str = "v1", subset: str = "v1", state_dir: str | None = None):
    """A sidecar that got every type from `control` (echo routed to `subset`) and is ready;
    it must exit 0 when stopped."""
    p = start_sidecar(control.url, *extra, state_dir=state_dir)
    try:
        control.wait_stream(1)
        configure(control, ports, version, subset)
        p.wait_ready()
        yield p
    finally:
        assert p.stop() == 0, p.stderr()


def test_hello_names_the_sidecar_and_subscribes_in_type_order(control, upstreams):
    """On connect the sidecar sends Hello with its identity and addresses, then one request per type in TYPE_ORDER with no version."""
    p = start_sidecar(control.url, "--service", "reviews", "--namespace", "shop",
                      "--service-account", "bookinfo-reviews", "--labels", "app=reviews,version=v2",
                      "--node-id", "reviews-v2.shop~test", inbound_app_port=upstreams.ports["echo"])
    try:
        control.wait_stream(1)
        node = control.hellos[0]
        assert node.id == "reviews-v2.shop~test"
        assert (node.namespace, node.service, node.service_account) == ("shop", "reviews", "bookinfo-reviews")
        assert node.labels == {"app": "reviews", "version": "v2"}
        assert node.workload == "reviews-v2"
        assert node.inbound == f"127.0.0.1:{p.inbound_port}"
        assert node.app_port == upstreams.ports["echo"]
        assert node.admin == f"127.0.0.1:{p.admin_port}"
        assert node.remora_version
        subs = control.subscriptions(1)
        assert [r.type_url for r in subs] == list(protocol.TYPE_ORDER)
        assert all(r.version_info == "" and r.error_detail is None for r in subs)
    finally:
        assert p.stop() == 0, p.stderr()


def test_pushed_config_routes_requests_and_is_acked(control, upstreams):
    """Before any push /ready is 503; pushing clusters, endpoints and routes is ACKed per type and routes to the upstream."""
    p = start_sidecar(control.url)
    try:
        control.wait_stream(1)
        assert p.ready_status() == 503
        answers = configure(control, upstreams.ports, "v1", "v2")
        assert [(a.type_url, a.version_info) for a in answers] == [(t, "v1") for t in protocol.TYPE_ORDER]
        p.wait_ready()
        assert served_by(p.outbound_port) == "v2"
        dump = admin_json(p, "/config_dump")
        xds = dump["xds"]
        assert xds["connected"] is True and xds["config_source"] == "control"
        assert xds["control"] == control.url
        assert xds["types"]["routes"]["version"] == "v1"
        assert xds["types"]["routes"]["last_nonce"] == answers[2].response_nonce
        assert xds["types"]["routes"]["last_ack"] is not None
        assert dump["resources"]["VirtualService"][0]["source"] == "xds:routes@v1"
        values = stats(p)
        assert values["control_plane.connected"] == 1
        assert values["control_plane.pushes_received"] == len(protocol.TYPE_ORDER)
        assert values["control_plane.rejected"] == 0
        prom = p.admin_get("/stats/prometheus")
        assert "# TYPE envoy_control_plane_connected gauge" in prom
        assert f"envoy_control_plane_pushes_received {len(protocol.TYPE_ORDER)}" in prom
        assert "xds accepted routes@v1" in p.stderr()
    finally:
        assert p.stop() == 0, p.stderr()


def test_invalid_push_is_nacked_and_the_old_route_keeps_serving(control, upstreams):
    """A push that fails validation is NACKed with the version still held and the error; requests keep the old route."""
    with configured_sidecar(control, upstreams.ports, version="v1", subset="v1") as p:
        nack = control.wait_reply(control.push(protocol.ROUTES, "v2", routes("v2", weight=-5)))
        assert nack.version_info == "v1"
        assert nack.error_detail is not None and "spec.http[0].route[0].weight" in nack.error_detail
        wrong_kind = control.wait_reply(control.push(protocol.CLUSTERS, "v3", routes("v2")))
        assert wrong_kind.version_info == "v1"
        assert "VirtualService" in wrong_kind.error_detail and "clusters" in wrong_kind.error_detail
        assert served_by(p.outbound_port) == "v1"
        assert p.ready_status() == 200
        values = stats(p)
        assert values["control_plane.rejected"] == 2
        routes_status = admin_json(p, "/config_dump")["xds"]["types"]["routes"]
        assert routes_status["version"] == "v1" and "weight" in routes_status["last_error"]
        assert routes_status["last_nack"] is not None
        assert "xds rejected routes@v2 (keeping routes@v1)" in p.stderr()
        # the next good push is accepted as usual
        ack = control.wait_reply(control.push(protocol.ROUTES, "v4", routes("v2")))
        assert ack.version_info == "v4" and ack.error_detail is None
        assert served_by(p.outbound_port) == "v2"


def test_route_pushes_while_requests_are_in_flight_fail_none(control, upstreams):
    """Switching routes back and forth under load: no request fails, and traffic follows the last push."""
    with configured_sidecar(control, upstreams.ports, version="v1", subset="v1") as p:
        fast, slow = ClientLoop(p.outbound_port), ClientLoop(p.outbound_port, "/slow?ms=150")
        for i in range(6):
            ack = control.wait_reply(control.push(protocol.ROUTES, f"r{i}", routes("v2" if i % 2 == 0 else "v1")))
            assert ack.error_detail is None
            time.sleep(0.2)
        fast.stop(), slow.stop()
        assert fast.failures == [] and slow.failures == []
        assert fast.ok > 0 and slow.ok > 0
        assert {"v1", "v2"} <= set(fast.servers)
        assert served_by(p.outbound_port) == "v1"   # r5 routes to v1


def test_control_server_restart_drops_no_request_and_resubscribes_with_held_versions(control, upstreams):
    """The control server dying and coming back: zero failed requests, then Hello again and requests carrying the held versions."""
    with configured_sidecar(control, upstreams.ports, version="v7", subset="v2") as p:
        loop = ClientLoop(p.outbound_port)
        control.stop()
        wait_until(lambda: not admin_json(p, "/config_dump")["xds"]["connected"], what="disconnect")
        assert stats(p)["control_plane.connected"] == 0
        time.sleep(1.0)              # serve a while with no control server at all
        assert p.ready_status() == 200
        control.start()
        control.wait_stream(2, timeout=30)
        loop.stop()
        assert loop.failures == [] and loop.ok > 0
        assert set(loop.servers) == {"v2"}
        assert len(control.hellos) == 2
        assert [(r.type_url, r.version_info) for r in control.subscriptions(2)] == \
            [(t, "v7") for t in protocol.TYPE_ORDER]
        wait_until(lambda: stats(p)["control_plane.connected"] == 1, what="connected gauge")
        assert stats(p)["control_plane.reconnects"] >= 1
        # the new stream works: a push on it is applied
        assert control.wait_reply(control.push(protocol.ROUTES, "v8", routes("v1"))).version_info == "v8"
        assert served_by(p.outbound_port) == "v1"


def test_boot_from_disk_snapshot_when_the_control_server_is_down(control, upstreams, tmp_path):
    """A sidecar restarted while the control server is down serves its last accepted config from disk, ready."""
    state = str(tmp_path / "state")
    with configured_sidecar(control, upstreams.ports, version="v3", subset="v2", state_dir=state):
        pass
    snapshot = json.loads((tmp_path / "state" / "snapshot.json").read_text())
    assert {t: e["version"] for t, e in snapshot["types"].items()} == {t: "v3" for t in protocol.TYPE_ORDER}
    assert [f for f in os.listdir(state) if f != "snapshot.json"] == []   # no temp files left
    control.stop()
    second = start_sidecar(control.url, state_dir=state).wait_ready()
    try:
        assert served_by(second.outbound_port) == "v2"
        xds = admin_json(second, "/config_dump")["xds"]
        assert xds["connected"] is False and xds["config_source"] == "disk snapshot"
        assert xds["types"]["clusters"]["version"] == "v3"
        assert "config from disk snapshot" in second.stderr()
        wait_until(lambda: "unreachable" in second.stderr(), what="the failed connect logged")
        control.start()             # the server comes back: the sidecar asks for what changed since v3
        control.wait_stream(2, timeout=30)
        assert [r.version_info for r in control.subscriptions(2)] == ["v3"] * len(protocol.TYPE_ORDER)
        assert control.wait_reply(control.push(protocol.ROUTES, "v4", routes("v1"))).version_info == "v4"
        assert served_by(second.outbound_port) == "v1"
        assert admin_json(second, "/config_dump")["xds"]["config_source"] == "control and disk snapshot"
    finally:
        assert second.stop() == 0, second.stderr()


def test_boot_with_no_control_server_and_no_snapshot_is_not_ready_until_the_first_push(control, upstreams):
    """With neither a control server nor a snapshot /ready is 503 (NR to requests) until the server comes and pushes."""
    control.stop()
    p = start_sidecar(control.url)
    try:
        time.sleep(0.5)
        assert p.ready_status() == 503
        c = RawClient(p.outbound_port)
        assert c.request("GET", "/", "echo").status == 404
        c.close()
        control.start()
        control.wait_stream(1, timeout=30)
        assert p.ready_status() == 503
        configure(control, upstreams.ports, "v1", "v1")
        p.wait_ready()
        assert served_by(p.outbound_port) == "v1"
    finally:
        assert p.stop() == 0, p.stderr()


def test_two_workers_apply_every_push_before_the_ack(control, upstreams):
    """With --workers 2 the parent holds the stream: an ACK means every worker routes the new config; a NACK changes none."""
    with configured_sidecar(control, upstreams.ports, "--workers", "2") as p:
        assert len(control.hellos) == 1     # one stream per sidecar, not per worker
        ack = control.wait_reply(control.push(protocol.ROUTES, "v2", routes("v2")))
        assert ack.version_info == "v2"
        seen = {served_by(p.outbound_port) for _ in range(30)}   # fresh connections reach both workers
        assert seen == {"v2"}
        nack = control.wait_reply(control.push(protocol.ROUTES, "v3", routes("v1", weight=-1)))
        assert nack.version_info == "v2" and "weight" in nack.error_detail
        assert {served_by(p.outbound_port) for _ in range(30)} == {"v2"}
        values = stats(p)
        assert values["server.concurrency"] == 2
        assert values["control_plane.pushes_received"] == len(protocol.TYPE_ORDER) + 2
        assert values["control_plane.rejected"] == 1
        assert admin_json(p, "/config_dump")["xds"]["types"]["routes"]["version"] == "v2"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_while_reconnecting_exits_0(control, workers):
    """SIGTERM while the control server is unreachable (backing off) stops the proxy cleanly with exit 0."""
    control.stop()
    p = start_sidecar(control.url, "--workers", workers)
    wait_until(lambda: "unreachable" in p.stderr(), what="a failed connect")
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(15) == 0, p.stderr()


def test_a_refused_stream_is_retried(control, upstreams):
    """A StreamError from the server closes the stream; the sidecar logs it and connects again."""
    p = start_sidecar(control.url)
    try:
        control.wait_stream(1)
        control.refuse("duplicate node id")
        control.wait_stream(2, timeout=30)
        assert "refused by the control server: duplicate node id" in p.stderr()
    finally:
        assert p.stop() == 0, p.stderr()
