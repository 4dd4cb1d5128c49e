"""Admin server: Envoy's endpoints and formats over a fake AdminSource."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from remora.proxy.admin.server import (
    default_is_gauge,
    make_admin_app,
    make_health_app,
    prometheus_name,
    start_admin,
)
from remora.proxy.admin.http_server import serve

REVIEWS = "outbound|9080|v1|reviews.default.svc.cluster.local"


class FakeSource:
    def __init__(self, ready: bool = True):
        self.ready = ready
        self.draining = False
        self.drained = 0
        self.quit_called = asyncio.Event()

    def is_ready(self) -> bool:
        return self.ready

    def is_draining(self) -> bool:
        return self.draining

    async def clusters(self) -> list[dict]:
        return [{
            "name": REVIEWS, "service": "reviews.default.svc.cluster.local", "subset": "v1",
            "lb_policy": "ROUND_ROBIN",
            "endpoints": [
                {"address": "127.0.0.1:9081", "labels": {"version": "v1", "app": "reviews"},
                 "weight": 1, "active_requests": 0, "total_requests": 12, "errors": 1,
                 "health": "healthy", "connections_active": 1, "connections_idle": 1},
                {"address": "127.0.0.1:9082", "labels": {"version": "v1"},
                 "weight": 3, "active_requests": 2, "total_requests": 5, "errors": 5,
                 "health": "ejected", "connections_active": 2, "connections_idle": 0},
            ],
        }]

    async def config_dump(self) -> dict:
        return {"version": "v7", "loaded_at": "2024-01-01T00:00:00Z", "resources": {"a": [1]}}

    async def stats(self) -> dict[str, int]:
        return {
            f"cluster.{REVIEWS}.upstream_rq_total": 12,
            f"cluster.{REVIEWS}.upstream_rq_2xx": 11,
            f"cluster.{REVIEWS}.upstream_rq_5xx": 1,
            f"cluster.{REVIEWS}.upstream_cx_active": 2,
            f"cluster.{REVIEWS}.outlier_detection.ejections_active": 1,
            "cluster.inbound|9080||.upstream_rq_total": 4,
            "http.outbound.downstream_rq_total": 13,
            "http.outbound.downstream_cx_active": 3,
            "listener.0.0.0.0_15001.downstream_cx_total": 7,
            "server.live": 1,
        }

    def gauge_names(self) -> frozenset[str]:
        return frozenset({
            f"cluster.{REVIEWS}.upstream_cx_active",
            f"cluster.{REVIEWS}.outlier_detection.ejections_active",
            "http.outbound.downstream_cx_active", "server.live"})

    async def drain_listeners(self) -> None:
        self.drained += 1

    async def quit(self) -> None:
        self.quit_called.set()


class Client:
    """aiohttp's client against Remora's admin server on a free port (TestClient's calls)."""

    def __init__(self, routes) -> None:
        self.routes = routes

    async def start_server(self) -> None:
        self.server = await serve(self.routes, "127.0.0.1", 0)
        self.base = "http://127.0.0.1:%d" % self.server.addresses[0][1]
        self.session = ClientSession()

    def get(self, path: str, **kwargs):
        return self.session.get(self.base + path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.session.post(self.base + path, **kwargs)

    def request(self, method: str, path: str, **kwargs):
        return self.session.request(method, self.base + path, **kwargs)

    async def close(self) -> None:
        await self.session.close()
        await self.server.cleanup()


@pytest.fixture
async def source_client():
    source = FakeSource()
    client = Client(make_admin_app(source))
    await client.start_server()
    try:
        yield source, client
    finally:
        await client.close()


async def test_ready_live_when_source_ready(source_client):
    """/ready and /healthz/ready answer 200 LIVE once the source is ready."""
    _, client = source_client
    for path in ("/ready", "/healthz/ready"):
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.text() == "LIVE\n"


async def test_ready_503_before_ready_and_when_draining(source_client):
    """/ready is 503 PRE_INITIALIZING before readiness and 503 DRAINING while draining."""
    source, client = source_client
    source.ready = False
    resp = await client.get("/ready")
    assert (resp.status, await resp.text()) == (503, "PRE_INITIALIZING\n")
    source.ready, source.draining = True, True
    resp = await client.get("/ready")
    assert (resp.status, await resp.text()) == (503, "DRAINING\n")


async def test_clusters_text_is_envoy_format(source_client):
    """/clusters prints Envoy's cluster::host::stat::value lines, host stats sorted."""
    _, client = source_client
    resp = await client.get("/clusters")
    assert resp.status == 200
    h1 = f"{REVIEWS}::127.0.0.1:9081"
    h2 = f"{REVIEWS}::127.0.0.1:9082"
    expected = [f"{REVIEWS}::added_via_api::true"]
    for host, cx, rq_active, err, ok, total, flags, weight, labels in (
        (h1, 2, 0, 1, 11, 12, "healthy", 1, "app=reviews,version=v1"),
        (h2, 2, 2, 5, 0, 5, "/failed_outlier_check", 3, "version=v1"),
    ):
        expected += [
            f"{host}::cx_active::{cx}", f"{host}::rq_active::{rq_active}",
            f"{host}::rq_error::{err}", f"{host}::rq_success::{ok}",
            f"{host}::rq_total::{total}", f"{host}::hostname::",
            f"{host}::health_flags::{flags}", f"{host}::weight::{weight}",
            f"{host}::region::", f"{host}::zone::", f"{host}::sub_zone::",
            f"{host}::canary::false", f"{host}::priority::0",
            f"{host}::success_rate::-1", f"{host}::local_origin_success_rate::-1",
            f"{host}::labels::{labels}",
        ]
    assert (await resp.text()).splitlines() == expected


async def test_clusters_json_is_source_list(source_client):
    """/clusters?format=json returns the source's structured list unchanged."""
    source, client = source_client
    resp = await client.get("/clusters", params={"format": "json"})
    assert resp.content_type == "application/json"
    assert await resp.json() == await source.clusters()


async def test_config_dump_pretty_json(source_client):
    """/config_dump is the source's dict as indented JSON."""
    source, client = source_client
    resp = await client.get("/config_dump")
    assert resp.content_type == "application/json"
    text = await resp.text()
    assert "\n  \"version\": \"v7\"" in text
    assert await resp.json() == await source.config_dump()


async def test_stats_text_sorted_name_colon_value(source_client):
    """/stats prints every stat as 'name: value', sorted by name."""
    source, client = source_client
    lines = (await (await client.get("/stats")).text()).splitlines()
    stats = await source.stats()
    assert lines == [f"{k}: {v}" for k, v in sorted(stats.items())]


async def test_stats_json_and_filter(source_client):
    """/stats?format=json wraps stats as {"stats": [...]}, and ?filter is a regex search."""
    _, client = source_client
    body = await (await client.get("/stats", params={"format": "json", "filter": r"^http\."})).json()
    assert body == {"stats": [
        {"name": "http.outbound.downstream_cx_active", "value": 3},
        {"name": "http.outbound.downstream_rq_total", "value": 13},
    ]}
    text = await (await client.get("/stats", params={"filter": "cx_total$"})).text()
    assert text == "listener.0.0.0.0_15001.downstream_cx_total: 7\n"


async def test_stats_bad_filter_is_400(source_client):
    """An invalid ?filter regex is a 400, not a 500."""
    _, client = source_client
    assert (await client.get("/stats", params={"filter": "("})).status == 400


async def test_prometheus_families_labels_and_types(source_client):
    """/stats/prometheus converts names like Envoy: scope tags become labels, TYPE per family."""
    _, client = source_client
    resp = await client.get("/stats/prometheus")
    assert resp.status == 200
    text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # keyed by family: the parser strips (or adds) "_total" on counter samples
    samples = {(f.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    lines = text.splitlines()

    assert families["envoy_cluster_upstream_rq"].type == "counter"
    assert f'envoy_cluster_upstream_rq_total{{envoy_cluster_name="{REVIEWS}"}} 12' in lines
    assert samples[("envoy_cluster_upstream_rq", (("envoy_cluster_name", REVIEWS),))] == 12
    assert samples[("envoy_cluster_upstream_rq", (("envoy_cluster_name", "inbound|9080||"),))] == 4
    # response-code classes become a label on one family, as Envoy's tag extractor does
    assert families["envoy_cluster_upstream_rq_xx"].type == "counter"
    assert samples[("envoy_cluster_upstream_rq_xx", (("envoy_cluster_name", REVIEWS),
                                                     ("envoy_response_code_class", "2")))] == 11
    assert samples[("envoy_cluster_upstream_rq_xx", (("envoy_cluster_name", REVIEWS),
                                                     ("envoy_response_code_class", "5")))] == 1
    assert families["envoy_cluster_upstream_cx_active"].type == "gauge"
    assert families["envoy_cluster_outlier_detection_ejections_active"].type == "gauge"
    assert samples[("envoy_cluster_outlier_detection_ejections_active",
                    (("envoy_cluster_name", REVIEWS),))] == 1
    assert samples[("envoy_http_downstream_rq",
                    (("envoy_http_conn_manager_prefix", "outbound"),))] == 13
    assert families["envoy_http_downstream_cx_active"].type == "gauge"
    assert samples[("envoy_listener_downstream_cx",
                    (("envoy_listener_address", "0.0.0.0_15001"),))] == 7
    assert families["envoy_server_live"].type == "gauge"
    assert samples[("envoy_server_live", ())] == 1
    # exactly one TYPE line per family even with several clusters in it
    type_lines = [line for line in lines if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines))
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in type_lines


async def test_prometheus_appends_source_extra(source_client):
    """Text from the source's optional prometheus_extra() is appended to the scrape."""
    source, client = source_client

    async def extra() -> str:
        return "# TYPE istio_requests_total counter\nistio_requests_total{response_code=\"200\"} 3"

    source.prometheus_extra = extra
    text = await (await client.get("/stats/prometheus")).text()
    assert text.endswith('istio_requests_total{response_code="200"} 3\n')
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "istio_requests" in names and "envoy_server_live" in names


def test_prometheus_name_parsing_rules():
    """Scope tag values keep dots and '|'; the stat is the last component (two for outliers)."""
    assert prometheus_name("cluster.a.b|c.upstream_rq_503") == (
        "envoy_cluster_upstream_rq", (("envoy_response_code", "503"), ("envoy_cluster_name", "a.b|c")))
    assert prometheus_name("cluster.x.outlier_detection.ejections_enforced_total") == (
        "envoy_cluster_outlier_detection_ejections_enforced_total", (("envoy_cluster_name", "x"),))
    assert prometheus_name("server.memory-allocated") == ("envoy_server_memory_allocated", ())


def test_default_gauge_rule():
    """Without gauge_names(), *_active, membership_* and server.* are gauges; the rest counters."""
    assert default_is_gauge("cluster.a.b.upstream_cx_active")
    assert default_is_gauge("cluster.a.membership_healthy")
    assert default_is_gauge("server.live")
    assert not default_is_gauge("cluster.a.b.upstream_rq_total")
    assert not default_is_gauge("http.active.downstream_rq_total")


async def test_post_drain_listeners_calls_source(source_client):
    """POST /drain_listeners awaits source.drain_listeners() and answers OK."""
    source, client = source_client
    resp = await client.post("/drain_listeners")
    assert (resp.status, await resp.text()) == (200, "OK\n")
    assert source.drained == 1


async def test_post_quitquitquit_answers_then_quits(source_client):
    """POST /quitquitquit answers OK, then source.quit() runs."""
    source, client = source_client
    resp = await client.post("/quitquitquit")
    assert (resp.status, await resp.text()) == (200, "OK\n")
    await asyncio.wait_for(source.quit_called.wait(), 2)


async def test_wrong_method_405_and_unknown_404(source_client):
    """Mutations need POST, reads reject POST (405), unknown paths are 404."""
    source, client = source_client
    assert (await client.get("/quitquitquit")).status == 405
    assert (await client.get("/drain_listeners")).status == 405
    assert (await client.post("/stats")).status == 405
    assert (await client.post("/ready")).status == 405
    assert (await client.get("/nope")).status == 404
    assert source.drained == 0 and not source.quit_called.is_set()


async def test_help_lists_endpoints(source_client):
    """/ and /help list every endpoint with a description."""
    _, client = source_client
    for path in ("/", "/help"):
        text = await (await client.get(path)).text()
        for endpoint in ("/ready", "/clusters", "/config_dump", "/stats", "/stats/prometheus",
                         "/drain_listeners", "/quitquitquit", "/server_info", "/listeners", "/healthcheck/fail",
                         "/healthcheck/ok"):
            assert f"  {endpoint}: " in text


async def test_start_admin_serves_on_port():
    """start_admin binds a real port and the runner's cleanup stops it."""
    from aiohttp import ClientSession

    runner = await start_admin(FakeSource(), "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with ClientSession() as session:
            async with session.get(f"http://{host}:{port}/ready") as resp:
                assert (resp.status, await resp.text()) == (200, "LIVE\n")
    finally:
        await runner.cleanup()


async def test_health_app_serves_readiness_and_nothing_of_admin():
    """The health port answers /healthz/ready as admin's /ready does, and no admin path (404)."""
    source = FakeSource(ready=False)
    source.not_ready_reason = lambda: "waiting for the workload certificate"
    client = Client(make_health_app(source))
    await client.start_server()
    try:
        resp = await client.get("/healthz/ready")
        assert (resp.status, await resp.text()) == (
            503, "PRE_INITIALIZING\nwaiting for the workload certificate\n")
        source.ready = True
        resp = await client.get("/healthz/ready")
        assert (resp.status, await resp.text()) == (200, "LIVE\n")
        source.draining = True
        resp = await client.get("/healthz/ready")
        assert (resp.status, await resp.text()) == (503, "DRAINING\n")
        for path in ("/ready", "/stats", "/config_dump", "/certs"):
            assert (await client.get(path)).status == 404
        assert (await client.post("/quitquitquit")).status == 404
        assert not source.quit_called.is_set()
    finally:
        await client.close()


async def test_healthcheck_fail_and_ok_flip_ready_and_server_live(source_client):
    """POST /healthcheck/fail makes /ready 503 DRAINING and server.live 0 (Envoy's rule) while
    the source itself stays ready; POST /healthcheck/ok undoes it; GET on either is 405."""
    source, client = source_client
    assert (await client.get("/healthcheck/fail")).status == 405
    resp = await client.post("/healthcheck/fail")
    assert (resp.status, await resp.text()) == (200, "OK\n")
    resp = await client.get("/ready")
    assert resp.status == 503 and (await resp.text()).startswith("DRAINING\n")
    assert "server.live: 0\n" in await (await client.get("/stats")).text()
    assert "envoy_server_live 0" in await (await client.get("/stats/prometheus")).text()
    assert (await client.post("/healthcheck/ok")).status == 200
    resp = await client.get("/ready")
    assert (resp.status, await resp.text()) == (200, "LIVE\n")
    assert "server.live: 1\n" in await (await client.get("/stats")).text()


async def test_health_port_follows_healthcheck_fail():
    """The health port (:15021) fails with admin's /healthcheck/fail: one source, one flag."""
    source = FakeSource()
    admin, health = Client(make_admin_app(source)), Client(make_health_app(source))
    await admin.start_server()
    await health.start_server()
    try:
        await admin.post("/healthcheck/fail")
        assert (await health.get("/healthz/ready")).status == 503
        await admin.post("/healthcheck/ok")
        assert (await health.get("/healthz/ready")).status == 200
    finally:
        await admin.close()
        await health.close()


async def test_server_info_is_envoys_shape(source_client):
    """/server_info: version, state (following readiness and /healthcheck/fail), uptime as a
    protobuf Duration and the concurrency, as Envoy's JSON."""
    source, client = source_client
    info = await (await client.get("/server_info")).json()
    assert info["version"].startswith("remora/") and info["state"] == "LIVE"
    assert info["uptime_current_epoch"].endswith("s") and "concurrency" in info["command_line_options"]
    await client.post("/healthcheck/fail")
    assert (await (await client.get("/server_info")).json())["state"] == "DRAINING"
    source.ready = False
    await client.post("/healthcheck/ok")
    assert (await (await client.get("/server_info")).json())["state"] == "PRE_INITIALIZING"
