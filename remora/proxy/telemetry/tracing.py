"""Trace context: W3C Trace Context and B3 propagation, the sampling decision, span records.

Rules this module keeps:

- Extraction: a valid `traceparent` (W3C) is read first, then the single `b3` header,
  then the X-B3-* headers. Every format that came in goes out again, all carrying the
  proxy's span: the same trace id, a new span id (the proxy's own), whose parent is the
  span that came in. With no context at all the request starts a new trace, sent out as
  W3C `traceparent` (Istio's default with an OpenTelemetry provider).
- Invalid values (wrong length, not lower-case hex, all-zero ids, W3C version ff) are
  ignored as if absent, as the W3C spec asks: the request then starts a new trace.
  `tracestate` travels unchanged, and only with a valid `traceparent`.
- Sampling is parent-based: an incoming decision (W3C sampled flag, X-B3-Sampled, the b3
  sampling state, B3 debug) is kept; without one a decision is drawn with the listener's
  ratio (Istio's randomSamplingPercentage / 100). B3 debug is forwarded as debug.
- Unsampled requests pay only for ids and header bytes: ids are ints from
  random.getrandbits, formatted once into the outgoing header lines; no span object. A
  trace id that came in a traceparent stays the text it came as (`trace_text`), forwarded
  as is; it becomes an int only if something reads `trace_id` (a span, the access log).
- A sampled request, when spans are reported, gets one SpanRecord at the end of its
  exchange, built from its request record (request_info.RequestInfo) alone; the exporter (otlp.py) turns
  records into OTLP off the event loop.
"""
from __future__ import annotations

import random
import re
import time

__all__ = ["B3_MULTI", "B3_SINGLE", "W3C", "SpanRecord", "TraceContext", "Tracer", "begin", "inject"]

W3C, B3_MULTI, B3_SINGLE = 1, 2, 4
CLIENT, SERVER = "client", "server"   # span kinds: outbound listener, inbound listener

# The header names read here are message.TRACE_HEADERS (the codec collects them into trace_in).

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z", re.S)
_HEX16 = re.compile(rb"[0-9a-fA-F]{16}\Z")
_HEX16_32 = re.compile(rb"(?:[0-9a-fA-F]{16}){1,2}\Z")
_ODD_HEX = frozenset(b"13579bdf")
_ZERO_TRACE = b"0" * 32
_SAMPLED = {b"1": True, b"true": True, b"0": False, b"false": False}

_bits = random.getrandbits
_random = random.random


class TraceContext:
    """The proxy's span in a trace: ids as ints, the decision, and how to send it on."""

    __slots__ = ("_trace_id", "trace_text", "span_id", "parent_id", "sampled", "formats", "tracestate",
                 "debug", "short_id")

    def __init__(self, trace_id: int, span_id: int, parent_id: int, sampled: bool,
                 formats: int, tracestate: bytes | None = None, debug: bool = False,
                 short_id: bool = False) -> None:
        self._trace_id = trace_id
        self.trace_text = None          # the trace id's 32 hex digits, when it came as them (W3C)
        self.span_id = span_id          # the proxy's span: what the upstream sees as parent
        self.parent_id = parent_id      # the span that came in (0: the proxy's span is a root)
        self.sampled = sampled
        self.formats = formats          # W3C | B3_MULTI | B3_SINGLE: what goes out
        self.tracestate = tracestate
        self.debug = debug
        self.short_id = short_id        # a 64-bit B3 trace id: B3 keeps sending 16 hex digits

    @property
    def trace_id(self) -> int:
        trace_id = self._trace_id
        if trace_id is None:
            trace_id = self._trace_id = int(self.trace_text, 16)
        return trace_id

    @trace_id.setter
    def trace_id(self, value: int) -> None:
        self._trace_id = value
        self.trace_text = None

    @property
    def trace_hex(self) -> str:
        if self.trace_text is not None:
            return self.trace_text.decode()
        return "%032x" % self.trace_id

    @property
    def span_hex(self) -> str:
        return "%016x" % self.span_id


def _new_id(bits: int) -> int:
    return _bits(bits) or 1   # all-zero ids are invalid in both formats


def begin(trace_in: list | None, ratio: float) -> TraceContext:
    """The proxy's span for a request whose trace headers were `trace_in` ([(lname, value)])."""
    if trace_in is None:
        return TraceContext(_bits(128) or 1, _bits(64) or 1, 0, _random() < ratio, W3C)
    if len(trace_in) == 1 and trace_in[0][0] == b"traceparent":
        # The common case inside a mesh: one traceparent from the previous hop.
        ctx = _from_traceparent(trace_in[0][1], None)
        if ctx is not None:
            ctx.span_id = _bits(64) or 1
            return ctx
    headers: dict[bytes, bytes] = {}
    traceparents = 0
    for name, value in trace_in:
        if name == b"tracestate" and name in headers:
            headers[name] += b"," + value        # several tracestate lines are one list
        else:
            traceparents += name == b"traceparent"
            headers.setdefault(name, value)
    ctx = None
    if traceparents == 1:
        ctx = _from_traceparent(headers[b"traceparent"], headers.get(b"tracestate"))
    b3 = headers.get(b"b3")
    if b3 is not None:
        single = _from_b3_single(b3)
        ctx = _merge(ctx, single, B3_SINGLE)
    if any(name.startswith(b"x-b3-") for name in headers):
        ctx = _merge(ctx, _from_b3_multi(headers), B3_MULTI)
    if ctx is None:
        return TraceContext(_new_id(128), _new_id(64), 0, _random() < ratio, W3C)
    if ctx.sampled is None:
        ctx.sampled = _random() < ratio
    ctx.span_id = _new_id(64)
    return ctx


