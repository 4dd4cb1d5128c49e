"""HTTP/2 scenarios (see scenarios.py for the mesh ones), Remora and Envoy from one YAML.

- h2-1hop: h2load, h2c prior knowledge, H2_CONNECTIONS connections x H2_STREAMS concurrent
  streams each -> proxy (1 worker) -> HTTP/1.1 upstream. The service port is named `http`, so
  both proxies speak HTTP/1.1 upstream, as Envoy does under Istio for such a port: the
  scenario measures the downstream HTTP/2 codec and the router, many streams per connection.
  The direct line is h2load --h1 straight at the upstream with as many connections as the
  proxies get streams (the upstream speaks HTTP/1.1 only): a ceiling, not a like-for-like.
"""
from __future__ import annotations

from benchmarks import h2load_closed
from benchmarks.mesh import one_hop_yaml
from benchmarks.report import Goal
from benchmarks.runner import Options, Window, run_scenario
from benchmarks.scenarios import prepare_one_hop

H2_CONNECTIONS = 8
H2_STREAMS = 16


def h2_closed_load(opts: Options, window: Window) -> dict:
    """One closed-loop h2load window: HTTP/2 through a proxy, HTTP/1.1 on the direct path."""
    direct = not window.pgids
    url = f"http://127.0.0.1:{window.port}/"
    log = window.workdir / f"{window.label}.h2load.log"
    clients = H2_CONNECTIONS * H2_STREAMS if direct else H2_CONNECTIONS
    cmd = h2load_closed.command(opts.h2load, url, window.seconds, clients, H2_STREAMS,
                                opts.threads, window.host, log, h1=direct)
    return h2load_closed.run(opts.pinning.wrap(cmd, "load"), window.seconds, log).as_dict()


def run_h2_1hop(opts: Options) -> dict:
    """h2load (h2c, many streams per connection) -> one-worker proxy -> HTTP/1.1 upstream."""
    return run_scenario(
        "h2-1hop",
        f"h2load, h2c prior knowledge, {H2_CONNECTIONS} connections x {H2_STREAMS} concurrent "
        "streams -> proxy (1 worker) -> HTTP/1.1 upstream; Host: upstream; VirtualService with "
        "retries + timeout, DestinationRule outlier detection",
        prepare_one_hop(one_hop_yaml), opts, load=h2_closed_load,
        goals=(Goal("requests/s >= 1.0x Envoy's", "rps", ">=", 1.0),),
        note=f"direct line: h2load --h1 with {H2_CONNECTIONS * H2_STREAMS} connections (the "
             "upstream speaks HTTP/1.1 only).")


H2_SCENARIOS = {"h2-1hop": run_h2_1hop}
