"""Requests/s against workers: `python -m benchmarks.scaling [SCENARIO...] [--workers 1,2] [--runs N]`.

Each scenario (default http1-1hop) runs once per worker count, Remora with `--workers N`
beside Envoy with `--concurrency N`, unpinned (pinning would put every worker on one core),
and the medians go into one table and one chart (scaling.png): how each proxy's rate grows
with its workers on this machine. On a 2-core machine the load generator and the upstream
share the cores with the proxy's workers, so neither proxy can double: read the two lines
against each other.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.__main__ import find_load_tools
from benchmarks.catalog import SCENARIOS
from benchmarks.runner import PROXIES, Options
from benchmarks.tools import MissingTool, find_envoy, plan_pinning


def measure(names: list[str], workers: list[int], runs: int, duration: int, out: Path) -> dict:
    """{scenario: {proxy: {workers: median requests/s}}}, each worker count a fresh run."""
    table: dict[str, dict[str, dict[int, float]]] = {name: {p: {} for p in PROXIES} for name in names}
    for count in workers:
        opts = Options(runs=runs, duration=duration, out=out / f"workers-{count}", workers=count)
        skipped = find_load_tools(names, opts)
        opts.envoy = find_envoy()
        opts.pinning = plan_pinning(False)
        for name in names:
            if name in skipped:
                raise MissingTool(skipped[name])
            result = SCENARIOS[name](opts)
            for proxy in PROXIES:
                stats = result.get("summary", {}).get(proxy, {}).get("rps")
                if stats:
                    table[name][proxy][count] = stats["median"]
    return table


def markdown(table: dict, workers: list[int]) -> str:
    lines = []
    for name, proxies in table.items():
        lines += [f"### {name}: requests/s by workers (median)", "",
                  "| proxy | " + " | ".join(f"{n} worker(s)" for n in workers) + " | 2 / 1 |",
                  "|---|" + "---:|" * (len(workers) + 1)]
        for proxy, by_count in proxies.items():
            cells = [f"{by_count[n]:,.0f}" if n in by_count else "n/a" for n in workers]
            growth = (f"{by_count[2] / by_count[1]:.2f}x" if by_count.get(1) and by_count.get(2) else "n/a")
            lines.append(f"| {proxy} | " + " | ".join(cells) + f" | {growth} |")
        lines.append("")
    return "\n".join(lines)


def chart(table: dict, workers: list[int], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 4), squeeze=False)
    for ax, (name, proxies) in zip(axes[0], table.items()):
        for proxy, colour in (("remora", "#2a7ab0"), ("envoy", "#c0392b")):
            counts = [n for n in workers if n in proxies[proxy]]
            ax.plot(counts, [proxies[proxy][n] for n in counts], marker="o", color=colour,
                    label=proxy.capitalize())
        ax.set_xticks(workers)
        ax.set_xlabel("workers (Remora --workers, Envoy --concurrency)")
        ax.set_ylabel("requests/s (median)")
        ax.set_title(name)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["http1-1hop"])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench-out/scaling"))
    args = parser.parse_args(argv)
    workers = [int(n) for n in args.workers.split(",")]
    try:
        table = measure(args.scenarios, workers, args.runs, args.duration, args.out)
    except MissingTool as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(table, indent=2) + "\n")
    text = markdown(table, workers)
    (args.out / "scaling.md").write_text(text)
    print(text)
    drawn = chart(table, workers, args.out / "scaling.png")
    print(f"wrote {args.out / 'scaling.json'}, {args.out / 'scaling.md'}"
          + (f", {args.out / 'scaling.png'}" if drawn else " (no chart: matplotlib missing)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
