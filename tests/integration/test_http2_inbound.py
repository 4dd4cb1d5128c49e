"""Downstream HTTP/2 on the inbound listener: h2c and h2 over mutual TLS chosen by ALPN,
with authorization and routing seeing the normalized :path."""
from __future__ import annotations

import json
import socket

import pytest

from remora.certs.ca import CertificateAuthority
from remora.proxy.security.tls import write_cert_dir
from tests.integration.h2_client import H2Client
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_inbound_mtls import CLIENT, IDENTITY, SERVER, TD, issue

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
DENY_ADMIN = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin", "/admin/*"]}
"""


class Inbound:
    """A reviews sidecar (PERMISSIVE, a DENY /admin policy) in front of the echo app, and mesh client contexts."""

    def __init__(self, tmp, upstreams) -> None:
        ca = CertificateAuthority.load_or_create(tmp / "ca", TD)
        bundle = ca.trust_bundle()
        cert_dir = write_cert_dir(tmp / "certs", issue(ca, SERVER), bundle)
        svid = issue(ca, CLIENT)
        self.h2_client = svid.to_ssl_context(False, bundle)
        self.h2_client.set_alpn_protocols(["h2", "http/1.1"])
        self.sidecar_client = svid.to_ssl_context(False, bundle)   # what a Remora sidecar offers
        self.sidecar = ProxyProcess(DENY_ADMIN, *IDENTITY, "--cert-dir", str(cert_dir), "--drain-seconds", "1",
                                    inbound_app_port=upstreams.ports["echo"]).wait_ready(TIMEOUT)

    def client(self, tls: bool = False) -> H2Client:
        return H2Client(self.sidecar.inbound_port, context=self.h2_client if tls else None)


@pytest.fixture(scope="module")
def inbound(upstreams, tmp_path_factory):
    i = Inbound(tmp_path_factory.mktemp("h2-inbound"), upstreams)
    yield i
    try:
        assert i.sidecar.stop() == 0, i.sidecar.stderr()
    finally:
        i.sidecar.close()


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-mtls"])
def test_authorization_sees_the_normalized_path(inbound, tls):
    """Over h2c and over mTLS, every spelling of /admin in :path is denied 403 RBAC and
    other paths reach the app normalized (policy and app see the same path)."""
    c = inbound.client(tls)
    try:
        for path in ("/admin", "/public/../admin", "/%61dmin/x", "/./admin", "/x/%2e%2e/admin"):
            result = c.request("GET", path, "reviews")
            assert result.status == 403 and bytes(result.body) == b"RBAC: access denied", path
        result = c.request("GET", "/a/./b/../c?x=1", "reviews")
        assert result.status == 200
        assert json.loads(bytes(result.body))["path"] == "/a/c?x=1"
    finally:
        c.close()


def test_h2_over_mtls_by_alpn_carries_the_callers_identity(inbound):
    """A mesh client offering ALPN h2 gets HTTP/2 over mTLS; the app sees XFCC naming it and
    the access log says HTTP/2; Istio's metrics label the request protocol "http"."""
    c = inbound.client(tls=True)
    try:
        result = c.request("POST", "/who", "reviews", body=b"x" * 100_000)
        assert result.status == 200
        seen = json.loads(bytes(result.body))
        assert seen["body_len"] == 100_000
        xfcc = seen["headers"]["x-forwarded-client-cert"]
        assert xfcc.endswith(f";URI=spiffe://{TD}/ns/shop/sa/productpage"), xfcc
    finally:
        c.close()
    assert '"POST /who HTTP/2" 200' in inbound.sidecar.access_log()
    metrics = inbound.sidecar.admin_get("/stats/prometheus")
    assert any('reporter="destination"' in line and 'request_protocol="http"' in line
               and 'connection_security_policy="mutual_tls"' in line
               for line in metrics.splitlines() if line.startswith("istio_requests_total{")), metrics[-1500:]


def test_sidecar_clients_keep_http1_over_mtls(inbound):
    """A client offering only Remora's ALPN list (the sidecars' outbound mTLS) negotiates
    `remora` and is served HTTP/1.1: offering h2 to servers changes nothing for them."""
    with socket.create_connection(("127.0.0.1", inbound.sidecar.inbound_port), timeout=TIMEOUT) as raw:
        with inbound.sidecar_client.wrap_socket(raw) as sock:
            assert sock.selected_alpn_protocol() == "remora"
            sock.sendall(b"GET /h1 HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