def _from_traceparent(value: bytes, tracestate: bytes | None) -> TraceContext | None:
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace, parent, flags, rest = m.groups()
    if version == b"ff" or (rest is not None and version == b"00"):
        return None
    parent_id = int(parent, 16)
    if trace == _ZERO_TRACE or not parent_id:
        return None
    # The sampled flag is the lowest bit: the second hex digit is odd. The trace id stays
    # text (valid: 32 lower-case hex digits), as it goes out again (the module docstring).
    ctx = TraceContext(None, 0, parent_id, flags[1] in _ODD_HEX, W3C, tracestate)
    ctx.trace_text = trace
    return ctx


def _from_b3_single(value: bytes) -> TraceContext | None:
    """`b3: {trace}-{span}[-{sampling}[-{parent}]]` or a bare sampling state `0|1|d`."""
    parts = value.strip().split(b"-")
    if len(parts) == 1:
        state = parts[0]
        if state in (b"0", b"1", b"d"):
            return TraceContext(0, 0, 0, state != b"0", 0, debug=state == b"d")
        return None
    if len(parts) > 4 or not _HEX16_32.match(parts[0]) or not _HEX16.match(parts[1]):
        return None
    sampled = debug = None
    if len(parts) >= 3:
        state = parts[2]
        if state not in (b"0", b"1", b"d"):
            return None
        sampled, debug = state != b"0", state == b"d"
    trace_id, span_id = int(parts[0], 16), int(parts[1], 16)
    if not trace_id or not span_id:
        return None
    return TraceContext(trace_id, 0, span_id, sampled, 0, debug=bool(debug),
                        short_id=len(parts[0]) == 16)


def _from_b3_multi(headers: dict[bytes, bytes]) -> TraceContext | None:
    debug = headers.get(b"x-b3-flags", b"").strip() == b"1"
    sampled = True if debug else _SAMPLED.get(headers.get(b"x-b3-sampled", b"").strip().lower())
    trace, span = headers.get(b"x-b3-traceid", b"").strip(), headers.get(b"x-b3-spanid", b"").strip()
    if _HEX16_32.match(trace) and _HEX16.match(span) and int(trace, 16) and int(span, 16):
        return TraceContext(int(trace, 16), 0, int(span, 16), sampled, 0, debug=debug,
                            short_id=len(trace) == 16)
    if sampled is None:
        return None
    return TraceContext(0, 0, 0, sampled, 0, debug=debug)   # a decision without ids


def _merge(ctx: TraceContext | None, other: TraceContext | None, fmt: int) -> TraceContext:
    """Add a B3 reading to what was read so far: W3C ids win, B3 fills in what is missing."""
    if ctx is None:
        ctx = other or TraceContext(0, 0, 0, None, 0)
        ctx.formats |= fmt
    else:
        ctx.formats |= fmt
        if other is not None:
            ctx.debug = ctx.debug or other.debug
            if not ctx.trace_id and other.trace_id:
                ctx.trace_id, ctx.parent_id, ctx.short_id = other.trace_id, other.parent_id, other.short_id
            if ctx.sampled is None:
                ctx.sampled = other.sampled
    if not ctx.trace_id:
        ctx.trace_id = _new_id(128)    # a sampling decision alone: a new trace keeps it
    return ctx


