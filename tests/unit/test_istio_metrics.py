"""Istio metrics: label building, bucket counting, merging and rendering (istio_metrics.py),
and the metadata-exchange header (peer_metadata.py)."""
from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from remora.config.loader import load_mesh_text
from remora.proxy.admin.server import filter_families
from remora.proxy.security.identity import WorkloadIdentity
from remora.proxy.telemetry.istio_metrics import (
    BUCKETS, CERT_EXPIRY, LABEL_NAMES, TCP_LABEL_NAMES, UNKNOWN_SERVICE, IstioMetrics,
    local_service_tags, merge, render, service_tags,
)
from remora.proxy.codec.message import GrpcRequestHead, RequestHead
from remora.proxy.router.grpc import MessageCounter
from remora.proxy.telemetry.request_info import RequestInfo
from remora.proxy.telemetry.peer_metadata import (
    MAX_VALUE, UNKNOWN_PEER, PeerCache, PeerMetadata, decode, encode, header_line,
)
from remora.proxy.process.worker import mesh_internal_hosts

ME = WorkloadIdentity(service="reviews", namespace="shop", service_account="sa-r",
                      labels={"app": "reviews", "version": "v2"})
PEER = PeerMetadata("web", "frontend-v1", "frontend", "v1", "sa-f")


class FakeCluster:
    def __init__(self, tags):
        self.telemetry = tags


def finished(status=200, flags="-", rx=0, tx=0, start=0.0, end=0.0, cluster=None,
             peer=None, head_peer=None, peer_id=None) -> RequestInfo:
    """A finished request's record, built by hand (all the recorder reads)."""
    head = RequestHead(b"GET", b"/", b"h", [])
    head.peer_metadata = head_peer
    info = RequestInfo(head, start)
    info.ended_at, info.status, info.flags, info.peer_id = end, status, flags, peer_id
    info.bytes_received, info.bytes_sent = rx, tx
    info.cluster, info.peer_metadata = cluster, peer
    return info


def rows(export: dict, kind: str = "requests") -> list[tuple[dict, list]]:
    names = LABEL_NAMES if kind == "requests" else TCP_LABEL_NAMES
    return [(dict(zip(names, labels)), values) for labels, values in export[kind]]


def parse(text: str) -> dict[str, list]:
    """Family name -> its samples."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


# -- peer metadata ------------------------------------------------------------------------------

def test_peer_metadata_round_trips_and_escapes():
    """encode/decode keep every field, percent-encoding separators inside values."""
    peer = PeerMetadata("ns", "w,=1", "app", "v 2", "sa")
    back = decode(encode(peer))
    assert back is not None and back.as_tuple() == peer.as_tuple()
    assert header_line(PEER).startswith(b"x-remora-peer-metadata: namespace=web,")


def test_peer_metadata_rejects_malformed_values():
    """Garbage, control characters and overlong values make the header count as absent;
    unknown keys are ignored and missing ones are unknown."""
    assert decode(b"garbage") is None
    assert decode(b"namespace=a%0Ab") is None
    assert decode(b"workload=" + b"x" * (MAX_VALUE + 1)) is None
    peer = decode(b"workload=w,future_key=1")
    assert peer is not None and peer.workload == "w" and peer.namespace == "unknown"


def test_peer_cache_is_bounded():
    """Past its limit the cache answers UNKNOWN_PEER for new values and counts them."""
    cache = PeerCache(limit=2)
    first = cache.get(b"workload=a")
    assert cache.get(b"workload=a") is first      # interned
    cache.get(b"workload=b")
    assert cache.get(b"workload=c") is UNKNOWN_PEER
    assert cache.overflow == 1
    assert cache.get(None) is UNKNOWN_PEER


# -- labels --------------------------------------------------------------------------------------

def test_source_reporter_labels():
    """Outbound: source_* from the identity, destination_* from the answering peer and the
    cluster's service; csp "unknown" as Istio's client side reports it."""
    m = IstioMetrics(ME)
    svc = service_tags("ratings.web.svc.cluster.local", "web", True)
    m.record_outbound(finished(cluster=FakeCluster(svc), peer=encode(PEER), end=0.002))
    [(labels, values)] = rows(m.export())
    assert labels == {
        "reporter": "source", "source_workload": "reviews-v2", "source_workload_namespace": "shop",
        "source_principal": "unknown", "source_app": "reviews", "source_version": "v2",
        "destination_workload": "frontend-v1", "destination_workload_namespace": "web",
        "destination_principal": "unknown", "destination_app": "frontend", "destination_version": "v1",
        "destination_service": "ratings.web.svc.cluster.local", "destination_service_name": "ratings",
        "destination_service_namespace": "web", "request_protocol": "http", "response_code": "200",
        "grpc_response_status": "", "response_flags": "-", "connection_security_policy": "unknown",
    }
    assert values[0] == 1


def test_source_destination_principal_is_the_verified_server_identity():
    """Outbound over mTLS: destination_principal is the server's verified SPIFFE ID; plaintext stays "unknown"."""
    m = IstioMetrics(ME)
    svc = service_tags("ratings.web.svc.cluster.local", "web", True)
    sid = "spiffe://cluster.local/ns/web/sa/ratings"
    m.record_outbound(finished(cluster=FakeCluster(svc), peer_id=sid))
    m.record_outbound(finished(cluster=FakeCluster(svc), peer_id=sid))
    m.record_outbound(finished(cluster=FakeCluster(svc)))
    found = {labels["destination_principal"]: values[0] for labels, values in rows(m.export())}
    assert found == {sid: 2, "unknown": 1}


