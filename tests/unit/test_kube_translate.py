"""Kubernetes API objects -> config documents (kube/translate.py), checked through the loader."""
from __future__ import annotations

import pytest

from remora.config.loader import ConfigError
from remora.config.names import TLS_MODE_LABEL
from remora.kube import translate
from remora.proxy.upstream.cluster import build_clusters
from remora.xds.external import combined
from remora.xds.sources import validate_documents

HOST = "web.shop.svc.cluster.local"


def service(name="web", selector=None, ports=None, **spec) -> dict:
    """A Service as the API server returns it in a list (no kind; server-set fields included)."""
    return {"metadata": {"name": name, "namespace": "shop", "uid": "u-1", "resourceVersion": "7",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"team": "a"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"ports": ports or [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                     "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
                     "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "internalTrafficPolicy": "Cluster", "someFieldFromAFutureRelease": True,
                     **({"selector": selector} if selector is not None else {}), **spec},
            "status": {"loadBalancer": {}}}


def pod(name="web-1", ip="10.1.0.7", labels=None, sidecar=False, phase="Running", ready="True",
        deleting=False, ports=None) -> dict:
    """A pod as the API server returns it."""
    containers = [{"name": "app", "ports": ports or []}]
    init = [{"name": "remora-proxy", "restartPolicy": "Always"}] if sidecar else []
    meta = {"name": name, "namespace": "shop", "labels": labels if labels is not None else {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta,
            "spec": {"serviceAccountName": "web-sa", "containers": containers, "initContainers": init},
            "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}}


def endpoints(config, host=HOST, port=80) -> list[tuple[str, int]]:
    return sorted((ep.host, ep.port) for ep in build_clusters(config)[host].clusters[(port, None)].endpoints)


def load(services=(), pods=(), slices=()):
    docs = translate.service_documents(list(services), list(slices))
    docs += [d for p in pods if (d := translate.pod_document(p)) is not None]
    return validate_documents(docs)


def test_service_and_ready_pod_become_a_mesh_service_with_the_pod_as_endpoint():
    """A Service from the API (server-set and unknown fields dropped) selects a ready pod at its targetPort."""
    config = load([service(selector={"app": "web"})], [pod()])
    assert endpoints(config) == [("10.1.0.7", 8080)]
    entry = next(r for r in config.service_entries if r.kind == "Service")
    assert entry.spec.addresses == ["10.96.0.10"]   # ClusterIP: captured TCP maps to the service


@pytest.mark.parametrize("changes", [dict(phase="Pending"), dict(ready="False"), dict(deleting=True),
                                     dict(ip="")])
def test_a_pod_that_is_not_a_ready_endpoint_is_left_out(changes):
    """Pending, not Ready, terminating or IP-less pods are not endpoints."""
    assert translate.pod_document(pod(**changes)) is None


def test_only_a_pod_with_the_remora_sidecar_is_sent_mtls():
    """tlsMode istio comes from the injected proxy container, not from a label the pod carries."""
    plain = translate.pod_document(pod(labels={"app": "web", TLS_MODE_LABEL: "istio"}))[0]
    injected = translate.pod_document(pod(sidecar=True))[0]
    assert TLS_MODE_LABEL not in plain["spec"]["labels"]
    assert injected["spec"]["labels"][TLS_MODE_LABEL] == "istio"
    assert injected["spec"]["serviceAccount"] == "web-sa"


def test_named_target_port_is_read_from_the_pods_container_ports():
    """targetPort: web resolves to the pod's container port named web."""
    svc = service(selector={"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    config = load([svc], [pod(ports=[{"name": "web", "containerPort": 9090, "protocol": "TCP"}])])
    assert endpoints(config) == [("10.1.0.7", 9090)]


def endpoint_slice(name="web-abc", service_name="web", addresses=("192.168.5.1",), ready=True, port=8443) -> dict:
    return {"metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}


def test_selectorless_service_takes_its_ready_endpoints_from_endpoint_slices():
    """A Service without a selector: its slices' ready addresses are its endpoints, at the slice's port."""
    slices = [endpoint_slice(), endpoint_slice("web-def", addresses=("192.168.5.2",), ready=False)]
    config = load([service(ports=[{"name": "http", "port": 80}])], slices=slices)
    assert endpoints(config) == [("192.168.5.1", 8443)]


def test_slices_of_a_service_with_a_selector_are_ignored():
    """With a selector the pods are the endpoints; its EndpointSlices add nothing twice."""
    docs = translate.service_documents([service(selector={"app": "web"})], [endpoint_slice()])
    assert [d["kind"] for d, _ in docs] == ["Service"]


def test_istio_custom_resource_passes_with_its_spec_and_is_named_in_errors():
    """A VirtualService from its CRD is a document; an invalid one fails validation naming the object."""
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "bad", "namespace": "shop", "resourceVersion": "9"},
          "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}, "weight": "x"}]}]}}
    doc, source = translate.istio_document(vs, "VirtualService", "networking.istio.io/v1")
    assert doc["metadata"] == {"name": "bad", "namespace": "shop"}
    assert source == "kubernetes VirtualService shop/bad"
    with pytest.raises(ConfigError) as error:
        validate_documents([(doc, source)])
    assert "kubernetes VirtualService shop/bad" in str(error.value)


def test_a_registered_sidecar_at_a_pod_address_is_not_a_second_endpoint():
    """combined(): the registry's entry for an address a pod already gives is dropped; others stay."""
    pod_doc = translate.pod_document(pod())

    class Source:
        name = "kubernetes"

        def documents(self):
            return [pod_doc]

    def registry(user):
        entry = lambda name, address: ({"kind": "WorkloadEntry", "metadata": {"name": name, "namespace": "shop"},  # noqa: E731
                                        "spec": {"address": address}}, "registry")
        return [entry("same", "10.1.0.7"), entry("other", "10.1.0.8")]

    names = [d["metadata"]["name"] for d, _ in combined(registry, [Source()])([])]
    assert names == ["pod-web-1", "other"]


def test_a_pod_name_at_the_length_limit_still_makes_a_valid_entry_name():
    """A 253-character pod name: the WorkloadEntry name is cut with a hash, and the set still validates."""
    long_name = "w" * 253
    doc = translate.pod_document({**pod(), "metadata": {**pod()["metadata"], "name": long_name}})
    assert len(doc[0]["metadata"]["name"]) == 253
    assert doc[0]["metadata"]["name"] != translate.entry_name("pod", "w" * 252)   # distinct names stay distinct
    validate_documents([doc])
