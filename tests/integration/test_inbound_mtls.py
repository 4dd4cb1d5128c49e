"""Inbound mutual TLS, XFCC and AuthorizationPolicy over real TLS on loopback.

Sidecar `reviews` (namespace shop) has its SVID from --cert-dir and takes config from a
control server, so each test pushes the PeerAuthentication / AuthorizationPolicy it needs
by rewriting one config file. Python ssl clients with SVIDs from the same CA (or a foreign
one) play the calling sidecars.
"""
from __future__ import annotations

import hashlib
import json
import ssl
import time

import pytest

from remora.certs.ca import CertificateAuthority
from remora.certs.client import Svid, generate_key_and_csr
from remora.certs.spiffe import SpiffeId
from remora.proxy.security.tls import write_cert_dir
from tests.integration.client import RawClient
from tests.integration.conftest import service
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_metrics_istio import one

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
TD = "cluster.local"
SERVER = SpiffeId(TD, "shop", "reviews")
CLIENT = SpiffeId(TD, "shop", "productpage")
OTHER = SpiffeId(TD, "web", "frontend")
IDENTITY = ("--service", "reviews", "--namespace", "shop", "--service-account", "reviews",
            "--labels", "app=reviews,version=v1")


def issue(ca: CertificateAuthority, identity: SpiffeId) -> Svid:
    key, csr = generate_key_and_csr(identity)
    issued = ca.sign_csr(csr, identity, 3600)
    return Svid.from_pems(issued.cert_pem, issued.chain_pems, key)


class Mesh:
    """The CA, the client contexts and the sidecar under test."""

    def __init__(self, tmp, upstreams) -> None:
        self.ca = CertificateAuthority.load_or_create(tmp / "ca", TD)
        foreign = CertificateAuthority.load_or_create(tmp / "foreign", TD)
        bundle = self.ca.trust_bundle()
        self.cert_dir = write_cert_dir(tmp / "certs", issue(self.ca, SERVER), bundle)
        client_svid = issue(self.ca, CLIENT)
        self.client_der = client_svid.cert.public_bytes(encoding=_DER)
        self.mesh_client = client_svid.to_ssl_context(False, bundle)
        self.other_client = issue(self.ca, OTHER).to_ssl_context(False, bundle)
        self.foreign_client = issue(foreign, CLIENT).to_ssl_context(False, bundle)
        self.no_cert_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.no_cert_client.check_hostname = False
        self.no_cert_client.load_verify_locations(cadata="".join(bundle))
        self.control = ControlProcess({"mesh.yaml": service("echo", [(upstreams.ports["echo"], {})])}).wait_ready()
        self.app_port = upstreams.ports["echo"]
        self.sidecar = ProxyProcess(None, *IDENTITY, "--cert-dir", str(self.cert_dir), "--drain-seconds", "1",
                                    "--protocol-detection-timeout", "2s",
                                    control=self.control.url, inbound_app_port=self.app_port).wait_ready(TIMEOUT)

    def security(self, yaml: str, mode: str, policies: list[str] = ()) -> None:
        """Push these security resources; wait until the sidecar enforces `mode` and `policies`."""
        self.control.write_file("security.yaml", yaml)
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            inbound = self.dump()["inbound_security"]
            names = sorted(p["name"] for p in inbound["authorization_policies"])
            if inbound["mtls"]["ports"][str(self.app_port)] == mode and names == sorted(policies):
                return
            time.sleep(0.1)
        raise AssertionError(f"sidecar never enforced {mode} {policies}: {self.dump()['inbound_security']}")

    def dump(self) -> dict:
        return json.loads(self.sidecar.admin_get("/config_dump"))

    def stats(self) -> dict[str, int]:
        return stats_of(self.sidecar)

    def listener_stat(self, name: str) -> int:
        return self.stats()[f"listener.127.0.0.1_{self.sidecar.inbound_port}.{name}"]

    def client(self, tls: ssl.SSLContext | None = None, source: str | None = None) -> RawClient:
        return RawClient(self.sidecar.inbound_port, tls=tls, source=source)

    def get(self, tls: ssl.SSLContext | None = None, path: str = "/", headers: dict | None = None,
            source: str | None = None, method: str = "GET"):
        c = self.client(tls, source)
        try:
            return c.request(method, path, "reviews", headers)
        finally:
            c.close()

    def stop(self) -> None:
        assert self.sidecar.stop() == 0, self.sidecar.stderr()
        assert self.control.stop() == 0, self.control.stderr()


from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

_DER = Encoding.DER


@pytest.fixture(scope="module")
def mesh(upstreams, tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("inbound-mtls"), upstreams)
    yield m
    m.stop()


