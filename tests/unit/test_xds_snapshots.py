"""Snapshots: exportTo scoping, endpoint selection, per-type content versions, shared per scope."""
from __future__ import annotations

from remora.config.loader import load_mesh_text
from remora.wire import protocol
from remora.wire.protocol import CLUSTERS, ENDPOINTS, ROUTES, DiscoveryResponse
from remora.xds.snapshots import ScopeKey, SnapshotCache, exported_to

MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: a}
spec:
  hosts: [ratings]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  exportTo: ["."]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: a}
spec: {address: 10.0.0.1, labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: a}
spec: {address: 10.0.0.2, labels: {app: other}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: a}
spec:
  hosts: [ratings]
  exportTo: ["*"]
  http: [{route: [{destination: {host: ratings}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: a}
spec: {host: ratings, exportTo: [b]}
"""


def refs(cache: SnapshotCache, namespace: str, type_url: str) -> list[str]:
    return [f"{d['kind']}/{d['metadata']['name']}" for d in cache.documents(ScopeKey(namespace))[type_url]]


def test_export_to_rules():
    """Empty and * export everywhere, . to the own namespace, ~ nowhere, names to those namespaces."""
    assert exported_to([], "a", "b") and exported_to(["*"], "a", "b")
    assert exported_to(["."], "a", "a") and not exported_to(["."], "a", "b")
    assert not exported_to(["~"], "a", "a")
    assert exported_to(["b", "c"], "a", "c") and not exported_to(["b"], "a", "a")


def test_scope_gets_visible_resources_and_only_selected_workload_entries():
    """Namespace a sees its private ServiceEntry and the selected WorkloadEntry only; b sees the export to b."""
    cache = SnapshotCache(load_mesh_text(MESH))
    assert refs(cache, "a", CLUSTERS) == ["ServiceEntry/ratings"]
    assert refs(cache, "a", ENDPOINTS) == ["WorkloadEntry/ratings-1"]
    assert refs(cache, "b", CLUSTERS) == ["DestinationRule/ratings"]
    assert refs(cache, "b", ENDPOINTS) == []
    assert refs(cache, "c", ROUTES) == ["VirtualService/ratings"]


def test_snapshot_is_computed_once_per_scope_and_shared():
    """Two sidecars with the same scope key get the same Snapshot object."""
    cache = SnapshotCache(load_mesh_text(MESH))
    assert cache.get(ScopeKey("a")) is cache.get(ScopeKey("a"))
    assert cache.get(ScopeKey("a")) is not cache.get(ScopeKey("b"))


def test_endpoint_only_change_leaves_other_type_versions_alone():
    """A type's version is a hash of its content: moving an endpoint changes only the endpoints version."""
    before = SnapshotCache(load_mesh_text(MESH)).get(ScopeKey("a")).versions
    after = SnapshotCache(load_mesh_text(MESH.replace("10.0.0.1", "10.0.0.9"))).get(ScopeKey("a")).versions
    assert after[ENDPOINTS] != before[ENDPOINTS]
    assert (after[CLUSTERS], after[ROUTES]) == (before[CLUSTERS], before[ROUTES])


def test_versions_ignore_file_layout_and_order():
    """The same resources in another order give the same versions."""
    docs = MESH.split("---\n")
    reordered = "---\n".join(reversed(docs))
    assert (SnapshotCache(load_mesh_text(MESH)).get(ScopeKey("a")).versions
            == SnapshotCache(load_mesh_text(reordered, "other.yaml")).get(ScopeKey("a")).versions)


def test_pre_encoded_frame_equals_the_protocol_encoding():
    """The pasted-together frame decodes to the same DiscoveryResponse the protocol module would encode."""
    snapshot = SnapshotCache(load_mesh_text(MESH)).get(ScopeKey("a"))
    frame = snapshot.response_frame(CLUSTERS, "7")
    decoded = protocol.decode(frame)
    assert isinstance(decoded, DiscoveryResponse)
    assert protocol.encode(decoded) == frame
    assert decoded.nonce == "7" and decoded.version_info == snapshot.versions[CLUSTERS]
    assert decoded.resources[0]["metadata"] == {"name": "ratings", "namespace": "a"}


SCOPED = MESH + """---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: a}
spec: {egress: [{hosts: ["./*"]}]}
"""


def cached_builds(*texts: str):
    """Configs built one after another through one SpecCache, as the control server builds them."""
    from remora.config.loader import SpecCache, build_mesh_config, parse_documents
    cache = SpecCache()
    return [build_mesh_config(parse_documents(text, "mesh.yaml")[0], cache=cache) for text in texts]


def test_a_cache_made_after_another_takes_unchanged_types_and_remakes_changed_ones():
    """A route change remakes routes only; each type equals what a cache made from nothing holds."""
    changed = SCOPED.replace('http: [{route: [{destination: {host: ratings}}]}]',
                             'http: [{timeout: 2s, route: [{destination: {host: ratings}}]}]')
    first, second = cached_builds(SCOPED, changed)
    before = SnapshotCache(first)
    old = {ns: before.get(ScopeKey(ns)) for ns in ("a", "b")}
    after = SnapshotCache(second, previous=before)
    for ns in ("a", "b", "c"):   # c: a scope the previous cache never made
        fresh = SnapshotCache(second).get(ScopeKey(ns))
        snapshot = after.get(ScopeKey(ns))
        assert (snapshot.versions, snapshot.payloads, snapshot.counts) == (fresh.versions, fresh.payloads, fresh.counts)
        assert snapshot.config_version == second.version
    for ns in ("a", "b"):
        assert after.get(ScopeKey(ns)).payloads[CLUSTERS] is old[ns].payloads[CLUSTERS]
        assert after.get(ScopeKey(ns)).versions[ROUTES] != old[ns].versions[ROUTES]


def test_a_sidecar_change_remakes_every_scoped_type():
    """A Sidecar narrows services and routes: opening b's makes a's DestinationRule and route visible
    there, remade rather than taken from the cache before, matching a fresh cache."""
    closed = MESH + """---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: b}
spec: {egress: [{hosts: ["./*"]}]}
"""
    first, second = cached_builds(closed, closed.replace('hosts: ["./*"]', 'hosts: ["*/*"]'))
    before = SnapshotCache(first)
    assert before.documents(ScopeKey("b"))[CLUSTERS] == []
    after = SnapshotCache(second, previous=before)
    assert refs(after, "b", CLUSTERS) == ["DestinationRule/ratings"]
    assert refs(after, "b", ROUTES) == ["Sidecar/default", "VirtualService/ratings"]
    fresh = SnapshotCache(second).get(ScopeKey("b"))
    assert after.get(ScopeKey("b")).versions == fresh.versions
