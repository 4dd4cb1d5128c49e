"""A Kubernetes API server double: real HTTP on loopback, the real list and watch wire format.

What it does as kube-apiserver does (k8s.io/apiserver, api-concepts "Efficient detection
of changes"):
- `GET <collection>` answers a List (`kind: <Kind>List`, metadata.resourceVersion = the
  store's current version); items of core kinds carry no kind/apiVersion, custom
  resources' do.
- `GET <collection>?watch=1&resourceVersion=N` answers 200 and streams newline-delimited
  JSON events `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": {...}}`: first
  every change after N still in the history, then live ones; it ends after timeoutSeconds.
  BOOKMARKs only with allowWatchBookmarks=true; their object is the kind with only
  metadata.resourceVersion.
- A resourceVersion older than the history kept (`compact()`, `expire()`) gets one
  ERROR event whose object is a Status with code 410 and reason Expired, then the end of
  the stream, as the watch cache does.
- resourceVersions are one counter for the whole store, as etcd's revision.
- A namespaced collection (`/api/v1/namespaces/<ns>/secrets`, what a Role lets a gateway
  read) lists and watches the same kind, only that namespace's objects.

Test controls: `put` / `delete` (with events, or `silent=True`: a change whose event
the watchers never see, as if lost while disconnected), `bookmark()`, `expire()` (every
open watch gets 410, older positions are refused), `drop_watches()`, `fail(n, status)`
(the next n requests answer an error), and `requests` (method, path, query) as received.
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import tempfile
import threading

from aiohttp import web

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_namespace(path: str) -> tuple[str, str | None]:
    """(the all-namespaces collection path, the namespace) of a namespaced collection path."""
    parts = path.split("/")
    if len(parts) == 6 and parts[1] == "api" and parts[3] == "namespaces":
        return f"/api/{parts[2]}/{parts[5]}", parts[4]
    if len(parts) == 7 and parts[1] == "apis" and parts[4] == "namespaces":
        return f"/apis/{parts[2]}/{parts[3]}/{parts[6]}", parts[5]
    return path, None


class Collection:
    """One kind's objects by namespace/name, as the double serves them."""

    def __init__(self, kind: str, api_version: str, path: str) -> None:
        self.kind, self.api_version, self.path = kind, api_version, path
        self.objects: dict[str, dict] = {}
        self.custom = "." in api_version.split("/")[0]   # a group with a dot: a CRD

    def key(self, obj: dict) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', '')}/{meta['name']}"


