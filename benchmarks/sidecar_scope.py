"""What a Sidecar resource saves: `python -m benchmarks.sidecar_scope [--services 1000]`.

A mesh of N services (10 per namespace, each with a VirtualService and a DestinationRule
with two subsets) and one workload in namespace ns0. Measured with and without a
namespace-wide Sidecar whose egress hosts are `./*` and `istio-system/*` (Istio's
recommended default): what the control server pushes to that workload (resources and
bytes), and what the sidecar compiles (clusters, build time, memory held by the snapshot).
"""
from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc

from remora.config.loader import load_mesh_text
from remora.proxy.process.worker import ProxyOptions, Snapshot
from remora.proxy.security.identity import WorkloadIdentity
from remora.proxy.upstream.pool import PoolRegistry
from remora.proxy.security.tls import MeshTls
from remora.proxy.upstream.tls_origination import OriginContexts
from remora.xds.snapshots import ScopeKey, SnapshotCache

PER_NAMESPACE = 10
SIDECAR = """---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: ns0}
spec:
  egress: [{hosts: ["./*", "istio-system/*"]}]
"""


def mesh(services: int) -> str:
    docs = []
    for i in range(services):
        ns, name = f"ns{i // PER_NAMESPACE}", f"svc{i}"
        docs.append(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.{i // 250}.{i % 250 + 1}, labels: {{version: v1}}}}
  - {{address: 10.1.{i // 250}.{i % 250 + 1}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {name}.{ns}.svc.cluster.local
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  http: [{{route: [{{destination: {{host: {name}.{ns}.svc.cluster.local, subset: v1}}, weight: 90}},
                   {{destination: {{host: {name}.{ns}.svc.cluster.local, subset: v2}}, weight: 10}}]}}]
""")
    return "---\n".join(docs)


def measure(text: str) -> dict:
    config = load_mesh_text(text)
    cache = SnapshotCache(config)
    pushed = cache.get(ScopeKey("ns0"))
    options = ProxyOptions(identity=WorkloadIdentity(namespace="ns0", labels={"app": "svc0"}, service="svc0"))

    async def build() -> tuple[float, int, int]:
        pools = PoolRegistry(asyncio.get_running_loop(), MeshTls(), OriginContexts())
        tracemalloc.start()
        started = time.perf_counter()
        snapshot = Snapshot(config, options, pools)
        elapsed = time.perf_counter() - started
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return elapsed, held, len(snapshot.clusters())
    elapsed, held, clusters = asyncio.run(build())
    return {"resources": sum(pushed.counts.values()), "bytes": sum(len(p) for p in pushed.payloads.values()),
            "clusters": clusters, "build_ms": elapsed * 1000, "held_mib": held / (1 << 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    args = parser.parse_args()
    text = mesh(args.services)
    rows = [("no Sidecar", measure(text)), ("Sidecar ./* istio-system/*", measure(text + SIDECAR))]
    print(f"{args.services} services, {PER_NAMESPACE} per namespace; workload in ns0")
    print("| scope | resources pushed | bytes pushed | clusters compiled | snapshot build | memory held |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['resources']:,} | {r['bytes']:,} | {r['clusters']:,} | {r['build_ms']:.0f} ms | "
              f"{r['held_mib']:.1f} MiB |")


if __name__ == "__main__":
    main()