def inject(ctx: TraceContext) -> bytes:
    """The trace header lines sent upstream for the proxy's span."""
    formats = ctx.formats
    if formats == W3C:   # the common case: one format, no tracestate
        if ctx.tracestate is None:
            if ctx.trace_text is not None:     # forwarded as it came (the module docstring)
                return b"traceparent: 00-%s-%016x-%s\r\n" % (
                    ctx.trace_text, ctx.span_id, b"01" if ctx.sampled else b"00")
            # The id as an int (no trace_text): the slot itself, without the property's call.
            return b"traceparent: 00-%032x-%016x-%s\r\n" % (
                ctx._trace_id, ctx.span_id, b"01" if ctx.sampled else b"00")
    out = []
    if formats & W3C:
        out.append(b"traceparent: 00-%032x-%016x-%s\r\n" % (
            ctx.trace_id, ctx.span_id, b"01" if ctx.sampled else b"00"))
        if ctx.tracestate:
            out.append(b"tracestate: %s\r\n" % ctx.tracestate)
    trace = (b"%016x" % ctx.trace_id) if ctx.short_id else (b"%032x" % ctx.trace_id)
    if formats & B3_MULTI:
        out.append(b"x-b3-traceid: %s\r\nx-b3-spanid: %016x\r\n" % (trace, ctx.span_id))
        if ctx.parent_id:
            out.append(b"x-b3-parentspanid: %016x\r\n" % ctx.parent_id)
        out.append(b"x-b3-flags: 1\r\n" if ctx.debug else
                   b"x-b3-sampled: 1\r\n" if ctx.sampled else b"x-b3-sampled: 0\r\n")
    if formats & B3_SINGLE:
        state = b"d" if ctx.debug else b"1" if ctx.sampled else b"0"
        line = b"b3: %s-%016x-%s" % (trace, ctx.span_id, state)
        if ctx.parent_id:
            line += b"-%016x" % ctx.parent_id
        out.append(line + b"\r\n")
    return b"".join(out)


# ---------------------------------------------------------------------------- spans

class SpanRecord:
    """One finished span, as plain values; turned into OTLP by the exporter thread."""

    __slots__ = ("name", "kind", "trace_id", "span_id", "parent_id", "tracestate",
                 "start_ns", "end_ns", "attributes", "error")

    def __init__(self, name: str, kind: str, ctx: TraceContext, start_ns: int, end_ns: int,
                 attributes: dict, error: bool) -> None:
        self.name = name
        self.kind = kind
        self.trace_id = ctx.trace_id
        self.span_id = ctx.span_id
        self.parent_id = ctx.parent_id
        self.tracestate = ctx.tracestate
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = attributes
        self.error = error


def _text(value: bytes) -> str:
    return value.decode("latin-1")


class Tracer:
    """Per worker: the span sink (an exporter, or None when spans are not reported),
    the attributes every span of this sidecar carries, and the span counter."""

    def __init__(self, identity, exporter=None) -> None:
        self.exporter = exporter
        self.spans_started = 0
        self.common = {
            "node_id": identity.id,
            "component": "proxy",
            "istio.canonical_service": identity.app,
            "istio.canonical_revision": identity.version,
            "istio.namespace": identity.namespace,
        }

    def finish(self, info, kind: str) -> None:
        """Record the span of a finished, sampled request from its RequestInfo (only called
        when reporting; `info.ended_at` is now)."""
        exporter = self.exporter
        if exporter is None:
            return
        self.spans_started += 1
        head = info.head
        end_ns = time.time_ns()
        start_ns = end_ns - int((info.ended_at - info.started_at) * 1e9)
        cluster = info.cluster
        method = _text(head.method)
        status = info.status
        authority = _text(head.authority)
        attributes = {
            **self.common,
            "guid:x-request-id": _text(head.request_id),
            "http.method": method,
            "http.request.method": method,
            "http.url": f"{_text(head.scheme)}://{authority}{_text(head.path)}",
            "http.protocol": "HTTP/" + head.version.decode(),
            "http.status_code": status,
            "http.response.status_code": status,
            "response_flags": info.flags,
            "request_size": info.bytes_received,
            "response_size": info.bytes_sent,
            "upstream_cluster": cluster.name if cluster is not None else "-",
            "upstream_cluster.name": cluster.name if cluster is not None else "-",
            "upstream_address": info.upstream_host,
            "peer.address": _text(head.peer_ip),
        }
        if head.user_agent:
            attributes["user_agent"] = _text(head.user_agent)
        grpc_error = False
        if head.grpc:
            # Envoy's gRPC span tags (one span per call, however many messages it streamed).
            grpc_status = getattr(info, "grpc_status", None)
            attributes["grpc.path"] = _text(head.path)
            attributes["grpc.authority"] = authority
            if grpc_status is not None:
                attributes["grpc.status_code"] = _text(grpc_status)
                grpc_error = grpc_status != b"0"
            for slot, key in (("request_messages", "grpc.request_message_count"),
                              ("response_messages", "grpc.response_message_count")):
                counter = getattr(info, slot, None)
                if counter is not None:
                    attributes[key] = counter.messages
        error = status >= 500 or status == 0 or grpc_error
        if error:
            attributes["error"] = True
        if kind == CLIENT and cluster is not None:
            name = f"{cluster.service}:{cluster.port}/*"
        else:
            name = f"{authority}/*"
        exporter.submit(SpanRecord(name, kind, info.trace, start_ns, end_ns, attributes, error))

    def stats(self) -> dict[str, int]:
        """tracing.* counters for admin /stats."""
        exporter = self.exporter
        return {
            "tracing.spans_started": self.spans_started,
            "tracing.spans_exported": exporter.exported if exporter else 0,
            "tracing.spans_dropped": exporter.dropped if exporter else 0,
            "tracing.export_errors": exporter.export_errors if exporter else 0,
        }
