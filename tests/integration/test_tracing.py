"""Tracing over real sockets: app -> sidecar A (outbound) -> sidecar B (inbound) -> app B,
with spans exported to an OTLP/HTTP receiver started by the test."""
from __future__ import annotations

import json
import time

import pytest

from tests.integration.client import RawClient
from tests.integration.collector import Collector
from tests.integration.conftest import service
from tests.integration.proxy_process import ProxyProcess
from tests.integration.upstreams import free_port

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def collector():
    c = Collector().start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def chain(upstreams, collector):
    """Sidecar B fronts the echo app (inbound); sidecar A routes `reviews` to B's inbound port."""
    b = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]),
                     "--otlp-endpoint", collector.endpoint, "--trace-sampling", "0",
                     "--labels", "app=reviews,version=v1", "--node-id", "sidecar-b",
                     inbound_app_port=upstreams.ports["echo"])
    b.wait_ready()
    a = ProxyProcess(service("reviews", [(b.inbound_port, {})], 9080),
                     "--otlp-endpoint", collector.endpoint, "--trace-sampling", "100",
                     "--labels", "app=productpage,version=v1", "--node-id", "sidecar-a")
    a.wait_ready()
    yield a, b
    assert a.stop() == 0, a.stderr()
    assert b.stop() == 0, b.stderr()


def call(port: int, headers: dict | None = None, host: str = "reviews:9080", path: str = "/x"):
    client = RawClient(port)
    try:
        resp = client.request("GET", path, host, headers)
    finally:
        client.close()
    assert resp.status == 200, resp.body
    return resp.json()["headers"]


def stats(proxy: ProxyProcess) -> dict[str, int]:
    body = json.loads(proxy.admin_get("/stats?format=json&filter=^tracing"))
    return {item["name"]: item["value"] for item in body["stats"]}


