"""Per-proxy medians with min-max, Remora/Envoy ratios, the issue's targets, and summary.md."""
from __future__ import annotations

import operator
import statistics
from dataclasses import dataclass

# (key in a run's result, label, decimals, whether the Remora/Envoy ratio is reported)
Metric = tuple[str, str, int, bool]
Metrics = tuple[Metric, ...]
METRICS: Metrics = (
    ("rps", "requests/s", 0, True),
    ("p50_ms", "p50 latency (ms)", 3, True),
    ("p99_ms", "p99 latency (ms)", 3, True),
    ("cpu_s_per_1k", "proxy CPU s / 1k req (all sidecars)", 4, True),
    ("rss_mib", "proxy RSS at end (MiB, all sidecars)", 1, True),
    ("other_load_cores", "other programs' CPU during runs (cores)", 2, False),
)
ERROR_COUNTS = ("non_2xx_3xx", "socket_errors")
_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Goal:
    """A target from the issue, checked on medians of the same run: `Remora/Envoy ratio of
    key` (of="ratio"), Remora's median against Envoy's (of="envoy"), or Remora's median
    against a bound (of="remora"). Targets are reported met / not met, never asserted."""

    text: str
    key: str
    op: str        # ">=" or "<="
    bound: float = 1.0
    of: str = "ratio"

    def check(self, summary: dict, ratios: dict) -> dict:
        remora, envoy = summary.get("remora", {}), summary.get("envoy", {})
        value: float | None = None
        bound = self.bound
        if self.of == "ratio":
            value = ratios.get(self.key)
        elif self.key in remora:
            value = remora[self.key]["median"]
            if self.of == "envoy":
                bound = envoy[self.key]["median"] if self.key in envoy else None
        met = None if value is None or bound is None else bool(_OPS[self.op](value, bound))
        return {"text": self.text, "key": self.key, "of": self.of, "op": self.op,
                "value": value, "bound": bound, "met": met}


def summarise(runs: list[dict], proxies: tuple[str, ...], metrics: Metrics = METRICS,
              goals: tuple[Goal, ...] = ()) -> dict:
    """{'summary': {proxy: {metric: {median, min, max, n}}}, 'ratios': {metric: r},
    'goals': [checked goal]}."""
    summary: dict[str, dict] = {}
    for proxy in proxies:
        mine = [r for r in runs if r["proxy"] == proxy]
        if not mine:
            continue
        stats: dict[str, dict | int] = {}
        for key, _label, _dec, _ratio in metrics:
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                stats[key] = {"median": statistics.median(values), "min": min(values),
                              "max": max(values), "n": len(values)}
        for key in ERROR_COUNTS:
            stats[key] = sum(r.get(key, 0) for r in mine)
        summary[proxy] = stats
    ratios = {}
    remora, envoy = summary.get("remora"), summary.get("envoy")
    if remora and envoy:
        for key, _label, _dec, ratio in metrics:
            # a ratio of differences that can be negative (added latency) means nothing
            if (ratio and key in remora and key in envoy and envoy[key]["median"] > 0
                    and remora[key]["median"] >= 0):
                ratios[key] = round(remora[key]["median"] / envoy[key]["median"], 3)
    return {"summary": summary, "ratios": ratios,
            "goals": [goal.check(summary, ratios) for goal in goals]}


def _workers(count: int) -> str:
    return "one proxy worker" if count == 1 else f"{count} proxy workers (Remora --workers, Envoy --concurrency)"


