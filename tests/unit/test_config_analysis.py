"""`remora analyze` warnings (config/analysis.py, config/deprecated.py) and YAML as Kubernetes reads it."""
from __future__ import annotations

import pytest

from remora.cli import main
from remora.config.analysis import analysis_warnings, certificate_warnings
from remora.config.loader import ConfigError, load_mesh_text
from remora.config.yaml_text import YamlSyntaxError, load_all

MESH = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public}
spec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front}
spec:
  hosts: [reviews]
  gateways: [public, mesh, missing, other/gw]
  http:
  - match: [{gateways: [public2]}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
    fault: {delay: {percent: 10, fixedDelay: 1s}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec: {ports: [{port: 9080, name: http, targetPort: web}], selector: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r1}
spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}, ports: {web: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r2}
spec: {address: 10.0.0.2, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer: {consistentHash: {httpHeaderName: x-user, minimumRingSize: 1024}}
  subsets: [{name: v1, labels: {version: v1}}, {name: v3, labels: {version: v3}}]
"""


@pytest.fixture(scope="module")
def warnings() -> list[str]:
    config = load_mesh_text(MESH, "mesh.yaml")
    return [*config.warnings, *analysis_warnings(config)]


def _about(warnings: list[str], *words: str) -> list[str]:
    return [w for w in warnings if all(word in w for word in words)]


def test_gateway_bound_routes_without_a_gateway_are_named(warnings):
    """A VirtualService bound to gateways nobody defines is warned about, per gateway; `mesh` and defined ones are not."""
    missing = _about(warnings, "is not defined by any Gateway")
    assert sorted(w.split("gateway '")[1].split("'")[0] for w in missing) == ["default/missing", "default/public2", "other/gw"]
    assert _about(warnings, "spec.http[0].match[0].gateways", "default/public2")


def test_a_subset_no_endpoint_matches_is_named(warnings):
    """Subset v3 matches no endpoint of reviews; subset v1 does and gets no warning."""
    assert _about(warnings, "spec.subsets[1] (v3)", "version=v3")
    assert not _about(warnings, "spec.subsets[0]")


def test_deprecated_fields_are_named_with_their_replacement(warnings):
    """fault.delay.percent and consistentHash.minimumRingSize are warned about with what replaces them."""
    assert _about(warnings, "spec.http[1].fault.delay.percent", "percentage")
    assert _about(warnings, "consistentHash.minimumRingSize", "ringHash")


def test_istio_mutual_without_certificate_source(warnings):
    """ISTIO_MUTUAL is warned about when no certificate is known, and not for a sidecar that has one."""
    assert _about(warnings, "spec.trafficPolicy.tls.mode", "ISTIO_MUTUAL needs a workload certificate")
    config = load_mesh_text(MESH, "mesh.yaml")
    assert certificate_warnings(config, has_certificate=True) == []
    assert "this sidecar has none" in certificate_warnings(config, has_certificate=False)[0]


def test_workload_missing_a_named_target_port_is_named(warnings):
    """r2 lacks the Service's named targetPort `web` (Istio would leave it out); r1 has it."""
    assert _about(warnings, "WorkloadEntry/default/r2", "no port named 'web'")
    assert not _about(warnings, "WorkloadEntry/default/r1")


def test_analyze_prints_info_lines_and_takes_a_namespace(tmp_path, capsys):
    """`remora analyze -n shop` puts namespace-less documents in shop and prints skipped kinds as info lines."""
    (tmp_path / "m.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n---\n"
                                     "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n")
    assert main(["analyze", "-n", "shop", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "info: skipped Deployment shop/web (apps/v1)" in out and out.rstrip().endswith("is valid")


def test_yaml_follows_1_2_flow_scalars_and_refuses_duplicate_keys():
    """An unquoted IPv6 address in a flow list is a string (YAML 1.2); `yes` stays a string; a duplicate key is an error."""
    [doc] = list(load_all("addresses: [1.2.3.4, 001:db8::, ::1]\nflag: yes\n"))
    assert doc == {"addresses": ["1.2.3.4", "001:db8::", "::1"], "flag": "yes"}
    with pytest.raises(YamlSyntaxError) as error:
        list(load_all("a: 1\na: 2\n"))
    assert "duplicate key 'a'" in str(error.value) and error.value.line == 2


def test_invalid_yaml_is_an_issue_with_document_and_line():
    """A syntax error names the document and the line, as before the switch of library."""
    with pytest.raises(ConfigError) as refused:
        load_mesh_text("apiVersion: v1\n---\nkind: [a\n", "bad.yaml")
    [syntax] = [str(i) for i in refused.value.issues if "invalid YAML" in i.message]
    assert syntax.startswith("bad.yaml: document 2: invalid YAML:") and "(line 4, column 1)" in syntax


def test_dumped_yaml_reads_the_same_under_yaml_1_1_and_1_2():
    """What remora prints (get -o yaml) reads back identically by a YAML 1.2 and a YAML 1.1 reader (PyYAML, kubectl)."""
    import yaml as pyyaml
    from remora.config.yaml_text import dump
    doc = {"labels": {"enabled": "yes", "switch": "on", "time": "1:30", "code": "010", "day": "2024-01-01"},
           "addresses": ["001:db8::", "10.0.0.1"], "count": 5, "flag": True}
    text = dump(doc)
    assert list(load_all(text)) == [doc]
    assert pyyaml.safe_load(text) == doc


def test_a_host_defined_by_a_service_and_a_service_entry_is_named():
    """A Kubernetes Service and a ServiceEntry for one host in one namespace get a warning naming both."""
    config = load_mesh_text(MESH + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
                            "metadata: {name: reviews-extra}\nspec: {hosts: [reviews], resolution: STATIC, "
                            "ports: [{number: 9080, name: http}], endpoints: [{address: 10.0.0.9}]}\n", "mesh.yaml")
    [warning] = _about(analysis_warnings(config), "is also defined by")
    assert "ServiceEntry/default/reviews-extra" in warning and "Service/default/reviews" in warning


def test_virtual_service_hosts_a_gateway_does_not_admit_are_named():
    """IST0132: a host no server of the bound Gateway admits (here because of `ns/` qualifiers)."""
    text = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["edge/a.example.com", "*/b.example.com"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: shop}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [edge/gw]
  http: [{directResponse: {status: 200}}]
"""
    found = [w for w in analysis_warnings(load_mesh_text(text, "gw.yaml")) if "not found in Gateway/edge/gw" in w]
    assert len(found) == 1 and "a.example.com not found" in found[0] and "b.example.com" not in found[0]
