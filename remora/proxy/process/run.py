"""Process model of `remora proxy`: one worker in-process, or N forked SO_REUSEPORT workers.

With N > 1 the parent runs only the admin server and supervises; each child runs a Worker
and answers the parent's admin questions over a socketpair (one JSON line each way), so
one scrape of the admin port covers every worker.

SIGTERM/SIGINT and POST /quitquitquit start the same drain (Istio's, with
EXIT_ON_ZERO_ACTIVE_CONNECTIONS): /healthz/ready answers 503 DRAINING at once, the inbound
listener stops accepting and closes idle connections, the outbound listener keeps serving
the app (which is shutting down too and may still call out), and the process exits 0 when
no downstream connection is left, or at --drain-seconds. With N workers the supervisor
marks itself draining and forwards SIGTERM; each worker drains its own connections.

Under --control the xDS client runs beside the admin server: in the worker's loop with one
worker, in the parent with N. The parent builds (validates) each push once and forwards
the accepted documents to every child with an "apply" op; it ACKs only when all applied.
With --token the same process runs the SvidManager (the workload certificate; GET /certs).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

import uvloop

from remora.certs.credential import CredentialSourceError
from remora.config.loader import ConfigError
from remora.config.model import MeshConfig
from remora.proxy.control import xds_client
from remora.proxy.admin.server import start_admin, start_health, start_prometheus
from remora.proxy.router.request_ids import request_ids
from remora.proxy.admin.admin_source import ControlView, WorkerAdminSource
from remora.proxy.process.fanout import FanoutAdminSource, apply_to_workers
from remora.proxy.process.worker import ProxyOptions, Worker
from remora.proxy.process.worker_channel import CHANNEL_LINE_LIMIT, answer_parent, certificate_installer
from remora.proxy.control.xds_state import Candidate
from remora.proxy.process.allocator import keep_tls_buffers_in_heap
from remora.proxy import log_levels

if TYPE_CHECKING:
    from remora.proxy.security.cert_source import CertDirWatcher
    from remora.proxy.security.svid_manager import SvidManager

main_log = log_levels.logger("main")



def run_proxy(options: ProxyOptions, config: MeshConfig | None) -> int:
    """Run until SIGTERM/SIGINT or /quitquitquit; return the exit code.

    `config` comes from files; under --control (config None) the proxy starts from the disk
    snapshot, or empty, and the xDS client feeds it.
    """
    keep_tls_buffers_in_heap()   # before any worker forks: they inherit the allocator's settings
    control = xds_client.boot(options) if options.control else None
    if control is not None:
        config = control.config
    if options.workers <= 1:
        return uvloop.run(_single(options, config, control))
    return _multi(options, config, control)


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _control_client(options: ProxyOptions, control: xds_client.ControlBoot, apply,
                    view: ControlView) -> xds_client.XdsClient:
    """The xDS client, attached to the admin view before admin serves (so /ready is never
    200 before a config is there); started by _start_control once admin is bound."""
    node = xds_client.build_node(options, options.admin_port)
    view.xds = xds_client.XdsClient(options.control, node, control, apply)
    return view.xds


def _start_control(options: ProxyOptions, client: xds_client.XdsClient, runner) -> None:
    """Connect; the Node names the admin port actually bound (--admin-port 0 picks one)."""
    addresses = getattr(runner, "addresses", None) or [(options.admin_bind, options.admin_port)]
    client.node = xds_client.build_node(options, addresses[0][1])
    client.start()


def _start_certs(options: ProxyOptions, view: ControlView) -> SvidManager | CertDirWatcher | None:
    """The certificate source, started: the SvidManager under --control with --token, the
    directory watcher with --cert-dir (its first read happens here), else None."""
    # Imported in their branch: both load cryptography (~8 MiB), which a sidecar without
    # certificates never needs.
    if options.control and options.token:
        from remora.proxy.security.svid_manager import HttpCaClient, SvidManager
        view.certs = SvidManager(HttpCaClient(options.control), options.token, options.identity.principal)
    elif options.cert_dir:
        from remora.proxy.security.cert_source import CertDirWatcher
        view.certs = CertDirWatcher(options.cert_dir)
    else:
        return None
    view.certs.start()
    return view.certs


def _subscribe(certs, install) -> None:
    """Call `install(svid, bundle)` on every new certificate, and now if there is one already."""
    if certs is None:
        return
    certs.on_rotate.append(install)
    svid = certs.current()
    if svid is not None:
        install(svid, certs.trust_bundle)


def _gateway_port(port, options: ProxyOptions) -> str:
    local = options.gateway_port_map.get(port.number, port.number)
    return f"{port.protocol} {port.number} on {port.bind or options.bind}:{local}"


def _announce(options: ProxyOptions, config: MeshConfig) -> None:
    parts = [f"outbound {options.bind}:{options.outbound_port}"]
    if options.gateway:
        from remora.proxy.router.gateway_routes import gateway_ports
        ports = gateway_ports(config, options.identity.labels)[0].values()
        parts = [f"gateway servers {', '.join(_gateway_port(p, options) for p in ports) or 'none yet'}"]
    if options.inbound_port is not None and options.app_port is not None:
        parts.append(f"inbound {options.inbound_bind}:{options.inbound_port} -> "
                     f"{options.app_host}:{options.app_port}")
    parts.append(f"admin {options.admin_bind}:{options.admin_port}")
    if options.prometheus_port:
        parts.append(f"prometheus {options.prometheus_bind}:{options.prometheus_port}")
    if options.health_port:
        parts.append(f"health {options.health_bind}:{options.health_port}")
    parts.append(f"workers {max(1, options.workers)}")
    parts.append(f"config version {config.version}")
    if options.control:
        parts.append(f"control server {options.control}")
    main_log.info(", ".join(parts))
    for warning in config.warnings:
        main_log.warning("warning: %s", warning)
    for note in config.notes:
        main_log.info("info: %s", note)


async def _first_worker(options: ProxyOptions, config: MeshConfig, control, worker_id: int = 0) -> Worker | None:
    """The worker, its credential source (--credentials-from-kubernetes) read first; None when
    the files config names credentials the source lacks (refused as any invalid config).
    Under --control a refused disk snapshot gives way to an empty config until a push."""
    if options.credential_source is not None:
        try:
            await options.credential_source.start()
        except CredentialSourceError as error:
            print(f"remora: cannot start: {error}", file=sys.stderr, flush=True)
            return None
    try:
        return Worker(options, config, worker_id)
    except ConfigError as error:
        print(f"remora: invalid configuration\n{error}", file=sys.stderr, flush=True)
        if control is None:
            return None
    return Worker(options, MeshConfig(version="none"), worker_id)


async def _single(options: ProxyOptions, config: MeshConfig, control) -> int:
    stop = asyncio.Event()
    _install_stop(stop)
    worker = await _first_worker(options, config, control)
    if worker is None:
        if options.credential_source is not None:
            await options.credential_source.stop()
        return 1
    await worker.start(reuse_port=False)
    source = WorkerAdminSource(worker, stop)
    client = None
    if control is not None:
        async def apply(candidate: Candidate) -> None:
            worker.apply(candidate.config)
        client = _control_client(options, control, apply, source)
    runners = await _start_admin_servers(source, options)
    if client is not None:
        _start_control(options, client, runners[0])
    certs = _start_certs(options, source)
    _subscribe(certs, certificate_installer(worker))
    _announce(options, config)
    await stop.wait()
    worker.begin_drain()     # 503 DRAINING before anything else is stopped
    _say_draining(options)
    if client is not None:
        await client.stop()
    if certs is not None:
        await certs.stop()
    if options.credential_source is not None:
        await options.credential_source.stop()
    _say_drained(await worker.drain(options.drain_seconds), options)
    for runner in runners:
        await runner.cleanup()
    return 0


def _say_draining(options: ProxyOptions) -> None:
    main_log.info("draining: inbound closed, outbound serving; exit when no connection "
                  "is left or in %gs", options.drain_seconds)


def _say_drained(cut: int, options: ProxyOptions) -> None:
    if cut:
        main_log.warning("drain deadline (%gs) reached: closing %d connection(s)", options.drain_seconds, cut)


async def _start_admin_servers(source, options: ProxyOptions) -> list:
    """Admin on --admin-port and, unless their port is 0, the metrics-only port (15090) and
    the health port (15021), each on its own bind address."""
    runners = [await start_admin(source, options.admin_bind, options.admin_port)]
    extra = ((start_prometheus, options.prometheus_bind, options.prometheus_port),
             (start_health, options.health_bind, options.health_port))
    try:
        for start, host, port in extra:
            if port:
                runners.append(await start(source, host, port))
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners


# -- several workers -------------------------------------------------------------------------

def _multi(options: ProxyOptions, config: MeshConfig, control) -> int:
    children: list[tuple[int, socket.socket]] = []
    for worker_id in range(options.workers):
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            for _, other in children:
                other.close()
            code = 1
            try:
                code = uvloop.run(_child(options, config, worker_id, child_end))
            finally:
                os._exit(code)
        child_end.close()
        children.append((pid, parent_end))
    return uvloop.run(_parent(options, config, children, control))


async def _child(options: ProxyOptions, config: MeshConfig, worker_id: int, chan: socket.socket) -> int:
    request_ids.reseed()     # forked workers must not share the parent's id prefix
    stop = asyncio.Event()
    _install_stop(stop)
    # Each worker reads the credential source on its own (N watches of the gateway's
    # Secrets): keys never cross the socketpairs, and a worker needs no one to serve.
    worker = await _first_worker(options, config, options.control, worker_id)
    if worker is None:
        if options.credential_source is not None:
            await options.credential_source.stop()
        return 1
    await worker.start(reuse_port=True)
    reader, writer = await asyncio.open_connection(sock=chan, limit=CHANNEL_LINE_LIMIT)

    async def serve() -> None:
        await answer_parent(worker, reader, writer)
        stop.set()   # the parent is gone: do not outlive it

    server_task = asyncio.create_task(serve())
    await stop.wait()
    if options.credential_source is not None:
        await options.credential_source.stop()
    _say_drained(await worker.drain(options.drain_seconds), options)
    server_task.cancel()
    return 0


async def _parent(options: ProxyOptions, config: MeshConfig, children, control) -> int:
    stop = asyncio.Event()
    _install_stop(stop)
    channels = []
    for _, sock in children:
        reader, writer = await asyncio.open_connection(sock=sock, limit=CHANNEL_LINE_LIMIT)
        channels.append((reader, writer, asyncio.Lock()))
    source = FanoutAdminSource(channels, stop)
    client = None
    if control is not None:
        async def apply(candidate: Candidate) -> None:
            await apply_to_workers(source, candidate, client.state.documents)
        client = _control_client(options, control, apply, source)
    runners = await _start_admin_servers(source, options)
    for _ in range(200):          # workers bind their listeners; wait until all say ready
        await source.refresh_ready()
        if source.ready:
            break
        await asyncio.sleep(0.05)
    if client is not None:
        _start_control(options, client, runners[0])
    certs = _start_certs(options, source)
    pushes: set[asyncio.Task] = set()

    def push(svid, bundle) -> None:
        # Called from the certificate source's task: hand the fan-out to its own task
        # (kept referenced); the channel locks keep pushes in order.
        task = asyncio.get_running_loop().create_task(source.push_certificate(svid, bundle))
        pushes.add(task)
        task.add_done_callback(pushes.discard)
    _subscribe(certs, push)
    _announce(options, config)
    pids = {pid for pid, _ in children}
    code = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
        for pid in list(pids):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pids.discard(pid)
                main_log.error("worker %d exited (%s)", pid, status)
                code = 1
                stop.set()
    source.draining = True   # /healthz/ready: 503 DRAINING from now on
    _say_draining(options)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)   # each worker drains its own connections, then exits
    if client is not None:
        await client.stop()
    if certs is not None:
        await certs.stop()
    deadline = asyncio.get_running_loop().time() + options.drain_seconds + 5
    while pids and asyncio.get_running_loop().time() < deadline:
        for pid in list(pids):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                pids.discard(pid)
        await asyncio.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for runner in runners:
        await runner.cleanup()
    return code