def _fmt(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def _cell(stats: dict | None, key: str, decimals: int) -> str:
    if not stats or key not in stats:
        return "n/a"
    s = stats[key]
    if s["n"] == 1:
        return _fmt(s["median"], decimals)
    return f"{_fmt(s['median'], decimals)} ({_fmt(s['min'], decimals)}–{_fmt(s['max'], decimals)})"


def scenario_table(name: str, scenario: dict) -> str:
    """One scenario as a Markdown table: median (min–max) per proxy, and the ratio."""
    if scenario.get("skipped"):
        return f"### {name}\n\n**Skipped:** {scenario['skipped']}\n"
    summary, ratios = scenario.get("summary", {}), scenario.get("ratios", {})
    remora, envoy = summary.get("remora"), summary.get("envoy")
    lines = [f"### {name}", "", scenario.get("description", ""), "",
             "| metric | Remora | Envoy | Remora / Envoy |", "|---|---:|---:|---:|"]
    for key, label, decimals, has_ratio in scenario.get("metrics", METRICS):
        ratio = f"{ratios[key]:.2f}" if key in ratios else ("n/a" if has_ratio else "")
        lines.append(f"| {label} | {_cell(remora, key, decimals)} | "
                     f"{_cell(envoy, key, decimals)} | {ratio} |")
    errs = [" / ".join(str(s.get(k, 0)) for k in ERROR_COUNTS) if s else "n/a"
            for s in (remora, envoy)]
    lines.append(f"| non-2xx / socket errors (all runs) | {errs[0]} | {errs[1]} | |")
    direct = scenario.get("direct")
    lines.append("")
    if direct:
        lines.append(f"Upstream alone ({scenario.get('upstream', '?')}, no proxy, same load "
                     f"settings): {direct['rps']:,.0f} req/s, p50 {direct['p50_ms']:.3f} ms, "
                     f"p99 {direct['p99_ms']:.3f} ms.")
    relay = summary.get("relay")
    if relay and "rps" in relay:
        line = (f"Bare relay pair (benchmarks/tls_relay.py: the same sockets, uvloop and TLS, no HTTP; "
                f"the floor under any Python sidecar): {_cell(relay, 'rps', 0)} req/s, proxy CPU "
                f"{_cell(relay, 'cpu_s_per_1k', 4)} s / 1k req")
        if remora and "cpu_s_per_1k" in remora and relay.get("cpu_s_per_1k", {}).get("median"):
            times = remora["cpu_s_per_1k"]["median"] / relay["cpu_s_per_1k"]["median"]
            line += f"; Remora's CPU per request is {times:.2f}x the relay's"
        lines.append(line + ".")
    for goal in scenario.get("goals", []):
        verdict = {True: "**met**", False: "**not met**", None: "not measured"}[goal["met"]]
        value = "n/a" if goal["value"] is None else f"{goal['value']:,.3g}"
        lines.append(f"Target: {goal['text']}: {verdict} ({value}).")
    if scenario.get("note"):
        lines.append(f"Note: {scenario['note']}")
    for proxy, err in scenario.get("errors", {}).items():
        first = err.strip().splitlines()[0] if err.strip() else "failed"
        lines.append(f"**{proxy} failed:** {first}")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The whole summary.md: settings, then one table per scenario."""
    s, pin, ver = results["settings"], results["pinning"], results["versions"]
    head = [
        "## Remora vs Envoy",
        "",
        f"Median of {s['runs']} run(s) per proxy (min–max in brackets), {s['duration']} s "
        f"each after a {s['warmup']} s warm-up; wrk {s['connections']} keep-alive connections, "
        f"{s['threads']} thread(s); {_workers(s.get('proxy_workers', 1))}. Pinning: {pin['method']}.",
        f"Remora {ver.get('remora', '?')} on Python {ver.get('python', '?')}; "
        f"Envoy {ver.get('envoy', 'n/a')}. Ratios use medians; for requests/s higher is "
        "better, for the others lower is better.",
        "",
    ]
    busy = results.get("machine", {}).get("busy_cores_before", 0)
    if busy > 0.25:
        head[-1:-1] = [f"**Warning:** {busy:.2f} cores were busy before the run started; "
                       "other load on the machine disturbs these numbers."]
    body = [scenario_table(name, sc) for name, sc in results["scenarios"].items()]
    return "\n".join(head) + "\n" + "\n".join(body)
