"""Process model of `remora proxy`: one worker in-process, or N forked SO_REUSEPORT workers.

With N > 1 the parent runs only the admin server and supervises; each child runs a Worker
and answers the parent's admin questions over a socketpair (one JSON line each way), so
one scrape of the admin port covers every worker. SIGTERM/SIGINT: stop accepting, drain
in-flight requests up to --drain-seconds, exit 0.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import uvloop

from remora.config.model import MeshConfig
from remora.proxy.admin import start_admin, start_prometheus
from remora.proxy.downstream import request_ids
from remora.proxy.istio_metrics import merge, render
from remora.proxy.worker import ProxyOptions, Worker, WorkerAdminSource, gauge_names


def run_proxy(options: ProxyOptions, config: MeshConfig) -> int:
    """Run until SIGTERM/SIGINT or /quitquitquit; return the exit code."""
    if options.workers <= 1:
        return uvloop.run(_single(options, config))
    return _multi(options, config)


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _announce(options: ProxyOptions, config: MeshConfig) -> None:
    parts = [f"outbound {options.bind}:{options.outbound_port}"]
    if options.inbound_port is not None and options.app_port is not None:
        parts.append(f"inbound {options.inbound_bind}:{options.inbound_port} -> "
                     f"{options.app_host}:{options.app_port}")
    parts.append(f"admin {options.admin_bind}:{options.admin_port}")
    if options.prometheus_port:
        parts.append(f"prometheus {options.admin_bind}:{options.prometheus_port}")
    parts.append(f"workers {max(1, options.workers)}")
    parts.append(f"config version {config.version}")
    print("remora proxy: " + ", ".join(parts), file=sys.stderr, flush=True)
    for warning in config.warnings:
        print(f"remora proxy: warning: {warning}", file=sys.stderr, flush=True)


async def _single(options: ProxyOptions, config: MeshConfig) -> int:
    stop = asyncio.Event()
    _install_stop(stop)
    worker = Worker(options, config)
    await worker.start(reuse_port=False)
    source = WorkerAdminSource(worker, stop)
    runners = await _start_admin_servers(source, options)
    _announce(options, config)
    await stop.wait()
    await worker.drain(options.drain_seconds)
    for runner in runners:
        await runner.cleanup()
    return 0


async def _start_admin_servers(source, options: ProxyOptions) -> list:
    """Admin on --admin-port and, unless --prometheus-port is 0, the metrics-only port."""
    runners = [await start_admin(source, options.admin_bind, options.admin_port)]
    if options.prometheus_port:
        try:
            runners.append(await start_prometheus(source, options.admin_bind, options.prometheus_port))
        except BaseException:
            await runners[0].cleanup()
            raise
    return runners


# -- several workers -------------------------------------------------------------------------

def _multi(options: ProxyOptions, config: MeshConfig) -> int:
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
    return uvloop.run(_parent(options, config, children))


async def _child(options: ProxyOptions, config: MeshConfig, worker_id: int, chan: socket.socket) -> int:
    request_ids.reseed()     # forked workers must not share the parent's id prefix
    stop = asyncio.Event()
    _install_stop(stop)
    worker = Worker(options, config, worker_id)
    await worker.start(reuse_port=True)
    reader, writer = await asyncio.open_connection(sock=chan)

    async def serve() -> None:
        while not reader.at_eof():
            line = await reader.readline()
            if not line:
                break
            op = json.loads(line)["op"]
            if op == "ready":
                answer = worker.ready and not worker.draining
            elif op == "stats":
                answer = worker.stats()
            elif op == "istio":
                answer = worker.istio.export() if worker.istio is not None else None
            elif op == "clusters":
                answer = worker.clusters()
            elif op == "config_dump":
                answer = worker.config_dump()
            elif op == "drain":
                worker.stop_accepting()
                answer = True
            else:
                answer = None
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        stop.set()   # the parent is gone: do not outlive it

    server_task = asyncio.create_task(serve())
    await stop.wait()
    await worker.drain(options.drain_seconds)
    server_task.cancel()
    return 0


_PROCESS_GAUGES = frozenset({"server.live", "server.uptime"})


class FanoutAdminSource:
    """Admin view summing N worker processes."""

    def __init__(self, channels: list, stop: asyncio.Event) -> None:
        self.channels = channels      # [(reader, writer, lock)]
        self.stop = stop
        self.ready = False
        self.draining = False
        self._last_stats: dict[str, int] = {}

    async def _ask(self, op: str) -> list:
        async def one(reader, writer, lock):
            async with lock:
                writer.write(json.dumps({"op": op}).encode() + b"\n")
                await writer.drain()
                return json.loads(await reader.readline())
        return await asyncio.gather(*(one(*c) for c in self.channels))

    def is_ready(self) -> bool:
        return self.ready and not self.draining

    def is_draining(self) -> bool:
        return self.draining

    async def refresh_ready(self) -> None:
        self.ready = all(await self._ask("ready"))

    async def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for part in await self._ask("stats"):
            for name, value in part.items():
                if name in _PROCESS_GAUGES:
                    # The same fact in every worker (live, uptime): not a sum.
                    total[name] = max(total.get(name, 0), value)
                else:
                    total[name] = total.get(name, 0) + value
        total["server.concurrency"] = len(self.channels)
        self._last_stats = total
        return total

    def gauge_names(self) -> frozenset[str]:
        return gauge_names(self._last_stats)

    async def prometheus_extra(self) -> str:
        """Istio's standard metrics of every worker, summed."""
        parts = [p for p in await self._ask("istio") if p is not None]
        return render(merge(parts)) if parts else ""

    async def clusters(self) -> list[dict]:
        merged: dict[str, dict] = {}
        for part in await self._ask("clusters"):
            for cluster in part:
                into = merged.setdefault(cluster["name"], {**cluster, "endpoints": []})
                by_addr = {e["address"]: e for e in into["endpoints"]}
                for ep in cluster["endpoints"]:
                    have = by_addr.get(ep["address"])
                    if have is None:
                        into["endpoints"].append(dict(ep))
                        continue
                    for key, value in ep.items():
                        if isinstance(value, int) and key != "weight":
                            have[key] += value
                    if ep["health"] != "healthy":
                        have["health"] = ep["health"]
        return list(merged.values())

    async def config_dump(self) -> dict:
        return (await self._ask("config_dump"))[0]

    async def drain_listeners(self) -> None:
        self.draining = True
        await self._ask("drain")

    async def quit(self) -> None:
        self.stop.set()


async def _parent(options: ProxyOptions, config: MeshConfig, children) -> int:
    stop = asyncio.Event()
    _install_stop(stop)
    channels = []
    for _, sock in children:
        reader, writer = await asyncio.open_connection(sock=sock)
        channels.append((reader, writer, asyncio.Lock()))
    source = FanoutAdminSource(channels, stop)
    runners = await _start_admin_servers(source, options)
    for _ in range(200):          # workers bind their listeners; wait until all say ready
        await source.refresh_ready()
        if source.ready:
            break
        await asyncio.sleep(0.05)
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
                print(f"remora proxy: worker {pid} exited ({status})", file=sys.stderr, flush=True)
                code = 1
                stop.set()
    source.draining = True
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
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
