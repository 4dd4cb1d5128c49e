"""Envoy's admin output formats, as pure functions of what an ``AdminSource`` answers.

Kept apart from the server (server.py) so the formats can be tested and reused (the
dashboards test renders with them) without any I/O:

- /clusters text: ``cluster::host::stat::value`` lines (a ``::labels::`` line is a Remora
  extension).
- /stats/prometheus: stat names turned into Envoy's metric families and labels (see
  ``prometheus_name``); one ``# TYPE`` line per family.
- Counter or gauge: ``source.gauge_names()`` is authoritative when the source has it;
  otherwise ``default_is_gauge`` decides by name (``*_active``, ``membership_*``,
  ``server.*``), which matches every gauge Envoy's cluster/http/listener scopes define.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from remora.proxy.upstream.locality import parse_locality

# --------------------------------------------------------------------------- stats

def default_is_gauge(name: str) -> bool:
    """Envoy's gauges in the scopes Remora emits, recognised by name alone."""
    if name.startswith("server."):
        return True
    last = name.rpartition(".")[2]
    return last.endswith("_active") or last.startswith("membership_")


def gauge_predicate(source: Any) -> Callable[[str], bool]:
    """The source's own gauge list when it has one, else the rule by name."""
    getter = getattr(source, "gauge_names", None)
    if getter is None:
        return default_is_gauge
    gauges = getter()
    return gauges.__contains__


def filtered_stats(stats: dict[str, int], rx: re.Pattern[str] | None) -> list[tuple[str, int]]:
    """Stats sorted by name, only those ``rx`` finds (re.search) when given."""
    items = sorted(stats.items())
    if rx is None:
        return items
    return [(k, v) for k, v in items if rx.search(k)]


# ------------------------------------------------------------ prometheus conversion