def test_destination_reporter_labels():
    """Inbound: source_* from the caller's header, destination_* and the service from the
    identity; csp "none" on plaintext."""
    m = IstioMetrics(ME)
    m.record_inbound(finished(status=503, flags="UF", head_peer=encode(PEER)))
    [(labels, _)] = rows(m.export())
    assert labels["reporter"] == "destination"
    assert (labels["source_workload"], labels["source_app"], labels["source_workload_namespace"]) == (
        "frontend-v1", "frontend", "web")
    assert (labels["destination_workload"], labels["destination_service"]) == (
        "reviews-v2", "reviews.shop.svc.cluster.local")
    assert (labels["response_code"], labels["response_flags"]) == ("503", "UF")
    assert labels["connection_security_policy"] == "none"
    assert labels["source_principal"] == "unknown"


def test_destination_reporter_on_mtls_has_the_verified_principal():
    """Inbound over mTLS: csp "mutual_tls" and source_principal the caller's SPIFFE ID, in its own series."""
    from remora.proxy.security.inbound_policy import PeerCertificate
    m = IstioMetrics(ME)
    mtls = finished(head_peer=encode(PEER))
    mtls.head.peer_cert = PeerCertificate("spiffe://cluster.local/ns/web/sa/sa-f", b"der", None)
    m.record_inbound(mtls)
    m.record_inbound(finished(head_peer=encode(PEER)))
    by_policy = {labels["connection_security_policy"]: labels for labels, _ in rows(m.export())}
    assert by_policy["mutual_tls"]["source_principal"] == "spiffe://cluster.local/ns/web/sa/sa-f"
    assert by_policy["none"]["source_principal"] == "unknown"


def test_unknowns_follow_istio_conventions():
    """No route and no peer: unknown service and workload, code 0 when nothing was sent."""
    m = IstioMetrics(WorkloadIdentity())
    m.record_outbound(finished(status=0, flags="DC"))
    [(labels, _)] = rows(m.export())
    assert labels["destination_service"] == labels["destination_workload"] == "unknown"
    assert labels["source_workload"] == "unknown"
    assert labels["source_workload_namespace"] == "default"
    assert (labels["response_code"], labels["response_flags"]) == ("0", "DC")


def test_external_service_answers_are_not_trusted():
    """A metadata header in the answer of a MESH_EXTERNAL service does not fill labels."""
    m = IstioMetrics(ME)
    ext = service_tags("api.example.com", "default", False)
    m.record_outbound(finished(cluster=FakeCluster(ext), peer=encode(PEER)))
    [(labels, _)] = rows(m.export())
    assert labels["destination_workload"] == "unknown"
    assert labels["destination_service_name"] == "api.example.com"


def test_service_tags_names():
    """In-cluster FQDNs are named by their first label, other hosts by themselves; the
    local service comes from --service (or the app label) and is never mesh-internal."""
    assert service_tags("reviews.shop.svc.cluster.local", "shop", True).name == "reviews"
    assert service_tags("a.b.com", "default", False).name == "a.b.com"
    assert service_tags("x", "ns", True) is service_tags("x", "ns", True)
    local = local_service_tags(WorkloadIdentity(labels={"app": "ratings"}, namespace="n"))
    assert (local.service, local.mesh_internal) == ("ratings.n.svc.cluster.local", False)
    assert local_service_tags(WorkloadIdentity()) is UNKNOWN_SERVICE


def test_mesh_internal_hosts_follow_location():
    """Only ServiceEntries with location MESH_INTERNAL are in the mesh (Istio's default is
    MESH_EXTERNAL)."""
    text = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
