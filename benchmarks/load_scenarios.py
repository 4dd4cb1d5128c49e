"""Scenarios that change the shape of the load (see scenarios.py for the routes).

- latency-fixed-rate: h2load open loop at fixed rates on the one-hop route; latency added
  over the direct path (client -> upstream, no proxy), per percentile, as the Linkerd and
  Istio benchmarks report.
- latency-fixed-rate-mesh: the same measurement on mesh-2hop-mtls's route (two sidecars,
  mTLS between them), HTTP/1.1.
- latency-fixed-rate-grpc: the same on grpc-2hop-mtls's route: unary gRPC over HTTP/2 to
  two sidecars and an h2c gRPC app.
- large-bodies: wrk on a 1 MiB response: throughput and the proxy's RSS.
- many-connections: wrk with 1,000 keep-alive connections: RSS per connection, requests/s.
- retries-under-failure: three endpoints, one answering 503 to half its requests, and the
  same VirtualService retry policy (2 attempts on 5xx) for both proxies: success rate, p99.
"""
from __future__ import annotations

import subprocess
import time

from benchmarks import h2load, wrk
from benchmarks.grpc_upstream import GRPC_REQUEST, frame, start_grpc_upstream
from benchmarks.h2_scenarios import GRPC_HEADERS, grpc_probe
from benchmarks.mesh import SERVER_HOST, one_hop_yaml, retry_endpoints_yaml
from benchmarks.procs import free_port, group_rss_mib
from benchmarks.report import Goal, Metrics
from benchmarks.runner import Load, Options, Prepare, Window, run_scenario, wrk_load
from benchmarks.scenarios import oversubscription_note, prepare_mesh_2hop_mtls, prepare_one_hop
from benchmarks.upstream import LARGE_PATH, LARGE_SIZE

COMMON: Metrics = (
    ("cpu_s_per_1k", "proxy CPU s / 1k req", 4, True),
    ("rss_mib", "proxy RSS at end (MiB)", 1, True),
    ("other_load_cores", "other programs' CPU during runs (cores)", 2, False),
)
RATES, QUICK_RATES = (500, 2000, 5000), (200, 1000)
# The two-sidecar paths stop at 2000 req/s: on a 2-core machine (both sidecars on one core)
# 5000 req/s would saturate Remora's gRPC pair (about 4,000 calls/s closed loop at best), and
# the latency of a saturated proxy is its queue, not what it adds. --quick as the one-hop.
MESH_RATES, MESH_QUICK_RATES = (500, 2000), (200, 1000)
LARGE_CONNECTIONS = 16
MANY_CONNECTIONS = 1000
PERCENTILES = ("p50", "p90", "p99", "max")
GRPC_PATH = "/test.Echo/Unary"


# ---- latency-fixed-rate, latency-fixed-rate-mesh, latency-fixed-rate-grpc --------------------

def rates(opts: Options, full: tuple[int, ...] = RATES,
          quick: tuple[int, ...] = QUICK_RATES) -> tuple[int, ...]:
    return quick if opts.quick else full


def fixed_rate(path: str = "/", h1: bool = True, body: bytes | None = None,
               headers: tuple[str, ...] = (), full: tuple[int, ...] = RATES,
               quick: tuple[int, ...] = QUICK_RATES) -> Load:
    """A Load: one h2load open-loop window per rate (`full`, or `quick` with --quick) on
    `path`; with the direct path known, latency added per percentile. h1=False: HTTP/2;
    `body`: every request POSTs it; `headers`: extra request headers."""
    def load(opts: Options, window: Window) -> dict:
        result: dict = {"requests": 0, "seconds": 0.0, "non_2xx_3xx": 0, "socket_errors": 0}
        url = f"http://127.0.0.1:{window.port}{path}"
        data = None
        if body is not None:
            data = window.workdir / "request-body.bin"
            data.write_bytes(body)
        for rate in rates(opts, full, quick):
            log = window.workdir / f"{window.label}-r{rate}.h2load.log"
            cmd = h2load.command(opts.h2load, url, rate, window.seconds, window.host, log,
                                 h1=h1, data=data, headers=headers)
            res = h2load.run(opts.pinning.wrap(cmd, "load"), rate, window.seconds, log)
            if res.non_2xx_3xx > res.requests // 100:  # latency of error answers proves nothing
                raise h2load.H2loadError(f"{res.non_2xx_3xx} of {res.requests} requests at "
                                         f"{rate} req/s were answered with an error status "
                                         f"(log: {log})")
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
    return load


fixed_rate_load = fixed_rate()  # latency-fixed-rate's: GET / over HTTP/1.1


def fixed_rate_metrics(opts: Options, full: tuple[int, ...] = RATES,
                       quick: tuple[int, ...] = QUICK_RATES) -> Metrics:
    rows: list = []
    for rate in rates(opts, full, quick):
        rows.append((f"r{rate}_rps", f"{rate} req/s: achieved req/s", 0, False))
        rows += [(f"r{rate}_added_{pct}_ms", f"{rate} req/s: added {pct} latency (ms)", 3, True)
                 for pct in PERCENTILES]
    return (*rows, *COMMON)