# Scope prefixes whose middle part becomes a label, as Envoy's default tag extractors do.
_SCOPES = {
    "cluster": "envoy_cluster_name",
    "http": "envoy_http_conn_manager_prefix",
    "listener": "envoy_listener_address",
}
# Names inside those scopes are "<scope>.<tag value>.<stat>", and the tag value may hold
# dots and '|' (cluster names, listener addresses), so split from the right: <stat> is
# the last component, or the last two when the second-to-last is one of these families.
_SUBFAMILIES = frozenset({"outlier_detection", "rbac", "ssl", "tls_inspector"})
# Envoy's response-code extractors: upstream_rq_2xx -> upstream_rq_xx{class="2"},
# upstream_rq_503 -> upstream_rq{code="503"}.
_RQ_CLASS = re.compile(r"_rq_(\d)xx$")
_RQ_CODE = re.compile(r"_rq_(\d{3})$")
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def prometheus_name(stat: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Map an Envoy stat name to (metric family name, labels), as Envoy's exporter does."""
    labels: list[tuple[str, str]] = []
    scope, _, rest = stat.partition(".")
    label = _SCOPES.get(scope)
    base = stat
    if label is not None:
        head, _, leaf = rest.rpartition(".")
        if head:
            owner, _, family = head.rpartition(".")
            if owner and family in _SUBFAMILIES:
                head, leaf = owner, f"{family}_{leaf}"
            m = _RQ_CLASS.search(leaf)
            if m:
                labels.append(("envoy_response_code_class", m.group(1)))
                leaf = leaf[: m.start()] + "_rq_xx"
            else:
                m = _RQ_CODE.search(leaf)
                if m:
                    labels.append(("envoy_response_code", m.group(1)))
                    leaf = leaf[: m.start()] + "_rq"
            labels.append((label, head))
            base = f"{scope}_{leaf}"
    return "envoy_" + _INVALID.sub("_", base), tuple(labels)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(stats: Iterable[tuple[str, int]], is_gauge: Callable[[str], bool]) -> str:
    """Prometheus text exposition (0.0.4) of Envoy-named stats, families sorted."""
    families: dict[str, tuple[list[str], list[tuple[tuple[tuple[str, str], ...], int]]]] = {}
    for name, value in stats:
        family, labels = prometheus_name(name)
        entry = families.get(family)
        if entry is None:
            entry = families[family] = (["counter"], [])
        if is_gauge(name):
            entry[0][0] = "gauge"  # one gauge member makes the family a gauge
        entry[1].append((labels, value))
    out: list[str] = []
    for family in sorted(families):
        kind, samples = families[family]
        out.append(f"# TYPE {family} {kind[0]}\n")
        for labels, value in sorted(samples):
            if labels:
                body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                out.append(f"{family}{{{body}}} {value}\n")
            else:
                out.append(f"{family} {value}\n")
    return "".join(out)


# ---------------------------------------------------------------------- /clusters

# Remora's endpoint health -> Envoy's health_flags string (HostUtility::healthFlagsToString).
_HEALTH_FLAGS = {
    "healthy": "healthy",
    "ejected": "/failed_outlier_check",
    "unhealthy": "/failed_active_hc",
    "failed_active_hc": "/failed_active_hc",
    "failed_eds_health": "/failed_eds_health",
}
# Optional endpoint keys -> Envoy per-host stat, shown only when the source has them.
_OPTIONAL_HOST_STATS = (
    ("connect_failures", "cx_connect_fail"),
    ("connections_total", "cx_total"),
    ("timeouts", "rq_timeout"),
)
_CIRCUIT_BREAKER_KEYS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


def _host_stats(ep: dict) -> list[tuple[str, int]]:
    total = int(ep.get("total_requests", 0))
    errors = int(ep.get("errors", 0))
    stats = {
        # Envoy's cx_active counts every open connection to the host, busy or idle.
        "cx_active": int(ep.get("connections_active", 0)) + int(ep.get("connections_idle", 0)),
        "rq_active": int(ep.get("active_requests", 0)),
        "rq_error": errors,
        "rq_success": total - errors,
        "rq_total": total,
    }
    for key, stat in _OPTIONAL_HOST_STATS:
        if key in ep:
            stats[stat] = int(ep[key])
    return sorted(stats.items())  # Envoy prints host stats from an ordered map


def format_clusters_text(clusters: list[dict]) -> str:
    """Envoy's /clusters text: one ``name::...::value`` line per fact."""
    out: list[str] = []
    for cluster in sorted(clusters, key=lambda c: c["name"]):
        name = cluster["name"]
        breakers = cluster.get("circuit_breakers")
        if breakers:
            for key in _CIRCUIT_BREAKER_KEYS:
                if key in breakers:
                    out.append(f"{name}::default_priority::{key}::{breakers[key]}\n")
        out.append(f"{name}::added_via_api::{str(cluster.get('added_via_api', True)).lower()}\n")
        for ep in cluster.get("endpoints", ()):
            host = f"{name}::{ep['address']}"
            for stat, value in _host_stats(ep):
                out.append(f"{host}::{stat}::{value}\n")
            health = ep.get("health", "healthy")
            flags = _HEALTH_FLAGS.get(health, health if health.startswith("/") else "/" + health)
            out.append(f"{host}::hostname::{ep.get('hostname', '')}\n")
            out.append(f"{host}::health_flags::{flags}\n")
            out.append(f"{host}::weight::{ep.get('weight', 1)}\n")
            region, zone, sub_zone = parse_locality(ep.get("locality"))
            out.append(f"{host}::region::{region}\n{host}::zone::{zone}\n{host}::sub_zone::{sub_zone}\n")
            out.append(f"{host}::canary::false\n")
            out.append(f"{host}::priority::{ep.get('priority', 0)}\n")
            out.append(f"{host}::success_rate::-1\n{host}::local_origin_success_rate::-1\n")
            labels = ep.get("labels") or {}
            label_text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            out.append(f"{host}::labels::{label_text}\n")  # Remora extension
            if "tls_mode" in ep:
                out.append(f"{host}::tls_mode::{ep['tls_mode']}\n")  # Remora extension
    return "".join(out)


def filter_families(text: str, rx: re.Pattern[str]) -> str:
    """Keep the metric families (# HELP / # TYPE blocks) whose name matches ``rx``."""
    out: list[str] = []
    family, keep = None, True
    for line in text.splitlines(keepends=True):
        if line.startswith(("# HELP ", "# TYPE ")):
            name = line.split(" ", 3)[2].rstrip("\n")
            if name != family:
                family, keep = name, rx.search(name) is not None
        if keep:
            out.append(line)
    return "".join(out)

