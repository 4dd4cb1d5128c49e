"""PNG charts of a run: requests/s per scenario, and latency percentile curves per rate
(one chart per scenario with added-latency rows: latency-fixed-rate and its 2-hop variants).

matplotlib comes with the `bench` extra; without it the run still writes results.json and
summary.md, and the caller prints why no chart was drawn.
"""
from __future__ import annotations

from pathlib import Path

COLOURS = {"remora": "#2a7ab0", "envoy": "#c0392b"}
PERCENTILES = ("p50", "p90", "p99", "max")


def _bars(plt, results: dict, path: Path) -> bool:
    """Grouped bars: median requests/s per scenario and proxy, min-max as error bars."""
    names = [n for n, sc in results["scenarios"].items()
             if any("rps" in s for s in sc.get("summary", {}).values())]
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    width = 0.38
    for i, proxy in enumerate(("remora", "envoy")):
        xs, ys, lo, hi = [], [], [], []
        for x, name in enumerate(names):
            stats = results["scenarios"][name]["summary"].get(proxy, {}).get("rps")
            if stats:
                xs.append(x + (i - 0.5) * width)
                ys.append(stats["median"])
                lo.append(stats["median"] - stats["min"])
                hi.append(stats["max"] - stats["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=proxy.capitalize(),
               color=COLOURS[proxy])
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("requests/s (median, min-max)")
    ax.set_title("Remora vs Envoy: requests/s per scenario (one worker each)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _latency_curves(plt, name: str, scenario: dict, path: Path) -> bool:
    """One panel per rate: added latency (median of runs) at p50/p90/p99/max, per proxy."""
    summary = scenario.get("summary", {})
    rates = sorted({int(k.split("_")[0][1:]) for s in summary.values() for k in s
                    if k.startswith("r") and "_added_" in k})
    if not rates:
        return False
    fig, axes = plt.subplots(1, len(rates), figsize=(4 * len(rates), 3.6), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        for proxy, stats in summary.items():
            ys = [stats.get(f"r{rate}_added_{p}_ms", {}).get("median") for p in PERCENTILES]
            if None not in ys:
                ax.plot(PERCENTILES, ys, marker="o", label=proxy.capitalize(),
                        color=COLOURS.get(proxy))
        ax.set_title(f"{rate} req/s")
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency added over direct (ms)")
        ax.axhline(0, color="grey", linewidth=0.8)  # below: noise under the direct path
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{name}: latency added by the proxy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_charts(results: dict, out: Path) -> tuple[list[Path], str]:
    """Draw the charts into out; returns (files written, why none were, or '')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed: pip install -e '.[bench]'"
    written = []
    if _bars(plt, results, out / "requests-per-second.png"):
        written.append(out / "requests-per-second.png")
    for name, scenario in results["scenarios"].items():  # those without added latency draw nothing
        if _latency_curves(plt, name, scenario, out / f"{name}.png"):
            written.append(out / f"{name}.png")
    return written, ""