def stats_of(p: ProxyProcess) -> dict[str, int]:
    return {s["name"]: s["value"] for s in json.loads(p.admin_get("/stats?format=json"))["stats"]}


def refused(mesh: Mesh, tls: ssl.SSLContext | None) -> bool:
    """True when a request on a new connection gets no HTTP response (closed, reset or TLS alert)."""
    try:
        c = mesh.client(tls)
    except (ssl.SSLError, ConnectionError):
        return True     # TLS 1.2 style: the handshake itself failed
    try:
        return c.request("GET", "/", "reviews").status == 0
    except (ssl.SSLError, ConnectionError):
        return True     # TLS 1.3: the client finished first, the refusal arrives on the first read
    finally:
        c.close()


STRICT_NS = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""


def test_permissive_default_serves_plaintext_and_mtls(mesh):
    """Without a PeerAuthentication (PERMISSIVE) plaintext and mTLS both work; TLS is detected from the first byte."""
    mesh.security("", "PERMISSIVE")
    before = mesh.stats()
    assert mesh.get().status == 200
    resp = mesh.get(mesh.mesh_client)
    assert resp.status == 200 and resp.json()["server"] == "echo"
    after = mesh.stats()
    prefix = f"listener.127.0.0.1_{mesh.sidecar.inbound_port}."
    assert after[prefix + "ssl.handshake"] == before[prefix + "ssl.handshake"] + 1
    assert after[prefix + "tls_inspector.tls_found"] >= before[prefix + "tls_inspector.tls_found"] + 1
    assert after[prefix + "tls_inspector.tls_not_found"] >= before[prefix + "tls_inspector.tls_not_found"] + 1
    prom = mesh.sidecar.admin_get("/stats/prometheus")
    assert one(prom, "envoy_listener_ssl_handshake_total",
               envoy_listener_address=f"127.0.0.1_{mesh.sidecar.inbound_port}") == after[prefix + "ssl.handshake"]


def test_strict_refuses_plaintext_foreign_ca_and_no_certificate(mesh):
    """STRICT: plaintext is closed (no_filter_chain_match), a foreign-CA or certificate-less client fails the handshake; a mesh client is served."""
    mesh.security(STRICT_NS, "STRICT")
    refused_before = mesh.listener_stat("no_filter_chain_match")
    errors_before = mesh.listener_stat("ssl.connection_error")
    assert refused(mesh, None)
    assert mesh.listener_stat("no_filter_chain_match") == refused_before + 1
    assert refused(mesh, mesh.foreign_client)
    assert refused(mesh, mesh.no_cert_client)
    stats = mesh.stats()
    prefix = f"listener.127.0.0.1_{mesh.sidecar.inbound_port}."
    assert stats[prefix + "ssl.connection_error"] == errors_before + 2
    assert stats[prefix + "ssl.fail_verify_error"] >= 1 and stats[prefix + "ssl.fail_verify_no_cert"] >= 1
    assert mesh.get(mesh.mesh_client).status == 200


def test_disable_serves_plaintext_and_tls_is_not_terminated(mesh):
    """DISABLE: plaintext is served; a TLS client gets no TLS server (its handshake fails)."""
    mesh.security(STRICT_NS.replace("STRICT", "DISABLE"), "DISABLE")
    assert mesh.get().status == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        mesh.client(mesh.mesh_client)


def test_port_level_mtls_overrides_the_workload_mode(mesh):
    """portLevelMtls for the app port wins over the policy's own mode, both ways; the dump shows both."""
    workload = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: %s}
  portLevelMtls: {%d: {mode: %s}}
