"""Scenarios that change the shape of the load on the one-hop route (see scenarios.py).

- latency-fixed-rate: h2load open loop at fixed rates; latency added over the direct path
  (client -> upstream, no proxy), per percentile, as the Linkerd and Istio benchmarks report.
- large-bodies: wrk on a 1 MiB response: throughput and the proxy's RSS.
- many-connections: wrk with 1,000 keep-alive connections: RSS per connection, requests/s.
- retries-under-failure: three endpoints, one answering 503 to half its requests, and the
  same VirtualService retry policy (2 attempts on 5xx) for both proxies: success rate, p99.
"""
from __future__ import annotations

import subprocess
import time

from benchmarks import h2load, wrk
from benchmarks.mesh import one_hop_yaml, retry_endpoints_yaml
from benchmarks.procs import free_port, group_rss_mib
from benchmarks.report import Goal, Metrics
from benchmarks.runner import Load, Options, Window, run_scenario, wrk_load
from benchmarks.scenarios import prepare_one_hop
from benchmarks.upstream import LARGE_PATH, LARGE_SIZE

COMMON: Metrics = (
    ("cpu_s_per_1k", "proxy CPU s / 1k req", 4, True),
    ("rss_mib", "proxy RSS at end (MiB)", 1, True),
    ("other_load_cores", "other programs' CPU during runs (cores)", 2, False),
)
RATES, QUICK_RATES = (500, 2000, 5000), (200, 1000)
LARGE_CONNECTIONS = 16
MANY_CONNECTIONS = 1000
PERCENTILES = ("p50", "p90", "p99", "max")


# ---- latency-fixed-rate ------------------------------------------------------------------

def rates(opts: Options) -> tuple[int, ...]:
    return QUICK_RATES if opts.quick else RATES


def fixed_rate_load(opts: Options, window: Window) -> dict:
    """One h2load window per rate; with the direct path known, latency added per percentile."""
    result: dict = {"requests": 0, "seconds": 0.0, "non_2xx_3xx": 0, "socket_errors": 0}
    url = f"http://127.0.0.1:{window.port}/"
    for rate in rates(opts):
        log = window.workdir / f"{window.label}-r{rate}.h2load.log"
        cmd = h2load.command(opts.h2load, url, rate, window.seconds, window.host, log)
        res = h2load.run(opts.pinning.wrap(cmd, "load"), rate, window.seconds, log)
        if res.non_2xx_3xx > res.requests // 100:  # latency of error answers proves nothing
            raise h2load.H2loadError(f"{res.non_2xx_3xx} of {res.requests} requests at {rate} "
                                     f"req/s were answered with an error status (log: {log})")
        for key in ("requests", "seconds", "non_2xx_3xx", "socket_errors"):
            result[key] += getattr(res, key)
        result[f"r{rate}_rps"] = res.rps
        for pct in PERCENTILES:
            result[f"r{rate}_{pct}_ms"] = value = getattr(res, f"{pct}_ms")
            if window.direct:
                result[f"r{rate}_added_{pct}_ms"] = round(value - window.direct[
                    f"r{rate}_{pct}_ms"], 3)
        # the runner's progress line and the common columns show the highest rate
        result.update(rps=res.rps, p50_ms=res.p50_ms, p99_ms=res.p99_ms)
    return result


def fixed_rate_metrics(opts: Options) -> Metrics:
    rows: list = []
    for rate in rates(opts):
        rows.append((f"r{rate}_rps", f"{rate} req/s: achieved req/s", 0, False))
        rows += [(f"r{rate}_added_{pct}_ms", f"{rate} req/s: added {pct} latency (ms)", 3, True)
                 for pct in PERCENTILES]
    return (*rows, *COMMON)


def run_latency_fixed_rate(opts: Options) -> dict:
    """h2load at fixed rates -> proxy -> upstream, latency added over the direct path."""
    clients = ", ".join(f"{r} req/s over {h2load.clients_for(r)[0]} connections"
                        for r in rates(opts))
    return run_scenario(
        "latency-fixed-rate",
        f"h2load --h1 open loop ({clients}; {opts.duration} s per rate) -> proxy (1 worker) -> "
        "upstream; added latency = proxy path minus the direct path (h2load -> upstream, "
        "measured before each round of runs), same percentile",
        prepare_one_hop(one_hop_yaml), opts, load=fixed_rate_load,
        metrics=fixed_rate_metrics(opts), direct_each_run=True,
        goals=(Goal("added p99 at 2000 req/s <= Envoy's", "r2000_added_p99_ms", "<=",
                    of="envoy"),),
        note="h2load paces each connection at <= 100 req/s; a request still waits for the one "
             "before it on its connection, so a stall delays the few behind it.")


# ---- large-bodies --------------------------------------------------------------------------

