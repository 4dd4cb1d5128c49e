"""Istio's standard metrics, counted per worker in plain integers and rendered on scrape.

Names, types, units and labels are Istio's (istio/proxy `istio_stats` filter), so the
dashboards and alerts written for an Istio mesh work unchanged:

  istio_requests_total (counter), istio_request_duration_milliseconds,
  istio_request_bytes, istio_response_bytes (histograms),
  istio_request_messages_total, istio_response_messages_total (gRPC series only),
  istio_tcp_connections_opened_total, istio_tcp_connections_closed_total,
  istio_tcp_sent_bytes_total, istio_tcp_received_bytes_total (counters),
  remora_certificate_expiry_timestamp_seconds (gauge, no sample until a certificate exists).

Rules this module keeps:

- reporter="source" for the outbound listener, "destination" for the inbound one. The
  local side's labels come from the sidecar's WorkloadIdentity; the peer's side from
  metadata exchange (peer_metadata.py), "unknown" when the peer did not say.
- Istio's conventions for values nobody knows: "unknown" for workloads, principals and
  services, response_flags "-", response_code "0" when no response was sent,
  grpc_response_status "" for non-gRPC requests, connection_security_policy "unknown"
  on the source side; on the destination side "mutual_tls" when the request came over a
  verified mTLS connection (source_principal is then the caller's SPIFFE ID) and "none"
  on plaintext (source_principal "unknown"), request_protocol "http" (and "tcp" for tunnels).
- Bounded cardinality: no path, id or raw Host value is ever a label. destination_service
  is the FQDN of the matched service (the cluster's) or "unknown"; peers are capped by
  PeerCache.
- Hot path: one dict lookup keyed by (peer, service, status, flags) - interned objects
  hashed by identity - then a handful of integer increments into one list; histogram
  buckets are found with bisect and kept non-cumulative. Label strings and cumulative
  buckets are made only at scrape time (`export`, `render`).
- Several workers: each exports JSON-able rows, the supervisor sums them (`merge`), and
  one scrape shows the total.
- Histogram buckets are Envoy's defaults, which Istio uses for all three histograms.
  Byte histograms count body bytes (the same numbers as the access log's
  BYTES_RECEIVED / BYTES_SENT); Istio counts wire bytes, headers included.
"""
from __future__ import annotations

from bisect import bisect_left
from functools import lru_cache
from operator import add

from remora.config.names import qualify_host
from remora.proxy.security.identity import UNKNOWN, WorkloadIdentity
from remora.proxy.telemetry.peer_metadata import (
    HEADER, UNKNOWN_PEER, PeerCache, PeerMetadata, encode, header_line, local_metadata,
)

LABEL_NAMES = (
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version",
    "destination_service", "destination_service_name", "destination_service_namespace",
    "request_protocol", "response_code", "grpc_response_status", "response_flags",
    "connection_security_policy",
)
# Istio's TCP metrics have no response code or gRPC status.
TCP_LABEL_NAMES = tuple(n for n in LABEL_NAMES if n not in ("response_code", "grpc_response_status"))

# Envoy's default histogram buckets (Istio keeps them for its three histograms).
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
           300000, 600000, 1800000, 3600000)
_NB = len(BUCKETS) + 1                      # the last slot counts values above every bound
# One request series: count, three sums, then three runs of non-cumulative bucket counts.
COUNT, DURATION_SUM, REQUEST_BYTES_SUM, RESPONSE_BYTES_SUM = range(4)
DURATION_BUCKETS = 4
REQUEST_BYTES_BUCKETS = DURATION_BUCKETS + _NB
RESPONSE_BYTES_BUCKETS = REQUEST_BYTES_BUCKETS + _NB
# gRPC calls also count their messages (Istio's istio_request_messages_total and
# istio_response_messages_total, only on series whose request_protocol is grpc).
REQUEST_MESSAGES = RESPONSE_BYTES_BUCKETS + _NB
RESPONSE_MESSAGES = REQUEST_MESSAGES + 1
REQUEST_SLOTS = RESPONSE_MESSAGES + 1
# One TCP series.
OPENED, CLOSED, SENT, RECEIVED = range(4)

CERT_EXPIRY = "remora_certificate_expiry_timestamp_seconds"
HISTOGRAMS = ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes")
TCP_COUNTERS = ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")