def test_traceparent_reaches_upstream_with_same_trace_and_new_parent(chain, collector):
    """Through two sidecars the app sees the incoming trace id and B's span as its parent;
    A's client span is a child of the caller's span and B's server span a child of A's."""
    a, b = chain
    seen = call(a.outbound_port, {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    _, trace, parent, flags = seen["traceparent"].split("-")
    assert trace == TRACE and flags == "01" and parent != PARENT
    spans = collector.wait_for(lambda s: s.trace_id == TRACE, count=2)
    by_kind = {s.kind: s for s in spans}
    assert set(by_kind) == {"client", "server"}, [(s.kind, s.name) for s in spans]
    client, server = by_kind["client"], by_kind["server"]
    assert client.parent_id == PARENT
    assert server.parent_id == client.span_id
    assert parent == server.span_id
    assert client.attributes["node_id"] == "sidecar-a" and server.attributes["node_id"] == "sidecar-b"
    for span in (client, server):
        assert span.attributes["component"] == "proxy"
        assert span.attributes["http.method"] == span.attributes["http.request.method"] == "GET"
        assert span.attributes["http.status_code"] == 200
        assert span.attributes["http.url"] == "http://reviews:9080/x"
        assert span.attributes["guid:x-request-id"] == seen["x-request-id"]
        assert span.attributes["response_flags"] == "-"
        assert span.duration_ns > 0
    assert client.attributes["upstream_cluster"] == "outbound|9080||reviews.default.svc.cluster.local"
    assert client.name == "reviews.default.svc.cluster.local:9080/*"
    assert server.attributes["upstream_cluster"].startswith("inbound|")
    assert client.resource["service.name"] == "productpage.default"
    assert server.resource["service.name"] == "reviews.default"


def test_no_context_with_full_sampling_starts_a_sampled_trace(chain, collector):
    """No trace headers + --trace-sampling 100 on A: the app gets a new sampled traceparent,
    B respects A's decision though its own ratio is 0, and both spans are exported."""
    a, _ = chain
    seen = call(a.outbound_port)
    _, trace, parent, flags = seen["traceparent"].split("-")
    assert flags == "01" and trace != TRACE
    spans = collector.wait_for(lambda s: s.trace_id == trace, count=2)
    assert sorted(s.kind for s in spans) == ["client", "server"]
    root = next(s for s in spans if s.kind == "client")
    assert root.parent_id == ""


def test_unsampled_request_is_propagated_but_not_recorded(chain, collector):
    """A trace the caller did not sample keeps its id and a new parent, and records no span."""
    a, b = chain
    trace = "11112222333344445555666677778888"
    seen = call(a.outbound_port, {"traceparent": f"00-{trace}-{PARENT}-00"})
    _, got, parent, flags = seen["traceparent"].split("-")
    assert (got, flags) == (trace, "00") and parent != PARENT
    call(a.outbound_port, {"traceparent": f"00-{TRACE[:-4]}beef-{PARENT}-01"})  # a sampled marker
    assert collector.wait_for(lambda s: s.trace_id == TRACE[:-4] + "beef", count=2)
    assert not [s for s in collector.spans if s.trace_id == trace]


def test_b3_multi_in_gives_b3_multi_out(chain):
    """X-B3-* headers in, X-B3-* headers out of both sidecars: same trace id, new span ids."""
    a, _ = chain
    seen = call(a.outbound_port, {"X-B3-TraceId": TRACE, "X-B3-SpanId": PARENT, "X-B3-Sampled": "1"})
    assert "traceparent" not in seen and "b3" not in seen
    assert seen["x-b3-traceid"] == TRACE
    assert seen["x-b3-spanid"] != PARENT and seen["x-b3-parentspanid"] not in (PARENT, "")
    assert seen["x-b3-sampled"] == "1"


def test_b3_single_in_gives_b3_single_out(chain):
    """A single b3 header in, a single b3 header out, carrying the same trace id."""
    a, _ = chain
    seen = call(a.outbound_port, {"b3": f"{TRACE}-{PARENT}-0"})
    assert "traceparent" not in seen and "x-b3-traceid" not in seen
    trace, span, state, parent = seen["b3"].split("-")
    assert (trace, state) == (TRACE, "0") and span != PARENT and parent != PARENT


def test_tracing_counters_reach_stats_and_prometheus(chain, collector):
    """tracing.spans_started / spans_exported are counted and exported in Prometheus form."""
    a, _ = chain
    call(a.outbound_port)
    deadline = time.time() + 30
    while time.time() < deadline and stats(a)["tracing.spans_exported"] < 1:
        time.sleep(0.1)
    st = stats(a)
    assert st["tracing.spans_started"] >= st["tracing.spans_exported"] >= 1
    assert st["tracing.spans_dropped"] == 0
    text = a.admin_get("/stats/prometheus")
    assert "# TYPE envoy_tracing_spans_exported counter" in text


def test_dead_collector_costs_only_a_counter(upstreams):
    """With nothing listening at the OTLP endpoint every request still succeeds and the
    failed exports are counted (tracing.export_errors, tracing.spans_dropped)."""
    dead = f"http://127.0.0.1:{free_port()}/v1/traces"
    p = ProxyProcess(service("echo", [(upstreams.ports["echo"], {})]),
                     "--otlp-endpoint", dead, "--trace-sampling", "100").wait_ready()
    try:
        client = RawClient(p.outbound_port)
        for i in range(50):
            assert client.request("GET", f"/d{i}", "echo").status == 200
        client.close()
        deadline = time.time() + 40
        while time.time() < deadline:
            st = stats(p)
            if st["tracing.export_errors"] >= 1:
                break
            time.sleep(0.2)
        assert st["tracing.spans_started"] == 50
        assert st["tracing.export_errors"] >= 1 and st["tracing.spans_dropped"] >= 1
        assert st["tracing.spans_exported"] == 0
    finally:
        assert p.stop() == 0
    assert "span export to" in p.stderr()


def test_without_otlp_endpoint_nothing_is_recorded(proxy):
    """No --otlp-endpoint: propagation only, no span is started."""
    seen = call(proxy.outbound_port, {"traceparent": f"00-{TRACE}-{PARENT}-01"}, host="echo")
    assert seen["traceparent"].split("-")[1] == TRACE
    assert stats(proxy)["tracing.spans_started"] == 0


GRPC_SERVICE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-grpc}
spec:
  hosts: [echo.grpc]
  ports: [{number: 80, name: grpc, protocol: GRPC}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{address: 127.0.0.1, ports: {grpc: %d}}]
"""


def test_streaming_grpc_calls_make_one_span_each(collector):
    """A server stream of 200 messages, a client stream of 50 and a bidi stream of 20 through
    a sampling sidecar: one span per call, tagged as Envoy tags gRPC spans (path, status,
    message counts), and an error span for a call that failed with a gRPC status."""
    from tests.integration import grpc_apps

    with grpc_apps.EchoServer() as server:
        sidecar = ProxyProcess(GRPC_SERVICE % server.port, "--otlp-endpoint", collector.endpoint,
                               "--trace-sampling", "100", "--node-id", "grpc-sidecar")
        try:
            sidecar.wait_ready()
            channel = grpc_apps.channel(sidecar.outbound_port, "echo.grpc")
            try:
                assert len(list(grpc_apps.method(channel, "unary_stream", "ServerStream")(b"200:16", timeout=30))) == 200
                assert grpc_apps.method(channel, "stream_unary", "ClientStream")(
                    iter([b"x"] * 50), timeout=30) == b"count=50 bytes=50"
                assert len(list(grpc_apps.method(channel, "stream_stream", "Bidi")(iter([b"y"] * 20), timeout=30))) == 20
                with pytest.raises(grpc_apps.grpc.RpcError):
                    grpc_apps.method(channel, "unary_unary", "Unary")(b"fail:NOT_FOUND", timeout=30)
            finally:
                channel.close()
            mine = lambda s: s.attributes.get("node_id") == "grpc-sidecar"   # noqa: E731
            spans = collector.wait_for(mine, count=4)
            time.sleep(1.0)    # any extra span would have been exported by now
            spans = [s for s in collector.spans if mine(s)]
            by_path = {s.attributes["grpc.path"]: s for s in spans}
            assert len(spans) == 4 and len(by_path) == 4, [s.attributes.get("grpc.path") for s in spans]
            stream = by_path["/test.Echo/ServerStream"]
            assert stream.attributes["grpc.response_message_count"] == 200
            assert stream.attributes["grpc.status_code"] == "0" and "error" not in stream.attributes
            assert by_path["/test.Echo/ClientStream"].attributes["grpc.request_message_count"] == 50
            assert by_path["/test.Echo/Bidi"].attributes["grpc.response_message_count"] == 20
            failed = by_path["/test.Echo/Unary"]
            assert failed.attributes["grpc.status_code"] == "5" and failed.attributes["error"] is True
        finally:
            sidecar.close()