spec: {hosts: [a], location: MESH_INTERNAL, ports: [{number: 80, name: http}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b}
spec: {hosts: [b.example.com], ports: [{number: 80, name: http}], resolution: DNS}
"""
    assert mesh_internal_hosts(load_mesh_text(text)) == {"a.default.svc.cluster.local"}


# -- histograms, merge, render -------------------------------------------------------------------

def test_bucket_bounds_are_inclusive_and_cumulative():
    """A value equal to a bound lands in that bound's bucket (le); beyond the last bound
    only +Inf counts it; rendered buckets are cumulative."""
    m = IstioMetrics(ME)
    m.record_inbound(finished(rx=5, tx=10 ** 10, start=0.0))   # 0 ms
    m.record_inbound(finished(rx=6, tx=0, start=0.0, end=0.025))        # 25 ms
    fams = parse(render(m.export()))
    dur = {s.labels["le"]: s.value for s in fams["istio_request_duration_milliseconds"]
           if s.name.endswith("_bucket")}
    assert [dur["0.5"], dur["10"], dur["25"], dur["+Inf"]] == [1, 1, 2, 2]
    assert len(dur) == len(BUCKETS) + 1
    req = {s.labels["le"]: s.value for s in fams["istio_request_bytes"] if s.name.endswith("_bucket")}
    assert (req["1"], req["5"], req["10"]) == (0, 1, 2)
    resp = {s.labels["le"]: s.value for s in fams["istio_response_bytes"] if s.name.endswith("_bucket")}
    assert (resp["3.6e+06"], resp["+Inf"]) == (1, 2)
    sums = {s.name: s.value for s in fams["istio_request_bytes"] if s.name.endswith("_sum")}
    assert sums == {"istio_request_bytes_sum": 11}


def test_merge_sums_workers():
    """Rows with the same labels from several workers add up; the soonest certificate
    expiry wins."""
    parts = []
    for expiry in (2000.0, 1000.0):
        m = IstioMetrics(ME)
        m.record_inbound(finished(rx=1))
        m.certificate_expiry = expiry
        parts.append(m.export())
    merged = merge(parts)
    [(labels, values)] = rows(merged)
    assert values[0] == 2 and merged["certificate_expiry"] == 1000.0
    fams = parse(render(merged))
    assert [s.value for s in fams[CERT_EXPIRY]] == [1000.0]


def test_grpc_calls_count_their_messages_and_http_requests_do_not():
    """A gRPC call's message counts land on istio_request/response_messages_total of its
    (request_protocol grpc) series; a plain HTTP request adds no sample to those families."""
    m = IstioMetrics(ME)
    for requests, responses in ((3, 1), (1, 7)):
        info = finished()
        info.head = GrpcRequestHead(b"POST", b"/pkg.Svc/Call", b"h", [])
        info.grpc_status = b"0"
        info.request_messages, info.response_messages = MessageCounter(), MessageCounter()
        info.request_messages.messages, info.response_messages.messages = requests, responses
        m.record_outbound(info)
    m.record_outbound(finished())
    families = parse(render(m.export()))
    [req] = families["istio_request_messages"]
    [resp] = families["istio_response_messages"]
    assert (req.value, resp.value) == (4, 8)
    assert req.labels["request_protocol"] == "grpc" and req.labels["grpc_response_status"] == "0"


def test_every_family_is_declared_even_without_samples():
    """An idle sidecar still declares every family (dashboards see the names) and the
    certificate gauge has no sample until a certificate exists."""
    text = render(IstioMetrics(ME).export())
    declared = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert declared == {
        ("istio_requests_total", "counter"),
        ("istio_request_duration_milliseconds", "histogram"),
        ("istio_request_bytes", "histogram"), ("istio_response_bytes", "histogram"),
        ("istio_request_messages_total", "counter"), ("istio_response_messages_total", "counter"),
        ("istio_tcp_connections_opened_total", "counter"), ("istio_tcp_connections_closed_total", "counter"),
        ("istio_tcp_sent_bytes_total", "counter"), ("istio_tcp_received_bytes_total", "counter"),
        (CERT_EXPIRY, "gauge"),
    }
    assert not [line for line in text.splitlines() if line and not line.startswith("#")]


def test_tcp_meters_count_open_and_closed_connections():
    """Open connections' bytes show at scrape; closing counts once (idempotent)."""
    m = IstioMetrics(ME)
    meter = m.tcp_opened(False, encode(PEER), m.local_service)
    meter.received, meter.sent = 100, 7
    [(labels, values)] = rows(m.export(), "tcp")
    assert labels["request_protocol"] == "tcp" and labels["source_app"] == "frontend"
    assert values == [1, 0, 7, 100]
    m.tcp_closed(meter)
    m.tcp_closed(meter)
    [(_, values)] = rows(m.export(), "tcp")
    assert values == [1, 1, 7, 100]


def test_filter_families_keeps_whole_blocks():
    """?filter= on /stats/prometheus keeps or drops whole families of the extra text."""
    text = render(IstioMetrics(ME).export())
    kept = filter_families(text, re.compile("tcp_sent"))
    assert "# TYPE istio_tcp_sent_bytes_total counter" in kept
    assert "istio_requests_total" not in kept and "istio_request_bytes" not in kept