class ServiceTags:
    """The destination_service* labels of a cluster, and whether it is in the mesh.

    Interned by value (`service_tags`), so a new config version reuses the same objects
    and metric series keep one key per service.
    """

    __slots__ = ("service", "name", "namespace", "mesh_internal")

    def __init__(self, service: str, name: str, namespace: str, mesh_internal: bool) -> None:
        self.service = service
        self.name = name
        self.namespace = namespace
        self.mesh_internal = mesh_internal

    def __repr__(self) -> str:
        return f"ServiceTags({self.service!r}, internal={self.mesh_internal})"


UNKNOWN_SERVICE = ServiceTags(UNKNOWN, UNKNOWN, UNKNOWN, False)


@lru_cache(maxsize=4096)
def service_tags(fqdn: str, namespace: str, mesh_internal: bool) -> ServiceTags:
    """Tags for a registry service: name is the short name of an in-cluster FQDN
    (reviews.default.svc.cluster.local -> reviews), else the host itself (as Istio names
    ServiceEntry hosts)."""
    name = fqdn.split(".", 1)[0] if ".svc." in fqdn else fqdn
    return ServiceTags(fqdn, name, namespace, mesh_internal)


def local_service_tags(identity: WorkloadIdentity) -> ServiceTags:
    """The service the inbound listener serves: --service (else the app label), or unknown.
    Never mesh-internal: the local app must not receive the metadata header."""
    name = identity.service or identity.app
    if name == UNKNOWN:
        return UNKNOWN_SERVICE
    return service_tags(qualify_host(name, identity.namespace), identity.namespace, False)


class TcpMeter:
    """Bytes of one open tunnelled connection; the TCP proxy will use the same API."""

    __slots__ = ("table", "key", "sent", "received")

    def __init__(self, table: dict, key: tuple) -> None:
        self.table = table
        self.key = key
        self.sent = 0          # towards the downstream (response direction)
        self.received = 0      # from the downstream (request direction)


