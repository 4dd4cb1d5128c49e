"""Mixed manifests: Kubernetes Services as mesh services, other Kubernetes kinds skipped, -n."""
from __future__ import annotations

from pathlib import Path

import pytest

from remora.config.loader import ConfigError, load_mesh_config, load_mesh_text
from remora.proxy.upstream.cluster import build_clusters
from remora.wire.protocol import Node
from remora.xds.registry import Registry
from remora.xds.snapshots import ScopeKey, SnapshotCache
from remora.xds.store import ChangeRefused, ConfigStore

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "istio-samples"


def _endpoints(config, host: str, port: int, subset=None) -> list[tuple[str, int]]:
    cluster = build_clusters(config)[host].clusters[(port, subset)]
    return sorted((ep.host, ep.port) for ep in cluster.endpoints)


def test_bookinfo_services_become_mesh_services_and_the_rest_is_skipped_with_one_info_line_each():
    """bookinfo.yaml: four Services with Kubernetes host names; each ServiceAccount and Deployment gets one info line."""
    config = load_mesh_config([SAMPLES / "bookinfo.yaml"])
    services = {r.name: r for r in config.service_entries}
    assert set(services) == {"details", "ratings", "reviews", "productpage"}
    assert all(r.kind == "Service" for r in services.values())
    assert services["reviews"].spec.hosts == ["reviews.default.svc.cluster.local"]
    assert services["reviews"].spec.ports[0].protocol == "HTTP"   # from the port name `http`
    skipped = [n for n in config.notes if n.startswith("skipped ")]
    assert len(skipped) == 4 + 5   # 4 ServiceAccounts, 5 Deployments
    assert any("Deployment default/reviews-v2 (apps/v1)" in n for n in skipped)
    assert config.warnings == ()


def test_every_sample_loads_as_one_set():
    """bookinfo (with its routing), httpbin (with the Mirroring task's route), sleep, helloworld,
    tcp-echo and grpc-echo load together."""
    config = load_mesh_config([SAMPLES])
    hosts = {h for r in config.service_entries for h in r.spec.hosts}
    assert {"httpbin.default.svc.cluster.local", "sleep.default.svc.cluster.local",
            "helloworld.default.svc.cluster.local", "tcp-echo.default.svc.cluster.local",
            "echo.echo-grpc.svc.cluster.local"} <= hosts
    assert sorted(vs.name for vs in config.virtual_services) == ["httpbin", "reviews"]


def test_protocols_and_target_ports_follow_istio():
    """tcp-echo's ports are TCP by name; grpc-echo's grpc port is GRPC and its numeric targetPorts reach the pod."""
    config = load_mesh_config([SAMPLES / "tcp-echo.yaml", SAMPLES / "grpc-echo.yaml", SAMPLES / "httpbin.yaml"])
    by_name = {r.name: r.spec for r in config.service_entries}
    assert [p.protocol for p in by_name["tcp-echo"].ports] == ["TCP", "TCP"]
    assert {p.number: p.protocol for p in by_name["echo"].ports} == {80: "HTTP", 7070: "GRPC", 9090: "TCP"}
    host = "echo.echo-grpc.svc.cluster.local"
    assert _endpoints(config, host, 7070) == [("10.0.0.7", 17070)]
    assert _endpoints(config, host, 80) == [("10.0.0.7", 18080)]


NAMED_TARGET = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports:
  - {name: http, port: 80, targetPort: web-port}
  - {name: metrics, port: 9090, protocol: UDP}
  selector: {app: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-1}
spec: {address: 10.1.0.1, labels: {app: web}, ports: {web-port: 8081}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other}
spec: {address: 10.1.0.2, labels: {app: other}, ports: {web-port: 8081}}
"""


def test_named_target_port_is_read_from_the_workload_and_only_selected_workloads_are_endpoints():
    """targetPort by name takes the selected WorkloadEntry's port of that name; a UDP port is left out."""
    config = load_mesh_text(NAMED_TARGET)
    assert _endpoints(config, "web.default.svc.cluster.local", 80) == [("10.1.0.1", 8081)]
    assert [p.number for p in config.service_entries[0].spec.ports] == [80]


