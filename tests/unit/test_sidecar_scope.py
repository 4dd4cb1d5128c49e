"""The Sidecar resource: Istio's validation, which Sidecar applies, and what its egress hosts keep."""
from __future__ import annotations

import pytest

from remora.config.loader import ConfigError, load_mesh_text
from remora.config.sidecar_scope import allows, scoped_config, sidecar_for
from remora.xds.snapshots import ScopeKey, scoped_resources

SERVICES = "".join(f"""---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  http: [{{route: [{{destination: {{host: {name}.{ns}.svc.cluster.local}}}}]}}]
""" for name, ns in (("reviews", "shop"), ("ratings", "shop"), ("billing", "money"), ("telemetry", "istio-system")))


def sidecar(egress_hosts: str, namespace: str = "shop", selector: str = "", name: str = "default") -> str:
    return f"""---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  {selector}
  egress: [{{hosts: {egress_hosts}}}]
"""


def hosts_of(config) -> set[str]:
    return {h for r in config.service_entries for h in r.spec.hosts}


def test_egress_hosts_keep_only_the_services_they_name():
    """`./*` and `istio-system/*` keep the workload's namespace and istio-system: not `money`."""
    config = load_mesh_text(SERVICES + sidecar('["./*", "istio-system/*"]'))
    kept = scoped_config(config, "shop", {"app": "web"})
    assert hosts_of(kept) == {"reviews.shop.svc.cluster.local", "ratings.shop.svc.cluster.local",
                              "telemetry.istio-system.svc.cluster.local"}
    assert {vs.name for vs in kept.virtual_services} == {"reviews", "ratings", "telemetry"}


def test_a_selected_sidecar_wins_over_the_namespace_default():
    """A Sidecar whose workloadSelector picks the workload applies instead of the namespace's."""
    text = SERVICES + sidecar('["./*"]') + sidecar('["money/billing.money.svc.cluster.local"]', name="web",
                                                   selector="workloadSelector: {labels: {app: web}}")
    config = load_mesh_text(text)
    assert sidecar_for(config, "shop", {"app": "web"}).name == "web"
    assert sidecar_for(config, "shop", {"app": "other"}).name == "default"
    assert hosts_of(scoped_config(config, "shop", {"app": "web"})) == {"billing.money.svc.cluster.local"}


def test_the_root_namespace_sidecar_is_the_mesh_default():
    """With no Sidecar in its namespace, a workload gets istio-system's (without selector)."""
    config = load_mesh_text(SERVICES + sidecar('["./*"]', namespace="istio-system"))
    assert sidecar_for(config, "money", {}).namespace == "istio-system"
    assert hosts_of(scoped_config(config, "money", {})) == {"billing.money.svc.cluster.local"}


@pytest.mark.parametrize(("pattern", "resource_ns", "host", "workload_ns", "expected"), [
    ("*/*", "a", "x.a.svc.cluster.local", "b", True),
    ("./*", "a", "x.a.svc.cluster.local", "a", True),
    ("./*", "a", "x.a.svc.cluster.local", "b", False),
    ("~/*", "a", "x.a.svc.cluster.local", "a", False),
    ("a/*.example.com", "a", "api.example.com", "b", True),
    ("a/x.a.svc.cluster.local", "a", "y.a.svc.cluster.local", "b", False),
])
def test_egress_host_patterns(pattern, resource_ns, host, workload_ns, expected):
    """Namespace `*`, `.`, `~` or a name, then `*`, `*.suffix` or a name, as Istio reads them."""
    assert allows([tuple(pattern.split("/", 1))], resource_ns, host, workload_ns) is expected


def test_the_control_server_pushes_only_the_namespace_scope():
    """A namespace-wide Sidecar trims what the control server pushes to that namespace's sidecars."""
    config = load_mesh_text(SERVICES + sidecar('["./*"]'))
    pushed = scoped_resources(config, ScopeKey("shop"))
    names = {r.name for resources in pushed.values() for r in resources if r.kind == "ServiceEntry"}
    assert names == {"reviews", "ratings"}
    other = scoped_resources(config, ScopeKey("money"))
    assert {r.name for resources in other.values() for r in resources if r.kind == "ServiceEntry"} == \
        {"reviews", "ratings", "billing", "telemetry"}


@pytest.mark.parametrize(("spec", "message"), [
    ("{egress: [{hosts: [reviews.shop.svc.cluster.local]}]}", "must be of form namespace/dnsName"),
    ("{egress: [{hosts: [\"bad_ns/*\"]}]}", "invalid namespace value"),
    ("{egress: [{hosts: []}]}", "at least one host"),
    ("{}", "sidecar: empty configuration provided"),
    ("{outboundTrafficPolicy: {mode: BLOCK}}", "unknown mode"),
    ("{ingress: [{port: {number: 80}, defaultEndpoint: 127.0.0.1:8080}]}", "not supported by Remora"),
    ("{egress: [{port: {number: 80, protocol: HTTP, name: http}, hosts: [\"./*\"]}]}", "not supported by Remora"),
])
def test_sidecar_validation(spec, message):
    """Istio's Sidecar rules, and what Remora refuses rather than skips."""
    text = f"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s}}\nspec: {spec}\n"
    with pytest.raises(ConfigError) as caught:
        load_mesh_text(text)
    assert any(message in issue.message for issue in caught.value.issues), caught.value
