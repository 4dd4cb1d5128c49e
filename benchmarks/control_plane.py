"""Control-plane push latency: one VirtualService change to every sidecar's ACK.

    python -m benchmarks.control_plane [--services 1000 --endpoints 10 --sidecars 100 --applies 20]

Generates N ServiceEntries x M endpoints in a temporary --config-dir (spread over four
namespaces, half exported everywhere, half private to their namespace, so there are four
scopes), starts `remora control`, connects lightweight simulated sidecars (WebSocket
clients in this process that ACK every push), then applies one VirtualService change
--applies times through the REST API (`remora apply`'s call) and measures, for each, the
time from the apply call to the moment ALL sidecars have ACKed the new routes version.
Prints a Markdown table: p50 / p99 / max and the control server's RSS. All traffic is on
loopback; every wait is bounded.

    python -m benchmarks.control_plane --replicas 2 [--etcd-members 1] ...

runs that many replicas over a local etcd (Debian's etcd-server, started here with its own
data folder), the sidecars spread over them; the applies go to the first replica and are
timed to the ACK of every sidecar on every replica. It adds the RSS of each replica and the
etcd writes per apply (the store revisions one apply moved).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
import yaml

from benchmarks.procs import Child, etcd_cluster_args, free_port, group_rss_mib, wait_ready
from remora.wire import protocol
from remora.wire.protocol import ROUTES, TYPE_ORDER, DiscoveryRequest, Hello, Node

ADMIN_TOKEN = "bench-admin-token-" + "0" * 32

NAMESPACES = 4
STEP_TIMEOUT = 60.0


class _Head(msgspec.Struct):
    """The parts of a frame a simulated sidecar needs (resources are skipped, not decoded)."""

    type: str
    type_url: str = ""
    version_info: str = ""
    nonce: str = ""
    message: str = ""


_head = msgspec.json.Decoder(_Head)


def write_config(directory: Path, services: int, endpoints: int, namespaces: int = NAMESPACES,
                 scoped: bool = False) -> None:
    docs = []
    if scoped:
        # Istio's advice for large meshes: a namespace-wide Sidecar per namespace naming what
        # its workloads call, here their own namespace and the shared services of ns-1
        # (svc-1, the one the applies change, among them).
        docs += [{"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                  "metadata": {"name": "default", "namespace": f"ns-{n}"},
                  "spec": {"egress": [{"hosts": ["./*", "ns-1/*"]}]}} for n in range(namespaces)]
    for i in range(services):
        docs.append({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % namespaces}"},
            "spec": {"hosts": [f"svc-{i}"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                     "resolution": "STATIC", "location": "MESH_INTERNAL",
                     "exportTo": ["*"] if i % 2 else ["."],
                     "endpoints": [{"address": f"10.{i // 250}.{i % 250}.{j + 1}", "ports": {"http": 8080},
                                    "labels": {"app": f"svc-{i}", "version": f"v{j % 2}"}}
                                   for j in range(endpoints)]}})
    (directory / "services.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))


def virtual_service(timeout_s: int) -> str:
    # svc-1 is exported everywhere, so every sidecar receives this route.
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench, namespace: ns-1}}
spec:
  hosts: [svc-1]
  http:
  - timeout: {timeout_s}s
    route: [{{destination: {{host: svc-1}}}}]
"""


