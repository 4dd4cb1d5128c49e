"""Access log: Envoy's response flags, its default line format, Istio's JSON keys, and a
buffered writer that never stalls or breaks the proxy.

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
- ``AccessLogWriter.log`` only appends to a list: the request path pays for formatting,
  never for I/O. Flushes happen when ~64 KiB are buffered, on a timer, or on close.
- Writing never blocks the event loop and never raises into the caller. Pipes and sockets
  are polled before each chunk; what does not fit stays queued (up to a cap, beyond which
  whole new lines are dropped), and a broken stream drops lines. ``dropped`` counts lines.
"""

from __future__ import annotations

import asyncio
import io
import os
import select
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec

__all__ = [
    "AccessLogRecord",
    "AccessLogWriter",
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

# --------------------------------------------------------------------------- writer

FLUSH_BYTES = 64 * 1024
MAX_PENDING_BYTES = 1024 * 1024
_CHUNK = getattr(select, "PIPE_BUF", 512)  # a polled-writable pipe takes this much


class AccessLogWriter:
    """Buffers formatted lines and writes them out in batches; see the module rules."""

    def __init__(self, stream: TextIO | Any = None, fmt: str = "text", *,
                 flush_bytes: int = FLUSH_BYTES, max_pending_bytes: int = MAX_PENDING_BYTES):
        if fmt not in FORMATTERS and fmt != "off":
            raise ValueError(f"access log format must be text, json or off, not {fmt!r}")
        self.enabled = fmt != "off"
        self.format = fmt
        self.dropped = 0          # lines lost to a broken or persistently full stream
        self._format = FORMATTERS.get(fmt, format_envoy_default)
        self._stream = sys.stdout if stream is None else stream
        self._flush_bytes = flush_bytes
        self._max_pending = max_pending_bytes
        self._lines: list[str] = []
        self._size = 0
        self._pending = b""       # encoded bytes a full pipe did not take yet
        self._broken = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._fd, self._poll = self._probe(self._stream) if self.enabled else (None, None)

    @classmethod
    def disabled(cls) -> AccessLogWriter:
        """A writer whose log() does nothing; check ``.enabled`` to skip building records."""
        return cls(io.StringIO(), fmt="off")

    @staticmethod
    def _probe(stream: Any) -> tuple[int | None, Any]:
        """The fd to write to directly, and a poller when that fd can fill up."""
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None, None
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            return fd, poller
        return fd, None

    # -- hot path

    def log(self, rec: AccessLogRecord, fmt: Callable[[AccessLogRecord], str] | None = None) -> None:
        """Buffer one record, formatted with `fmt` (a listener's choice) or the writer's format."""
        if not self.enabled:
            return
        if self._broken:
            self.dropped += 1
            return
        line = (fmt or self._format)(rec)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._flush_bytes:
            self.flush()

    # -- output

    def flush(self) -> None:
        """Write what is buffered, as far as the stream takes it without blocking."""
        lines, self._lines, self._size = self._lines, [], 0
        if self._broken:
            self.dropped += len(lines)
            return
        try:
            if self._fd is None:
                self._write_stream(lines)
            else:
                self._write_fd(lines)
        except Exception:  # a log sink must never take the proxy down
            self._broken = True
            self.dropped += len(lines)

    def _write_stream(self, lines: list[str]) -> None:
        if not lines:
            return
        text = "".join(lines)
        try:
            if isinstance(self._stream, io.TextIOBase) or hasattr(self._stream, "encoding"):
                self._stream.write(text)
            else:
                self._stream.write(text.encode("utf-8", "backslashreplace"))
            self._stream.flush()
        except (BlockingIOError, InterruptedError):
            self.dropped += len(lines)   # no way to know how much went out; count it lost
        except (OSError, ValueError):
            self._broken = True
            self.dropped += len(lines)

    def _write_fd(self, lines: list[str]) -> None:
        if lines:
            if len(self._pending) > self._max_pending:
                self.dropped += len(lines)   # reader stuck: keep what's queued, drop new
            else:
                self._pending += "".join(lines).encode("utf-8", "backslashreplace")
        data = memoryview(self._pending)
        sent = 0
        try:
            while sent < len(data):
                if self._poll is not None:
                    if not self._poll.poll(0):
                        break
                    n = os.write(self._fd, data[sent:sent + _CHUNK])
                else:
                    n = os.write(self._fd, data[sent:])
                sent += n
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # EPIPE, EBADF, ...
            self._broken = True
            self.dropped += self._pending.count(b"\n", sent)
            data.release()
            self._pending = b""
            return
        data.release()
        self._pending = self._pending[sent:]

    @property
    def pending_bytes(self) -> int:
        """Bytes written by flush() that the stream has not accepted yet."""
        return len(self._pending)

    # -- lifecycle

    def start(self, loop: asyncio.AbstractEventLoop | None = None, interval: float = 0.1) -> None:
        """Flush every ``interval`` seconds on ``loop`` until close()."""
        if not self.enabled or self._closed:
            return
        loop = loop or asyncio.get_running_loop()

        def tick() -> None:
            if self._closed:
                return
            if self._lines or self._pending:
                self.flush()
            self._timer = loop.call_later(interval, tick)

        self._timer = loop.call_later(interval, tick)

    def close(self) -> None:
        """Stop the timer and flush what is left (as far as the stream takes it)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.enabled:
            self.flush()