"""
    mesh.security(workload % ("STRICT", mesh.app_port, "PERMISSIVE"), "PERMISSIVE")
    assert mesh.dump()["inbound_security"]["mtls"]["mode"] == "STRICT"
    assert mesh.get().status == 200
    mesh.security(workload % ("PERMISSIVE", mesh.app_port, "STRICT"), "STRICT")
    assert refused(mesh, None)
    assert mesh.get(mesh.mesh_client).status == 200


def test_policy_change_applies_to_the_next_connection(mesh):
    """Switching PERMISSIVE -> STRICT refuses new plaintext connections; an open one keeps working."""
    mesh.security("", "PERMISSIVE")
    kept = mesh.client()
    try:
        assert kept.request("GET", "/", "reviews").status == 200
        mesh.security(STRICT_NS, "STRICT")
        assert refused(mesh, None)
        assert kept.request("GET", "/again", "reviews").status == 200
    finally:
        kept.close()


def wait_stat(mesh: Mesh, name: str, above: int) -> None:
    deadline = time.time() + TIMEOUT
    while mesh.listener_stat(name) <= above:
        assert time.time() < deadline, f"{name} never went above {above}"
        time.sleep(0.1)


def test_silent_client_hits_the_detection_timeout(mesh):
    """A client that sends nothing for --protocol-detection-timeout (2 s) is counted; PERMISSIVE then serves it as plaintext, STRICT closes it."""
    mesh.security("", "PERMISSIVE")
    before = mesh.listener_stat("downstream_pre_cx_timeout")
    c = mesh.client()
    try:
        wait_stat(mesh, "downstream_pre_cx_timeout", before)
        assert c.request("GET", "/late", "reviews").status == 200
    finally:
        c.close()
    mesh.security(STRICT_NS, "STRICT")
    c = mesh.client()
    try:
        wait_stat(mesh, "downstream_pre_cx_timeout", before + 1)
        assert c.is_closed_by_peer()
    finally:
        c.close()


def test_app_sees_the_callers_identity_in_xfcc(mesh):
    """On mTLS the app gets x-forwarded-client-cert By=<sidecar>;Hash=<sha256 of the client cert>;URI=<caller>."""
    mesh.security("", "PERMISSIVE")
    resp = mesh.get(mesh.mesh_client)
    expected = (f"By={SERVER.uri};Hash={hashlib.sha256(mesh.client_der).hexdigest()};URI={CLIENT.uri}")
    assert resp.json()["headers"]["x-forwarded-client-cert"] == expected
    assert "x-forwarded-client-cert" not in mesh.get().json()["headers"]


def test_forged_xfcc_never_reaches_the_app(mesh):
    """A caller's XFCC (repeated, any case) is dropped on plaintext, replaced on mTLS, and dropped by the outbound listener."""
    mesh.security("", "PERMISSIVE")
    forged = b"X-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/kube-system/sa/admin\r\n"
    request = (b"GET / HTTP/1.1\r\nHost: reviews\r\n" + forged
               + b"x-forwarded-client-cert: By=evil;URI=spiffe://evil\r\n\r\n")
    for tls in (None, mesh.mesh_client):
        c = mesh.client(tls)
        try:
            c.send(request)
            seen = c.read_response().json()
        finally:
            c.close()
        assert seen["header_list"].count("x-forwarded-client-cert") == (0 if tls is None else 1)
        assert "evil" not in json.dumps(seen) and "kube-system" not in json.dumps(seen)
    out = RawClient(mesh.sidecar.outbound_port)
    try:
        out.send(request.replace(b"Host: reviews", b"Host: echo"))
        seen = out.read_response().json()
    finally:
        out.close()
    assert "x-forwarded-client-cert" not in seen["headers"]


def authz(name: str, spec: str, namespace: str = "shop") -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{spec}
---
"""


def test_deny_by_path_and_method_is_403_rbac_and_the_connection_stays_usable(mesh):
    """A DENY rule on path+method answers 403 "RBAC: access denied" with flag RBAC in the log, stats and
    Istio metrics; the same keep-alive connection then serves an allowed request."""
    deny = authz("deny-admin", """  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE], paths: ["/admin/*"]}}]""")
    mesh.security(deny, "PERMISSIVE", ["deny-admin"])
    before = mesh.stats()
    c = mesh.client()
    try:
        resp = c.request("DELETE", "/admin/users?id=1", "reviews")
        assert resp.status == 403 and resp.body == b"RBAC: access denied"
        assert c.request("GET", "/admin/users", "reviews").status == 200   # GET is not denied
        assert c.request("DELETE", "/public", "reviews").status == 200
    finally:
        c.close()
    after = mesh.stats()
    assert after["http.inbound.rbac.denied"] == before["http.inbound.rbac.denied"] + 1
    assert after["http.inbound.rbac.allowed"] == before["http.inbound.rbac.allowed"] + 2
    assert '"DELETE /admin/users?id=1 HTTP/1.1" 403 RBAC' in mesh.sidecar.access_log()
    prom = mesh.sidecar.admin_get("/stats/prometheus")
    assert one(prom, "istio_requests_total", reporter="destination", response_code="403",
               response_flags="RBAC") >= 1
    # (the parser names counter samples with _total)
    assert one(prom, "envoy_http_rbac_denied_total", envoy_http_conn_manager_prefix="inbound") >= 1


def test_principals_rule_allows_the_mesh_client_only(mesh):
    """ALLOW from principals: the named mTLS caller passes; another identity and plaintext (no principal) are denied."""
    allow = authz("allow-productpage", """  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/productpage"]}}]""")
    mesh.security(allow, "PERMISSIVE", ["allow-productpage"])
    assert mesh.get(mesh.mesh_client).status == 200
    assert mesh.get(mesh.other_client).status == 403
    assert mesh.get().status == 403
    namespaces = authz("allow-web", """  rules:
  - from: [{source: {namespaces: ["web"]}}]""")
    mesh.security(namespaces, "PERMISSIVE", ["allow-web"])
    assert mesh.get(mesh.other_client).status == 200
    assert mesh.get(mesh.mesh_client).status == 403
    assert mesh.get().status == 403