def test_a_virtual_service_may_route_to_a_service_by_its_short_name():
    """A Service's host is known to destination checks (reviews -> reviews.default.svc.cluster.local)."""
    config = load_mesh_config([SAMPLES / "bookinfo.yaml", SAMPLES / "bookinfo-routing.yaml"])
    assert _endpoints(config, "reviews.default.svc.cluster.local", 9080, "v2") == [("127.0.0.1", 9082)]


@pytest.mark.parametrize("text, path, words", [
    ("apiVersion: v1\nkind: Servce\nmetadata: {name: a}\n", "kind", "did you mean Service"),
    ("apiVersion: apps/v1\nkind: Service\nmetadata: {name: a}\n", "apiVersion", "core"),
    ("apiVersion: apps/v1\nkind: VirtualService\nmetadata: {name: a}\n", "apiVersion", "networking.istio.io"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}, {port: 2}]}\n",
     "spec.ports[0].name", "more than one port"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1, targetPort: Bad_Name}]}\n",
     "spec.ports[0].targetPort", "IANA service name"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}], selector: {app: '*'}}\n",
     "spec.selector.app", "no wildcards"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: 1abc}\nspec: {ports: [{port: 1}]}\n",
     "metadata.name", "DNS-1035"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}], clusterIp: 10.0.0.1}\n",
     "spec.clusterIp", "did you mean `clusterIP`"),
])
def test_kubernetes_mistakes_are_errors_naming_the_field(text, path, words):
    """A typo'd Kubernetes kind, a kind in the wrong group and a Service Kubernetes would refuse are errors."""
    with pytest.raises(ConfigError) as refused:
        load_mesh_text(text, "k.yaml")
    issues = {i.field_path: i.message for i in refused.value.issues}
    assert path in issues and words in issues[path], issues


def test_other_operators_kinds_are_skipped_not_fatal():
    """A kind of another operator's API group (cert-manager) is not mesh config: skipped with an info line."""
    config = load_mesh_text("apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: c}\nspec: {}\n")
    assert config.notes and "Certificate default/c (cert-manager.io/v1)" in config.notes[0]


def test_istio_security_kinds_remora_does_not_enforce_still_fail_closed():
    """Skipping non-mesh kinds does not loosen the fail-closed rule for mesh security kinds."""
    with pytest.raises(ConfigError):
        load_mesh_text("apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: t}\nspec: {}\n")


def test_external_name_service_is_an_external_dns_service():
    """type ExternalName resolves its externalName by DNS, outside the mesh (Istio's alias)."""
    config = load_mesh_text("apiVersion: v1\nkind: Service\nmetadata: {name: db}\n"
                            "spec: {type: ExternalName, externalName: db.example.com, ports: [{port: 5432, name: tcp}]}\n")
    spec = config.service_entries[0].spec
    assert (spec.resolution, spec.location, spec.endpoints[0].address) == ("DNS", "MESH_EXTERNAL", "db.example.com")


def test_service_document_round_trips_and_keeps_the_version():
    """A Service is written back as itself; loading that document again gives the same config version."""
    config = load_mesh_text(NAMED_TARGET)
    service = config.service_entries[0]
    doc = service.document()
    assert doc["kind"] == "Service" and doc["apiVersion"] == "v1" and doc["spec"]["ports"][0]["targetPort"] == "web-port"
    from remora.config.loader import build_mesh_config
    again = build_mesh_config([(doc, "a"), *[(we.document(), "a") for we in config.workload_entries]])
    assert again.version == config.version


def test_namespace_fills_documents_without_one_only():
    """`-n shop`: documents without metadata.namespace land in shop; one naming its namespace keeps it."""
    text = NAMED_TARGET + "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n" \
                          "metadata: {name: elsewhere, namespace: web}\nspec: {address: 10.9.9.9}\n"
    config = load_mesh_text(text, namespace="shop")
    assert {(r.kind, r.namespace) for r in config.resources()} == {
        ("Service", "shop"), ("WorkloadEntry", "shop"), ("WorkloadEntry", "web")}
    assert config.service_entries[0].spec.hosts == ["web.shop.svc.cluster.local"]


def test_apply_with_namespace_refuses_a_mismatch_like_kubectl(tmp_path):
    """`remora apply -n shop` refuses a document naming another namespace and applies the rest into shop."""
    store = ConfigStore(None, tmp_path)
    store.start()
    with pytest.raises(ChangeRefused) as refused:
        store.apply("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
                    "metadata: {name: a, namespace: web}\nspec: {address: 10.0.0.1}\n", "x.yaml", "shop")
    assert refused.value.status == 400 and "does not match the namespace 'shop'" in refused.value.errors[0]
    change = store.apply(NAMED_TARGET, "x.yaml", "shop")
    assert ("Service/shop/web", "created") in change.results


