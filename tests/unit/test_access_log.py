"""Access log: Envoy's default line, Istio's JSON keys, response flags, the buffered writer."""

from __future__ import annotations

import asyncio
import calendar
import io
import json
import os
import signal
from contextlib import contextmanager

import pytest

from remora.proxy.telemetry import access_log as telemetry
from remora.proxy.telemetry.access_log import (
    AccessLogRecord,
    format_envoy_default,
    format_json,
    format_start_time,
    join_flags,
    long_flags,
)
from remora.proxy.telemetry.access_log_writer import AccessLogWriter

# 2016-04-15T20:17:00.310Z, the example in Envoy's docs
T0 = calendar.timegm((2016, 4, 15, 20, 17, 0)) + 0.310


def record(**kw) -> AccessLogRecord:
    base = dict(
        start_time=T0, method="GET", path="/productpage?u=1", protocol="HTTP/1.1",
        response_code=503, response_flags=join_flags([telemetry.URX, telemetry.UF]),
        bytes_received=0, bytes_sent=91, duration_ms=12, upstream_service_time="-",
        x_forwarded_for="-", user_agent="curl/8.5.0", request_id="a1b2-c3",
        authority="productpage:9080", upstream_host="127.0.0.1:9081",
        upstream_cluster="outbound|9080||productpage.default.svc.cluster.local",
        route_name="default",
    )
    base.update(kw)
    return AccessLogRecord(**base)


def test_default_format_byte_for_byte():
    """The text line is exactly Envoy's default format, "-" for missing, flags joined by ","."""
    expected = (
        '[2016-04-15T20:17:00.310Z] "GET /productpage?u=1 HTTP/1.1" 503 UF,URX 0 91 12 - '
        '"-" "curl/8.5.0" "a1b2-c3" "productpage:9080" "127.0.0.1:9081"\n'
    )
    assert format_envoy_default(record()) == expected


def test_default_format_success_and_empty_values():
    """No flags prints "-", an empty string prints "-", upstream service time is printed as given."""
    line = format_envoy_default(record(
        response_code=200, response_flags="-", upstream_service_time="7",
        x_forwarded_for="10.0.0.1", user_agent="", upstream_host="-"))
    assert line == (
        '[2016-04-15T20:17:00.310Z] "GET /productpage?u=1 HTTP/1.1" 200 - 0 91 12 7 '
        '"10.0.0.1" "-" "a1b2-c3" "productpage:9080" "-"\n'
    )


def test_no_response_is_code_zero():
    """A request that got no response logs response code 0, as Envoy does."""
    line = format_envoy_default(AccessLogRecord(start_time=T0, method="POST", path="/x",
                                                response_flags=telemetry.DC))
    assert line == ('[2016-04-15T20:17:00.310Z] "POST /x HTTP/1.1" 0 DC 0 0 0 - '
                    '"-" "-" "-" "-" "-"\n')


def test_start_time_utc_millis_and_cache_follows_seconds():
    """START_TIME is UTC with truncated milliseconds and stays right across second changes."""
    assert format_start_time(T0) == "2016-04-15T20:17:00.310Z"
    assert format_start_time(T0 + 0.6899) == "2016-04-15T20:17:00.999Z"
    assert format_start_time(T0 + 0.690) == "2016-04-15T20:17:01.000Z"
    assert format_start_time(T0 + 86400) == "2016-04-16T20:17:00.310Z"
    assert format_start_time(T0) == "2016-04-15T20:17:00.310Z"


def test_flags_join_in_envoy_order_and_long_names():
    """Flags join in Envoy's fixed order without duplicates; long names map one to one."""
    assert join_flags([]) == "-"
    assert join_flags(["URX", "UF", "UF"]) == "UF,URX"
    assert join_flags(["DC", "UH", "UT"]) == "UH,UT,DC"
    assert long_flags("UF,URX") == "UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
    assert long_flags("-") == "-"
    for flag in ("UH", "UF", "UO", "NR", "URX", "UT", "DC", "UC", "LR", "UR", "DPE", "UPE",
                 "DI", "FI", "RBAC"):
        assert getattr(telemetry, flag) == flag
        assert flag in telemetry.RESPONSE_FLAGS_LONG


def test_json_keys_types_and_nulls():
    """JSON uses Istio's keys in Istio's order, numbers as numbers and null for unset values."""
    line = format_json(record(upstream_service_time="5"))
    assert line.endswith("\n") and line.count("\n") == 1
    obj = json.loads(line)
    assert list(obj) == [
        "start_time", "route_name", "method", "path", "protocol", "response_code",
        "response_flags", "response_code_details", "bytes_received", "bytes_sent", "duration", "upstream_service_time",
        "x_forwarded_for", "user_agent", "request_id", "authority", "upstream_host",
        "upstream_cluster", "trace_id", "span_id", "grpc_status",
    ]
    assert obj["start_time"] == "2016-04-15T20:17:00.310Z"
    assert obj["response_code"] == 503 and obj["duration"] == 12 and obj["bytes_sent"] == 91
    assert obj["response_flags"] == "UF,URX"
    assert obj["upstream_service_time"] == "5"
    assert obj["x_forwarded_for"] is None and obj["trace_id"] is None
    assert obj["response_code_details"] is None
    assert obj["upstream_cluster"] == "outbound|9080||productpage.default.svc.cluster.local"
    assert json.loads(format_json(record(response_flags="-")))["response_flags"] == "-"
    assert obj["grpc_status"] is None


