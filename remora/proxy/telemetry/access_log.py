"""Access log: Envoy's response flags, its default line format and Istio's JSON keys.

Rules this module keeps:

- ``format_envoy_default`` produces Envoy's default access-log format byte for byte:

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\\n

  (one line, single spaces). START_TIME is UTC with milliseconds, ``2016-04-15T20:17:00.310Z``.
  A missing or empty value prints as ``-``; a response code of 0 means none was sent.
- Several response flags join with "," in Envoy's fixed order (``join_flags``), whatever
  order they were raised in, so log lines for the same outcome compare equal.
- ``format_json`` uses the key names of Istio's default JSON access log, plus ``span_id``
  (the proxy's span; ``trace_id`` is Istio's) and ``grpc_status`` (Envoy's %GRPC_STATUS%,
  null for requests that are not gRPC calls; the text format stays Envoy's default line). As Envoy's JSON formatter does, numbers
  stay numbers and unset values are null; RESPONSE_FLAGS keeps its "-" because Envoy
  prints it as a value, not as "unset".
- The writer that buffers the lines and never stalls the proxy is access_log_writer.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

__all__ = [
    "AccessLogRecord",
    "access_record",
    "RESPONSE_FLAGS_LONG",
    "format_envoy_default",
    "format_json",
    "format_start_time",
    "FORMATTERS",
    "join_flags",
    "long_flags",
]

# ------------------------------------------------------------------ response flags

UH = "UH"      # no healthy upstream host (503)
UF = "UF"      # upstream connection failure (503)
UO = "UO"      # upstream overflow: circuit breaker open (503)
NR = "NR"      # no route configured (404)
URX = "URX"    # upstream retry limit exceeded
UT = "UT"      # upstream request timeout (504)
DC = "DC"      # downstream connection termination
UC = "UC"      # upstream connection termination
LR = "LR"      # connection local reset
UR = "UR"      # upstream remote reset
SI = "SI"      # stream idle timeout (408, or a cut-short response)
DPE = "DPE"    # downstream HTTP protocol error
UPE = "UPE"    # upstream HTTP protocol error
DI = "DI"      # request delayed by fault injection
FI = "FI"      # request aborted by fault injection
RBAC = "RBAC"  # denied by authorization policy (Remora; Envoy reports this in details)
JWT = "JWT"    # JWT verification failed (Remora; Envoy's details: jwt_authn_access_denied{..})

# Envoy's long names (ResponseFlagUtils), for %RESPONSE_FLAGS_LONG%.
RESPONSE_FLAGS_LONG: dict[str, str] = {
    UH: "NoHealthyUpstream",
    UT: "UpstreamRequestTimeout",
    LR: "LocalReset",
    UR: "UpstreamRemoteReset",
    UF: "UpstreamConnectionFailure",
    UC: "UpstreamConnectionTermination",
    UO: "UpstreamOverflow",
    NR: "NoRouteFound",
    DI: "DelayInjected",
    FI: "FaultInjected",
    DC: "DownstreamConnectionTermination",
    URX: "UpstreamRetryLimitExceeded",
    SI: "StreamIdleTimeout",
    DPE: "DownstreamProtocolError",
    UPE: "UpstreamProtocolError",
    RBAC: "RbacAccessDenied",
    JWT: "JwtAuthnAccessDenied",
}
# Envoy joins flags in its enum order (ALL_RESPONSE_STRINGS_FLAGS); the dict above is in
# that order, with Remora's RBAC and JWT last.
_FLAG_RANK = {flag: i for i, flag in enumerate(RESPONSE_FLAGS_LONG)}


def join_flags(flags: Iterable[str]) -> str:
    """The %RESPONSE_FLAGS% value for a set of flags: Envoy's order, "," between, "-" if none."""
    unique = set(flags)
    if not unique:
        return "-"
    return ",".join(sorted(unique, key=lambda f: (_FLAG_RANK.get(f, len(_FLAG_RANK)), f)))


def long_flags(short: str) -> str:
    """%RESPONSE_FLAGS_LONG% for a %RESPONSE_FLAGS% value."""
    if not short or short == "-":
        return "-"
    return ",".join(RESPONSE_FLAGS_LONG.get(f, f) for f in short.split(","))


# --------------------------------------------------------------------------- record

@dataclass(slots=True)
class AccessLogRecord:
    """One finished request, as the access log needs it. Strings use "-" for missing."""

    start_time: float = 0.0            # epoch seconds
    method: str = "-"
    path: str = "-"                    # the original path (before any rewrite)
    protocol: str = "HTTP/1.1"
    response_code: int = 0             # 0: no response was sent downstream
    response_flags: str = "-"          # see join_flags
    response_code_details: str = "-"   # Envoy's %RESPONSE_CODE_DETAILS%, where Remora sets one
    bytes_received: int = 0            # body bytes
    bytes_sent: int = 0                # body bytes
    duration_ms: int = 0
    upstream_service_time: str = "-"   # x-envoy-upstream-service-time, as sent
    x_forwarded_for: str = "-"
    user_agent: str = "-"
    request_id: str = "-"
    authority: str = "-"
    upstream_host: str = "-"           # "ip:port" of the endpoint that answered
    upstream_cluster: str = "-"
    route_name: str = "-"
    trace_id: str = "-"
    span_id: str = "-"                 # the proxy's span in that trace
    grpc_status: str = "-"             # a gRPC call's status, Envoy's %GRPC_STATUS% (CamelCase name)


