"""Where Remora's sidecars spend their CPU in mesh-2hop-mtls: py-spy on A and B under load.

    python -m benchmarks.profile_sidecars [--seconds 10] [--plaintext] [--out DIR]

Starts the scenario's Remora pair (checked for mTLS unless --plaintext), drives it with
wrk, records both sidecars at once with `py-spy record --native --format raw` (py-spy is a
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
import re
import subprocess
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from benchmarks import wrk
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="profiled seconds (default 10)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples/s (default 200)")
    parser.add_argument("--plaintext", action="store_true", help="the same pair without TLS")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench-out/profile"))
    args = parser.parse_args()
    try:
        opts = Options(out=args.out, wrk=find_tool("wrk"), pinning=plan_pinning(True),
                       connections=args.connections, proxies=("remora",))
        pyspy = find_tool("py-spy")
    except MissingTool as exc:
        print(f"error: {exc} (py-spy: pip install py-spy)")
        return 2
    workdir = args.out.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        port = free_port()
        upstream, _kind = start_upstream(port, workdir / "upstream", opts.pinning)
        stack.callback(upstream.stop)
        plane = prepare_mesh_2hop_mtls(workdir, port, opts, mtls=not args.plaintext)["remora"]()
        children = start_data_plane(plane, 1, opts, workdir, stack)
        print("first request:", http_get(plane.port, "/", host=plane.host, timeout=5.0)[0])
        if not args.plaintext:
            plane.verify(plane, children)
        url = f"http://127.0.0.1:{plane.port}/"
        load = subprocess.Popen(opts.pinning.wrap(wrk.command(
            opts.wrk, url, args.seconds + 4, opts.connections, 1, plane.host), "load"),
            stdout=subprocess.PIPE, text=True)
        time.sleep(2)
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
    res = wrk.parse(out)
    print(f"{'plaintext' if args.plaintext else 'mTLS'} Remora pair under py-spy: "
          f"{res.rps:,.0f} req/s (profiling slows it)")
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
