"""Admin server: Envoy's admin endpoints, served by aiohttp on :15000.

Rules this module keeps:

- It owns no proxy state. Everything comes from an ``AdminSource`` (one worker, or a
  fan-out over worker processes), asked on each request; nothing is cached here.
- Output formats are Envoy's, so ``curl :15000/clusters``, ``/stats`` and Prometheus
  scrapes look the way operators and tools expect:
    /clusters        ``cluster::host::stat::value`` lines (a ``::labels::`` line is a
                     Remora extension); ``?format=json`` gives the source's list as is.
    /stats           ``name: value`` lines sorted by name; ``?format=json`` gives
                     ``{"stats": [{"name", "value"}]}``; ``?filter=REGEX`` (re.search).
    /stats/prometheus  stat names turned into Envoy's metric families and labels (see
                     ``prometheus_name``); one ``# TYPE`` line per family.
- Counter or gauge: ``source.gauge_names()`` is authoritative when the source has it;
  otherwise ``default_is_gauge`` decides by name (``*_active``, ``membership_*``,
  ``server.*``), which matches every gauge Envoy's cluster/http/listener scopes define.
- Mutations are POST only (GET on them is 405), reads are GET/HEAD only, as in Envoy.
- /quitquitquit answers "OK" before the source starts quitting, so the caller (a
  preStop hook, a test) sees success rather than a reset connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

__all__ = [
    "AdminSource",
    "default_is_gauge",
    "format_clusters_text",
    "make_admin_app",
    "make_health_app",
    "prometheus_name",
    "prometheus_text",
    "filter_families",
    "start_admin",
    "start_health",
    "start_prometheus",
]

log = logging.getLogger("remora.admin")

TEXT = "text/plain"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AdminSource(Protocol):
    """What the admin server reads from and acts on.

    Optional extras, looked up with getattr: ``is_draining() -> bool`` (makes /ready say
    DRAINING) and ``async prometheus_extra() -> str`` (ready-made exposition text appended
    to /stats/prometheus, e.g. Istio's standard metrics).
    """

    def is_ready(self) -> bool: ...
    async def clusters(self) -> list[dict]: ...
    async def config_dump(self) -> dict: ...
    async def stats(self) -> dict[str, int]: ...
    def gauge_names(self) -> frozenset[str]: ...
    async def drain_listeners(self) -> None: ...
    async def quit(self) -> None: ...


# --------------------------------------------------------------------------- stats

def default_is_gauge(name: str) -> bool:
    """Envoy's gauges in the scopes Remora emits, recognised by name alone."""
    if name.startswith("server."):
        return True
    last = name.rpartition(".")[2]
    return last.endswith("_active") or last.startswith("membership_")


def _gauge_predicate(source: Any) -> Callable[[str], bool]:
    getter = getattr(source, "gauge_names", None)
    if getter is None:
        return default_is_gauge
    gauges = getter()
    return gauges.__contains__


def _compile_filter(request: web.Request) -> re.Pattern[str] | None:
    pattern = request.query.get("filter")
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise web.HTTPBadRequest(text=f"Invalid regex: {exc}\n") from None


def _filtered(stats: dict[str, int], rx: re.Pattern[str] | None) -> list[tuple[str, int]]:
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
            out.append(f"{host}::region::\n{host}::zone::\n{host}::sub_zone::\n")
            out.append(f"{host}::canary::false\n")
            out.append(f"{host}::priority::{ep.get('priority', 0)}\n")
            out.append(f"{host}::success_rate::-1\n{host}::local_origin_success_rate::-1\n")
            labels = ep.get("labels") or {}
            label_text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            out.append(f"{host}::labels::{label_text}\n")  # Remora extension
            if "tls_mode" in ep:
                out.append(f"{host}::tls_mode::{ep['tls_mode']}\n")  # Remora extension
    return "".join(out)


# ----------------------------------------------------------------------- the app

_HELP = (
    ("/", "print this list of admin commands"),
    ("/help", "print this list of admin commands"),
    ("/ready", "print server state (LIVE, PRE_INITIALIZING, DRAINING); 200 only when LIVE"),
    ("/healthz/ready", "alias of /ready, at Istio's path"),
    ("/clusters", "upstream cluster status (?format=json)"),
    ("/config_dump", "dump the current configuration snapshot as JSON"),
    ("/certs", "the workload certificate (SPIFFE ID, serial, expiry), trust bundle, last CA error (JSON)"),
    ("/stats", "print server stats (?format=json|prometheus, ?filter=REGEX)"),
    ("/stats/prometheus", "print server stats in prometheus format (?filter=REGEX)"),
    ("/drain_listeners", "POST: stop accepting new connections"),
    ("/quitquitquit", "POST: drain as on SIGTERM, then exit 0"),
)
HELP_TEXT = "admin commands are:\n" + "".join(f"  {path}: {text}\n" for path, text in _HELP)

_BACKGROUND: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("remora_admin_background", set)


def make_admin_app(source: AdminSource) -> web.Application:
    """Build the aiohttp application serving Envoy's admin endpoints from ``source``."""
    app = web.Application()
    app[_BACKGROUND] = set()

    async def help_(request: web.Request) -> web.Response:
        return web.Response(text=HELP_TEXT, content_type=TEXT)

    ready = _ready_handler(source)

    async def clusters(request: web.Request) -> web.Response:
        data = await source.clusters()
        if request.query.get("format") == "json":
            return _json_response(data)
        return web.Response(text=format_clusters_text(data), content_type=TEXT)

    async def config_dump(request: web.Request) -> web.Response:
        return _json_response(await source.config_dump())

    async def certs(request: web.Request) -> web.Response:
        manager = getattr(source, "certs", None)
        if manager is None:
            return web.json_response({"error": "no workload certificate source: run with --control URL "
                                               "and --token TOKEN (or $REMORA_TOKEN), or --cert-dir DIR"},
                                     status=404)
        return _json_response(manager.status())

    async def stats(request: web.Request) -> web.Response:
        fmt = request.query.get("format")
        if fmt == "prometheus":
            return await prometheus(request)
        rx = _compile_filter(request)
        items = _filtered(await source.stats(), rx)
        if fmt == "json":
            return _json_response({"stats": [{"name": k, "value": v} for k, v in items]})
        return web.Response(text="".join(f"{k}: {v}\n" for k, v in items), content_type=TEXT)

    prometheus = _prometheus_handler(source)

    async def drain_listeners(request: web.Request) -> web.Response:
        await source.drain_listeners()
        return web.Response(text="OK\n", content_type=TEXT)

    async def quitquitquit(request: web.Request) -> web.StreamResponse:
        # Send the whole answer first: quitting may close this very server.
        resp = web.Response(text="OK\n", content_type=TEXT)
        await resp.prepare(request)
        await resp.write_eof()
        _spawn(request.app, source.quit(), "quit")
        return resp

    get = [
        ("/", help_), ("/help", help_), ("/ready", ready), ("/healthz/ready", ready),
        ("/clusters", clusters), ("/config_dump", config_dump), ("/certs", certs), ("/stats", stats),
        ("/stats/prometheus", prometheus),
    ]
    app.router.add_routes([web.get(path, handler) for path, handler in get])
    app.router.add_routes([
        web.post("/drain_listeners", drain_listeners),
        web.post("/quitquitquit", quitquitquit),
    ])
    return app


def _ready_handler(source: AdminSource):
    """GET /ready and /healthz/ready: LIVE (200), or 503 DRAINING / PRE_INITIALIZING + why."""
    async def ready(request: web.Request) -> web.Response:
        is_draining = getattr(source, "is_draining", None)
        if is_draining is not None and is_draining():
            return web.Response(status=503, text="DRAINING\n", content_type=TEXT)
        if source.is_ready():
            return web.Response(text="LIVE\n", content_type=TEXT)
        reason = getattr(source, "not_ready_reason", None)
        why = reason() if reason is not None else None
        return web.Response(status=503, text="PRE_INITIALIZING\n" + (f"{why}\n" if why else ""),
                            content_type=TEXT)
    return ready


def _prometheus_handler(source: AdminSource):
    """GET /stats/prometheus: Envoy-style stats, then the source's extra families."""
    async def prometheus(request: web.Request) -> web.Response:
        rx = _compile_filter(request)
        text = prometheus_text(_filtered(await source.stats(), rx), _gauge_predicate(source))
        extra = getattr(source, "prometheus_extra", None)
        if extra is not None:
            more = await extra()
            if more and rx is not None:
                more = filter_families(more, rx)
            if more:
                text += more if more.endswith("\n") else more + "\n"
        resp = web.Response(body=text.encode())
        resp.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return resp
    return prometheus


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


def _json_response(data: Any) -> web.Response:
    # default=str: config snapshots may carry datetimes or enums; show them, don't 500.
    body = json.dumps(data, indent=2, default=str) + "\n"
    return web.Response(text=body, content_type="application/json")


def _spawn(app: web.Application, coro: Awaitable[Any], what: str) -> None:
    """Run ``coro`` after this handler returns, holding a reference so it isn't GC'd."""
    tasks = app[_BACKGROUND]
    task = asyncio.ensure_future(coro)
    tasks.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("admin %s failed", what, exc_info=t.exception())

    task.add_done_callback(done)


async def start_prometheus(source: AdminSource, host: str, port: int) -> web.AppRunner:
    """Serve only GET /stats/prometheus on host:port (Istio's :15090, what Prometheus scrapes)."""
    app = web.Application()
    app.router.add_get("/stats/prometheus", _prometheus_handler(source))
    return await _serve(app, host, port)


async def start_health(source: AdminSource, host: str, port: int) -> web.AppRunner:
    """Serve only GET /healthz/ready on host:port (Istio's :15021, what kubelet probes).

    Its own listener so that it can be bound where probes come from (the pod IP: kubelet
    probes from the node) while admin, which can quit the proxy, stays on loopback.
    """
    return await _serve(make_health_app(source), host, port)


def make_health_app(source: AdminSource) -> web.Application:
    """The health port's application: GET /healthz/ready and nothing else."""
    app = web.Application()
    app.router.add_get("/healthz/ready", _ready_handler(source))
    return app


async def start_admin(source: AdminSource, host: str, port: int) -> web.AppRunner:
    """Serve the admin app on host:port; the caller stops it with ``await runner.cleanup()``.

    aiohttp's access log is off (admin scrapes would drown the proxy's own access log).
    Port 0 picks a free port; read it back from ``runner.addresses``.
    """
    # A short shutdown timeout: admin handlers are quick, and cleanup must not hold the
    # proxy's exit for aiohttp's default 60 s.
    return await _serve(make_admin_app(source), host, port)


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
