"""The sidecar stream of `remora control` over a real WebSocket: hello, subscribe, ACK/NACK, pushes."""
from __future__ import annotations

import asyncio

import pytest

from remora.wire.protocol import CLUSTERS, ENDPOINTS, ROUTES, TYPE_ORDER, Hello, Node, StreamError
from tests.integration.conftest import service, virtual_service
from tests.integration.control_process import ControlProcess
from tests.integration.xds_client import XdsTestClient, names

SELECTED = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
"""


def workload_entry(name: str, address: str, app: str = "ratings") -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}}}
spec: {{address: {address}, ports: {{http: 19080}}, labels: {{app: {app}}}}}
---
"""


@pytest.fixture
def control():
    c = ControlProcess({"mesh.yaml": service("reviews", [(18080, {})]) + virtual_service("reviews", "name: all")
                        + SELECTED + workload_entry("ratings-1", "127.0.0.2")}).wait_ready()
    yield c
    assert c.stop() == 0, c.stderr()


async def client(control: ControlProcess, node_id: str = "app-1", **node) -> XdsTestClient:
    return await XdsTestClient(control.url, Node(id=node_id, **node)).connect()


async def test_subscribe_receives_each_type_with_version_and_nonce_and_ack_is_synced(control):
    """Each subscription is answered with that type's resources, a version and a nonce; ACKs show SYNCED."""
    c = await client(control)
    try:
        responses = await c.sync()
        assert names(responses[CLUSTERS]) == ["ServiceEntry/default/ratings", "ServiceEntry/default/reviews"]
        assert names(responses[ENDPOINTS]) == ["WorkloadEntry/default/ratings-1"]
        assert names(responses[ROUTES]) == ["VirtualService/default/reviews"]
        assert all(r.version_info and r.nonce for r in responses.values())
        assert len({r.nonce for r in responses.values()}) == len(TYPE_ORDER)
        sidecar = control.wait_until(
            lambda: (s := control.sidecar("app-1")) and all(s["types"][t]["status"] == "SYNCED" for t in TYPE_ORDER)
            and s, what="all types SYNCED")
        assert sidecar["identity"] == "spiffe://cluster.local/ns/default/sa/default"
        assert "remora_control_connected_sidecars 1.0" in control.metrics()
    finally:
        await c.close()


async def test_first_message_not_hello_gets_stream_error_and_close(control):
    """A stream whose first message is not a Hello gets a StreamError naming the problem, then is closed."""
    c = await XdsTestClient(control.url, Node(id="x")).connect(hello=False)
    try:
        await c.subscribe(ROUTES)
        error = await c.recv()
        assert isinstance(error, StreamError) and "hello" in error.message
        assert await c.recv() is None
    finally:
        await c.close()


async def test_duplicate_node_id_is_refused_and_first_stream_keeps_working(control):
    """A second live stream with the same node id is refused; the first one still gets pushes."""
    first = await client(control, "same")
    second = await client(control, "same")
    try:
        await first.sync()
        error = await second.recv()
        assert isinstance(error, StreamError) and "already has a live stream" in error.message
        status, _ = control.apply(virtual_service("ratings", "name: r"))
        assert status == 200
        pushed = await first.response(ROUTES)
        assert "VirtualService/default/ratings" in names(pushed)
    finally:
        await first.close()
        await second.close()


async def test_nack_is_recorded_and_that_version_is_never_resent(control):
    """A NACK shows in status with its detail; a later change of another type does not resend the NACKed routes."""
    c = await client(control)
    try:
        await c.sync()
        status, _ = control.apply(virtual_service("ratings", "name: r"))
        assert status == 200
        routes = await c.response(ROUTES)
        await c.nack(routes, "route table does not compile", held=c.latest[ROUTES].version_info)
        control.wait_until(lambda: control.sidecar("app-1")["types"][ROUTES]["status"]
                           == "NACKED: route table does not compile", what="NACKED status")
        assert 'remora_control_nacks_total{type="routes"} 1.0' in control.metrics()
        # An endpoint-only change: endpoints are pushed, the NACKed routes are not sent again.
        control.write_file("mesh.yaml", open(f"{control.config_dir}/mesh.yaml").read().replace("127.0.0.2", "127.0.0.3"))
        endpoints = await c.response()
        assert endpoints.type_url == ENDPOINTS
        await c.ack(endpoints)
        await c.no_message(1.0)
        # A new routes version is pushed again.
        status, _ = control.apply(virtual_service("ratings", "name: r2"))
        assert status == 200
        assert (await c.response()).type_url == ROUTES
    finally:
        await c.close()


async def test_stale_nonce_is_ignored(control):
    """An ACK carrying an older nonce does not mark the newer version as acknowledged."""
    c = await client(control)
    try:
        first = await c.sync()
        control.apply(virtual_service("ratings", "name: r"))
        newer = await c.response(ROUTES)
        await c.ack(first[ROUTES])   # answers the old push
        await asyncio.sleep(0.3)
        types = control.sidecar("app-1")["types"][ROUTES]
        assert types["sent"] == newer.version_info and types["acked"] == first[ROUTES].version_info
        assert types["status"].startswith("STALE")
        await c.ack(newer)
        control.wait_until(lambda: control.sidecar("app-1")["types"][ROUTES]["status"] == "SYNCED", what="SYNCED")
    finally:
        await c.close()


