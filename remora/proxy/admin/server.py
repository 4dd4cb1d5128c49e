"""Admin server: Envoy's admin endpoints on :15000, Prometheus on :15090, health on :15021,
served by Remora's own small HTTP server (http_server.py: asyncio Protocols + httptools), so a
sidecar does not load a web framework (aiohttp cost ~11 MiB of its idle RSS) for them.

Rules this module keeps:

- It owns no proxy state. Everything comes from an ``AdminSource`` (one worker, or a
  fan-out over worker processes), asked on each request; nothing is cached here. The one
  thing remembered is the counters' values at the last POST /reset_counters
  (CounterBaseline, kept on the source as `counter_baseline` so the Prometheus port
  shares it), subtracted from /stats and /stats/prometheus.
- Output formats are Envoy's (formats.py), so ``curl :15000/clusters``, ``/stats`` and
  Prometheus scrapes look the way operators and tools expect:
    /clusters        Envoy's text; ``?format=json`` gives the source's list as is.
    /stats           ``name: value`` lines sorted by name; ``?format=json`` gives
                     ``{"stats": [{"name", "value"}]}``; ``?filter=REGEX`` (re.search);
                     ``?usedonly``: only non-zero values (Envoy: only stats ever written;
                     Remora's plain integers do not record a write of zero).
    /stats/prometheus  Envoy's metric families, then the source's extra families.
- Mutations are POST only (GET on them is 405), reads are GET/HEAD only, as in Envoy.
- /healthcheck/fail makes /ready and :15021 answer 503 DRAINING (and server.live 0) until
  /healthcheck/ok, as Envoy's does, so a pod leaves its Service's endpoints before a
  planned stop while its connections keep being served.
- /quitquitquit answers "OK" before the source starts quitting, so the caller (a
  preStop hook, a test) sees success rather than a reset connection.
- Content types are those the aiohttp version sent: ``text/plain; charset=utf-8``,
  ``application/json; charset=utf-8``, and Prometheus's 0.0.4 text type.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from typing import Any, Protocol

from remora.proxy.admin.formats import (  # noqa: F401 (re-exported: tests and dashboards import them here)
    default_is_gauge, filter_families, filtered_stats, format_clusters_text, gauge_predicate,
    prometheus_name, prometheus_text)
from remora.proxy import log_levels
from remora.proxy.admin.http_server import AdminHttpServer, HttpError, Request, Response, Routes, serve
from remora.version import remora_version

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

log = log_levels.logger("admin")

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AdminSource(Protocol):
    """What the admin server reads from and acts on.

    Optional extras, looked up with getattr: ``is_draining() -> bool`` (makes /ready say
    DRAINING), ``async prometheus_extra() -> str`` (ready-made exposition text appended
    to /stats/prometheus, e.g. Istio's standard metrics), ``not_ready_reason() -> str | None``,
    ``async certs_status() -> dict | None`` (GET /certs; 404 without it or when None) and
    ``async listeners() -> list[dict]`` (GET /listeners; else config_dump's "listeners").
    ``health_check_failed`` is set by POST /healthcheck/fail and cleared by /healthcheck/ok.
    """

    def is_ready(self) -> bool: ...
    async def clusters(self) -> list[dict]: ...
    async def config_dump(self) -> dict: ...
    async def stats(self) -> dict[str, int]: ...
    def gauge_names(self) -> frozenset[str]: ...
    async def drain_listeners(self) -> None: ...
    async def quit(self) -> None: ...


def _compile_filter(request: Request) -> re.Pattern[str] | None:
    pattern = request.query.get("filter")
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise HttpError(Response(400, f"Invalid regex: {exc}\n")) from None


# ----------------------------------------------------------------------- the routes

_HELP = (
    ("/", "print this list of admin commands"),
    ("/help", "print this list of admin commands"),
    ("/ready", "print server state (LIVE, PRE_INITIALIZING, DRAINING); 200 only when LIVE"),
    ("/server_info", "print server version, state, uptime and command line options (JSON)"),
    ("/listeners", "print listener names and addresses (?format=json)"),
    ("/healthz/ready", "alias of /ready, at Istio's path"),
    ("/clusters", "upstream cluster status (?format=json)"),
    ("/config_dump", "dump the current configuration snapshot as JSON"),
    ("/certs", "the workload certificate (SPIFFE ID, serial, expiry), trust bundle, last CA error (JSON)"),
    ("/stats", "print server stats (?format=json|prometheus, ?filter=REGEX, ?usedonly)"),
    ("/stats/prometheus", "print server stats in prometheus format (?filter=REGEX)"),
    ("/memory", "print current allocation/heap usage, in bytes (JSON)"),
    ("/reset_counters", "POST: reset all counters to zero"),
    ("/drain_listeners", "POST: stop accepting new connections"),
    ("/healthcheck/fail", "POST: fail health checks: /ready and :15021 answer 503 DRAINING"),
    ("/healthcheck/ok", "POST: pass health checks again (undo /healthcheck/fail)"),
    ("/quitquitquit", "POST: drain as on SIGTERM, then exit 0"),
    ("/logging", "list log levels; POST ?level=LEVEL, ?COMPONENT=LEVEL or ?paths=C:L,C:L changes them"),
)
HELP_TEXT = "admin commands are:\n" + "".join(f"  {path}: {text}\n" for path, text in _HELP)


def make_admin_app(source: AdminSource) -> Routes:
    """The admin port's routes (path -> method -> handler), all read from ``source``."""
    background: set[asyncio.Task[Any]] = set()

    async def help_(request: Request) -> Response:
        return Response(200, HELP_TEXT)

    ready = _ready_handler(source)

    async def clusters(request: Request) -> Response:
        data = await source.clusters()
        if request.query.get("format") == "json":
            return _json_response(data)
        return Response(200, format_clusters_text(data))

    async def config_dump(request: Request) -> Response:
        return _json_response(await source.config_dump())

    async def certs(request: Request) -> Response:
        getter = getattr(source, "certs_status", None)
        status = await getter() if getter is not None else None
        if status is None:
            # Compact, as aiohttp's json_response wrote it.
            body = json.dumps({"error": "no workload certificate source: run with --control URL "
                                        "and --token TOKEN (or $REMORA_TOKEN), or --cert-dir DIR"})
            return Response(404, body, JSON)
        return _json_response(status)

    async def stats(request: Request) -> Response:
        fmt = request.query.get("format")
        if fmt == "prometheus":
            return await prometheus(request)
        rx = _compile_filter(request)
        items = filtered_stats(await _stats_since_reset(source), rx)
        if "usedonly" in request.query:
            items = [(name, value) for name, value in items if value]
        if fmt == "json":
            return _json_response({"stats": [{"name": k, "value": v} for k, v in items]})
        return Response(200, "".join(f"{k}: {v}\n" for k, v in items))

    prometheus = _prometheus_handler(source)

    async def memory(request: Request) -> Response:
        stats = await _stats(source)
        # Envoy writes its uint64s as JSON strings; only the fields a Python process has
        # (process_memory.py) are given.
        return _json_response({"heap_size": str(stats.get("server.memory_heap_size", 0)),
                               "total_physical_bytes": str(stats.get("server.memory_physical_size", 0))})

    async def reset_counters(request: Request) -> Response:
        _counter_baseline(source).reset(await _stats(source), gauge_predicate(source))
        return Response(200, "OK\n")

    async def server_info(request: Request) -> Response:
        stats = await _stats(source)
        uptime = f"{stats.get('server.uptime', 0)}s"     # protobuf's Duration in JSON, as Envoy writes it
        return _json_response({
            "version": f"remora/{remora_version()}",
            "state": _server_state(source)[0],
            "hot_restart_version": "disabled",
            # Not the command line itself: --token may carry a join token.
            "command_line_options": {"concurrency": stats.get("server.concurrency", 1), "mode": "Serve"},
            "uptime_current_epoch": uptime,
            "uptime_all_epochs": uptime,
        })

    async def listeners(request: Request) -> Response:
        # A source's own list when it has one: the whole config dump can be megabytes.
        getter = getattr(source, "listeners", None)
        found = await getter() if getter is not None else (await source.config_dump()).get("listeners", [])
        if request.query.get("format") == "json":
            return _json_response({"listener_statuses": [
                {"name": item["name"], "local_address": {"socket_address": _socket_address(item["address"])}}
                for item in found]})
        return Response(200, "".join(f"{item['name']}::{item['address']}\n" for item in found))

    async def healthcheck_fail(request: Request) -> Response:
        source.health_check_failed = True
        log.warning("admin: POST /healthcheck/fail: health checks fail until POST /healthcheck/ok")
        return Response(200, "OK\n")

    async def healthcheck_ok(request: Request) -> Response:
        source.health_check_failed = False
        return Response(200, "OK\n")

    async def drain_listeners(request: Request) -> Response:
        await source.drain_listeners()
        return Response(200, "OK\n")

    async def quitquitquit(request: Request) -> Response:
        # Quit only once the answer is written: quitting may close this very server.
        return Response(200, "OK\n", after=lambda: _spawn(background, source.quit(), "quit"))

    async def logging_levels(request: Request) -> Response:
        if request.method == "GET" and request.query:
            return Response(405, "changing log levels is POST /logging\n")
        if request.query:
            try:
                changes = log_levels.changes_from_query(request.query)
            except log_levels.LevelError as error:
                return Response(400, f"{error}\nusage: POST /logging?level=LEVEL, "
                                     f"?COMPONENT=LEVEL or ?paths=COMPONENT:LEVEL,...\n")
            log_levels.apply_levels(changes)     # this process's (with N workers: the supervisor's)
            spread = getattr(source, "set_log_levels", None)
            if spread is not None:
                await spread(changes)
            log.info("admin: log levels changed: %s", ", ".join(
                f"{name}:{log_levels.level_name(level)}" for name, level in changes.items()))
        return Response(200, log_levels.listing())

    get = {"/": help_, "/help": help_, "/ready": ready, "/healthz/ready": ready, "/clusters": clusters,
           "/config_dump": config_dump, "/certs": certs, "/stats": stats, "/stats/prometheus": prometheus,
           "/server_info": server_info, "/listeners": listeners, "/memory": memory}
    routes: Routes = {path: {"GET": handler} for path, handler in get.items()}
    routes["/drain_listeners"] = {"POST": drain_listeners}
    routes["/reset_counters"] = {"POST": reset_counters}
    routes["/healthcheck/fail"] = {"POST": healthcheck_fail}
    routes["/healthcheck/ok"] = {"POST": healthcheck_ok}
    routes["/quitquitquit"] = {"POST": quitquitquit}
    routes["/logging"] = {"GET": logging_levels, "POST": logging_levels}
    return routes


def _server_state(source: AdminSource) -> tuple[str, str | None]:
    """Envoy's server state (LIVE, DRAINING, PRE_INITIALIZING) and, when not live, why."""
    if getattr(source, "health_check_failed", False):
        return "DRAINING", "health checks failed by POST /healthcheck/fail"
    is_draining = getattr(source, "is_draining", None)
    if is_draining is not None and is_draining():
        return "DRAINING", None
    if source.is_ready():
        return "LIVE", None
    reason = getattr(source, "not_ready_reason", None)
    return "PRE_INITIALIZING", reason() if reason is not None else None


async def _stats(source: AdminSource) -> dict[str, int]:
    """The source's stats; server.live is 0 while health checks are failed (as in Envoy)."""
    stats = await source.stats()
    if getattr(source, "health_check_failed", False) and "server.live" in stats:
        stats = {**stats, "server.live": 0}
    return stats


def _ready_handler(source: AdminSource):
    """GET /ready and /healthz/ready: LIVE (200), or 503 DRAINING / PRE_INITIALIZING + why."""
    async def ready(request: Request) -> Response:
        state, why = _server_state(source)
        if state == "LIVE":
            return Response(200, "LIVE\n")
        return Response(503, f"{state}\n" + (f"{why}\n" if why else ""))
    return ready


class CounterBaseline:
    """POST /reset_counters: counters read from zero again, as in Envoy. The counters
    themselves live in each worker and keep counting; the admin server remembers their
    values at the reset and subtracts them, so gauges and the Istio families (which
    Prometheus rates need monotonic) are untouched."""

    def __init__(self) -> None:
        self.at_reset: dict[str, int] = {}

    def reset(self, stats: dict[str, int], is_gauge) -> None:
        self.at_reset = {name: value for name, value in stats.items() if not is_gauge(name)}

    def since_reset(self, stats: dict[str, int], is_gauge) -> dict[str, int]:
        if not self.at_reset:
            return stats
        base = self.at_reset
        return {name: value if is_gauge(name) else max(0, value - base.get(name, 0))
                for name, value in stats.items()}


def _counter_baseline(source: AdminSource) -> CounterBaseline:
    """The source's CounterBaseline, made at the first use: kept on the source so that the
    admin port and the Prometheus port (:15090) read counters from the same reset."""
    baseline = getattr(source, "counter_baseline", None)
    if baseline is None:
        baseline = source.counter_baseline = CounterBaseline()
    return baseline


async def _stats_since_reset(source: AdminSource) -> dict[str, int]:
    """The source's stats (_stats), counters less their values at the last POST /reset_counters."""
    return _counter_baseline(source).since_reset(await _stats(source), gauge_predicate(source))


def _prometheus_handler(source: AdminSource):
    """GET /stats/prometheus: Envoy-style stats (since the last reset), then the source's extra families."""
    async def prometheus(request: Request) -> Response:
        rx = _compile_filter(request)
        text = prometheus_text(filtered_stats(await _stats_since_reset(source), rx), gauge_predicate(source))
        extra = getattr(source, "prometheus_extra", None)
        if extra is not None:
            more = await extra()
            if more and rx is not None:
                more = filter_families(more, rx)
            if more:
                text += more if more.endswith("\n") else more + "\n"
        return Response(200, text, PROMETHEUS_CONTENT_TYPE)
    return prometheus


def _socket_address(address: str) -> dict:
    """"host:port" (IPv6 host bare, as config_dump writes it) as Envoy's SocketAddress JSON."""
    host, _, port = address.rpartition(":")
    return {"address": host, "port_value": int(port)} if port.isdigit() else {"address": address}


def _json_response(data: Any) -> Response:
    # default=str: config snapshots may carry datetimes or enums; show them, don't 500.
    return Response(200, json.dumps(data, indent=2, default=str) + "\n", JSON)


def _spawn(tasks: set[asyncio.Task[Any]], coro: Awaitable[Any], what: str) -> None:
    """Run ``coro`` in a task of its own, holding a reference so it isn't GC'd."""
    task = asyncio.ensure_future(coro)
    tasks.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("admin %s failed", what, exc_info=t.exception())

    task.add_done_callback(done)


def make_health_app(source: AdminSource) -> Routes:
    """The health port's routes: GET /healthz/ready and nothing else."""
    return {"/healthz/ready": {"GET": _ready_handler(source)}}


async def start_prometheus(source: AdminSource, host: str, port: int) -> AdminHttpServer:
    """Serve only GET /stats/prometheus on host:port (Istio's :15090, what Prometheus scrapes)."""
    return await serve({"/stats/prometheus": {"GET": _prometheus_handler(source)}}, host, port)


async def start_health(source: AdminSource, host: str, port: int) -> AdminHttpServer:
    """Serve only GET /healthz/ready on host:port (Istio's :15021, what kubelet probes).

    Its own listener so that it can be bound where probes come from (the pod IP: kubelet
    probes from the node) while admin, which can quit the proxy, stays on loopback.
    """
    return await serve(make_health_app(source), host, port)


async def start_admin(source: AdminSource, host: str, port: int) -> AdminHttpServer:
    """Serve the admin routes on host:port; the caller stops it with ``await server.cleanup()``.

    No access log (admin scrapes would drown the proxy's own access log). Port 0 picks a
    free port; read it back from ``server.addresses``.
    """
    return await serve(make_admin_app(source), host, port)
