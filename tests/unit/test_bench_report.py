"""The benchmark harness's pure parts: h2load, targets, skipped scenarios, the flaky upstream."""
from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.__main__ as bench_main
from benchmarks import h2load
from benchmarks.load_scenarios import fixed_rate_metrics, with_success_rate
from benchmarks.report import Goal, markdown, summarise
from benchmarks.runner import Options, Window
from benchmarks.tools import MissingTool
from benchmarks.upstream import LARGE_PATH, nginx_conf

H2LOAD_REPORT = "requests: 6 total, 6 started, 6 done, 4 succeeded, 2 failed, 1 errored, 1 timeout\n"


def test_h2load_log_gives_percentiles_and_error_counts() -> None:
    """Per-request log lines give nearest-rank p50/p90/p99/max in ms and the non-2xx count."""
    log = "".join(f"1700000000000000\t{status}\t{us}\n" for status, us in
                  [(200, 1000), (200, 2000), (503, 3000), (200, 4000), (200, 5000), (404, 10000)])
    res = h2load.parse(log, H2LOAD_REPORT, rate=3, seconds=2.0)
    assert (res.requests, res.rps) == (6, 3.0)
    assert (res.p50_ms, res.p90_ms, res.p99_ms, res.max_ms) == (3.0, 10.0, 10.0, 10.0)
    assert (res.non_2xx_3xx, res.socket_errors) == (2, 2)


def test_h2load_log_with_a_bad_line_names_it() -> None:
    """A malformed log line is an error naming the line, not a wrong number."""
    with pytest.raises(h2load.H2loadError, match="line 2"):
        h2load.parse("1\t200\t5\ngarbage\n", H2LOAD_REPORT, rate=1, seconds=1.0)


def test_h2load_command_paces_clients_and_sets_one_host() -> None:
    """5000 req/s is 50 clients at 100 req/s each, and the Host goes through :authority (a
    `Host:` header would be sent next to h2load's own, which a strict proxy rejects)."""
    cmd = h2load.command("h2load", "http://127.0.0.1:1/", 5000, 3, "upstream", Path("/tmp/x"))
    assert cmd[cmd.index("-c") + 1] == "50" and cmd[cmd.index("--rps") + 1] == "100"
    assert "--h1" in cmd and ":authority: upstream" in cmd
    assert not any(arg.lower().startswith("host:") for arg in cmd)


def test_fixed_rate_load_reports_latency_added_over_direct(monkeypatch, tmp_path) -> None:
    """Added latency is the proxy path's percentile minus the direct path's, per rate."""
    def fake_run(cmd, rate, seconds, log):
        base = 1.0 if "direct" in str(log) else 1.5
        return h2load.RateResult(rate, 100, seconds, 50.0, base, base * 2, base * 3, base * 4, 0, 0)

    monkeypatch.setattr(h2load, "run", fake_run)
    from benchmarks.load_scenarios import fixed_rate_load

    opts = Options(quick=True)
    direct = fixed_rate_load(opts, Window(1, None, 2, "direct", tmp_path, []))
    proxied = fixed_rate_load(opts, Window(1, "upstream", 2, "remora-run1", tmp_path, [1],
                                           direct=direct))
    assert proxied["r200_added_p50_ms"] == 0.5 and proxied["r1000_added_p99_ms"] == 1.5
    assert {m[0] for m in fixed_rate_metrics(opts)} >= {"r200_added_max_ms", "r1000_rps"}


def test_success_rate_counts_error_answers_and_socket_errors() -> None:
    """success_pct is the share of requests answered without an error status or socket error."""
    load = with_success_rate(lambda opts, w: {"requests": 200, "non_2xx_3xx": 6,
                                              "socket_errors": 4})
    assert load(Options(), None)["success_pct"] == 95.0


def _runs(remora_rps: float, envoy_rps: float) -> list[dict]:
    return [{"proxy": "remora", "rps": remora_rps, "rss_mib": 70.0, "non_2xx_3xx": 0,
             "socket_errors": 0},
            {"proxy": "envoy", "rps": envoy_rps, "rss_mib": 90.0, "non_2xx_3xx": 0,
             "socket_errors": 0}]


