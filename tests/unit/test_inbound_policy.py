"""What the inbound listener enforces: mode per app port, authorizer, dump, XFCC and the peer's names."""
from __future__ import annotations

import hashlib
import textwrap

from remora.config.loader import load_mesh_text
from remora.proxy.security.identity import WorkloadIdentity
from remora.proxy.security.inbound_policy import HeadHeaders, compile_inbound_policy, namespace_of, xfcc_line
from remora.proxy.codec.message import RequestHead

IDENTITY = WorkloadIdentity(namespace="shop", labels={"app": "reviews"})


def config(text: str = ""):
    return load_mesh_text(textwrap.dedent(text))


PEER_AUTH = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  portLevelMtls: {9080: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-app, namespace: shop}
spec: {selector: {matchLabels: {app: ratings}}}
"""


def test_no_policies_is_permissive_and_allows_everything():
    """Nothing configured: PERMISSIVE on the app port and no authorizer (no per-request check)."""
    policy = compile_inbound_policy(config(), IDENTITY, 9080)
    assert (policy.mode, policy.workload_mode, policy.authorizer) == ("PERMISSIVE", "PERMISSIVE", None)
    assert policy.dump["authorization_policies"] == [] and policy.dump["mtls"]["ports"] == {"9080": "PERMISSIVE"}


def test_port_level_mode_and_applying_policies():
    """The app port takes portLevelMtls over the mesh-wide STRICT; only policies for this workload are compiled and shown."""
    policy = compile_inbound_policy(config(PEER_AUTH), IDENTITY, 9080)
    assert policy.mode == "DISABLE" and policy.workload_mode == "STRICT"
    assert compile_inbound_policy(config(PEER_AUTH), IDENTITY, 8080).mode == "STRICT"
    assert [p["name"] for p in policy.dump["authorization_policies"]] == ["deny-delete"]
    assert policy.dump["authorization_policies"][0]["action"] == "DENY"
    assert [p["name"] for p in policy.dump["mtls"]["peer_authentications"]] == ["mesh", "reviews"]
    head = RequestHead(b"DELETE", b"/x?y=1", b"reviews:9080", [(b"X-Token", b"abc")])
    head.peer_ip = b"127.0.0.1"
    request = policy.request(head)
    assert (request.method, request.path, request.host, request.port) == ("DELETE", "/x?y=1", "reviews:9080", 9080)
    assert request.source_principal is None and request.source_ip == "127.0.0.1"
    assert not policy.authorizer.check(request).allowed


def test_head_headers_are_looked_up_case_insensitively():
    """request.headers[NAME] reads the head by lower-case name, None when absent."""
    headers = HeadHeaders(RequestHead(b"GET", b"/", b"h", [(b"X-Token", b"secret")]))
    assert headers.get("x-token") == "secret" and headers.get("x-missing") is None


def test_xfcc_is_envoys_sanitize_set_format():
    """XFCC: By=<local>;Hash=<sha256 hex of the DER>;URI=<peer>, one header line; URI left out without a SPIFFE ID."""
    der = b"certificate bytes"
    digest = hashlib.sha256(der).hexdigest()
    line = xfcc_line("spiffe://td/ns/a/sa/b", der, "spiffe://td/ns/c/sa/d")
    assert line == f"x-forwarded-client-cert: By=spiffe://td/ns/a/sa/b;Hash={digest};URI=spiffe://td/ns/c/sa/d\r\n".encode()
    assert xfcc_line("spiffe://td/ns/a/sa/b", der, None).endswith(f";Hash={digest}\r\n".encode())


def test_namespace_of_a_principal():
    """The namespace is the part after `ns/` in td/ns/NS/sa/SA; anything else has none."""
    assert namespace_of("cluster.local/ns/shop/sa/web") == "shop"
    assert namespace_of("cluster.local/workload/x") is None and namespace_of(None) is None