class SimulatedSidecar:
    """Subscribes to every type and ACKs every push at once; remembers when routes were ACKed."""

    def __init__(self, url: str, index: int, namespaces: int = NAMESPACES) -> None:
        self.url = url
        self.node = Node(id=f"sim-{index}", namespace=f"ns-{index % namespaces}")
        self.acked: dict[str, str] = {}
        self.routes_acked_at = 0.0
        self.changed = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self.url + protocol.STREAM_PATH, max_msg_size=0) as ws:
            await ws.send_str(protocol.encode(Hello(node=self.node)))
            for type_url in TYPE_ORDER:
                await ws.send_str(protocol.encode(DiscoveryRequest(type_url=type_url)))
            async for message in ws:
                head = _head.decode(message.data)
                if head.type == "error":
                    raise RuntimeError(f"{self.node.id}: stream refused: {head.message}")
                await ws.send_str(protocol.encode(DiscoveryRequest(
                    type_url=head.type_url, version_info=head.version_info, response_nonce=head.nonce)))
                self.acked[head.type_url] = head.version_info
                if head.type_url == ROUTES:
                    self.routes_acked_at = time.perf_counter()
                self.changed.set()

    async def wait(self, predicate) -> None:
        while not predicate(self):
            self.changed.clear()
            await self.changed.wait()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def etcd_revision(etcd_url: str | None) -> int:
    """etcd's store revision: one more per write (put, delete or transaction)."""
    if etcd_url is None:
        return 0
    # A session of its own: etcd reads an Authorization header as an etcd auth token.
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{etcd_url}/v3/kv/range", json={"key": "AA=="}) as response:
            return int((await response.json(content_type=None))["header"]["revision"])


async def measure(urls: list[str], sidecars: int, applies: int, etcd_url: str | None = None,
                  namespaces: int = NAMESPACES) -> dict:
    url = urls[0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
        sims = [SimulatedSidecar(urls[i % len(urls)], i, namespaces) for i in range(sidecars)]
        tasks = [asyncio.create_task(sim.run(session)) for sim in sims]
        started = time.perf_counter()
        every_type = len(TYPE_ORDER)
        await asyncio.wait_for(asyncio.gather(*(s.wait(lambda s: len(s.acked) == every_type) for s in sims)),
                               STEP_TIMEOUT)
        initial_sync = time.perf_counter() - started
        # The 1,000 clients are this process's own heap: out of the cyclic GC's reach, a full
        # collection of it does not land inside a sample (the load generator is not measured).
        gc.collect()
        gc.freeze()
        latencies, writes, answered, per_replica = [], [], [], []
        for n in range(applies):
            revision = await etcd_revision(etcd_url)
            before = [sim.acked.get(ROUTES) for sim in sims]
            t0 = time.perf_counter()
            async with session.post(f"{url}/v1/apply?source=bench.yaml", data=virtual_service(n + 1)) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"apply failed: {answer}")
            answered.append(time.perf_counter() - t0)
            await asyncio.wait_for(asyncio.gather(*(
                sim.wait(lambda s, old=old: s.acked.get(ROUTES) != old) for sim, old in zip(sims, before))),
                STEP_TIMEOUT)
            latencies.append(max(sim.routes_acked_at for sim in sims) - t0)
            per_replica.append([max(sim.routes_acked_at for sim in sims[r::len(urls)]) - t0 for r in range(len(urls))])
            await asyncio.sleep(0.2)   # let the server settle, as separate operator actions would
            writes.append(await etcd_revision(etcd_url) - revision)
        synced = 0
        for replica_url in urls:
            async with session.get(f"{replica_url}/v1/status") as response:
                status = await response.json()
            synced += sum(all(s["types"][t]["status"] == "SYNCED" for t in TYPE_ORDER) for s in status["sidecars"])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"latencies": latencies, "initial_sync": initial_sync, "synced": synced, "writes": writes,
            "answered": answered, "per_replica": per_replica}


