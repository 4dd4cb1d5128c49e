"""`python -m benchmarks [SCENARIO...] [--quick] [--runs N] [--duration S] [--out DIR]`.

Runs each scenario with Remora and Envoy on the same Istio route, writes results.json,
summary.md and PNG charts into --out and prints the table. A scenario whose load tool
(wrk, h2load) is missing is reported skipped, naming the package, and the others run.
Exit status: 0 when every proxy was measured, 1 when a proxy failed, 2 when a required
tool is missing (Envoy, or the load tool of every scenario asked for).
"""
from __future__ import annotations

import argparse
import datetime
import json
import resource
import shlex
import signal
import sys
from pathlib import Path

from benchmarks.catalog import LOAD_TOOL, SCENARIOS
from benchmarks.charts import write_charts
from benchmarks.interpreter import UnusableInterpreter, absolute, describe, label
from benchmarks.procs import ProcessFailed
from benchmarks.report import markdown
from benchmarks.runner import EXTRA_PROXIES, PROXIES, Options
from benchmarks.tools import (MissingTool, busy_cores, find_envoy, find_tool, machine_info,
                              plan_pinning, tool_versions)


def parse_args(argv: list[str], prog: str = "python -m benchmarks") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[2])
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 run per proxy, 2 s each after a 1 s warm-up")
    p.add_argument("--runs", type=int, help="runs per proxy, alternating (default 3)")
    p.add_argument("--duration", type=int, help="seconds measured per run (default 10)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up before each run (default 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--proxies", default=",".join(PROXIES),
                   help="comma-separated subset of remora,envoy,relay (default remora,envoy; relay: "
                        "the bare TLS byte relay pair, the floor, where a scenario offers it)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each run, wait up to S seconds for other load to stop")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--workers", type=int, default=1,
                   help="Remora --workers and Envoy --concurrency of every sidecar (default 1; "
                        "with more than 1, use --no-pin: pinning puts every proxy on one core)")
    p.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="the interpreter that runs Remora's sidecars and the bare relay (default: this "
                        "one); a virtual environment's python with the project installed. How CPython "
                        "was built matters: see docs/benchmarks.md, 'The interpreter's build'")
    p.add_argument("--out", type=Path, default=Path("bench-out"),
                   help="output directory (default bench-out/)")
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    args.proxies = tuple(x.strip() for x in args.proxies.split(",") if x.strip())
    if not args.proxies or set(args.proxies) - set(PROXIES + EXTRA_PROXIES):
        p.error(f"--proxies takes a comma-separated subset of {','.join(PROXIES + EXTRA_PROXIES)}")
    return args


def _terminate(signum: int, _frame: object) -> None:
    """First Ctrl-C / SIGTERM unwinds every finally (children stopped); later ones wait."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def raise_open_files_limit(wanted: int = 16384) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by the proxies and wrk) toward `wanted`:
    many-connections holds 1,000 client + 1,000 upstream sockets per proxy. Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def find_load_tools(names: list[str], opts: Options) -> dict[str, str]:
    """Locate each scenario's load tool into opts; {scenario: why it is skipped} for the rest."""
    skipped = {}
    for name in names:
        tool = LOAD_TOOL[name]
        try:
            setattr(opts, tool, find_tool(tool))
        except MissingTool as exc:
            skipped[name] = f"skipped: {exc}"
    return skipped


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv, prog)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # even when started with SIGINT ignored
    quick = args.quick
    names = args.scenarios or list(SCENARIOS)
    opts = Options(
        quick=quick,
        runs=args.runs or (1 if quick else 3),
        duration=args.duration or (2 if quick else 10),
        warmup=args.warmup or (1 if quick else 2),
        connections=args.connections,
        threads=args.threads,
        proxies=args.proxies,
        out=args.out,
        wait_idle=args.wait_idle,
        workers=args.workers,
        python=absolute(args.python),
    )
    skipped = find_load_tools(names, opts)
    if len(skipped) == len(names):
        print("error: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()), file=sys.stderr)
        return 2
    try:
        opts.envoy = find_envoy() if "envoy" in opts.proxies else None
        opts.pinning = plan_pinning(not args.no_pin)
        sidecar_python = describe(opts.python) if {"remora", "relay"} & set(opts.proxies) else None
    except (MissingTool, UnusableInterpreter) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from shutil import which

    results = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"{prog} " + shlex.join(argv),
        "machine": machine_info(),
        "versions": tool_versions(opts.envoy, opts.wrk, which("nginx") or which(
            "nginx", path="/usr/sbin:/sbin"), opts.h2load),
        "pinning": opts.pinning.as_dict(),
        "sidecar_python": sidecar_python,
        "settings": {"runs": opts.runs, "duration": opts.duration, "warmup": opts.warmup,
                     "connections": opts.connections, "threads": opts.threads,
                     "proxies": list(opts.proxies), "proxy_workers": opts.workers,
                     "wait_idle": opts.wait_idle, "quick": quick,
                     "open_files_limit": raise_open_files_limit()},
        "scenarios": {},
    }
    if sidecar_python:     # the report's "on Python ..." names the sidecars' interpreter
        results["versions"]["python"] = label(sidecar_python)
    print(f"pinning: {opts.pinning.method}", flush=True)
    busy = results["machine"]["busy_cores_before"] = busy_cores()
    if busy > 0.25:
        print(f"warning: the machine is not idle ({busy:.2f} cores busy before the run); "
              "other load disturbs the numbers", file=sys.stderr, flush=True)
    try:
        for name in names:
            if name in skipped:
                print(f"[{name}] {skipped[name]}", file=sys.stderr, flush=True)
                results["scenarios"][name] = {"skipped": skipped[name]}
                continue
            results["scenarios"][name] = SCENARIOS[name](opts)
    except KeyboardInterrupt:
        print("\ninterrupted: every started process was stopped", file=sys.stderr)
        return 130
    except (MissingTool, ProcessFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, MissingTool) else 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "summary.md").write_text(table)
    print()
    print(table)
    charts, why_not = write_charts(results, args.out)
    if why_not:
        print(f"charts not drawn: {why_not}", file=sys.stderr)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'summary.md'}"
          + "".join(f", {path}" for path in charts))
    failed = any(sc.get("errors") for sc in results["scenarios"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
