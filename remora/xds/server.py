"""`remora control`: one aiohttp server for the sidecar streams, the REST API and metrics.

Wiring: the ConfigStore validates every change; the Registry turns connected sidecars into
resources; accepted changes go through the Debouncer; when it fires, a new SnapshotCache
is made for the new config version and every StreamSession is woken to push what changed
for its scope. Validation runs on the event loop (one build of the whole set, about 0.3 s
for 1,000 ServiceEntries x 10 endpoints), so changes are applied strictly one at a time.

Endpoints (docs/control.md has the details):
    GET  /v1/xds                                  the sidecar stream (WebSocket)
    POST /v1/apply?source=NAME[&namespace=NS]      multi-document YAML body (NS: kubectl apply -n)
    GET  /v1/resources[?kind=K&namespace=NS]
    GET  /v1/resources/{kind}/{namespace}/{name}   ?format=yaml|json (default json)
    DELETE /v1/resources/{kind}/{namespace}/{name}
    GET  /v1/status   GET /metrics   GET /healthz
    GET  /v1/sidecars/{node}/config_dump          a sidecar's admin views, over its stream (introspect.py)
    /v1/tokens, /v1/certificates, /v1/trust-bundle   the CA (ca_service.py)

Every endpoint except the sidecars' and the probes' needs the admin token (admin_auth.py).
"""
from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from remora.config.loader import ConfigError
from remora.wire import protocol
from remora.xds.admin_auth import AdminCredential, admin_middleware, generate_token
from remora.xds.ca_service import CaService, CaSettings
from remora.xds.webhook import InjectionWebhook, WebhookSettings
from remora.xds.debounce import Debouncer
from remora.xds.external import DocumentSource, SourceError, combined, names, start_all
from remora.xds.introspect import add_routes as add_introspection_routes
from remora.xds.jwks_fetch import JwksFetcher
from remora.xds.kinds import UnknownKind
from remora.xds.metrics import CONTENT_TYPE, ControlMetrics
from remora.wire.protocol import Hello
from remora.xds.registry import DuplicateNode, InvalidNode, Registry, check_node, with_peer_address
from remora.xds.snapshots import SnapshotCache
from remora.xds.replicas import EtcdState, SharedStart
from remora.xds.resources_api import BadIdentity, add_resource_routes, error_response as _error, resource_ref
from remora.xds.store import Change, ChangeRefused, ConfigFailure, ConfigStore, PendingChange
from remora.xds.status_view import status_body
from remora.xds.stream import StreamSession, send_error
from remora.xds.watch import DirectoryWatcher

MAX_APPLY_BYTES = 16 << 20
MAX_STREAM_FRAME = protocol.MAX_SIDECAR_FRAME   # what a sidecar sends; pushes are not limited by this


@dataclass(frozen=True)
class ControlSettings:
    config_dir: str | None = None
    state_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 15010
    trust_domain: str = "cluster.local"
    grace_period: float = 10.0
    debounce: float = 0.1
    max_debounce: float = 1.0
    jwks_refresh_interval: float = 20 * 60.0   # istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL
    jwks_retry_interval: float = 30.0          # a jwksUri never fetched yet is retried this often
    poll_interval: float = 0.5
    hello_timeout: float = 10.0
    heartbeat: float = 15.0
    ca: CaSettings = CaSettings()
    admin_token_file: str | None = None
    webhook: WebhookSettings | None = None     # --webhook-listen: sidecar injection at admission
    push_throttle: int = 100                   # streams sending at once (istiod's PILOT_PUSH_THROTTLE)
    store: str | None = None                   # --store etcd://...: replicas over etcd (replicas.py)
    store_key_file: str | None = None          # --store-key-file: seals the CA key and admin token in etcd
    store_max_txn_ops: int = 128               # --store-max-txn-ops: resources one apply may change (etcd's limit)


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} remora control: {message}",
          file=sys.stderr, flush=True)


