"""HTTP/2 scenarios (see scenarios.py for the mesh ones), Remora and Envoy from one YAML.

- grpc-2hop-mtls: unary gRPC (h2load sending gRPC-framed POSTs, H2_CONNECTIONS x
  H2_STREAMS) -> sidecar A -> mTLS, HTTP/2 -> sidecar B -> an h2c gRPC app (nginx,
  grpc_upstream.py); the service port is GRPC, so HTTP/2 end to end, as under Istio.
- h2-1hop: h2load, h2c prior knowledge, H2_CONNECTIONS connections x H2_STREAMS concurrent
  streams each -> proxy (1 worker) -> HTTP/1.1 upstream. The service port is named `http`, so
  both proxies speak HTTP/1.1 upstream, as Envoy does under Istio for such a port: the
  scenario measures the downstream HTTP/2 codec and the router, many streams per connection.
  The direct line is h2load --h1 straight at the upstream with as many connections as the
  proxies get streams (the upstream speaks HTTP/1.1 only): a ceiling, not a like-for-like.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from benchmarks import h2load_closed
from benchmarks.grpc_upstream import GRPC_REPLY, GRPC_REQUEST, frame, start_grpc_upstream
from benchmarks.mesh import SERVER_HOST, one_hop_yaml
from benchmarks.report import Goal
from benchmarks.runner import DataPlane, Options, Window, run_scenario
from benchmarks.scenarios import oversubscription_note, prepare_mesh_2hop_mtls, prepare_one_hop

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


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def grpc_load(opts: Options, window: Window) -> dict:
    """One closed-loop h2load window of unary gRPC calls (POST of one framed message)."""
    log = window.workdir / f"{window.label}.h2load.log"
    body = window.workdir / "grpc-request.bin"
    body.write_bytes(frame(GRPC_REQUEST))
    cmd = h2load_closed.command(opts.h2load, f"http://127.0.0.1:{window.port}/test.Echo/Unary",
                                window.seconds, H2_CONNECTIONS, H2_STREAMS, opts.threads,
                                window.host, log)
    extra = ["-d", str(body)]
    for header in GRPC_HEADERS:
        extra += ["-H", header]
    cmd = cmd[:-1] + extra + cmd[-1:]
    return h2load_closed.run(opts.pinning.wrap(cmd, "load"), window.seconds, log).as_dict()


def grpc_probe(plane: DataPlane) -> str | None:
    """One unary call through the plane with h2load (a real HTTP/2 client): 200, grpc reply."""
    with tempfile.TemporaryDirectory(prefix="remora-bench-probe-") as tmp:
        body = Path(tmp) / "req.bin"
        body.write_bytes(frame(GRPC_REQUEST))
        cmd = ["h2load", "-n", "1", "-c", "1", "-d", str(body), "-H", f":authority: {plane.host}"]
        for header in GRPC_HEADERS:
            cmd += ["-H", header]
        out = subprocess.run(cmd + [f"http://127.0.0.1:{plane.port}/test.Echo/Unary"],
                             capture_output=True, text=True, timeout=30, check=False)
    if "1 succeeded" not in out.stdout or "2xx" not in out.stdout:
        return f"h2load: {out.stdout.strip()[-300:] or out.stderr.strip()}"
    return None


def run_grpc_2hop_mtls(opts: Options) -> dict:
    """Unary gRPC -> sidecar A -> mTLS (HTTP/2) -> sidecar B -> gRPC app, Remora vs Envoy."""
    return run_scenario(
        "grpc-2hop-mtls",
        f"h2load, unary gRPC POSTs, {H2_CONNECTIONS} connections x {H2_STREAMS} streams -> "
        "sidecar A (outbound, 1 worker) -> mTLS, HTTP/2 -> sidecar B (inbound, STRICT, 1 "
        f"worker) -> gRPC app (nginx, h2c); :authority {SERVER_HOST}; port protocol GRPC",
        lambda workdir, port, o: prepare_mesh_2hop_mtls(workdir, port, o, grpc=True), opts,
        load=grpc_load, upstream_start=start_grpc_upstream, probe=grpc_probe,
        note=oversubscription_note(opts) + f" The reply is {len(GRPC_REPLY)} bytes.",
        goals=(Goal("requests/s >= 1.0x Envoy's", "rps", ">=", 1.0),))


H2_SCENARIOS = {"h2-1hop": run_h2_1hop, "grpc-2hop-mtls": run_grpc_2hop_mtls}
