"""Where Remora's sidecars spend their CPU in mesh-2hop-mtls: py-spy on A and B under load.

    python -m benchmarks.profile_sidecars [--seconds 10] [--plaintext] [--grpc] [--counts] [--out DIR]

Starts the scenario's Remora pair (checked for mTLS unless --plaintext), drives it with
wrk (with --grpc: grpc-2hop-mtls's pair and gRPC app, driven by h2load), records both
sidecars at once with `py-spy record --native --format raw` (py-spy is a
pip package: `pip install py-spy`; it pauses the process per sample, so the rate under
profiling is lower than the benchmark's), and sorts every sample into a bucket by
its innermost telling frame: a Python frame (Remora's own code, and the C builtins it
calls), or a native one naming the TLS handshake, SSL_write (encrypt), SSL_read (decrypt),
write/read syscalls, the HTTP parser or the event loop's poll; what names none of these is
the event loop's own C (uvloop, libuv). Shares are of busy samples (without epoll). The
raw stacks stay in --out for flame graphs.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from benchmarks import h2load, h2load_closed, wrk
from benchmarks import grpc_upstream
from benchmarks.h2_scenarios import GRPC_HEADERS, H2_CONNECTIONS, H2_STREAMS, grpc_probe
from benchmarks.interpreter import UnusableInterpreter, absolute, describe
from benchmarks.interpreter import label as interpreter_label
from benchmarks.procs import free_port, http_get
from benchmarks.runner import Options, start_data_plane
from benchmarks.scenarios import prepare_mesh_2hop_mtls
from benchmarks.tools import MissingTool, find_tool, plan_pinning
from benchmarks.upstream import start_upstream

# bucket -> pattern on a native frame's function name.
BUCKETS = (
    ("TLS handshake", re.compile(r"do_handshake|ssl3_connect|ssl3_accept")),
    # uvloop's SSLProtocol (Cython) and ssl.SSLObject's Python wrappers: TLS glue, not app code
    ("TLS glue (uvloop SSLProtocol, ssl.SSLObject)", re.compile(r"^SSLProtocol|^SSLObject\.")),
    ("SSL_write (encrypt)", re.compile(r"SSL_write|ssl3_write|_ssl__SSLSocket_write")),
    ("SSL_read (decrypt)", re.compile(r"SSL_read|ssl3_read|_ssl__SSLSocket_read")),
    ("write syscalls", re.compile(r"^(__libc_write|write|writev|send|sendmsg|sendto)$")),
    ("read syscalls", re.compile(r"^(__libc_read|read|readv|recv|recvmsg|recvfrom)$")),
    ("HTTP parser (llhttp)", re.compile(r"^llhttp")),
    (EPOLL := "epoll (idle)", re.compile(r"^epoll_(p)?wait$")),
)
PYTHON = "Python (Remora code + builtins it calls)"
NATIVE = "event loop C (uvloop, libuv) and other"
_PY_FRAME = re.compile(r"(\.py|<frozen \w+>):\d+\)$")
# Python frames that only start the loop: a sample whose innermost Python frame is one of
# these is in uvloop's C (its Cython frames are not Python), not in Remora's code.
_LOOP_ENTRY = re.compile(r"\((<frozen runpy>|remora/__main__\.py|remora/cli\.py|remora/proxy/run\.py|"
                         r"uvloop/__init__\.py|asyncio/runners\.py):\d+\)$")


def bucket(stack: list[str]) -> str:
    """The bucket of one sample, from its frames (outermost first): innermost telling frame."""
    for frame in reversed(stack):
        name = frame.split(" (", 1)[0].strip()
        for label, pattern in BUCKETS:
            if pattern.search(name):
                return label
        if _PY_FRAME.search(frame):
            return NATIVE if _LOOP_ENTRY.search(frame) else PYTHON
    return NATIVE


def shares(raw: str) -> tuple[Counter, int]:
    """Samples per bucket and the total, from py-spy's raw (collapsed) output."""
    counts: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[bucket(stack.split(";"))] += int(count)
        total += int(count)
    return counts, total


def load_command(args, opts: Options, port: int, host: str, workdir: Path) -> list[str]:
    """wrk on /, or (--grpc) h2load sending grpc-2hop-mtls's unary calls, for the profile."""
    seconds = args.seconds + 4
    if args.fixed_rate:
        # open loop: requests at a fixed rate, as latency-fixed-rate-mesh/-grpc send them
        body = None
        if args.grpc:
            body = workdir / "grpc-request.bin"
            body.write_bytes(grpc_upstream.frame(grpc_upstream.GRPC_REQUEST))
        return h2load.command(opts.h2load, f"http://127.0.0.1:{port}{'/test.Echo/Unary' if args.grpc else '/'}",
                              args.fixed_rate, seconds, host, workdir / "h2load.log", h1=not args.grpc,
                              data=body, headers=GRPC_HEADERS if args.grpc else ())
    if not args.grpc:
        return wrk.command(opts.wrk, f"http://127.0.0.1:{port}/", seconds, opts.connections, 1,
                           host)
    body = workdir / "grpc-request.bin"
    body.write_bytes(grpc_upstream.frame(grpc_upstream.GRPC_REQUEST))
    cmd = h2load_closed.command(opts.h2load, f"http://127.0.0.1:{port}/test.Echo/Unary", seconds,
                                H2_CONNECTIONS, H2_STREAMS, 1, host, workdir / "h2load.log")
    extra = ["-d", str(body)]
    for header in GRPC_HEADERS:
        extra += ["-H", header]
    return cmd[:-1] + extra + cmd[-1:]


