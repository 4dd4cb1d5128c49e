"""One kind's list-then-watch loop against the Kubernetes API (client-go's reflector, small).

Rules:
- Start with a LIST: it gives every object and the list's resourceVersion; the cache is
  replaced by the list's items (objects deleted while no watch ran disappear here).
- Then WATCH from that resourceVersion with allowWatchBookmarks=true: ADDED and MODIFIED
  put the object, DELETED removes it; each event's object carries the resourceVersion to
  resume from. A BOOKMARK carries only a newer resourceVersion: it advances the position
  (so a reconnect does not start from a version the server has compacted away) and
  changes nothing else, so it does not trigger a rebuild.
- A watch that ends (the server's timeoutSeconds, a dropped connection) is resumed from
  the last resourceVersion, without a LIST; one that ended within SHORT_WATCH seconds
  without an event waits the backoff first (client-go's reflector does the same), so a
  server or proxy that closes every watch at once is not asked again in a tight loop.
- 410 Gone (an ERROR event with a Status of code 410, or an HTTP 410 answer) means the
  position is older than the server keeps: LIST again, at once. The library's own 410
  handling is not used: without timeoutSeconds it retries the same stale version once.
  Our watches always pass timeoutSeconds, so the library returns at the end of the
  stream and raises on 410, and this loop decides.
- Any other failure (connection refused, 5xx, 403, a kind the server does not serve)
  waits an exponential, jittered backoff (0.5 s doubling to 30 s, as client-go's
  reflector backs off) and then tries again from the same resourceVersion if there is one;
  the backoff resets once a LIST or an event succeeds. The last good objects stay in the
  cache meanwhile: an API server restart does not empty the mesh.
- `on_change` is called after every change of the cache (the caller debounces).
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

LIST_TIMEOUT = (10.0, 60.0)    # (connect, read) seconds for a LIST
WATCH_SECONDS = 300            # timeoutSeconds asked of the server per WATCH
CONNECT_TIMEOUT = 10.0
SHORT_WATCH = 1.0              # a watch ending sooner than this, with no event, is backed off

ListFunction = Callable[..., Awaitable[Any]]   # a generated list_* method, kwargs as the library takes them


@dataclass(frozen=True)
class Kind:
    """A kind the registry reads: its name in documents, API group, version and plural."""

    name: str
    group: str      # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The collection's URL path, all namespaces (what the RBAC rules and the double serve)."""
        return (f"/apis/{self.group}/{self.version}/{self.plural}" if self.group
                else f"/api/{self.version}/{self.plural}")