class IstioMetrics:
    """One worker's Istio metrics: integer series keyed by interned label objects."""

    def __init__(self, identity: WorkloadIdentity) -> None:
        self.local: PeerMetadata = local_metadata(identity)
        self.local_service = local_service_tags(identity)
        self.peers = PeerCache()
        self.source: dict[tuple, list] = {}        # reporter="source" request series
        self.destination: dict[tuple, list] = {}   # reporter="destination"
        self.tcp_source: dict[tuple, list] = {}
        self.tcp_destination: dict[tuple, list] = {}
        self.open_meters: set[TcpMeter] = set()
        self.certificate_expiry: float | None = None   # fed by the mTLS code once it exists
        self.request_header = header_line(self.local)   # added to in-mesh requests
        self.reply_header = (HEADER, encode(self.local))  # added to answers to mesh peers

    # -- hot path ---------------------------------------------------------------------------
    def record_outbound(self, info) -> None:
        """One finished request (its RequestInfo) on the outbound listener (reporter="source")."""
        cluster = info.cluster
        service = (cluster.telemetry or UNKNOWN_SERVICE) if cluster is not None else UNKNOWN_SERVICE
        raw = info.peer_metadata
        peer = self.peers.get(raw) if raw is not None and service.mesh_internal else UNKNOWN_PEER
        self._record(self.source, peer, service, info, info.peer_id)

    def record_inbound(self, info) -> None:
        """One finished request (its RequestInfo) on the inbound listener (reporter="destination")."""
        head = info.head
        raw = head.peer_metadata
        peer = self.peers.get(raw) if raw is not None else UNKNOWN_PEER
        cert = head.peer_cert   # None on plaintext; the caller's label otherwise (interned)
        self._record(self.destination, peer, self.local_service, info,
                     cert.metric_principal if cert is not None else None)

    @staticmethod
    def _record(table: dict, peer, service, info, principal: str | None) -> None:
        # principal: the verified peer's SPIFFE ID label (mTLS), one of a bounded set of identities.
        # A gRPC call's series also carries its grpc status: its status slot holds both.
        grpc = info.head.grpc
        status = (info.status, getattr(info, "grpc_status", b"").decode()) if grpc else info.status
        key = (peer, service, status, info.flags, principal)
        s = table.get(key)
        if s is None:
            s = table[key] = [0] * REQUEST_SLOTS
        if grpc:
            s[REQUEST_MESSAGES] += info.request_messages.messages
            s[RESPONSE_MESSAGES] += info.response_messages.messages
        ms = (info.ended_at - info.started_at) * 1000.0
        rx = info.bytes_received
        tx = info.bytes_sent
        # The count and the three sums (the series' first four slots) in one pass in C.
        s[:DURATION_BUCKETS] = map(add, s[:DURATION_BUCKETS], (1, ms, rx, tx))
        s[DURATION_BUCKETS + bisect_left(BUCKETS, ms)] += 1
        s[REQUEST_BYTES_BUCKETS + bisect_left(BUCKETS, rx)] += 1
        s[RESPONSE_BYTES_BUCKETS + bisect_left(BUCKETS, tx)] += 1

    # -- TCP (tunnels now, the TCP proxy later) ------------------------------------------------
    def tcp_opened(self, outbound: bool, peer_value: bytes | None, service: ServiceTags | None,
                   flags: str = "-") -> TcpMeter:
        """Count a connection opened; the caller adds bytes to the meter and closes it."""
        service = service or UNKNOWN_SERVICE
        trusted = peer_value is not None and (service.mesh_internal or not outbound)
        peer = self.peers.get(peer_value) if trusted else UNKNOWN_PEER
        table = self.tcp_source if outbound else self.tcp_destination
        key = (peer, service, flags)
        s = table.get(key)
        if s is None:
            s = table[key] = [0, 0, 0, 0]
        s[OPENED] += 1
        meter = TcpMeter(table, key)
        self.open_meters.add(meter)
        return meter

    def tcp_closed(self, meter: TcpMeter) -> None:
        """Count a connection closed and fold its bytes into the series (idempotent)."""
        if meter not in self.open_meters:
            return
        self.open_meters.discard(meter)
        s = meter.table[meter.key]
        s[CLOSED] += 1
        s[SENT] += meter.sent
        s[RECEIVED] += meter.received

    # -- scrape --------------------------------------------------------------------------------
    def export(self) -> dict:
        """JSON-able rows: {"requests": [[labels, values]], "tcp": [...], "certificate_expiry"}."""
        requests = []
        for reporter, table in (("source", self.source), ("destination", self.destination)):
            for (peer, service, status, flags, principal), values in table.items():
                if type(status) is tuple:     # a gRPC call: (HTTP status, grpc status)
                    protocol, code, grpc_code = "grpc", str(status[0]), status[1]
                else:
                    protocol, code, grpc_code = "http", str(status), ""
                requests.append([self._labels(reporter, peer, service, protocol, flags,
                                              code, grpc_code, principal=principal), list(values)])
        tcp_rows: dict[tuple, list] = {}
        for reporter, table in (("source", self.tcp_source), ("destination", self.tcp_destination)):
            for key, values in table.items():
                tcp_rows[(reporter, key)] = list(values)
        for meter in self.open_meters:   # bytes of connections still open count too
            row = tcp_rows[("source" if meter.table is self.tcp_source else "destination", meter.key)]
            row[SENT] += meter.sent
            row[RECEIVED] += meter.received
        tcp = [[self._labels(reporter, peer, service, "tcp", flags), values]
               for (reporter, (peer, service, flags)), values in tcp_rows.items()]
        return {"requests": requests, "tcp": tcp, "certificate_expiry": self.certificate_expiry}

    def _labels(self, reporter: str, peer: PeerMetadata, service: ServiceTags, protocol: str,
                flags: str, *code: str, principal: str | None = None) -> list[str]:
        """Label values in LABEL_NAMES order (TCP_LABEL_NAMES order when no code is given).

        `principal` is the peer's verified SPIFFE ID, None on plaintext: destination_principal
        on the source side; source_principal (and connection_security_policy "mutual_tls") on
        the destination side.
        """
        source_principal = destination_principal = UNKNOWN
        if reporter == "source":
            src, dst, policy = self.local, peer, UNKNOWN
            destination_principal = principal or UNKNOWN
        elif principal is not None:
            src, dst, policy, source_principal = peer, self.local, "mutual_tls", principal
        else:
            src, dst, policy = peer, self.local, "none"
        return [reporter, src.workload, src.namespace, source_principal, src.app, src.version,
                dst.workload, dst.namespace, destination_principal, dst.app, dst.version,
                service.service, service.name, service.namespace, protocol, *code, flags, policy]