def start_etcd(work: Path, members: int) -> tuple[list[Child], list[int]]:
    """A local etcd cluster of `members`, each with its own data folder; (children, client ports)."""
    if shutil.which("etcd") is None:
        raise SystemExit("--replicas needs etcd (Debian package etcd-server)")
    clients, peers = [free_port() for _ in range(members)], [free_port() for _ in range(members)]
    children = [Child(f"etcd-{i}", args, work / f"etcd-{i}.log")
                for i, args in enumerate(etcd_cluster_args("etcd", str(work), clients, peers))]
    for child, port in zip(children, clients):
        wait_ready(child, port, "/health", timeout=60)
    return children, clients


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.control_plane", description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--sidecars", type=int, default=100)
    parser.add_argument("--applies", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=1, help="control servers; more than one runs over etcd")
    parser.add_argument("--etcd-members", type=int, default=1)
    parser.add_argument("--namespaces", type=int, default=NAMESPACES,
                        help="services and sidecars are spread over this many namespaces")
    parser.add_argument("--scoped", action="store_true",
                        help="a namespace-wide Sidecar per namespace: egress to its own namespace and ns-1")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="remora-control-bench-"))
    (work / "config").mkdir()
    write_config(work / "config", args.services, args.endpoints, args.namespaces, args.scoped)
    (work / "admin-token").write_text(ADMIN_TOKEN)   # the admin API (apply, status) needs it
    (work / "store-key").write_text(os.urandom(32).hex())
    etcd, etcd_ports = start_etcd(work, args.etcd_members) if args.replicas > 1 else ([], [])
    store = (["--store", "etcd://" + ",".join(f"127.0.0.1:{p}" for p in etcd_ports),
              "--store-key-file", str(work / "store-key")] if etcd else [])
    ports = [free_port() for _ in range(args.replicas)]
    controls = []
    try:
        loaded = time.perf_counter()
        for i, port in enumerate(ports):
            controls.append(Child(f"control-{i}", [
                sys.executable, "-m", "remora", "control", "--config-dir", str(work / "config"),
                "--admin-token-file", str(work / "admin-token"), "--listen", f"127.0.0.1:{port}", *store],
                work / f"control-{i}.log"))
            wait_ready(controls[-1], port, "/healthz", timeout=900)   # one at a time: the first makes the CA
        startup = time.perf_counter() - loaded
        rss_idle = [group_rss_mib(c.pid) for c in controls]
        result = asyncio.run(measure([f"http://127.0.0.1:{p}" for p in ports], args.sidecars, args.applies,
                                     f"http://127.0.0.1:{etcd_ports[0]}" if etcd else None, args.namespaces))
        rss = [group_rss_mib(c.pid) for c in controls]
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    finally:
        for child in [*controls, *etcd]:
            child.stop()
    shutil.rmtree(work)   # config, admin token, key, etcd data, logs
    lat = [x * 1000 for x in result["latencies"]]
    where = (f"{args.replicas} replicas over a {args.etcd_members}-member etcd" if etcd else "one control server")
    print(f"{args.services} ServiceEntries x {args.endpoints} endpoints, {args.sidecars} sidecars in "
          f"{args.namespaces} namespaces{' scoped by Sidecar resources' if args.scoped else ''} on {where}, "
          f"{args.applies} VirtualService applies "
          f"(startup {startup:.1f} s, initial sync of all sidecars {result['initial_sync']:.1f} s, "
          f"{result['synced']}/{args.sidecars} SYNCED at the end)\n")
    print("| apply -> all sidecars ACKed routes | p50 | p99 | max | mean | RSS idle (per replica) "
          "| RSS with sidecars | etcd writes per apply |")
    print("|---|---|---|---|---|---|---|---|")
    mib = lambda values: " / ".join(f"{v:.0f}" for v in values) + " MiB"   # noqa: E731
    writes = f"{statistics.mean(result['writes']):.1f}" if etcd else "n/a"
    print(f"| ms | {percentile(lat, 50):.0f} | {percentile(lat, 99):.0f} | {max(lat):.0f} | "
          f"{statistics.mean(lat):.0f} | {mib(rss_idle)} | {mib(rss)} | {writes} |")
    steps = [("the apply answered (validated, written)", result["answered"])]
    steps += [(f"every sidecar of replica {r + 1} ACKed", [sample[r] for sample in result["per_replica"]])
              for r in range(args.replicas)]
    print("\n| step, from the apply call | p50 ms | p99 ms |\n|---|---|---|")
    for name, values in steps:
        ms = [x * 1000 for x in values]
        print(f"| {name} | {percentile(ms, 50):.0f} | {percentile(ms, 99):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
