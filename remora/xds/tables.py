"""Plain-text tables the CLI prints: `remora status` and `remora proxy-config ...`.

Pure functions from the JSON the control server and a sidecar's admin server answer to
(headers, rows), so the layout is tested without sockets. Columns follow istioctl's
`proxy-status` and `proxy-config` where Remora has the same facts.
"""
from __future__ import annotations

from typing import Any

from remora.wire.protocol import TYPE_ORDER


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl and istioctl."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n" for row in cells)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _duration(seconds: float | None) -> str:
    """An uptime as kubectl shows ages: 45s, 12m, 5h, 3d."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def status_rows(sidecars: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per sidecar: who it is, which Remora it runs and since when, where each type stands."""
    headers = ["NAME", "NAMESPACE", "WORKLOAD", "IDENTITY", *(t.upper() for t in TYPE_ORDER), "VERSION", "UPTIME",
               "LAST SEEN"]
    rows = []
    for s in sidecars:
        if s["connected"]:
            types = [s["types"].get(t, {}).get("status", "-") for t in TYPE_ORDER]
        else:
            gone = f"DISCONNECTED (removal in {s['removal_in_seconds']:.0f}s)"
            types = [gone] + ["-"] * (len(TYPE_ORDER) - 1)
        rows.append([s["id"], s["namespace"], s["workload"], s["identity"], *types, s.get("version") or "-",
                     _duration(s.get("uptime_seconds")), _ago(s.get("last_seen_seconds"))])
    return headers, rows


# ---- proxy-config -----------------------------------------------------------------------------

def _match_text(match: dict) -> str:
    parts = []
    for key in ("uri", "method", "authority", "scheme"):
        if key in match:
            kind, value = next(iter(match[key].items()))
            parts.append(f"{key} {kind} {value}")
    for name, condition in sorted(match.get("headers", {}).items()):
        kind, value = next(iter(condition.items()))
        parts.append(f"header {name} {kind} {value}")
    for name, condition in sorted(match.get("queryParams", {}).items()):
        kind, value = next(iter(condition.items()))
        parts.append(f"query {name} {kind} {value}")
    if "port" in match:
        parts.append(f"port {match['port']}")
    return ", ".join(parts) or "*"


def _destination_text(route: dict, total: int) -> str:
    destination = route["destination"]
    text = destination["host"]
    if destination.get("subset"):
        text += f"|{destination['subset']}"
    if destination.get("port", {}).get("number"):
        text += f":{destination['port']['number']}"
    weight = route.get("weight")
    if total > 1 or weight is not None:
        text += f" {weight if weight is not None else 100 // total}%"
    return text


def route_rows(dump: dict) -> list[list[str]]:
    rows = []
    for vs in dump.get("resources", {}).get("VirtualService", []):
        hosts = ",".join(vs["spec"].get("hosts", []))
        for index, http in enumerate(vs["spec"].get("http", [])):
            matches = " | ".join(_match_text(m) for m in http.get("match", [])) or "*"
            routes = http.get("route", [])
            destinations = ", ".join(_destination_text(r, len(routes)) for r in routes)
            rows.append([f"{vs['namespace']}/{vs['name']}", hosts, http.get("name") or f"#{index}",
                         matches, destinations or "-"])
    return rows


def _cluster_parts(name: str) -> tuple[str, str, str, str]:
    """`outbound|9080|v1|reviews.default.svc.cluster.local` -> (fqdn, port, subset, direction)."""
    parts = name.split("|")
    if len(parts) == 4:
        return parts[3] or "-", parts[1], parts[2] or "-", parts[0]
    return name, "-", "-", "-"


def proxy_config_rows(what: str, dump: dict, clusters: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows for `remora proxy-config routes|clusters|endpoints`."""
    if what == "routes":
        return ["VIRTUAL SERVICE", "HOSTS", "ROUTE", "MATCH", "DESTINATIONS"], route_rows(dump)
    if what == "clusters":
        rows = []
        for c in clusters:
            fqdn, port, subset, direction = _cluster_parts(c["name"])
            rows.append([fqdn, port, subset, direction, c.get("lb_policy", "-"), len(c.get("endpoints", []))])
        return ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "LB POLICY", "ENDPOINTS"], rows
    rows = []
    for c in clusters:
        for ep in c.get("endpoints", []):
            rows.append([ep["address"], ep.get("health", "healthy").upper(), ep.get("active_requests", 0),
                         ep.get("total_requests", 0), ep.get("errors", 0), c["name"]])
    return ["ENDPOINT", "STATUS", "ACTIVE", "TOTAL", "ERRORS", "CLUSTER"], rows