def merge(parts: list[dict]) -> dict:
    """Sum several workers' exports into one (same shape)."""
    out: dict = {"requests": {}, "tcp": {}, "certificate_expiry": None}
    for part in parts:
        for kind in ("requests", "tcp"):
            into = out[kind]
            for labels, values in part[kind]:
                key = tuple(labels)
                have = into.get(key)
                if have is None:
                    into[key] = list(values)
                else:
                    for i, v in enumerate(values):
                        have[i] += v
        expiry = part.get("certificate_expiry")
        if expiry is not None and (out["certificate_expiry"] is None or expiry < out["certificate_expiry"]):
            out["certificate_expiry"] = expiry   # the soonest expiry is the one that matters
    out["requests"] = [[list(k), v] for k, v in out["requests"].items()]
    out["tcp"] = [[list(k), v] for k, v in out["tcp"].items()]
    return out


class _Exported:
    """A prometheus_client collector over one export (what generate_latest reads)."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        rows = self.data["requests"]
        total = CounterMetricFamily("istio_requests_total",
                                    "Requests handled by the sidecar.", labels=LABEL_NAMES)
        helps = ("Duration of requests, milliseconds.", "Request body sizes, bytes.",
                 "Response body sizes, bytes.")
        hists = [HistogramMetricFamily(name, text, labels=LABEL_NAMES)
                 for name, text in zip(HISTOGRAMS, helps)]
        messages = [CounterMetricFamily(name, text, labels=LABEL_NAMES) for name, text in (
            ("istio_request_messages_total", "gRPC messages sent by the client, per call series."),
            ("istio_response_messages_total", "gRPC messages sent by the server, per call series."))]
        protocol = LABEL_NAMES.index("request_protocol")
        for labels, v in rows:
            total.add_metric(labels, v[COUNT])
            if labels[protocol] == "grpc":
                messages[0].add_metric(labels, v[REQUEST_MESSAGES])
                messages[1].add_metric(labels, v[RESPONSE_MESSAGES])
            for hist, start, sum_slot in zip(hists, (DURATION_BUCKETS, REQUEST_BYTES_BUCKETS,
                                                     RESPONSE_BYTES_BUCKETS),
                                             (DURATION_SUM, REQUEST_BYTES_SUM, RESPONSE_BYTES_SUM)):
                hist.add_metric(labels, _cumulative(v[start:start + _NB]), v[sum_slot])
        yield total
        yield from hists
        yield from messages
        tcp_helps = ("TCP connections opened.", "TCP connections closed.",
                     "Bytes sent towards the downstream on TCP connections.",
                     "Bytes received from the downstream on TCP connections.")
        families = [CounterMetricFamily(name, text, labels=TCP_LABEL_NAMES)
                    for name, text in zip(TCP_COUNTERS, tcp_helps)]
        for labels, v in self.data["tcp"]:
            for family, slot in zip(families, (OPENED, CLOSED, SENT, RECEIVED)):
                family.add_metric(labels, v[slot])
        yield from families
        cert = GaugeMetricFamily(CERT_EXPIRY, "Expiry of the sidecar's workload certificate, "
                                 "Unix seconds (no sample until the sidecar has a certificate).")
        if self.data.get("certificate_expiry") is not None:
            cert.add_metric([], self.data["certificate_expiry"])
        yield cert


def _cumulative(counts: list) -> list[tuple[str, float]]:
    """Non-cumulative bucket counts -> Prometheus' cumulative (le, count) pairs."""
    out, running = [], 0
    for bound, count in zip(BUCKETS, counts):
        running += count
        out.append((format(bound, "g"), running))
    out.append(("+Inf", running + counts[-1]))
    return out


def render(data: dict) -> str:
    """Prometheus text exposition of one (merged) export; every family always has its TYPE line."""
    # prometheus_client (and the HTTP server modules it brings, ~2 MiB) is loaded on the first
    # scrape, not at start: counting on the request path never needs it.
    from prometheus_client.exposition import generate_latest
    return generate_latest(_Exported(data)).decode()
