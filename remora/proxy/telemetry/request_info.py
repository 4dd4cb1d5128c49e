"""The request record (Envoy's StreamInfo): what happened to one request, filled as it goes.

The Exchange (the router's stream) fills its RequestInfo as the request goes by; the
access log (telemetry.access_record), Istio metrics (IstioMetrics.record_outbound /
record_inbound) and tracing (Tracer.finish) read only this record when the request has
finished, never the Exchange. tests/unit/test_request_info.py builds one by hand and feeds
all three, so a consumer that reached for anything else would fail there.

Rules:
- The record is the object that already carries these fields: Exchange subclasses
  RequestInfo and writes `self.status`, `self.bytes_sent`, ... into the record's slots.
  A request pays for no second object, no copy and no indirection (plain slots, no
  properties); the fields exist once. Everything else on the Exchange (routing, attempts,
  retries, flow control) is the router's and no consumer reads it.
- Request attributes (method, path, authority, request id, user agent, scheme, protocol
  version) and the downstream peer (`peer_ip`, `peer_cert`: the verified caller of an
  inbound mTLS request, `peer_metadata`: the calling sidecar's metadata) are read from
  `head`, the parsed request head, which the record references rather than copies (as
  Envoy's StreamInfo refers to the request headers). Nothing decodes them before a
  consumer asks.
- Times are the event loop's clock (seconds): `started_at` is the read that completed the
  request head, `ended_at` the moment the request finished (set once, by the listener,
  before any consumer runs). Durations are `ended_at - started_at`; consumers turn them
  into wall time when they run, which is the end of the request.
- Strings use "-" for missing, as Envoy's access log prints them; `status` 0 means no
  response went downstream; `upstream_time` is the x-envoy-upstream-service-time value as
  sent (bytes, b"" when none).
- `route` and `cluster` are the router's objects (None when no route matched, or before
  a destination was picked); consumers read their names and, for Istio metrics and span
  names, the cluster's service tags (`telemetry`), `service` and `port`.
"""
from __future__ import annotations

__all__ = ["RequestInfo"]


class RequestInfo:
    """One request's record: timings, response code and flags, bytes, peers, names, trace."""

    __slots__ = (
        "head", "started_at", "ended_at", "status", "flags", "details", "bytes_received", "bytes_sent",
        "upstream_time", "upstream_host", "route", "cluster", "peer_metadata", "peer_id", "trace",
        "grpc_status",   # gRPC calls only (bytes, from the response or a local reply); unset otherwise
        "request_messages", "response_messages",   # gRPC calls only: MessageCounter of each direction
    )
    # Slots set only for some requests, read with getattr(record, name, default): a gRPC call's
    # status and message counts (nothing to write for the others on the hot path).
    OPTIONAL = frozenset({"grpc_status", "request_messages", "response_messages"})

    def __init__(self, head, started_at: float, route=None, trace=None) -> None:
        # Exchange.__init__ writes these same slots itself (one call less per request).
        self.head = head                # the request head (RequestHead): request and downstream peer
        self.started_at = started_at    # loop time: the read that completed the request head
        self.ended_at = started_at      # loop time: the request finished (set by the listener)
        self.status = 0                 # response code sent downstream (0: none)
        self.flags = "-"                # Envoy's %RESPONSE_FLAGS% (telemetry.join_flags order)
        self.details = "-"              # Envoy's %RESPONSE_CODE_DETAILS%, where Remora sets one
        self.bytes_received = 0         # request body bytes from downstream
        self.bytes_sent = 0             # response body bytes to downstream
        self.upstream_time = b""        # x-envoy-upstream-service-time as sent, in ms
        self.upstream_host = "-"        # "ip:port" of the endpoint of the last attempt
        self.route = route              # the matched route (None: no route, NR)
        self.cluster = None             # the upstream cluster picked for the request
        self.peer_metadata = None       # the answering sidecar's metadata (Istio metrics)
        self.peer_id = None             # the upstream's verified SPIFFE ID on an mTLS connection
        self.trace = trace              # the proxy's span (tracing.TraceContext)

    def __repr__(self) -> str:
        return (f"RequestInfo(status={self.status}, flags={self.flags!r}, "
                f"upstream_host={self.upstream_host!r})")
