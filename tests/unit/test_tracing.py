"""Trace context extraction, injection and the sampling decision (remora.proxy.telemetry.tracing)."""
from __future__ import annotations

import pytest

from remora.proxy.telemetry.tracing import B3_MULTI, B3_SINGLE, W3C, begin, inject

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def headers_out(ctx) -> dict[str, str]:
    """The injected header lines as a dict."""
    lines = inject(ctx).decode().split("\r\n")
    return dict(line.split(": ", 1) for line in lines if line)


def test_w3c_in_gives_w3c_out_with_same_trace_and_new_parent():
    """A valid traceparent keeps its trace id; the upstream's parent is the proxy's new span."""
    ctx = begin([(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())], 0.0)
    out = headers_out(ctx)
    assert list(out) == ["traceparent"]
    version, trace, span, flags = out["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert span != PARENT and len(span) == 16 and int(span, 16) == ctx.span_id
    assert ctx.parent_id == int(PARENT, 16) and ctx.sampled


def test_a_forwarded_trace_id_reads_as_the_same_number_and_text():
    """A traceparent's trace id, kept as its text, reads as the int and hex it names; set
    anew (a B3 merge), the text gives way to the new id."""
    ctx = begin([(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode())], 0.0)
    assert ctx.trace_id == int(TRACE, 16) and ctx.trace_hex == TRACE
    assert inject(ctx) == b"traceparent: 00-%s-%016x-00\r\n" % (TRACE.encode(), ctx.span_id)
    ctx.trace_id = 5
    assert ctx.trace_hex == "%032x" % 5 and headers_out(ctx)["traceparent"].split("-")[1] == "%032x" % 5

def test_tracestate_travels_with_a_valid_traceparent_only():
    """tracestate is forwarded unchanged (several lines joined) with a valid traceparent."""
    ctx = begin([(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode()),
                 (b"tracestate", b"congo=t61rcWkgMzE"), (b"tracestate", b"rojo=00f067aa0ba902b7")], 1.0)
    out = headers_out(ctx)
    assert out["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert out["traceparent"].endswith("-00") and not ctx.sampled   # parent said no: kept
    bad = begin([(b"traceparent", b"garbage"), (b"tracestate", b"congo=x")], 1.0)
    assert "tracestate" not in headers_out(bad)


@pytest.mark.parametrize("value", [
    f"00-{TRACE}-{PARENT}",                       # too short
    f"00-{'0' * 32}-{PARENT}-01",                 # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                  # all-zero parent id
    f"ff-{TRACE}-{PARENT}-01",                    # version ff is invalid
    f"00-{TRACE.upper()}-{PARENT}-01",            # hex must be lower case
    f"00-{TRACE}-{PARENT}-01-extra",              # version 00 has no extra fields
    f"00-+{TRACE[1:]}-{PARENT}-01",               # not hex, though int() would take it
])
def test_invalid_traceparent_starts_a_new_trace(value):
    """An invalid traceparent is ignored: a new trace id, W3C out, sampled by the ratio."""
    ctx = begin([(b"traceparent", value.encode())], 1.0)
    assert ctx.formats == W3C and ctx.parent_id == 0 and ctx.sampled
    assert ctx.trace_hex != TRACE


def test_future_traceparent_version_is_read():
    """A higher version with extra fields is read for its first four fields (W3C rule)."""
    ctx = begin([(b"traceparent", f"01-{TRACE}-{PARENT}-01-whatever".encode())], 0.0)
    assert ctx.trace_hex == TRACE and ctx.parent_id == int(PARENT, 16)


def test_two_traceparent_headers_are_invalid():
    """Two traceparent headers are ambiguous, so neither is used."""
    ctx = begin([(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
                 (b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())], 0.0)
    assert ctx.trace_hex != TRACE and ctx.parent_id == 0


def test_b3_multi_in_gives_b3_multi_out():
    """X-B3-* in: X-B3-* out, same trace id, the proxy's span id, the incoming span as parent."""
    ctx = begin([(b"x-b3-traceid", TRACE.encode()), (b"x-b3-spanid", PARENT.encode()),
                 (b"x-b3-parentspanid", b"1111111111111111"), (b"x-b3-sampled", b"1")], 0.0)
    out = headers_out(ctx)
    assert ctx.formats == B3_MULTI and "traceparent" not in out
    assert out["x-b3-traceid"] == TRACE
    assert out["x-b3-parentspanid"] == PARENT
    assert out["x-b3-spanid"] == ctx.span_hex != PARENT
    assert out["x-b3-sampled"] == "1"


def test_b3_multi_keeps_a_64_bit_trace_id_and_debug():
    """A 16-hex B3 trace id goes out as 16 hex; X-B3-Flags: 1 (debug) means sampled and is kept."""
    ctx = begin([(b"x-b3-traceid", b"a3ce929d0e0e4736"), (b"x-b3-spanid", PARENT.encode()),
                 (b"x-b3-flags", b"1")], 0.0)
    out = headers_out(ctx)
    assert out["x-b3-traceid"] == "a3ce929d0e0e4736"
    assert out["x-b3-flags"] == "1" and "x-b3-sampled" not in out and ctx.sampled


def test_b3_sampling_decision_alone_is_respected():
    """X-B3-Sampled: 0 without ids: a new trace that stays unsampled whatever the ratio."""
    ctx = begin([(b"x-b3-sampled", b"0")], 1.0)
    out = headers_out(ctx)
    assert not ctx.sampled and out["x-b3-sampled"] == "0" and len(out["x-b3-traceid"]) == 32


def test_b3_single_in_gives_b3_single_out():
    """b3: trace-span-1 in: b3 out with the same trace, the proxy's span, the incoming parent."""
    ctx = begin([(b"b3", f"{TRACE}-{PARENT}-1".encode())], 0.0)
    out = headers_out(ctx)
    assert ctx.formats == B3_SINGLE and list(out) == ["b3"]
    trace, span, state, parent = out["b3"].split("-")
    assert (trace, state, parent) == (TRACE, "1", PARENT)
    assert span == ctx.span_hex


@pytest.mark.parametrize(("value", "sampled"), [(b"0", False), (b"1", True), (b"d", True)])
def test_b3_single_sampling_state_alone(value, sampled):
    """b3: 0 / 1 / d carries only a decision: kept on a new trace."""
    ctx = begin([(b"b3", value)], 0.5)
    assert ctx.sampled is sampled and ctx.formats == B3_SINGLE


def test_b3_single_without_sampling_state_defers_to_the_ratio():
    """b3: trace-span (no state) lets the proxy decide with its ratio."""
    assert begin([(b"b3", f"{TRACE}-{PARENT}".encode())], 1.0).sampled
    assert not begin([(b"b3", f"{TRACE}-{PARENT}".encode())], 0.0).sampled


def test_w3c_and_b3_together_go_out_in_both_formats_with_w3c_ids():
    """Both formats in: both out, carrying the W3C trace id and the proxy's one span id."""
    ctx = begin([(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
                 (b"x-b3-traceid", b"1" * 32), (b"x-b3-spanid", b"2" * 16)], 0.0)
    out = headers_out(ctx)
    assert out["traceparent"].split("-")[1] == out["x-b3-traceid"] == TRACE
    assert out["traceparent"].split("-")[2] == out["x-b3-spanid"]


def test_no_context_starts_a_w3c_trace_sampled_by_ratio():
    """Without trace headers: a new 128-bit trace, W3C out, sampled as the ratio says."""
    always = begin(None, 1.0)
    never = begin(None, 0.0)
    assert headers_out(always)["traceparent"].endswith("-01")
    assert headers_out(never)["traceparent"].endswith("-00")
    assert always.trace_id != never.trace_id and always.parent_id == 0


def test_ratio_is_a_probability():
    """A 25% ratio samples about a quarter of new traces."""
    sampled = sum(begin(None, 0.25).sampled for _ in range(4000))
    assert 800 < sampled < 1200


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--trace-sampling", "150", "between 0 and 100"),
    ("--trace-sampling", "lots", "expected a percentage"),
    ("--otlp-endpoint", "127.0.0.1:4318", "expected an http:// or https:// URL"),
])
def test_cli_rejects_bad_tracing_flags(flag, value, message, capsys):
    """Bad --trace-sampling / --otlp-endpoint values stop the proxy with the flag named."""
    from remora.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["proxy", "--mesh-config", "m.yaml", flag, value])
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and message in err


def test_cli_tracing_defaults():
    """Defaults: 1% sampling, no OTLP endpoint (no spans recorded)."""
    from remora.cli import build_parser
    args = build_parser().parse_args(["proxy", "--mesh-config", "m.yaml"])
    assert args.trace_sampling == 1.0 and args.otlp_endpoint is None