def process_counts(pid: int) -> tuple[float, float, int, int]:
    """(user CPU s, system CPU s, read syscalls, write syscalls) of one process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields[11]) / tick, int(fields[12]) / tick, int(io["syscr"]), int(io["syscw"])


def h2load_rps(report: str) -> float:
    """Requests/s from h2load's text report ("finished in 14.00s, 2100.00 req/s, ...")."""
    found = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", report)
    return float(found.group(1)) if found else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="profiled seconds (default 10)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples/s (default 200)")
    parser.add_argument("--plaintext", action="store_true", help="the same pair without TLS")
    parser.add_argument("--grpc", action="store_true",
                        help="grpc-2hop-mtls: unary gRPC calls from h2load, HTTP/2 on both hops")
    parser.add_argument("--counts", action="store_true",
                        help="no py-spy: CPU and read/write syscalls per request of each sidecar")
    parser.add_argument("--fixed-rate", type=int, default=0, metavar="RPS",
                        help="h2load open loop at RPS requests/s (latency-fixed-rate-mesh's or, with "
                             "--grpc, -grpc's load) instead of the closed loop")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--python", default=sys.executable, metavar="PATH",
                        help="the sidecars' interpreter (default: this one), as `python -m benchmarks --python`")
    parser.add_argument("--out", type=Path, default=Path("bench-out/profile"))
    args = parser.parse_args()
    try:
        opts = Options(out=args.out, wrk=find_tool("wrk"), h2load=find_tool("h2load"), pinning=plan_pinning(True),
                       connections=args.connections, proxies=("remora",), python=absolute(args.python))
        pyspy = "" if args.counts else find_tool("py-spy")
    except MissingTool as exc:
        print(f"error: {exc} (py-spy: pip install py-spy)")
        return 2
    try:
        print(f"sidecars on Python {interpreter_label(describe(opts.python))}")
    except UnusableInterpreter as exc:
        print(f"error: {exc}")
        return 2
    workdir = args.out.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        port = free_port()
        start = grpc_upstream.start_grpc_upstream if args.grpc else start_upstream
        upstream, _kind = start(port, workdir / "upstream", opts.pinning)
        stack.callback(upstream.stop)
        plane = prepare_mesh_2hop_mtls(workdir, port, opts, mtls=not args.plaintext,
                                       grpc=args.grpc)["remora"]()
        children = start_data_plane(plane, 1, opts, workdir, stack)
        if args.grpc:
            print("first call:", grpc_probe(plane) or "ok")
        else:
            print("first request:", http_get(plane.port, "/", host=plane.host, timeout=5.0)[0])
        if not args.plaintext:
            plane.verify(plane, children)
        load = subprocess.Popen(opts.pinning.wrap(
            load_command(args, opts, plane.port, plane.host, workdir), "load"),
            stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        if args.counts:
            before = {sc.role: process_counts(child.pid) for sc, child in zip(plane.sidecars, children)}
            time.sleep(args.seconds)
            after = {sc.role: process_counts(child.pid) for sc, child in zip(plane.sidecars, children)}
            out, _ = load.communicate(timeout=args.seconds + 60)
            rps = h2load_rps(out) if args.grpc or args.fixed_rate else wrk.parse(out).rps
            print(f"{rps:,.0f} req/s; per request, over {args.seconds} s (rate x seconds requests):")
            for role in before:
                user, system, reads, writes = (a - b for a, b in zip(after[role], before[role]))
                n = max(rps * args.seconds, 1)
                print(f"  sidecar {role}: {1e6 * (user + system) / n:6.1f} us CPU ({1e6 * system / n:.1f} in "
                      f"the kernel), {reads / n:5.2f} read and {writes / n:5.2f} write syscalls")
            return 0
        spies = {sc.role: subprocess.Popen(
            [pyspy, "record", "--native", "--rate", str(args.rate), "--format", "raw",
             "-d", str(args.seconds), "-p", str(child.pid), "-o",
             str(workdir / f"{sc.role}.stacks.txt")], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True) for sc, child in zip(plane.sidecars, children)}
        for role, spy in spies.items():
            _, err = spy.communicate(timeout=args.seconds + 60)
            if spy.returncode != 0:
                print(f"py-spy on {role} failed: {err.strip()}")
        out, _ = load.communicate(timeout=args.seconds + 60)
    rps = h2load_rps(out) if args.grpc or args.fixed_rate else wrk.parse(out).rps
    print(f"{'plaintext' if args.plaintext else 'mTLS'} Remora pair under py-spy: "
          f"{rps:,.0f} req/s (profiling slows it)")
    for role in spies:
        path = workdir / f"{role}.stacks.txt"
        if not path.exists():
            continue
        counts, total = shares(path.read_text())
        busy = total - counts.pop(EPOLL, 0)
        print(f"\nsidecar {role}: {busy} busy samples ({total - busy} more in epoll)")
        for label, n in counts.most_common():
            print(f"  {100 * n / max(busy, 1):5.1f}%  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