@pytest.mark.parametrize("value, name", [
    (b"0", "Ok"), (b"1", "Canceled"), (b"14", "Unavailable"), (b"16", "Unauthenticated"),
    (b"42", "42"), (None, "-"), (b"", "-"),
])
def test_grpc_status_is_logged_as_envoys_grpc_status_operator(value, name):
    """A gRPC call's status is logged by its CamelCase name (Envoy's %GRPC_STATUS%), a
    number when out of range, and null in JSON when the call ended without one."""
    assert telemetry.grpc_status_name(value) == name
    logged = json.loads(format_json(record(grpc_status=name)))["grpc_status"]
    assert logged == (None if name == "-" else name)


def test_writer_buffers_until_flush():
    """log() only buffers; flush() writes every buffered line in order."""
    out = io.StringIO()
    w = AccessLogWriter(out)
    w.log(record(request_id="one"))
    w.log(record(request_id="two"))
    assert out.getvalue() == ""
    w.flush()
    assert out.getvalue() == format_envoy_default(record(request_id="one")) + \
        format_envoy_default(record(request_id="two"))


def test_writer_flushes_when_buffer_is_large():
    """Buffered text past flush_bytes is written without waiting for a flush call."""
    out = io.StringIO()
    line = format_envoy_default(record())
    w = AccessLogWriter(out, flush_bytes=len(line) * 3)
    w.log(record())
    w.log(record())
    assert out.getvalue() == ""
    w.log(record())
    assert out.getvalue() == line * 3


def test_writer_json_format():
    """fmt="json" writes format_json lines."""
    out = io.StringIO()
    w = AccessLogWriter(out, fmt="json")
    w.log(record())
    w.close()
    assert out.getvalue() == format_json(record())


async def test_writer_periodic_flush_and_close():
    """start() flushes on a timer; close() flushes the rest and stops the timer."""
    out = io.StringIO()
    w = AccessLogWriter(out)
    w.start(asyncio.get_running_loop(), interval=0.01)
    w.log(record(request_id="tick"))
    await asyncio.sleep(0.1)
    assert "tick" in out.getvalue()
    w.log(record(request_id="last"))
    w.close()
    assert "last" in out.getvalue()
    assert w._timer is None


def test_disabled_writer_is_noop():
    """A disabled writer (or fmt="off") reports enabled=False and writes nothing."""
    for w in (AccessLogWriter.disabled(), AccessLogWriter(io.StringIO(), fmt="off")):
        assert not w.enabled
        w.log(record())
        w.flush()
        w.close()
    out = io.StringIO()
    w = AccessLogWriter(out, fmt="off")
    w.log(record())
    w.close()
    assert out.getvalue() == ""
    with pytest.raises(ValueError):
        AccessLogWriter(io.StringIO(), fmt="xml")


@contextmanager
def must_not_block(seconds: float = 3.0):
    """Fail (instead of hanging) if the body blocks in a syscall."""
    def fire(signum, frame):
        raise TimeoutError("blocked")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fill_pipe(fd: int) -> None:
    os.set_blocking(fd, False)
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)


def drain_pipe(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            chunks.append(data)
    except BlockingIOError:
        pass
    return b"".join(chunks)


def test_full_pipe_does_not_block_and_keeps_lines():
    """With a full (blocking) pipe, flush returns at once and the lines go out later."""
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    try:
        fill_pipe(w)
        writer = AccessLogWriter(stream)
        with must_not_block():
            writer.log(record(request_id="queued"))
            writer.flush()
        assert writer.pending_bytes > 0 and writer.dropped == 0
        drain_pipe(r)
        with must_not_block():
            writer.flush()
        assert writer.pending_bytes == 0
        assert drain_pipe(r) == format_envoy_default(record(request_id="queued")).encode()
    finally:
        stream.close()
        os.close(r)


def test_full_pipe_over_cap_drops_new_lines():
    """When the reader is stuck past max_pending_bytes, new lines are dropped and counted."""
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    try:
        fill_pipe(w)
        writer = AccessLogWriter(stream, flush_bytes=1, max_pending_bytes=100)
        with must_not_block():
            for _ in range(5):
                writer.log(record())
        assert writer.dropped >= 3
    finally:
        stream.close()
        os.close(r)


def test_broken_pipe_never_raises():
    """A pipe whose reader is gone drops lines and counts them instead of raising."""
    r, w = os.pipe()
    os.close(r)
    stream = os.fdopen(w, "w")
    try:
        writer = AccessLogWriter(stream)
        writer.log(record())
        writer.flush()
        writer.log(record())
        writer.close()
        assert writer.dropped == 2
    finally:
        try:
            stream.close()
        except BrokenPipeError:
            pass


def test_failing_stream_object_never_raises():
    """A stream object whose write() raises loses the lines, not the caller."""
    class Broken(io.TextIOBase):
        def write(self, s):
            raise BrokenPipeError("gone")

    writer = AccessLogWriter(Broken())
    writer.log(record())
    writer.flush()
    writer.log(record())
    writer.close()
    assert writer.dropped == 2