class FakeKubeApi:
    """The double: start(), then point a kubeconfig at `url` (kubeconfig())."""

    def __init__(self, kinds) -> None:
        self.collections = {kind.path: Collection(kind.name, kind.api_version, kind.path) for kind in kinds}
        self.by_kind = {c.kind: c for c in self.collections.values()}
        self.version = 1000
        self.oldest = 0                    # positions before this get 410
        self.history: list[tuple[int, str, str, dict]] = []   # (version, path, type, object)
        self.watchers: list[tuple[str, bool, asyncio.Queue]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._failures: list[int] = []
        self.port = _free_port()
        self._runner: web.AppRunner | None = None
        self.dir = tempfile.mkdtemp(prefix="remora-kube-api-")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeKubeApi:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._get)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)

    def kubeconfig(self) -> str:
        """A kubeconfig file naming this server (token auth over plain HTTP on loopback)."""
        path = os.path.join(self.dir, "kubeconfig")
        text = {"apiVersion": "v1", "kind": "Config", "current-context": "double",
                "clusters": [{"name": "double", "cluster": {"server": self.url}}],
                "users": [{"name": "tester", "user": {"token": "double-token"}}],
                "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester"}}]}
        with open(path, "w") as f:
            json.dump(text, f)   # JSON is YAML
        return path

    # -- test controls

    def put(self, kind: str, obj: dict, silent: bool = False) -> dict:
        """Create or replace an object; its event goes to the watchers unless `silent`."""
        collection = self.by_kind[kind]
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        key = collection.key(obj)
        event = "MODIFIED" if key in collection.objects else "ADDED"
        collection.objects[key] = obj
        if not silent:
            self._event(collection, event, obj)
        return obj

    def delete(self, kind: str, namespace: str, name: str, silent: bool = False) -> None:
        collection = self.by_kind[kind]
        obj = collection.objects.pop(f"{namespace}/{name}")
        self.version += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        if not silent:
            self._event(collection, "DELETED", obj)

    def bookmark(self) -> None:
        """A BOOKMARK at the current version to every watcher that allowed them."""
        self.version += 1   # bookmarks report progress the store made (other kinds' changes)
        for path, bookmarks, queue in self.watchers:
            if bookmarks:
                collection = self.collections[path]
                queue.put_nowait({"type": "BOOKMARK", "object": {
                    "kind": collection.kind, "apiVersion": collection.api_version,
                    "metadata": {"resourceVersion": str(self.version)}}})

    def expire(self) -> None:
        """Every position known so far is too old: open watches get ERROR 410 and end."""
        self.version += 1
        self.oldest = self.version
        self.history.clear()
        for _, _, queue in self.watchers:
            queue.put_nowait(self._gone(0))
            queue.put_nowait(None)

    def drop_watches(self) -> None:
        for _, _, queue in self.watchers:
            queue.put_nowait(None)

    def fail(self, count: int, status: int = 500) -> None:
        """The next `count` requests answer `status`."""
        self._failures += [status] * count

    def watch_count(self) -> int:
        return len(self.watchers)

    # -- serving

    def _event(self, collection: Collection, event: str, obj: dict) -> None:
        wire = self._wire(collection, obj, with_kind=True)
        self.history.append((self.version, collection.path, event, wire))
        for path, _, queue in self.watchers:
            if path == collection.path:
                queue.put_nowait({"type": event, "object": wire})

    @staticmethod
    def _wire(collection: Collection, obj: dict, with_kind: bool) -> dict:
        if with_kind or collection.custom:
            return {"kind": collection.kind, "apiVersion": collection.api_version, **obj}
        return obj

    def _gone(self, given: int) -> dict:
        return {"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"too old resource version: {given} ({self.oldest})", "reason": "Expired", "code": 410}}

    async def _get(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(("GET", request.path, query))
        if self._failures:
            status = self._failures.pop(0)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "message": "injected failure", "code": status}, status=status)
        if request.headers.get("Authorization") != "Bearer double-token":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        path, namespace = _split_namespace(request.path)
        collection = self.collections.get(path)
        if collection is None:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "message": "the server could not find the requested resource",
                                      "reason": "NotFound", "code": 404}, status=404)
        if query.get("watch") in ("1", "true", "True"):
            return await self._watch(request, collection, query, namespace)
        items = [self._wire(collection, obj, with_kind=False) for _, obj in sorted(collection.objects.items())
                 if namespace is None or obj["metadata"].get("namespace") == namespace]
        return web.json_response({"kind": f"{collection.kind}List", "apiVersion": collection.api_version,
                                  "metadata": {"resourceVersion": str(self.version)}, "items": items})

    async def _watch(self, request: web.Request, collection: Collection, query: dict,
                     namespace: str | None = None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        given = int(query.get("resourceVersion") or self.version)
        if given < self.oldest:
            await response.write(json.dumps(self._gone(given)).encode() + b"\n")
            await response.write_eof()
            return response
        queue: asyncio.Queue = asyncio.Queue()
        for version, path, event, obj in self.history:
            if path == collection.path and version > given:
                queue.put_nowait({"type": event, "object": obj})
        entry = (collection.path, query.get("allowWatchBookmarks") in ("true", "1", "True"), queue)
        self.watchers.append(entry)
        timeout = float(query.get("timeoutSeconds") or 1800)
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, end - loop.time()))
                except asyncio.TimeoutError:
                    break
                if item is None:
                    break
                if namespace is not None and item["type"] != "BOOKMARK" and \
                        item["object"].get("metadata", {}).get("namespace") not in (None, namespace):
                    continue
                await response.write(json.dumps(item).encode() + b"\n")
            await response.write_eof()
        except ConnectionResetError:
            pass   # the client went away
        finally:
            self.watchers.remove(entry)
        return response


class ThreadedKubeApi:
    """The double on an event loop thread of its own, for tests that block (subprocesses,
    urllib): every control runs on that loop. It can also serve other aiohttp apps there
    (`serve`: test backends standing in for pods). `close()` stops everything."""

    def __init__(self, kinds) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kube-api-double", daemon=True)
        self.thread.start()
        self.api: FakeKubeApi = self._run(self._make(kinds))
        self._runners: list[web.AppRunner] = []

    async def _make(self, kinds) -> FakeKubeApi:
        return await FakeKubeApi(kinds).start()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def _call(self, function, *args, **kwargs):
        async def call():
            return function(*args, **kwargs)
        return self._run(call())

    @property
    def url(self) -> str:
        return self.api.url

    def kubeconfig(self) -> str:
        return self.api.kubeconfig()

    def put(self, kind: str, obj: dict, silent: bool = False) -> dict:
        return self._call(self.api.put, kind, obj, silent)

    def delete(self, kind: str, namespace: str, name: str, silent: bool = False) -> None:
        self._call(self.api.delete, kind, namespace, name, silent)

    def bookmark(self) -> None:
        self._call(self.api.bookmark)

    def expire(self) -> None:
        self._call(self.api.expire)

    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        return self._call(lambda: list(self.api.requests))

    def serve(self, app: web.Application, host: str, port: int) -> None:
        async def start():
            runner = web.AppRunner(app, shutdown_timeout=0.1)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            self._runners.append(runner)
        self._run(start())

    def close(self) -> None:
        async def stop():
            for runner in self._runners:
                await runner.cleanup()
            await self.api.close()
        try:
            self._run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
