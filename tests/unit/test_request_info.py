"""The request record contract: access log, Istio metrics and tracing work from a
RequestInfo alone (request_info.py), built here by hand with no Exchange behind it."""
from __future__ import annotations

import json
import time

from remora.proxy.security.identity import WorkloadIdentity
from remora.proxy.security.inbound_policy import PeerCertificate
from remora.proxy.telemetry.istio_metrics import (
    COUNT,
    DURATION_SUM,
    LABEL_NAMES,
    IstioMetrics,
    service_tags,
)
from remora.proxy.codec.message import RequestHead
from remora.proxy.telemetry.peer_metadata import PeerMetadata, encode
from remora.proxy.telemetry.request_info import RequestInfo
from remora.proxy.telemetry.access_log import access_record, format_envoy_default, format_json
from remora.proxy.telemetry.tracing import CLIENT, SERVER, W3C, TraceContext, Tracer

ME = WorkloadIdentity(service="reviews", namespace="shop", service_account="sa-r",
                      labels={"app": "reviews", "version": "v2"})
PEER = PeerMetadata("web", "frontend-v1", "frontend", "v1", "sa-f")
TRACE = TraceContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 0x1111, True, W3C)


class Named:
    """A route or cluster as the consumers see one: names, service tags, service and port."""

    def __init__(self, name: str, telemetry=None, service: str = "", port: int = 0) -> None:
        self.name, self.telemetry, self.service, self.port = name, telemetry, service, port


CLUSTER = Named("outbound|9080||ratings.shop.svc.cluster.local",
                service_tags("ratings.shop.svc.cluster.local", "shop", True),
                "ratings.shop.svc.cluster.local", 9080)


def record(**kw) -> RequestInfo:
    """A finished request of 12 ms: a POST that got a 503 UF after 7 ms upstream."""
    head = RequestHead(b"POST", b"/ratings/1?x=1", b"ratings:9080", [])
    head.request_id, head.user_agent, head.peer_ip = b"rid-1", b"curl/8.5.0", b"10.0.0.7"
    info = RequestInfo(head, 100.0, Named("ratings-route"), TRACE)
    info.ended_at = 100.012
    info.status, info.flags, info.upstream_time = 503, "UF,URX", b"7"
    info.bytes_received, info.bytes_sent = 11, 91
    info.upstream_host, info.cluster = "10.0.0.9:9080", CLUSTER
    for name, value in kw.items():
        setattr(info, name, value)
    return info


