"""Admin server: Envoy's admin endpoints on :15000, Prometheus on :15090, health on :15021,
served by Remora's own small HTTP server (http_server.py: asyncio Protocols + httptools), so a
sidecar does not load a web framework (aiohttp cost ~11 MiB of its idle RSS) for them.

Rules this module keeps:

- It owns no proxy state. Everything comes from an ``AdminSource`` (one worker, or a
  fan-out over worker processes), asked on each request; nothing is cached here.
- Output formats are Envoy's (formats.py), so ``curl :15000/clusters``, ``/stats`` and
  Prometheus scrapes look the way operators and tools expect:
    /clusters        Envoy's text; ``?format=json`` gives the source's list as is.
    /stats           ``name: value`` lines sorted by name; ``?format=json`` gives
                     ``{"stats": [{"name", "value"}]}``; ``?filter=REGEX`` (re.search).
    /stats/prometheus  Envoy's metric families, then the source's extra families.
- Mutations are POST only (GET on them is 405), reads are GET/HEAD only, as in Envoy.
- /quitquitquit answers "OK" before the source starts quitting, so the caller (a
  preStop hook, a test) sees success rather than a reset connection.
- Content types are those the aiohttp version sent: ``text/plain; charset=utf-8``,
  ``application/json; charset=utf-8``, and Prometheus's 0.0.4 text type.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable
from typing import Any, Protocol

from remora.proxy.admin.formats import (  # noqa: F401 (re-exported: tests and dashboards import them here)
    default_is_gauge, filter_families, filtered_stats, format_clusters_text, gauge_predicate,
    prometheus_name, prometheus_text)
from remora.proxy.admin.http_server import AdminHttpServer, HttpError, Request, Response, Routes, serve

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

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"
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
        manager = getattr(source, "certs", None)
        if manager is None:
            # Compact, as aiohttp's json_response wrote it.
            body = json.dumps({"error": "no workload certificate source: run with --control URL "
                                        "and --token TOKEN (or $REMORA_TOKEN), or --cert-dir DIR"})
            return Response(404, body, JSON)
        return _json_response(manager.status())

    async def stats(request: Request) -> Response:
        fmt = request.query.get("format")
        if fmt == "prometheus":
            return await prometheus(request)
        rx = _compile_filter(request)
        items = filtered_stats(await source.stats(), rx)
        if fmt == "json":
            return _json_response({"stats": [{"name": k, "value": v} for k, v in items]})
        return Response(200, "".join(f"{k}: {v}\n" for k, v in items))

    prometheus = _prometheus_handler(source)

    async def drain_listeners(request: Request) -> Response:
        await source.drain_listeners()
        return Response(200, "OK\n")

    async def quitquitquit(request: Request) -> Response:
        # Quit only once the answer is written: quitting may close this very server.
        return Response(200, "OK\n", after=lambda: _spawn(background, source.quit(), "quit"))

    get = {"/": help_, "/help": help_, "/ready": ready, "/healthz/ready": ready, "/clusters": clusters,
           "/config_dump": config_dump, "/certs": certs, "/stats": stats, "/stats/prometheus": prometheus}
    routes: Routes = {path: {"GET": handler} for path, handler in get.items()}
    routes["/drain_listeners"] = {"POST": drain_listeners}
    routes["/quitquitquit"] = {"POST": quitquitquit}
    return routes


def _ready_handler(source: AdminSource):
    """GET /ready and /healthz/ready: LIVE (200), or 503 DRAINING / PRE_INITIALIZING + why."""
    async def ready(request: Request) -> Response:
        is_draining = getattr(source, "is_draining", None)
        if is_draining is not None and is_draining():
            return Response(503, "DRAINING\n")
        if source.is_ready():
            return Response(200, "LIVE\n")
        reason = getattr(source, "not_ready_reason", None)
        why = reason() if reason is not None else None
        return Response(503, "PRE_INITIALIZING\n" + (f"{why}\n" if why else ""))
    return ready


def _prometheus_handler(source: AdminSource):
    """GET /stats/prometheus: Envoy-style stats, then the source's extra families."""
    async def prometheus(request: Request) -> Response:
        rx = _compile_filter(request)
        text = prometheus_text(filtered_stats(await source.stats(), rx), gauge_predicate(source))
        extra = getattr(source, "prometheus_extra", None)
        if extra is not None:
            more = await extra()
            if more and rx is not None:
                more = filter_families(more, rx)
            if more:
                text += more if more.endswith("\n") else more + "\n"
        return Response(200, text, PROMETHEUS_CONTENT_TYPE)
    return prometheus


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