def access_record(info) -> AccessLogRecord:
    """The access-log record of a finished request, from its RequestInfo alone (built only
    when logging is on; START_TIME is now minus the request's duration)."""
    head = info.head
    duration = info.ended_at - info.started_at
    cluster, route = info.cluster, info.route
    return AccessLogRecord(
        start_time=time.time() - duration,
        method=head.method.decode("latin-1"),
        path=head.path.decode("latin-1"),
        protocol="HTTP/" + head.version.decode(),
        response_code=info.status,
        response_flags=info.flags,
        response_code_details=info.details,
        bytes_received=info.bytes_received,
        bytes_sent=info.bytes_sent,
        duration_ms=int(duration * 1000),
        upstream_service_time=info.upstream_time.decode() or "-",
        x_forwarded_for=head.forwarded_for.decode("latin-1") or "-",
        user_agent=head.user_agent.decode("latin-1") or "-",
        request_id=head.request_id.decode("latin-1") or "-",
        authority=head.authority.decode("latin-1") or "-",
        upstream_host=info.upstream_host,
        upstream_cluster=cluster.name if cluster is not None else "-",
        route_name=route.name if route is not None else "-",
        trace_id=info.trace.trace_hex,
        span_id=info.trace.span_hex,
        grpc_status=grpc_status_name(getattr(info, "grpc_status", None)) if head.grpc else "-",
    )


# Envoy's %GRPC_STATUS% default rendering (CAMEL_STRING), by code.
_GRPC_STATUS_NAMES = ("Ok", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded",
                      "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
                      "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented", "Internal",
                      "Unavailable", "DataLoss", "Unauthenticated")


def grpc_status_name(value: bytes | None) -> str:
    """%GRPC_STATUS% of a grpc-status value: its CamelCase name, the number when out of range,
    "-" when the call ended without one (reset, cut off)."""
    if not value:
        return "-"
    if value.isdigit() and int(value) < len(_GRPC_STATUS_NAMES):
        return _GRPC_STATUS_NAMES[int(value)]
    return value.decode("latin-1")


# ------------------------------------------------------------------------ formatting

# The second-resolution part of START_TIME changes at most once a second; strftime costs
# more than the rest of the line, so keep the last one.
_ts_second = -1
_ts_prefix = ""


def format_start_time(t: float) -> str:
    """Envoy's %START_TIME%: ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC, milliseconds truncated."""
    global _ts_second, _ts_prefix
    # +0.5 us absorbs binary float error (x.310 stored as x.30999...) without moving
    # any real timestamp by a visible amount.
    second, ms = divmod(int(t * 1000.0 + 0.0005), 1000)
    if second != _ts_second:
        _ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _ts_second = second
    return f"{_ts_prefix}.{ms:03d}Z"


def format_envoy_default(rec: AccessLogRecord) -> str:
    """One line in Envoy's default access-log format, newline included."""
    flags = rec.response_flags or "-"
    ust = rec.upstream_service_time or "-"
    xff = rec.x_forwarded_for or "-"
    ua = rec.user_agent or "-"
    rid = rec.request_id or "-"
    auth = rec.authority or "-"
    host = rec.upstream_host or "-"
    return (
        f'[{format_start_time(rec.start_time)}] "{rec.method or "-"} {rec.path or "-"} '
        f'{rec.protocol or "-"}" {rec.response_code} {flags} {rec.bytes_received} '
        f'{rec.bytes_sent} {rec.duration_ms} {ust} "{xff}" "{ua}" "{rid}" "{auth}" "{host}"\n'
    )


def _opt(value: str) -> str | None:
    return None if not value or value == "-" else value


_json_encode = msgspec.json.Encoder().encode


def format_json(rec: AccessLogRecord) -> str:
    """One JSON object per line, keys and order of Istio's default JSON access log."""
    return _json_encode({
        "start_time": format_start_time(rec.start_time),
        "route_name": _opt(rec.route_name),
        "method": _opt(rec.method),
        "path": _opt(rec.path),
        "protocol": _opt(rec.protocol),
        "response_code": rec.response_code,
        "response_flags": rec.response_flags or "-",
        "response_code_details": _opt(rec.response_code_details),
        "bytes_received": rec.bytes_received,
        "bytes_sent": rec.bytes_sent,
        "duration": rec.duration_ms,
        "upstream_service_time": _opt(rec.upstream_service_time),
        "x_forwarded_for": _opt(rec.x_forwarded_for),
        "user_agent": _opt(rec.user_agent),
        "request_id": _opt(rec.request_id),
        "authority": _opt(rec.authority),
        "upstream_host": _opt(rec.upstream_host),
        "upstream_cluster": _opt(rec.upstream_cluster),
        "trace_id": _opt(rec.trace_id),
        "span_id": _opt(rec.span_id),
        "grpc_status": _opt(rec.grpc_status),
    }).decode() + "\n"


FORMATTERS: dict[str, Callable[[AccessLogRecord], str]] = {
    "text": format_envoy_default,
    "json": format_json,
}