def test_access_log_lines_come_from_the_record():
    """Envoy's text line and Istio's JSON line are built from a RequestInfo alone."""
    before = time.time()
    rec = access_record(record(details="jwt_authn_access_denied{Jwt_is_expired}"))
    assert before - 0.012 - 1 <= rec.start_time <= time.time() - 0.012 + 1e-3
    line = format_envoy_default(rec)
    assert line.split("] ", 1)[1] == (
        '"POST /ratings/1?x=1 HTTP/1.1" 503 UF,URX 11 91 12 7 "-" "curl/8.5.0" "rid-1" '
        '"ratings:9080" "10.0.0.9:9080"\n')
    doc = json.loads(format_json(rec))
    assert doc["route_name"] == "ratings-route" and doc["upstream_cluster"] == CLUSTER.name
    assert doc["response_code_details"] == "jwt_authn_access_denied{Jwt_is_expired}"
    assert doc["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and doc["span_id"] == "00f067aa0ba902b7"
    assert doc["duration"] == 12 and doc["upstream_service_time"] == "7"


def test_access_log_of_a_request_with_no_route_or_response():
    """No route, no cluster, no response: the record's defaults print as Envoy's "-" and 0."""
    info = RequestInfo(RequestHead(b"GET", b"/", b"nowhere", []), 5.0, None, TRACE)
    info.ended_at = 5.0
    doc = json.loads(format_json(access_record(info)))
    assert doc["response_code"] == 0 and doc["response_flags"] == "-"
    assert doc["route_name"] is None and doc["upstream_cluster"] is None
    assert doc["upstream_host"] is None and doc["response_code_details"] is None


def labels(export: dict) -> list[tuple[dict, list]]:
    return [(dict(zip(LABEL_NAMES, row)), values) for row, values in export["requests"]]


def test_istio_metrics_record_from_the_record():
    """Both reporters count a RequestInfo alone: peers, principals, code, flags, duration."""
    metrics = IstioMetrics(ME)
    metrics.record_outbound(record(peer_metadata=encode(PEER), peer_id="spiffe://td/ns/web/sa/x"))
    inbound = record(cluster=None)
    inbound.head.peer_metadata = encode(PEER)
    inbound.head.peer_cert = PeerCertificate("spiffe://cluster.local/ns/web/sa/sa-f", b"der", None)
    metrics.record_inbound(inbound)
    (src, src_values), (dst, dst_values) = labels(metrics.export())
    assert src["reporter"] == "source" and src["destination_workload"] == "frontend-v1"
    assert src["destination_principal"] == "spiffe://td/ns/web/sa/x"
    assert src["destination_service"] == "ratings.shop.svc.cluster.local"
    assert (src["response_code"], src["response_flags"]) == ("503", "UF,URX")
    assert dst["reporter"] == "destination" and dst["source_workload"] == "frontend-v1"
    assert dst["connection_security_policy"] == "mutual_tls"
    assert dst["destination_service"] == "reviews.shop.svc.cluster.local"
    assert src_values[COUNT] == dst_values[COUNT] == 1
    assert abs(src_values[DURATION_SUM] - 12.0) < 1e-6


class Collect:
    """An exporter that keeps what it is given."""

    def __init__(self) -> None:
        self.spans = []

    def submit(self, span) -> None:
        self.spans.append(span)


def test_span_is_finished_from_the_record():
    """Tracer.finish names, times and describes a span from a RequestInfo alone."""
    exporter = Collect()
    tracer = Tracer(ME, exporter)
    tracer.finish(record(), CLIENT)
    tracer.finish(record(cluster=None, status=200, flags="-"), SERVER)
    client, server = exporter.spans
    assert client.name == "ratings.shop.svc.cluster.local:9080/*" and server.name == "ratings:9080/*"
    assert client.trace_id == TRACE.trace_id and client.span_id == TRACE.span_id
    assert client.end_ns - client.start_ns == 12_000_000
    attrs = client.attributes
    assert attrs["http.url"] == "http://ratings:9080/ratings/1?x=1"
    assert attrs["http.status_code"] == 503 and attrs["response_flags"] == "UF,URX"
    assert attrs["request_size"] == 11 and attrs["response_size"] == 91
    assert attrs["upstream_cluster"] == CLUSTER.name and attrs["upstream_address"] == "10.0.0.9:9080"
    assert attrs["peer.address"] == "10.0.0.7" and client.error and not server.error
    assert tracer.spans_started == 2


def test_the_record_is_small_and_fixed():
    """The record has slots only (no per-request __dict__), so it costs one small object."""
    info = record()
    assert not hasattr(info, "__dict__")
    try:
        info.method = "GET"
    except AttributeError:
        pass
    else:
        raise AssertionError("RequestInfo accepted an attribute outside its slots")


def test_an_exchange_starts_every_record_field():
    """Exchange.__init__ writes the record's slots itself: every one is set on a new exchange,
    to the same defaults as RequestInfo's own constructor (OPTIONAL ones stay unset)."""
    from remora.proxy.router.exchange import Exchange

    class Sink:
        last_activity = 7.0

    class Listener:
        sample_ratio = 0.0

    head = RequestHead(b"GET", b"/", b"h", [])
    exchange = Exchange(Sink(), head, Listener(), None, None, 0)
    bare = RequestInfo(head, 7.0)
    for name in RequestInfo.__slots__:
        if name in RequestInfo.OPTIONAL:
            assert not hasattr(exchange, name) and not hasattr(bare, name)
        elif name != "trace":
            assert getattr(exchange, name) == getattr(bare, name), name
    assert isinstance(exchange.trace, TraceContext)
