"""What tracing costs under load: `python -m benchmarks.tracing_cost [--runs N] [--duration S] [--base DIR]`.

Alternates wrk runs against one Remora worker in three set-ups on the same route and
upstream: propagation only (no --otlp-endpoint), 1% sampling with spans exported to an
OTLP/HTTP receiver on loopback, and, with --base DIR (a checkout without tracing, e.g.
`git archive <commit> | tar -x -C DIR`), the code before tracing existed. Prints req/s
per run and the median per set-up.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.tools import find_tool
from tests.integration.collector import Collector
from tests.integration.upstreams import free_port

MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: upstream}}
spec:
  hosts: [upstream]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"""


def wait_port(port: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def run_once(extra: list[str], mesh: Path, wrk: str, duration: int, pythonpath: str | None) -> float:
    port, admin = free_port(), free_port()
    env = dict(os.environ)
    cwd = None
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
        cwd = pythonpath
    proc = subprocess.Popen([sys.executable, "-m", "remora", "proxy", "--mesh-config", str(mesh),
                             "--outbound-port", str(port), "--admin-port", str(admin),
                             "--access-log", "off", *extra],
                            env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 20)
        url = f"http://127.0.0.1:{port}/"
        base = [wrk, "-t1", "-c64", "-H", "Host: upstream", url]
        subprocess.run([*base[:3], "-d1s", *base[3:]], capture_output=True, timeout=30)
        out = subprocess.run([*base[:3], f"-d{duration}s", *base[3:]], capture_output=True,
                             text=True, timeout=duration + 30).stdout
        return float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--base", default=None, help="a checkout of Remora before tracing")
    args = parser.parse_args()
    wrk = find_tool("wrk")
    collector = Collector().start()
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "benchmarks.upstream", "--port", str(upstream_port)])
    scratch = tempfile.TemporaryDirectory(prefix="remora-tracing-cost-")
    try:
        wait_port(upstream_port, 20)
        mesh = Path(scratch.name) / "mesh.yaml"
        mesh.write_text(MESH.format(port=upstream_port))
        setups = {"propagation only": ([], None),
                  "1% sampled + OTLP export": (["--trace-sampling", "1", "--otlp-endpoint",
                                                collector.endpoint], None)}
        if args.base:
            setups = {"before tracing": ([], args.base), **setups}
        results: dict[str, list[float]] = {name: [] for name in setups}
        for run in range(args.runs):
            for name, (extra, path) in setups.items():
                rps = run_once(extra, mesh, wrk, args.duration, path)
                results[name].append(rps)
                print(f"run {run + 1} {name}: {rps:.0f} req/s", flush=True)
        for name, values in results.items():
            print(f"{name}: median {statistics.median(values):.0f} req/s over {len(values)} runs")
        print(f"spans received by the collector: {len(collector.spans)}")
    finally:
        upstream.terminate()
        upstream.wait(10)
        collector.stop()
        scratch.cleanup()


if __name__ == "__main__":
    main()