def large_body_load(opts: Options, window: Window) -> dict:
    """wrk on the 1 MiB path; throughput in MB/s (10^6 bytes) of response bodies."""
    res = wrk_load(LARGE_PATH, LARGE_CONNECTIONS)(opts, window)
    res["mb_per_s"] = round(res["rps"] * LARGE_SIZE / 1e6, 1)
    return res


def run_large_bodies(opts: Options) -> dict:
    """wrk -> proxy -> upstream serving 1 MiB bodies: MB/s and the proxy's RSS."""
    return run_scenario(
        "large-bodies",
        f"wrk, {LARGE_CONNECTIONS} keep-alive connections, GET {LARGE_PATH} (1 MiB response "
        "body) -> proxy (1 worker) -> upstream",
        prepare_one_hop(one_hop_yaml), opts, load=large_body_load,
        metrics=(("mb_per_s", "body throughput (MB/s)", 1, True),
                 ("rps", "requests/s", 0, True),
                 ("p50_ms", "p50 latency (ms)", 2, True),
                 ("p99_ms", "p99 latency (ms)", 2, True), *COMMON))


# ---- many-connections ----------------------------------------------------------------------

def many_connections_load(opts: Options, window: Window) -> dict:
    """wrk with 1,000 connections; the sidecars' RSS sampled mid-run, while all are open."""
    url = f"http://127.0.0.1:{window.port}/"
    cmd = opts.pinning.wrap(wrk.command(opts.wrk, url, window.seconds, MANY_CONNECTIONS,
                                        opts.threads, window.host), "load")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(window.seconds * 0.6)
        at_load = sum(group_rss_mib(pgid) for pgid in window.pgids)
        out, err = proc.communicate(timeout=window.seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise wrk.WrkError(f"wrk exited {proc.returncode}: {err.strip() or out}")
    (window.workdir / f"{window.label}.wrk.txt").write_text(out)
    res = wrk.parse(out).as_dict()
    if window.pgids:
        res["rss_load_mib"] = round(at_load, 1)
        res["rss_kib_per_conn"] = round((at_load - window.rss_idle_mib) * 1024
                                        / MANY_CONNECTIONS, 1)
    return res


def run_many_connections(opts: Options) -> dict:
    """wrk, 1,000 keep-alive connections -> proxy -> upstream: memory per connection."""
    return run_scenario(
        "many-connections",
        f"wrk, {MANY_CONNECTIONS} keep-alive connections -> proxy (1 worker) -> upstream; RSS "
        "sampled 60% into the window; per connection = (RSS at load - RSS idle) / 1000",
        prepare_one_hop(one_hop_yaml), opts, load=many_connections_load,
        metrics=(("rss_load_mib", f"proxy RSS at {MANY_CONNECTIONS} connections (MiB)", 1, True),
                 ("rss_idle_mib", "proxy RSS idle, before load (MiB)", 1, True),
                 ("rss_kib_per_conn", "RSS per connection (KiB)", 1, True),
                 ("rps", "requests/s", 0, True),
                 ("p99_ms", "p99 latency (ms)", 2, True), *COMMON),
        goals=(Goal(f"RSS per sidecar <= 60 MiB at {MANY_CONNECTIONS} connections",
                    "rss_load_mib", "<=", 60.0, of="remora"),))


# ---- retries-under-failure -----------------------------------------------------------------

def with_success_rate(load: Load) -> Load:
    """`load`, plus the share of requests answered 2xx/3xx, in percent."""
    def measured(opts: Options, window: Window) -> dict:
        res = load(opts, window)
        failed = res["non_2xx_3xx"] + res["socket_errors"]
        res["success_pct"] = (round(100.0 * (1 - failed / res["requests"]), 3)
                              if res["requests"] else 0.0)
        return res
    return measured


def run_retries_under_failure(opts: Options) -> dict:
    """wrk -> proxy -> three endpoints, one failing 50% with 503; retries hide the failures."""
    healthy, flaky = free_port(), free_port()

    def yaml_text(upstream_port: int) -> str:
        return retry_endpoints_yaml([upstream_port, healthy, flaky])

    return run_scenario(
        "retries-under-failure",
        f"wrk, {opts.connections} keep-alive connections -> proxy (1 worker) -> 3 endpoints, one "
        "answering 503 to 50% of requests; VirtualService retries: attempts 2, retryOn 5xx; "
        "no outlier detection",
        prepare_one_hop(yaml_text), opts, load=with_success_rate(wrk_load()),
        metrics=(("success_pct", "success rate (% 2xx)", 3, True),
                 ("rps", "requests/s", 0, True),
                 ("p50_ms", "p50 latency (ms)", 3, True),
                 ("p99_ms", "p99 latency (ms)", 3, True), *COMMON),
        also=(healthy,), flaky=(flaky,),
        note="the direct line is wrk against the first (healthy) endpoint alone.")


LOAD_SCENARIOS = {"latency-fixed-rate": run_latency_fixed_rate,
                  "large-bodies": run_large_bodies,
                  "many-connections": run_many_connections,
                  "retries-under-failure": run_retries_under_failure}