class ControlServer:
    """The control plane's state and its HTTP application."""

    def __init__(self, settings: ControlSettings, log=_log, sources: Sequence[DocumentSource] = ()) -> None:
        self.settings = settings
        self.log = log
        self.metrics = ControlMetrics()
        self.registry = Registry(settings.grace_period, state_path=(
            os.path.join(settings.state_dir, "registry.json") if settings.state_dir else None))
        self.sources = list(sources)   # --kubernetes: external.py
        self.store = ConfigStore(settings.config_dir, settings.state_dir,
                                 extra=combined(self.registry.documents, self.sources), on_error=self._config_failed)
        self.sessions: dict[str, StreamSession] = {}
        self.push_slots = asyncio.Semaphore(settings.push_throttle)
        self.jwks = JwksFetcher(self.metrics, log, self._jwks_changed,
                                settings.jwks_refresh_interval, settings.jwks_retry_interval)
        self.cache = SnapshotCache(self.store.config)
        self.debouncer = Debouncer(settings.debounce, settings.max_debounce, self._publish)
        self._registry_dirty = False
        self._sources_dirty = False
        self._deferred_start = False   # files invalid without the sources' documents: see load()
        self._tasks: list[asyncio.Task] = []
        self.ca: CaService | None = None   # made by load()
        self.admin: AdminCredential | None = None   # made by load()
        self.shared: EtcdState | None = None        # --store etcd://: set by load()

    # -- config

    def load(self, shared: SharedStart | None = None) -> None:
        """Read state and files (or take the shared store's, read by replicas.start_shared);
        raise ConfigError / StateError when they are not a valid set, CaError when the CA
        cannot be loaded or created, AdminTokenError for the admin token."""
        self.admin = shared.admin if shared else self._admin_credential()
        self.ca = CaService.start(self.settings.ca, self.settings.state_dir, self.settings.trust_domain,
                                  self.metrics, self.log, shared=shared)
        restored = self.registry.restore()
        if restored:
            self.log(f"restored {restored} registered sidecar(s); each is removed in "
                     f"{self.registry.grace_period:g}s unless it reconnects")
        if shared is not None:
            self.shared = shared.state
            self.registry.remote, self.registry.listener = shared.remote, shared.state
        try:
            self.store.start(shared.applied if shared else None)
        except ConfigError:
            if not self.sources:
                raise
            # Files may name services only a source defines (a VirtualService for a Kubernetes
            # Service): validated again with the sources' documents in serve(), refused then.
            self._deferred_start = True
            self.log(f"config not valid without the documents of {names(self.sources)} yet; "
                     "validating again once they are read")
        self.jwks.config_changed(self.store.config)
        self.cache = SnapshotCache(self.jwks.resolve(self.store.config), store_revision=self._revision())
        self.metrics.set_version(self.store.config.version)
        for warning in self.store.config.warnings:
            self.log(f"warning: {warning}")
        for note in self.store.config.notes:
            self.log(f"info: {note}")
        # What startup made (ten thousand services' documents, specs and encodings) lives as
        # long as the process: moved out of the cyclic GC's reach, a full collection no longer
        # walks it (at 10,000 services one took 0.4 s, in the middle of an apply).
        gc.collect()
        gc.freeze()

    def _admin_credential(self) -> AdminCredential:
        if self.settings.admin_token_file:
            credential = AdminCredential.from_file(self.settings.admin_token_file)
            self.log(f"admin API: token from {credential.origin}")
            return credential
        if self.settings.state_dir:
            credential, created = AdminCredential.load_or_create(self.settings.state_dir)
            self.log(f"admin API: token {'created in' if created else 'from'} {credential.origin} (mode 0600)")
            return credential
        token = generate_token()
        self.log("warning: no --state-dir or --admin-token-file: the admin token exists only in this process "
                 f"and is shown once: {token}")
        return AdminCredential.from_token(token)

    def _config_failed(self, failure: ConfigFailure) -> None:
        kind = "api" if failure.source.startswith(("apply", "delete")) else failure.source
        self.metrics.config_errors.labels(kind).inc()
        if kind != "api":  # the API caller gets its errors in the answer
            self.log(f"config from {failure.source} rejected, keeping version {self.store.config.version}:\n  "
                     + "\n  ".join(failure.errors))

    def _files_changed(self) -> None:
        before = self.store.config.version
        at = asyncio.get_running_loop().time()
        if self.store.reload_files() and self.store.config.version != before:
            self.log(f"config files changed: version {self.store.config.version}")
            self.debouncer.trigger(at)

    def _shared_applied(self, applied: dict) -> None:
        """Another replica applied or deleted resources."""
        before = self.store.config.version
        if self.store.replace_applied(applied) and self.store.config.version != before:
            self.log(f"config changed on another replica: version {self.store.config.version}")
            self.debouncer.trigger()

    def _shared_registration(self, node_id: str, node) -> None:
        if self.registry.remote_changed(node_id, node):
            self._registry_changed()

    async def _commit(self, pending: PendingChange) -> Change:
        """Put a validated change in force, through the shared store first when there is one."""
        if self.shared is None:
            return self.store.commit(pending)
        seen = self.shared.foreign_changes
        await self.shared.save_applied(self.store.applied, pending.applied)
        change = self.store.commit(pending)
        if self.shared.foreign_changes != seen:   # another replica's change came in meanwhile: take both
            self._shared_applied(self.shared.applied_now())
        return change

    def _revision(self) -> int:
        """The shared store's revision this replica has seen all of (0 without one)."""
        return self.shared.revision if self.shared is not None else 0

    def _registry_changed(self) -> None:
        self._registry_dirty = True
        self.debouncer.trigger()

    def _sources_changed(self) -> None:
        self._sources_dirty = True
        self.debouncer.trigger()

    def _publish(self, first_change: float) -> None:
        """The debouncer fired: make the snapshots of the new version and wake every stream."""
        if self._registry_dirty or self._sources_dirty:
            reason = names(self.sources) if self._sources_dirty else "registry"
            self._registry_dirty = self._sources_dirty = False
            self.store.rebuild(reason)
        if self.store.config.version == self.cache.version:
            return
        self.jwks.config_changed(self.store.config)
        self.cache = SnapshotCache(self.jwks.resolve(self.store.config), first_change, self._revision(),
                                   previous=self.cache)
        self.metrics.set_version(self.cache.version)
        for session in self.sessions.values():
            session.notify()

    def _jwks_changed(self) -> None:
        """Fetched keys changed (first fetch, rotation): same config version, new policies."""
        self.cache = SnapshotCache(self.jwks.resolve(self.store.config), asyncio.get_running_loop().time(),
                                   self._revision(), previous=self.cache)
        for session in self.sessions.values():
            session.notify()

    def current(self) -> SnapshotCache:
        return self.cache

    # -- the stream

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=self.settings.heartbeat, compress=False,
                                   max_msg_size=MAX_STREAM_FRAME)
        await ws.prepare(request)
        try:
            message = await ws.receive(timeout=self.settings.hello_timeout)
        except asyncio.TimeoutError:
            await send_error(ws, f"no hello within {self.settings.hello_timeout:g}s")
            return ws
        if message.type != WSMsgType.TEXT:
            await send_error(ws, "the first message must be a hello (JSON text frame)")
            return ws
        try:
            hello = protocol.decode(message.data)
            if not isinstance(hello, Hello):
                raise InvalidNode(f"the first message must be a hello, got {type(hello).__name__}")
            check_node(hello.node)
            hello.node = with_peer_address(hello.node, request.remote)
            registration = self.registry.connect(hello.node)
        except (protocol.ProtocolError, InvalidNode, DuplicateNode) as error:
            self.log(f"stream refused: {error}")
            await send_error(ws, str(error))
            return ws
        node = hello.node
        if node.trust_domain != self.settings.trust_domain:
            self.log(f"warning: sidecar {node.id} says trust domain {node.trust_domain}, "
                     f"the mesh uses {self.settings.trust_domain}")
        session = StreamSession(ws, registration, self.current, self.metrics, self.log, self.push_slots)
        self.sessions[node.id] = session
        self.metrics.connected.set(len(self.sessions))
        self.log(f"sidecar {node.id} connected (namespace {node.namespace})")
        if self.registry.registers_endpoint(node):
            self._registry_changed()
        try:
            await session.run()
        finally:
            del self.sessions[node.id]
            self.metrics.connected.set(len(self.sessions))
            delay = self.registry.disconnect(node.id)
            self.log(f"sidecar {node.id} disconnected; removal in {delay:g}s unless it reconnects")
            asyncio.get_running_loop().call_later(delay + 0.01, self._expire)
        return ws

    def _expire(self) -> None:
        gone = self.registry.expire()
        if gone:
            self.log(f"removed {', '.join(gone)} (grace period over)")
            self._registry_changed()

    # -- REST

    async def apply(self, request: web.Request) -> web.Response:
        at = asyncio.get_running_loop().time()
        source = request.query.get("source") or "<request>"
        if request.content_length is not None and request.content_length > MAX_APPLY_BYTES:
            return _error(413, f"body over {MAX_APPLY_BYTES} bytes")
        raw = await request.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return _error(400, f"{source}: body is not UTF-8 text: {error.reason} "
                               f"(byte 0x{raw[error.start]:02x} at offset {error.start})")
        before = self.store.config.version
        try:
            change = await self._commit(self.store.plan_apply(text, source, request.query.get("namespace") or None))
        except ChangeRefused as refused:
            return _error(refused.status, refused.message, refused.errors)
        if change.version != before:
            self.debouncer.trigger(at)
        return web.json_response({"version": change.version, "warnings": change.warnings,
                                  "results": [{"resource": ref, "action": action} for ref, action in change.results]})

    async def delete_resource(self, request: web.Request) -> web.Response:
        at = asyncio.get_running_loop().time()
        try:
            ref = resource_ref(request)
        except (UnknownKind, BadIdentity) as error:
            return _error(400, str(error))
        try:
            change = await self._commit(self.store.plan_delete(ref))
        except ChangeRefused as refused:
            return _error(refused.status, refused.message, refused.errors)
        self.debouncer.trigger(at)
        return web.json_response({"version": change.version, "warnings": change.warnings,
                                  "results": [{"resource": r, "action": action} for r, action in change.results]})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(status_body(self.store, self.cache.version, self.jwks.status(), self.registry,
                                             self.sessions, self.settings.trust_domain, self.shared,
                                             {s.name: s.status() for s in self.sources}))

    async def metrics_(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.content_type = CONTENT_TYPE.split(";")[0]
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    def app(self) -> web.Application:
        if self.admin is None:
            raise RuntimeError("ControlServer.load() makes the admin credential; call it first")
        app = web.Application(client_max_size=MAX_APPLY_BYTES, middlewares=[
            admin_middleware(self.admin, lambda endpoint, reason: self.metrics.unauthorized.labels(
                endpoint, reason).inc())])
        app.router.add_get(protocol.STREAM_PATH, self.stream)
        app.router.add_post("/v1/apply", self.apply)
        add_resource_routes(app.router, self.store)
        app.router.add_delete("/v1/resources/{kind}/{namespace}/{name}", self.delete_resource)
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/metrics", self.metrics_)
        app.router.add_get("/healthz", self.healthz)
        add_introspection_routes(app.router, self.sessions)
        if self.ca is not None:
            self.ca.add_routes(app.router)
        app.on_shutdown.append(self._close_streams)
        return app

    async def _start_sources(self) -> None:
        """Start the sources (their first full read is in the first config served); SourceError
        when one cannot start, or when files deferred by load() are still invalid with them."""
        if not self.sources:
            return
        await start_all(self.sources, self._sources_changed, self.metrics)
        self._sources_dirty = False
        if not self.store.rebuild(names(self.sources)) and self._deferred_start:
            raise SourceError(f"invalid configuration with the documents of {names(self.sources)}, not starting\n  "
                              + "\n  ".join(self.store.state.last_error.errors))
        self._deferred_start = False
        self._publish(asyncio.get_running_loop().time())

    async def _close_streams(self, app: web.Application) -> None:
        for session in list(self.sessions.values()):
            await session.ws.close(message=b"control server shutting down")

    # -- running

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        await site.start()
        self._tasks.append(asyncio.create_task(self.jwks.run()))
        if self.settings.config_dir is not None:
            watcher = DirectoryWatcher(self.store.config_dir, self.settings.poll_interval, self._files_changed)
            self._tasks.append(asyncio.create_task(watcher.run()))
        if self.shared is not None:
            self.shared.start(self._shared_applied, self._shared_registration)
        try:
            await self._start_sources()
        except SourceError:
            for task in self._tasks:
                task.cancel()
            await runner.cleanup()
            raise
        if self.registry.nodes:   # restored registrations: their grace period runs from now
            asyncio.get_running_loop().call_later(self.registry.grace_period + 0.01, self._expire)
        webhook_runner = None
        if self.settings.webhook is not None:
            webhook = InjectionWebhook(self.settings.webhook, self.ca.ca,
                                       lambda result: self.metrics.injections.labels(result).inc())
            webhook_runner = await webhook.serve(self.log)
        self.log(f"serving on http://{self.settings.host}:{self.settings.port} "
                 f"(config version {self.store.config.version}, {len(self.store.resources())} resources)")
        try:
            await stop.wait()
        finally:
            self.debouncer.cancel()
            for task in self._tasks:
                task.cancel()
            for source in self.sources:
                await source.stop()
            await runner.cleanup()
            if webhook_runner is not None:
                await webhook_runner.cleanup()
            if self.ca is not None:
                self.ca.close()
            if self.shared is not None:
                await self.shared.close()