async def test_file_change_pushes_only_the_types_that_changed(control):
    """Editing a WorkloadEntry in the config dir pushes endpoints only; clusters and routes keep their versions."""
    c = await client(control)
    try:
        before = await c.sync()
        control.write_file("mesh.yaml", open(f"{control.config_dir}/mesh.yaml").read().replace("127.0.0.2", "127.0.0.9"))
        pushed = await c.response()
        assert pushed.type_url == ENDPOINTS and pushed.version_info != before[ENDPOINTS].version_info
        assert pushed.resources[0]["spec"]["address"] == "127.0.0.9"
        await c.ack(pushed)
        await c.no_message(1.0)
        sidecar = control.sidecar("app-1")
        assert sidecar["types"][CLUSTERS]["pushes"] == 1 and sidecar["types"][ROUTES]["pushes"] == 1
    finally:
        await c.close()


async def test_apply_pushes_routes_and_ack_records_push_latency(control):
    """An applied VirtualService reaches a subscribed sidecar; its ACK is counted in the push latency histogram."""
    c = await client(control)
    try:
        await c.sync()
        status, answer = control.apply(virtual_service("ratings", "name: r"))
        assert status == 200
        routes = await c.response(ROUTES)
        assert "VirtualService/default/ratings" in names(routes)
        await c.ack(routes)
        control.wait_until(lambda: 'remora_control_push_latency_seconds_count{type="routes"} 1.0' in control.metrics(),
                           what="push latency observed")
        assert f'remora_control_config_info{{version="{answer["version"]}"}} 1.0' in control.metrics()
    finally:
        await c.close()


EXPORTS = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: team-a}
spec:
  hosts: [private]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  exportTo: ["."]
  endpoints: [{address: 127.0.0.5}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shared, namespace: team-a}
spec:
  hosts: [shared]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  exportTo: [team-b]
  endpoints: [{address: 127.0.0.6}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: public, namespace: team-a}
spec:
  hosts: [public]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.7}]
---
"""


async def test_export_to_scopes_what_each_namespace_receives():
    """exportTo "." keeps a resource in its namespace, a list exports to exactly those namespaces, none = everywhere."""
    control = ControlProcess({"mesh.yaml": EXPORTS}).wait_ready()
    clients = {ns: await XdsTestClient(control.url, Node(id=f"c-{ns}", namespace=ns)).connect()
               for ns in ("team-a", "team-b", "team-c")}
    try:
        seen = {}
        for ns, c in clients.items():
            await c.subscribe(CLUSTERS)
            seen[ns] = [n.rsplit("/", 1)[1] for n in names(await c.response(CLUSTERS))]
        assert seen == {"team-a": ["private", "public"], "team-b": ["public", "shared"],
                        "team-c": ["public"]}
    finally:
        for c in clients.values():
            await c.close()
        assert control.stop() == 0


async def test_auto_registration_and_grace_removal_are_pushed_to_other_sidecars():
    """A sidecar with a service registers a WorkloadEntry (and a synthesized ServiceEntry); after it leaves and the
    grace period passes, the others get endpoints without it."""
    control = ControlProcess({}, grace="1s").wait_ready()
    watcher = await XdsTestClient(control.url, Node(id="watcher")).connect()
    try:
        await watcher.sync()
        app = await XdsTestClient(control.url, Node(id="ratings-v1.default~host~1", service="ratings",
                                                     labels={"version": "v1"}, inbound="127.0.0.1:15906",
                                                     app_port=9080, service_account="bookinfo-ratings")).connect()
        clusters = await watcher.response(CLUSTERS)
        assert names(clusters) == ["ServiceEntry/default/auto-ratings"]
        assert clusters.resources[0]["spec"]["ports"] == [{"number": 9080, "protocol": "HTTP", "name": "http"}]
        await watcher.ack(clusters)
        endpoints = await watcher.response(ENDPOINTS)
        [entry] = endpoints.resources
        assert entry["metadata"]["name"].startswith("auto-ratings-v1.default-host-1")
        assert entry["spec"] == {"address": "127.0.0.1", "ports": {"http": 15906},
                                 "labels": {"version": "v1", "app": "ratings"}, "serviceAccount": "bookinfo-ratings"}
        await watcher.ack(endpoints)
        listed = control.cli("get", "we")
        assert "registry" in listed.stdout, listed
        await app.close()
        gone = await watcher.response(ENDPOINTS, timeout=15)
        assert gone.resources == []
    finally:
        await watcher.close()
        assert control.stop() == 0


async def test_reconnect_within_grace_period_keeps_the_registration():
    """A sidecar that reconnects with the same node id before the grace period ends is never removed."""
    control = ControlProcess({}, grace="3s").wait_ready()
    node = Node(id="reviews-1", service="reviews", inbound="127.0.0.1:15906", app_port=9080)
    watcher = await XdsTestClient(control.url, Node(id="watcher")).connect()
    try:
        await watcher.sync()
        app = await XdsTestClient(control.url, node).connect()
        await watcher.ack(await watcher.response(CLUSTERS))
        await watcher.ack(await watcher.response(ENDPOINTS))
        await app.close()
        control.wait_until(lambda: not control.sidecar("reviews-1")["connected"], what="disconnect seen")
        app = await XdsTestClient(control.url, node).connect()
        await watcher.no_message(4.0)   # longer than the grace period: no removal was pushed
        assert control.sidecar("reviews-1")["connected"]
        await app.close()
    finally:
        await watcher.close()
        assert control.stop() == 0


def test_hello_round_trip_shape():
    """The Hello the test client sends is the protocol's (guards the helper itself)."""
    from remora.wire import protocol
    assert isinstance(protocol.decode(protocol.encode(Hello(node=Node(id="n")))), Hello)