def test_targets_are_checked_on_ratios_envoy_and_bounds() -> None:
    """A ratio target, a 'no worse than Envoy' target and an absolute bound each say met or not."""
    goals = (Goal("rps >= 1.5x", "rps", ">=", 1.5),
             Goal("RSS <= Envoy's", "rss_mib", "<=", of="envoy"),
             Goal("RSS <= 60 MiB", "rss_mib", "<=", 60.0, of="remora"),
             Goal("p99 not measured", "p99_ms", "<=", of="envoy"))
    checked = summarise(_runs(1200, 1000), ("remora", "envoy"), goals=goals)["goals"]
    assert [g["met"] for g in checked] == [False, True, False, None]
    assert checked[0]["value"] == 1.2


def test_skipped_scenario_names_the_package_and_the_others_still_run(monkeypatch) -> None:
    """With h2load missing, latency-fixed-rate is skipped naming nghttp2-client; wrk scenarios
    keep their tool; the summary says Skipped."""
    def find_tool(name):
        if name == "h2load":
            raise MissingTool("`h2load` not found: install the Debian package `nghttp2-client`")
        return f"/usr/bin/{name}"

    monkeypatch.setattr(bench_main, "find_tool", find_tool)
    opts = Options()
    skipped = bench_main.find_load_tools(["http1-1hop", "latency-fixed-rate"], opts)
    assert list(skipped) == ["latency-fixed-rate"] and "nghttp2-client" in skipped[
        "latency-fixed-rate"]
    assert opts.wrk == "/usr/bin/wrk"
    results = {"settings": {"runs": 1, "duration": 1, "warmup": 1, "connections": 1,
                            "threads": 1}, "pinning": {"method": "none"}, "versions": {},
               "scenarios": {"latency-fixed-rate": {"skipped": skipped["latency-fixed-rate"]}}}
    assert "**Skipped:** skipped: `h2load` not found" in markdown(results)


def test_nginx_upstream_fails_half_only_on_flaky_ports(tmp_path) -> None:
    """The flaky port's server returns 503 when the per-request 50% draw says so; the others
    never do, and every server has the 1 MiB path."""
    conf = nginx_conf(8001, tmp_path, also=(8002,), flaky=(8003,))
    healthy, flaky = conf.split("    server {")[1:]
    assert "8001" in healthy and "8002" in healthy and "return 503" not in healthy
    assert "8003" in flaky and "if ($flaky_fail) { return 503; }" in flaky
    assert 'split_clients "${request_id}" $flaky_fail { 50% 1; * 0; }' in conf
    assert conf.count(f"location = {LARGE_PATH}") == 2


def test_no_ratio_of_differences_that_went_negative() -> None:
    """An added latency below zero (noise under the direct path) gets no Remora/Envoy ratio,
    since the ratio of such differences means nothing; positive ones still do."""
    runs = [{"proxy": "remora", "added": -0.5}, {"proxy": "envoy", "added": 2.0},
            {"proxy": "remora", "both": 1.0}, {"proxy": "envoy", "both": 4.0}]
    metrics = (("added", "added p99", 3, True), ("both", "added p50", 3, True))
    ratios = summarise(runs, ("remora", "envoy"), metrics)["ratios"]
    assert ratios == {"both": 0.25}


def test_scaling_table_gives_each_proxys_growth_from_one_worker_to_two(tmp_path):
    """benchmarks.scaling: medians per worker count and the 2 / 1 growth; a missing count reads n/a."""
    from benchmarks.scaling import chart, markdown
    table = {"http1-1hop": {"remora": {1: 10000.0, 2: 15000.0}, "envoy": {1: 9000.0}}}
    text = markdown(table, [1, 2])
    assert "| remora | 10,000 | 15,000 | 1.50x |" in text
    assert "| envoy | 9,000 | n/a | n/a |" in text
    assert chart(table, [1, 2], tmp_path / "scaling.png") is False or (tmp_path / "scaling.png").stat().st_size > 0