ADDED_P99_GOAL = Goal("added p99 at 2000 req/s <= Envoy's", "r2000_added_p99_ms", "<=",
                      of="envoy")
PACING_NOTE = ("h2load paces each connection at <= 100 req/s; a request still waits for the one "
               "before it on its connection, so a stall delays the few behind it.")


def _paced(opts: Options, full: tuple[int, ...], quick: tuple[int, ...]) -> str:
    """'500 req/s over 5 connections, ...; 10 s per rate' for a description."""
    return (", ".join(f"{r} req/s over {h2load.clients_for(r)[0]} connections"
                      for r in rates(opts, full, quick)) + f"; {opts.duration} s per rate")


def run_fixed_rate_scenario(name: str, description: str, prepare: Prepare, opts: Options,
                            load: Load, full: tuple[int, ...], quick: tuple[int, ...],
                            note: str = "", **kwargs) -> dict:
    """run_scenario for a fixed-rate scenario: the direct path before each round, the
    per-rate metrics, and the added-p99 goal."""
    return run_scenario(name, description, prepare, opts, load=load,
                        metrics=fixed_rate_metrics(opts, full, quick), direct_each_run=True,
                        goals=(ADDED_P99_GOAL,), note=(note + " " + PACING_NOTE).strip(),
                        **kwargs)


def run_latency_fixed_rate(opts: Options) -> dict:
    """h2load at fixed rates -> proxy -> upstream, latency added over the direct path."""
    return run_fixed_rate_scenario(
        "latency-fixed-rate",
        f"h2load --h1 open loop ({_paced(opts, RATES, QUICK_RATES)}) -> proxy (1 worker) -> "
        "upstream; added latency = proxy path minus the direct path (h2load -> upstream, "
        "measured before each round of runs), same percentile",
        prepare_one_hop(one_hop_yaml), opts, fixed_rate_load, RATES, QUICK_RATES)


def run_latency_fixed_rate_mesh(opts: Options) -> dict:
    """h2load --h1 at fixed rates -> sidecar A -> mTLS -> sidecar B -> upstream, latency added
    over the direct path (mesh-2hop-mtls's route and proxies)."""
    return run_fixed_rate_scenario(
        "latency-fixed-rate-mesh",
        f"h2load --h1 open loop ({_paced(opts, MESH_RATES, MESH_QUICK_RATES)}) -> sidecar A "
        "(outbound, 1 worker) -> mTLS (ISTIO_MUTUAL) -> sidecar B (inbound, STRICT, 1 worker) "
        f"-> upstream; Host: {SERVER_HOST}; added latency = proxy path minus the direct path "
        "(h2load -> upstream, measured before each round of runs), same percentile; CPU and "
        "RSS both sidecars",
        prepare_mesh_2hop_mtls, opts, fixed_rate(full=MESH_RATES, quick=MESH_QUICK_RATES),
        MESH_RATES, MESH_QUICK_RATES, note=oversubscription_note(opts, "h2load"))


def run_latency_fixed_rate_grpc(opts: Options) -> dict:
    """Unary gRPC at fixed rates -> sidecar A -> mTLS (HTTP/2) -> sidecar B -> gRPC app,
    latency added over the direct path (grpc-2hop-mtls's route, upstream and proxies)."""
    return run_fixed_rate_scenario(
        "latency-fixed-rate-grpc",
        f"h2load, h2c, unary gRPC POSTs to {GRPC_PATH}, open loop "
        f"({_paced(opts, MESH_RATES, MESH_QUICK_RATES)}) -> sidecar A (outbound, 1 worker) -> "
        "mTLS, HTTP/2 -> sidecar B (inbound, STRICT, 1 worker) -> gRPC app (nginx, h2c); "
        f":authority {SERVER_HOST}; added latency = proxy path minus the direct path (h2load "
        "-> gRPC app, measured before each round of runs), same percentile; CPU and RSS both "
        "sidecars",
        lambda workdir, port, o: prepare_mesh_2hop_mtls(workdir, port, o, grpc=True), opts,
        fixed_rate(GRPC_PATH, h1=False, body=frame(GRPC_REQUEST), headers=GRPC_HEADERS,
                   full=MESH_RATES, quick=MESH_QUICK_RATES),
        MESH_RATES, MESH_QUICK_RATES, note=oversubscription_note(opts, "h2load"),
        upstream_start=start_grpc_upstream, probe=grpc_probe)


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
                  "latency-fixed-rate-mesh": run_latency_fixed_rate_mesh,
                  "latency-fixed-rate-grpc": run_latency_fixed_rate_grpc,
                  "large-bodies": run_large_bodies,
                  "many-connections": run_many_connections,
                  "retries-under-failure": run_retries_under_failure}
# the scenarios driven by h2load (the others by wrk)
FIXED_RATE_SCENARIOS = ("latency-fixed-rate", "latency-fixed-rate-mesh", "latency-fixed-rate-grpc")