class Backoff:
    """Exponential backoff with jitter: base * 2^n, capped, each delay in [delay/2, delay]."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.rand = base, cap, rand
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return delay * (0.5 + self.rand() / 2)

    def reset(self) -> None:
        self.failures = 0


class WatchStats(Protocol):
    """Where a watch reports what happened (the control server's metrics)."""

    def event(self, kind: str, event_type: str) -> None: ...
    def relist(self, kind: str, reason: str) -> None: ...
    def error(self, kind: str, reason: str) -> None: ...


class NoStats:
    def event(self, kind: str, event_type: str) -> None: pass
    def relist(self, kind: str, reason: str) -> None: pass
    def error(self, kind: str, reason: str) -> None: pass


class Gone(Exception):
    """The resourceVersion is too old for the server (410): list again."""


def key_of(obj: dict) -> str:
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    return f"{namespace}/{metadata.get('name')}" if namespace else str(metadata.get("name"))


def _reason(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return {403: "forbidden", 404: "not_found"}.get(error.status, f"http_{error.status}")
    if isinstance(error, (OSError, asyncio.TimeoutError)) or type(error).__module__.startswith("aiohttp"):
        return "connection"
    return "other"


class KindWatch:
    """The cache of one kind, kept by LIST + WATCH (see the module doc)."""

    def __init__(self, kind: Kind, list_function: ListFunction, on_change: Callable[[], None],
                 stats: WatchStats = NoStats(), log: Callable[[str], None] = lambda message: None,
                 backoff: Backoff | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 watch_seconds: int = WATCH_SECONDS) -> None:
        self.kind = kind
        self.list_function = list_function
        self.on_change = on_change
        self.stats = stats
        self.log = log
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.watch_seconds = watch_seconds
        self.objects: dict[str, dict] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()     # set by the first successful LIST
        self.relists = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._relist_reason = "start"

    async def run(self) -> None:
        """LIST, WATCH, resume, relist on 410, back off on errors; until cancelled."""
        while True:
            try:
                if self.resource_version is None:
                    await self.relist()
                    self.stats.relist(self.kind.name, self._relist_reason)
                await self.watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:   # noqa: BLE001 -- every failure is retried; the reason is kept
                if _is_gone(error):
                    self._relist_reason = "gone"
                    self.log(f"{self.kind.name}: resourceVersion {self.resource_version} expired (410 Gone): "
                             "listing again")
                    self.resource_version = None
                    continue
                reason = _reason(error)
                self.stats.error(self.kind.name, reason)
                self.last_error, self.last_error_at = f"{reason}: {_describe(error)}", time.time()
                delay = self.backoff.next()
                self.log(f"{self.kind.name}: {self.last_error}; retrying in {delay:.1f}s")
                await self.sleep(delay)

    async def relist(self) -> None:
        """Replace the cache with a LIST; the next WATCH starts at its resourceVersion."""
        response = await self.list_function(_preload_content=False, _request_timeout=LIST_TIMEOUT)
        try:
            # Unparsed (_preload_content=False: no model objects made), so unchecked: an error
            # status must not be read as an empty list.
            if not 200 <= response.status < 300:
                raise ApiException(status=response.status, reason=(await response.text())[:200])
            body = await response.json()
        finally:
            response.release()
        items = body.get("items") or []
        objects = {key_of(obj): obj for obj in items if isinstance(obj, dict)}
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion") or None
        self.relists += 1
        self.backoff.reset()
        self.last_error = None
        changed = objects != self.objects
        self.objects = objects
        self.synced.set()
        if changed:
            self.on_change()

    async def watch_once(self) -> None:
        """One WATCH request from the current resourceVersion, until the server ends it."""
        started, events = time.monotonic(), 0
        async with Watch(return_type="object") as watch:
            stream = watch.stream(self.list_function, resource_version=self.resource_version,
                                  allow_watch_bookmarks=True, timeout_seconds=self.watch_seconds,
                                  _request_timeout=(CONNECT_TIMEOUT, self.watch_seconds + 60.0))
            async for event in stream:
                events += 1
                self.apply(event.get("type"), event.get("raw_object"))
        if not events and time.monotonic() - started < SHORT_WATCH:
            await self.sleep(self.backoff.next())

    def apply(self, event_type: Any, obj: Any) -> None:
        """One watch event into the cache (ERROR events were raised by the library already)."""
        if not isinstance(obj, dict) or event_type not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            raise ValueError(f"malformed watch event of type {event_type!r}")
        self.stats.event(self.kind.name, event_type)
        self.backoff.reset()
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if event_type == "BOOKMARK":
            return
        key = key_of(obj)
        if event_type == "DELETED":
            if self.objects.pop(key, None) is None:
                return
        elif self.objects.get(key) == obj:
            return
        else:
            self.objects[key] = obj
        self.on_change()

    def status(self) -> dict:
        return {"kind": self.kind.name, "apiVersion": self.kind.api_version, "synced": self.synced.is_set(),
                "objects": len(self.objects), "resourceVersion": self.resource_version, "lists": self.relists,
                "lastError": self.last_error,
                "lastErrorAt": None if self.last_error_at is None else
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_error_at))}


def _is_gone(error: BaseException) -> bool:
    return isinstance(error, Gone) or isinstance(error, ApiException) and error.status == 410


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason or ''}".strip()
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