def test_control_server_pushes_the_service_and_the_workloads_it_selects():
    """A sidecar's snapshot carries the Service (clusters) and the WorkloadEntries its selector picks (endpoints)."""
    config = load_mesh_text(NAMED_TARGET)
    documents = SnapshotCache(config).documents(ScopeKey("default"))
    assert [d["kind"] for d in documents["clusters"]] == ["Service"]
    assert [d["metadata"]["name"] for d in documents["endpoints"]] == ["web-1"]
    from remora.config.loader import build_mesh_config
    pushed = build_mesh_config([(d, "push") for t in documents for d in documents[t]], strict_references=False)
    assert _endpoints(pushed, "web.default.svc.cluster.local", 80) == [("10.1.0.1", 8081)]


def test_registered_sidecar_becomes_an_endpoint_of_the_service_at_its_inbound_port():
    """A sidecar registering as service `web` is selected by the Service (app=web) and reached on its inbound port."""
    user = [(load_mesh_text(NAMED_TARGET).service_entries[0].document(), "web.yaml")]
    registry = Registry(10.0)
    registry.connect(Node(id="web-1.default~h~1", service="web", inbound="127.0.0.5:15006", app_port=8081))
    registered = registry.documents(user)
    assert [d["kind"] for d, _ in registered] == ["WorkloadEntry"]   # no synthesized ServiceEntry
    from remora.config.loader import build_mesh_config
    config = build_mesh_config(user + registered)
    assert _endpoints(config, "web.default.svc.cluster.local", 80) == [("127.0.0.5", 15006)]


def test_envoy_renderer_serves_a_service_as_its_service_entry():
    """remora envoy-config renders bookinfo's Services (and skips Deployments) with the WorkloadEntry endpoints."""
    from remora.config.yaml_text import load_all
    from remora.xds.envoy import render_bootstrap
    docs = [d for name in ("bookinfo.yaml", "bookinfo-routing.yaml")
            for d in load_all((SAMPLES / name).read_text()) if d]
    clusters = {c["name"]: c for c in render_bootstrap(docs, 15001, 15000)["static_resources"]["clusters"]}
    v2 = clusters["outbound|9080|v2|reviews.default.svc.cluster.local"]
    [endpoint] = v2["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 9082


def test_a_kubernetes_list_stands_for_its_items():
    """`kubectl get svc -o yaml` prints a v1 List: its items load as documents (and a bad item names its document)."""
    listed = ("apiVersion: v1\nkind: List\nitems:\n"
              "- {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {ports: [{port: 80, name: http}]}}\n"
              "- {apiVersion: apps/v1, kind: Deployment, metadata: {name: a}, spec: {}}\n")
    config = load_mesh_text(listed, namespace="shop")
    assert [r.ref for r in config.service_entries] == ["Service/shop/a"] and len(config.notes) == 1
    with pytest.raises(ConfigError) as refused:
        load_mesh_text("apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {ports: [{port: 1}]}\n---\n"
                       + listed.replace("port: 80", "port: 0"), "l.yaml")
    assert str(refused.value.issues[0]).startswith("l.yaml: Service/default/a: spec.ports[0].port")


def test_bookinfo_with_every_service_on_v1_loads_in_a_namespace():
    """bookinfo + destination-rule-all + virtual-service-all-v1 load under -n; only reviews v3 lacks an endpoint in the files."""
    from remora.config.analysis import subset_warnings
    config = load_mesh_config([SAMPLES / "bookinfo.yaml", SAMPLES / "all-v1"], namespace="bookinfo")
    assert len(config.virtual_services) == len(config.destination_rules) == 4
    assert {r.namespace for r in config.resources()} == {"bookinfo"}
    reviews = [w for w in subset_warnings(config) if "DestinationRule/bookinfo/reviews" in w]
    assert len(reviews) == 1 and "(v3)" in reviews[0]
    assert _endpoints(config, "reviews.bookinfo.svc.cluster.local", 9080, "v1") == [("127.0.0.1", 9081)]
