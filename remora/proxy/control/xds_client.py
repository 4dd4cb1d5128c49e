"""The sidecar end of the control stream: connect, subscribe, apply pushes, ACK or NACK.

Rules this module keeps:

- One WebSocket to `<control>/v1/xds`. On every (re)connect: Hello with this sidecar's
  Node, then one DiscoveryRequest per type in TYPE_ORDER with the version held, so the
  server sends only what this sidecar does not have yet.
- Pushes are handled one at a time, in arrival order. Each is built into a whole config
  (XdsState.candidate, in a thread so a large mesh does not freeze the listeners sharing
  this loop), applied (the caller's `apply`: swap the worker's snapshot, or forward to
  every worker process), then ACKed. Anything that goes wrong on the way is a
  NACK with the error text; the config being served does not change and the proxy goes on.
- After an accepted push with every type held, the snapshot file is replaced.
- The stream going away never touches the data path: listeners keep serving the current
  snapshot while the client reconnects with full-jitter exponential backoff (0.1 s
  doubling to a 5 s cap), forever, until the proxy stops.
- A ConfigDumpRequest (`remora proxy-config` through the control server) is answered with
  what this sidecar's own admin server shows at the allowed paths, read over loopback in a
  task of its own, so pushes are never held up behind it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from remora.config.model import MeshConfig
from remora.proxy.control.snapshot_store import SnapshotStore, default_state_dir
from remora.proxy.control.xds_state import FROM_CONTROL, FROM_DISK, Candidate, XdsState
from remora.proxy import log_levels
from remora.wire import protocol
from remora.version import remora_version

if TYPE_CHECKING:
    import aiohttp

HEARTBEAT_SECONDS = 10.0        # ping the server; no pong within half of it drops the stream
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_FRAME_BYTES = 64 << 20      # one push is one frame: room for large meshes
ADMIN_READ_TIMEOUT_SECONDS = 5.0
PROCESS_STARTED = time.time()   # imported at start-up: the sidecar's start, for `remora status`


_config_log = log_levels.logger("config")


def log(message: str, level: int = logging.INFO) -> None:
    """The `config` component's line (log_levels.py): the control stream's events."""
    _config_log.log(level, "%s", message)


def stream_url(control: str) -> str:
    """`http://host:port` -> `ws://host:port/v1/xds`; raise ValueError naming what is wrong."""
    parts = urlsplit(control)
    scheme = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"control server URL {control!r}: expected http://HOST:PORT (or ws://, https://)")
    if not parts.hostname:
        raise ValueError(f"control server URL {control!r}: no host")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"control server URL {control!r}: invalid port") from None
    if parts.path not in ("", "/", protocol.STREAM_PATH) or parts.query or parts.fragment:
        raise ValueError(f"control server URL {control!r}: give only scheme, host and port "
                         f"(the stream path {protocol.STREAM_PATH} is added)")
    return f"{scheme}://{parts.netloc}{protocol.STREAM_PATH}"


def control_urls(control: str) -> list[str]:
    """`--control URL[,URL...]` (several replicas) -> the URLs; ValueError naming a bad one."""
    urls = [part.strip() for part in control.split(",") if part.strip()]
    if not urls:
        raise ValueError("no control server URL")
    for url in urls:
        stream_url(url)
    return urls


class Backoff:
    """Full-jitter exponential backoff: the n-th wait is uniform in [0, min(cap, base * 2**n)]."""

    def __init__(self, base: float = 0.1, cap: float = 5.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 32)))
        self.failures += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.failures = 0


def build_node(options, admin_port: int) -> protocol.Node:
    """How this sidecar introduces itself: identity, labels, and where peers and admin reach it."""
    identity = options.identity
    inbound = None
    if options.inbound_port is not None and options.app_port is not None:
        inbound = f"{options.inbound_bind}:{options.inbound_port}"
    return protocol.Node(
        id=identity.id, namespace=identity.namespace, service=identity.service,
        service_account=identity.service_account, workload=identity.workload_name,
        labels=dict(identity.labels), trust_domain=identity.trust_domain, inbound=inbound,
        app_port=options.app_port, admin=f"{options.admin_bind}:{admin_port}",
        mtls=bool(options.token or options.cert_dir), remora_version=remora_version(),
        started_at=PROCESS_STARTED, capabilities=[protocol.CONFIG_DUMP], locality=identity.locality)


@dataclass
class ControlBoot:
    """What the proxy starts with under --control: held state, its config, and where from."""

    state: XdsState
    store: SnapshotStore
    config: MeshConfig
    from_disk: bool


def boot(options) -> ControlBoot:
    """Start from the on-disk snapshot when there is a good one, else from an empty config."""
    state_dir = options.state_dir or default_state_dir(
        options.identity.namespace, options.identity.workload_name, options.admin_port)
    store = SnapshotStore(state_dir)
    try:
        saved = store.load()
        if saved is not None:
            state = XdsState()
            state.restore(saved, store.path)
            config = state.build()
            log(f"config from disk snapshot {store.path} ({state.versions_text()}); "
                f"connecting to the control server for updates")
            return ControlBoot(state, store, config, True)
        log(f"no disk snapshot at {store.path}; waiting for the control server's first push "
            "(/ready answers 503 until then)")
    except Exception as error:   # a bad snapshot must not keep the proxy from starting
        log(f"ignoring disk snapshot: {_one_line(error)}", logging.WARNING)
    return ControlBoot(XdsState(), store, MeshConfig(version="none"), False)


class XdsClient:
    """Keeps the control stream open and turns its pushes into applied configs."""

    def __init__(self, control: str, node: protocol.Node, start: ControlBoot,
                 apply: Callable[[Candidate], Awaitable[None]]) -> None:
        # Several replicas (`--control A,B`): one stream at a time, to the next one when it
        # fails; backoff only once every replica failed in a row (docs/control.md, failover).
        self.controls = control_urls(control)
        self._current = 0
        self._tried = 0                   # replicas tried since the last stream that connected
        self.node = node
        self.state = start.state
        self.store = start.store
        self.from_disk = start.from_disk
        self._apply = apply
        self.backoff = Backoff()
        self.connected = False
        self.pushes_received = 0
        self.pushes_unchanged = 0         # a version already held (another replica's resend): not reapplied
        self.pushes_older = 0             # older than held (a replica behind the others): refused
        self.rejected = 0
        self.reconnects = 0
        self.last_error: str | None = None    # why the stream last failed or closed
        self._connections = 0
        self._failures_in_a_row = 0
        self._task: asyncio.Task | None = None
        self._answers: set[asyncio.Task] = set()   # config dump answers in flight

    @property
    def control(self) -> str:
        """The control server this stream is (or will next be) with."""
        return self.controls[self._current]

    @property
    def url(self) -> str:
        return stream_url(self.control)

    # -- what the rest of the proxy reads -------------------------------------------------------
    @property
    def has_config(self) -> bool:
        """A config worth serving: restored from disk, or every type pushed at least once."""
        return self.from_disk or self.state.complete

    def config_source(self) -> str:
        """control, disk snapshot, both (some types re-pushed since a boot from disk), or none."""
        origins = {held.origin for held in self.state.types.values() if held.origin}
        if len(origins) > 1:
            return f"{FROM_CONTROL} and {FROM_DISK}"
        return origins.pop() if origins else "none"

    def status(self) -> dict:
        """The "xds" section of /config_dump."""
        return {"control": self.control, "controls": self.controls, "stream": self.url, "connected": self.connected,
                "node_id": self.node.id, "config_source": self.config_source(),
                "snapshot_file": self.store.path, "last_stream_error": self.last_error,
                "types": {t: held.status() for t, held in self.state.types.items()}}

    def stats(self) -> dict[str, int]:
        return {"control_plane.connected": int(self.connected),
                "control_plane.pushes_received": self.pushes_received,
                "control_plane.pushes_unchanged": self.pushes_unchanged,
                "control_plane.pushes_older": self.pushes_older,
                "control_plane.rejected": self.rejected,
                "control_plane.reconnects": self.reconnects}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="xds-client")

    async def stop(self) -> None:
        """Stop reconnecting and close the stream (safe while connecting or backing off)."""
        for task in [self._task, *self._answers]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*([self._task] if self._task else []), *self._answers, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        import aiohttp   # only a sidecar under --control loads aiohttp (~10 MiB), when it connects
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_SECONDS,
                                        sock_connect=CONNECT_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self._stream(session)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as error:
                    self._lost(_one_line(error) or type(error).__name__)
                except Exception as error:   # a bug here must not end reconnecting for good
                    self._lost(f"{type(error).__name__}: {_one_line(error)}")
                else:
                    self._lost(self.last_error or "closed by the control server")
                self._tried += 1
                self._current = (self._current + 1) % len(self.controls)
                if self._tried >= len(self.controls):
                    await asyncio.sleep(self.backoff.next_delay())   # every replica failed in a row
                else:
                    await asyncio.sleep(0.05)                        # another replica, at once

    async def _stream(self, session: aiohttp.ClientSession) -> None:
        import aiohttp   # loaded by _run already; named here for WSMsgType
        async with session.ws_connect(self.url, heartbeat=HEARTBEAT_SECONDS,
                                      max_msg_size=MAX_FRAME_BYTES) as ws:
            self.connected = True
            self.last_error = None
            if self._connections:
                self.reconnects += 1
            self._connections += 1
            self._failures_in_a_row = 0
            self._tried = 0
            log(f"connected to control server {self.control} as {self.node.id} "
                f"(holding {self.state.versions_text()})")
            await ws.send_str(protocol.encode(protocol.Hello(node=self.node)))
            for request in self.state.subscriptions():
                await ws.send_str(protocol.encode(request))
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue   # aiohttp answers pings itself; CLOSE/ERROR end the iteration
                await self._on_frame(ws, frame.data)
            if ws.exception() is not None:
                self.last_error = _one_line(ws.exception())

    def _lost(self, reason: str) -> None:
        was_connected, self.connected = self.connected, False
        self.last_error = reason
        self._failures_in_a_row += 1
        serving = ("the disk snapshot" if FROM_DISK in self.config_source() else
                   "the last pushed config" if self.has_config else
                   "no config yet (/ready answers 503)")
        if was_connected:
            log(f"control stream lost ({reason}); serving {serving}; reconnecting", logging.WARNING)
        elif self._failures_in_a_row == 1 or self._failures_in_a_row % 20 == 0:
            log(f"control server {self.control} unreachable ({reason}, attempt "
                f"{self._failures_in_a_row}); serving {serving}; retrying with backoff", logging.WARNING)

    # -- one frame -----------------------------------------------------------------------------
    async def _on_frame(self, ws, data: str) -> None:
        try:
            message = protocol.decode(data)
        except protocol.ProtocolError as error:
            log(f"ignoring frame from the control server: {error}", logging.WARNING)
            return
        if isinstance(message, protocol.StreamError):
            self.last_error = f"refused by the control server: {message.message}"
            log(self.last_error, logging.WARNING)
            await ws.close()
        elif isinstance(message, protocol.DiscoveryResponse):
            self.backoff.reset()   # the server is really serving us, not refusing at once
            answer = await self.handle(message)
            await ws.send_str(protocol.encode(answer))
        elif isinstance(message, protocol.ConfigDumpRequest):
            task = asyncio.create_task(self._answer_config_dump(ws, message))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        else:
            log(f"ignoring unexpected {type(message).__name__} from the control server", logging.WARNING)

    async def _answer_config_dump(self, ws, request: protocol.ConfigDumpRequest) -> None:
        """Read the allowed admin paths over loopback and send them back; errors become the answer."""
        answer = protocol.ConfigDumpResponse(request_id=request.request_id)
        refused = [p for p in request.paths if p not in protocol.INTROSPECTION_PATHS]
        if refused:
            answer.error = f"not an introspection path: {', '.join(refused)}"
        else:
            import aiohttp   # loaded by _run already (this runs on its stream)
            try:
                answer.documents = await read_admin(admin_url(self.node.admin), request.paths)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as error:
                why = _one_line(error) or type(error).__name__
                answer.error = f"cannot read its admin server {self.node.admin}: {why}"
        frame = protocol.encode(answer)
        if len(frame.encode()) > protocol.MAX_SIDECAR_FRAME:   # the server would drop the stream for it
            frame = protocol.encode(protocol.ConfigDumpResponse(
                request_id=request.request_id, error=f"config dump of {len(frame)} bytes is larger than the "
                f"stream's {protocol.MAX_SIDECAR_FRAME} byte frame limit; read /config_dump on the sidecar"))
        try:
            await ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            pass   # the stream went away meanwhile: the server gives up on its own

    async def handle(self, response: protocol.DiscoveryResponse) -> protocol.DiscoveryRequest:
        """Apply one push or refuse it; return the ACK or NACK to send. Never raises."""
        self.pushes_received += 1
        held = self.state.types.get(response.type_url)
        if held is not None and held.origin is not None and held.version == response.version_info:
            # A version already held (a replica resending on reconnect, or the disk snapshot's):
            # the running config is built from these very resources; ACK without a rebuild.
            self.pushes_unchanged += 1
            return self.state.accept_unchanged(response)
        older = self.state.older_than_held(response)
        if older is not None:
            self.pushes_older += 1
            log(f"xds refused {response.type_url}@{response.version_info}: {older}", logging.WARNING)
            return self.state.reject(response, older)
        try:
            # Validation can take a while for a large mesh: off the event loop, so the
            # listeners it shares (one worker) keep answering meanwhile.
            candidate = await asyncio.to_thread(self.state.candidate, response)
            await self._apply(candidate)
        except asyncio.CancelledError:
            raise
        except Exception as error:      # any failure is a NACK, never a crash
            self.rejected += 1
            held = self.state.types.get(response.type_url)
            keeping = f"{response.type_url}@{held.version or '-'}" if held else "nothing"
            detail = str(error) or type(error).__name__
            log(f"xds rejected {response.type_url}@{response.version_info} (keeping {keeping}): "
                f"{_one_line(detail)}", logging.WARNING)
            return self.state.reject(response, detail)
        ack = self.state.accept(candidate)
        warned = f", {len(candidate.config.warnings)} warnings" if candidate.config.warnings else ""
        log(f"xds accepted {response.type_url}@{response.version_info} "
            f"(config {candidate.config.version}: {self.state.versions_text()}{warned})")
        if self.state.complete:
            try:
                await asyncio.to_thread(self.store.save, self.state.to_snapshot(), self.node.id)
            except OSError as error:   # serving matters more than the file
                log(f"cannot write disk snapshot {self.store.path}: {error}", logging.WARNING)
        return ack


def admin_url(admin: str | None) -> str:
    """Where this process reaches its own admin server: a wildcard bind is reached on loopback."""
    if not admin:
        raise ValueError("no admin address")
    host, _, port = admin.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def read_admin(base: str, paths: list[str]) -> dict:
    """path -> the JSON the admin server at `base` answers there."""
    import aiohttp   # loaded with the control stream already; kept out of module import
    timeout = aiohttp.ClientTimeout(total=ADMIN_READ_TIMEOUT_SECONDS)
    documents = {}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for path in paths:
            async with session.get(base + path) as response:
                if response.status != 200:
                    raise ValueError(f"{path} answered HTTP {response.status}")
                documents[path] = json.loads(await response.read())
    return documents


def _one_line(error: object) -> str:
    """A (multi-line) error as one log line: `2 configuration errors: a; b`."""
    text = ""
    for line in filter(None, (part.strip() for part in str(error).splitlines())):
        text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text
