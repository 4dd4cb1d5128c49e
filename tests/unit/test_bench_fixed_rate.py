"""The fixed-rate added-latency scenarios on the 2-hop routes: h2load commands, rates, wiring."""
from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.load_scenarios as load_scenarios
from benchmarks import h2load
from benchmarks.catalog import LOAD_TOOL, SCENARIOS
from benchmarks.grpc_upstream import GRPC_REQUEST, frame, start_grpc_upstream
from benchmarks.h2_scenarios import grpc_probe
from benchmarks.load_scenarios import (GRPC_PATH, MESH_RATES, fixed_rate, fixed_rate_metrics,
                                       run_latency_fixed_rate_grpc, run_latency_fixed_rate_mesh)
from benchmarks.runner import Options, Window

NEW = ("latency-fixed-rate-mesh", "latency-fixed-rate-grpc")


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_grpc_command_speaks_h2_posts_the_body_with_grpc_headers() -> None:
    """h1=False drops --h1 (h2c), -d posts the file, extra headers go as -H, Host as :authority."""
    cmd = h2load.command("h2load", "http://127.0.0.1:1/test.Echo/Unary", 2000, 3, "server",
                         Path("/tmp/x.log"), h1=False, data=Path("/tmp/body.bin"),
                         headers=("content-type: application/grpc", "te: trailers"))
    assert "--h1" not in cmd and "-m" not in cmd  # one stream in flight per connection
    assert _arg(cmd, "-d") == "/tmp/body.bin"
    assert {"content-type: application/grpc", "te: trailers", ":authority: server"} <= set(cmd)
    assert cmd[-1] == "http://127.0.0.1:1/test.Echo/Unary"


def test_grpc_command_keeps_the_pacing_rule_of_http1() -> None:
    """Over HTTP/2 the rate is split as over HTTP/1.1: ceil(rate/100) clients at <= 100 req/s."""
    for rate in (200, 500, 1000, 2000):
        h1 = h2load.command("h2load", "http://x/", rate, 2, None, Path("l"))
        h2 = h2load.command("h2load", "http://x/", rate, 2, None, Path("l"), h1=False)
        assert (_arg(h1, "-c"), _arg(h1, "--rps")) == (_arg(h2, "-c"), _arg(h2, "--rps"))
        assert int(_arg(h2, "-c")) * int(_arg(h2, "--rps")) == rate


def test_http1_command_unchanged_by_the_new_options() -> None:
    """Without the new options the HTTP/1.1 GET command has no body and no extra headers."""
    cmd = h2load.command("h2load", "http://x/", 500, 2, "upstream", Path("l"))
    assert "--h1" in cmd and "-d" not in cmd
    assert [a for a in cmd if ":" in a and a.startswith(":")] == [":authority: upstream"]


def _fake_run(calls: list):
    def run(cmd, rate, seconds, log):
        calls.append(cmd)
        base = 1.0 if "direct" in str(log) else 3.0
        return h2load.RateResult(rate, 100, seconds, float(rate), base, base, base * 2, base * 4, 0, 0)
    return run


def test_grpc_fixed_rate_load_posts_a_framed_call_at_each_mesh_rate(monkeypatch, tmp_path) -> None:
    """The gRPC load POSTs one framed message to the unary path over h2, at 500 and 2000 req/s."""
    calls: list = []
    monkeypatch.setattr(h2load, "run", _fake_run(calls))
    load = fixed_rate(GRPC_PATH, h1=False, body=frame(GRPC_REQUEST),
                      headers=("content-type: application/grpc",), full=MESH_RATES)
    direct = load(Options(), Window(1, None, 2, "direct", tmp_path, []))
    proxied = load(Options(), Window(2, "server", 2, "remora-run1", tmp_path, [1], direct=direct))
    assert [_arg(c, "-c") for c in calls] == ["5", "20", "5", "20"]
    assert all("--h1" not in c and c[-1].endswith(GRPC_PATH) for c in calls)
    assert Path(_arg(calls[0], "-d")).read_bytes() == frame(GRPC_REQUEST)
    assert proxied["r2000_added_p99_ms"] == 4.0 and "r5000_rps" not in proxied


def test_mesh_rates_stop_at_2000_and_quick_stays_small() -> None:
    """The 2-hop scenarios report 500 and 2000 req/s (200 and 1000 with --quick), never 5000."""
    full = {m[0] for m in fixed_rate_metrics(Options(), MESH_RATES)}
    quick = {m[0] for m in fixed_rate_metrics(Options(quick=True), MESH_RATES)}
    assert {"r500_added_p99_ms", "r2000_added_p99_ms", "r2000_rps"} <= full
    assert not any(k.startswith("r5000") for k in full)
    assert {"r200_added_p99_ms", "r1000_added_max_ms"} <= quick and not any(
        k.startswith(("r500_", "r2000_")) for k in quick)


def test_new_scenarios_registered_with_h2load() -> None:
    """Both scenarios are in the catalog and are skipped (not failed) without h2load."""
    for name in NEW:
        assert name in SCENARIOS and LOAD_TOOL[name] == "h2load"


@pytest.mark.parametrize("run, name", [(run_latency_fixed_rate_mesh, NEW[0]),
                                       (run_latency_fixed_rate_grpc, NEW[1])])
def test_scenario_measures_direct_each_round_and_checks_added_p99(monkeypatch, run, name) -> None:
    """Each runs through run_scenario with the direct path per round and the added-p99 goal."""
    seen: dict = {}

    def fake_run_scenario(scenario, description, prepare, opts, **kwargs):
        seen.update(kwargs, name=scenario, description=description)
        return {}

    monkeypatch.setattr(load_scenarios, "run_scenario", fake_run_scenario)
    run(Options())
    assert seen["name"] == name and seen["direct_each_run"] is True
    assert [(g.key, g.op, g.of) for g in seen["goals"]] == [("r2000_added_p99_ms", "<=", "envoy")]
    assert "2000 req/s over 20 connections" in seen["description"]
    if name == "latency-fixed-rate-grpc":
        assert seen["upstream_start"] is start_grpc_upstream and seen["probe"] is grpc_probe


def test_latency_chart_drawn_for_each_fixed_rate_scenario(tmp_path) -> None:
    """write_charts draws one added-latency PNG per scenario with added-latency rows."""
    pytest.importorskip("matplotlib")
    from benchmarks.charts import write_charts

    stats = {f"r{r}_added_{p}_ms": {"median": 1.0, "min": 1.0, "max": 1.0, "n": 1}
             for r in (200, 1000) for p in ("p50", "p90", "p99", "max")}
    results = {"scenarios": {name: {"summary": {"remora": stats, "envoy": stats}} for name in NEW}}
    written, why = write_charts(results, tmp_path)
    assert why == "" and {p.name for p in written} == {f"{n}.png" for n in NEW}