def test_ip_blocks_match_the_client_address(mesh):
    """ALLOW from ipBlocks 127.0.0.1/32: a client from 127.0.0.1 passes, one from 127.0.0.2 is denied."""
    mesh.security(authz("loopback-one", """  rules:
  - from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]"""), "PERMISSIVE", ["loopback-one"])
    assert mesh.get(source="127.0.0.1").status == 200
    assert mesh.get(source="127.0.0.2").status == 403


def test_when_request_header_and_audit(mesh):
    """A `when request.headers[...]` condition gates the request; a matching AUDIT policy only counts shadow_denied."""
    policies = authz("needs-token", """  rules:
  - when: [{key: "request.headers[x-token]", values: ["secret-*"]}]""") + authz("audit-all", """  action: AUDIT
  rules: [{}]""")
    mesh.security(policies, "PERMISSIVE", ["audit-all", "needs-token"])
    before = mesh.stats()["http.inbound.rbac.shadow_denied"]
    assert mesh.get(headers={"x-token": "secret-42"}).status == 200
    assert mesh.get(headers={"x-token": "guess"}).status == 403
    assert mesh.get().status == 403
    assert mesh.stats()["http.inbound.rbac.shadow_denied"] == before + 3


def test_istio_metrics_carry_mutual_tls_and_the_callers_principal(mesh):
    """Destination reporter: mutual_tls + the caller's SPIFFE ID on mTLS requests, none + unknown on plaintext."""
    mesh.security("", "PERMISSIVE")
    assert mesh.get(mesh.mesh_client, path="/metric-mtls").status == 200
    assert mesh.get(path="/metric-plain").status == 200
    prom = mesh.sidecar.admin_get("/stats/prometheus")
    assert one(prom, "istio_requests_total", reporter="destination", response_code="200",
               connection_security_policy="mutual_tls", source_principal=CLIENT.uri) >= 1
    assert one(prom, "istio_requests_total", reporter="destination", response_code="200",
               connection_security_policy="none", source_principal="unknown") >= 1


def test_config_dump_shows_the_mode_and_the_applying_policies(mesh):
    """/config_dump inbound_security: the mode per port, the PeerAuthentications in scope and the AuthorizationPolicies that apply."""
    other_ns = authz("elsewhere", "  rules: [{}]", namespace="web")
    mesh.security(STRICT_NS + "---\n" + authz("deny-x", """  action: DENY
  rules: [{to: [{operation: {paths: ["/x"]}}]}]""") + other_ns, "STRICT", ["deny-x"])
    inbound = mesh.dump()["inbound_security"]
    assert inbound["mtls"]["mode"] == "STRICT"
    assert [p["name"] for p in inbound["mtls"]["peer_authentications"]] == ["default"]
    [policy] = inbound["authorization_policies"]
    assert policy["action"] == "DENY" and policy["namespace"] == "shop"
    assert policy["spec"]["rules"][0]["to"][0]["operation"]["paths"] == ["/x"]


def test_strict_without_a_certificate_refuses_everything_permissive_serves_plaintext(upstreams):
    """No certificate yet: STRICT refuses every connection (counted), PERMISSIVE serves plaintext (file config)."""
    yaml = service("dummy", []) + STRICT_NS
    p = ProxyProcess(yaml, *IDENTITY, inbound_app_port=upstreams.ports["echo"]).wait_ready()
    try:
        c = RawClient(p.inbound_port)
        c.send(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
        assert c.is_closed_by_peer()
        c.close()
        stats = stats_of(p)
        assert stats[f"listener.127.0.0.1_{p.inbound_port}.no_filter_chain_match"] == 1
        assert "no certificate yet" in p.stderr()
    finally:
        assert p.stop() == 0, p.stderr()
    p = ProxyProcess(service("dummy", []), *IDENTITY, inbound_app_port=upstreams.ports["echo"]).wait_ready()
    try:
        c = RawClient(p.inbound_port)
        assert c.request("GET", "/", "reviews").status == 200
        c.close()
    finally:
        assert p.stop() == 0, p.stderr()
