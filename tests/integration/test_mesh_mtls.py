"""End to end: two real sidecars with certificates from the control server's CA talk mutual TLS.

A control server (CA included), a reviews sidecar in front of a test upstream and a
productpage client sidecar, both started with join tokens: nothing in the mesh config says
"TLS", the registry's tlsMode label makes the client dial mTLS (Istio's auto mTLS), and the
reviews sidecar terminates it. Policies are applied at runtime through the control server.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from tests.integration.control_process import ControlProcess
from tests.integration.h2_client import H2Client
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_mesh_control import MESH, endpoint_count, wait_for

pytestmark = pytest.mark.integration

PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"

STRICT_AND_ALLOW = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-readers, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/reviews/*"]}}]
"""


def ask(sidecar: ProxyProcess, path: str = "/reviews/0", headers: dict | None = None) -> tuple[int, dict | str]:
    """One request to reviews through the client sidecar: (status, the upstream's echo or the body)."""
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.outbound_port, timeout=15)
    try:
        conn.request("GET", path, headers={"Host": "reviews:9080", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if resp.status == 200 else body.decode(errors="replace"))
    finally:
        conn.close()


def stat(sidecar: ProxyProcess, name: str) -> int:
    for line in sidecar.admin_get("/stats").splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


class TokenMesh:
    """Control server + reviews sidecar (sa reviews) + productpage sidecar (sa productpage), all with tokens."""

    def __init__(self, upstreams, *control_args: str) -> None:
        self.sidecars: list[ProxyProcess] = []
        self.control = ControlProcess({"mesh.yaml": MESH}, *control_args)
        try:
            self.control.wait_ready()
            self.reviews = self._start("reviews", "--labels", "app=reviews,version=v1",
                                       inbound_app_port=upstreams.ports["v1"])
            self.client = self._start("productpage")
            for sidecar in self.sidecars:
                sidecar.wait_ready(40)
            wait_for(lambda: endpoint_count(self.client) == 1, "the reviews sidecar to be registered")
            wait_for(lambda: ask(self.client)[0] == 200, "reviews to answer through mTLS")
        except BaseException:
            self.stop()
            raise

    def _start(self, service: str, *args: str, **kw) -> ProxyProcess:
        result = self.control.cli("token", "create", "--namespace", "default", "--service-account", service)
        assert result.returncode == 0, result.stderr
        sidecar = ProxyProcess(None, "--service", service, "--service-account", service, "--node-id", service,
                               "--token", result.stdout.splitlines()[-1], "--drain-seconds", "1", *args,
                               control=self.control.url, **kw)
        self.sidecars.append(sidecar)
        return sidecar

    def stop(self) -> None:
        for sidecar in reversed(self.sidecars):
            sidecar.stop()
        self.control.stop()


@pytest.fixture
def mesh(upstreams):
    m = TokenMesh(upstreams)
    yield m
    m.stop()


def test_sidecars_with_tokens_talk_mutual_tls_and_the_app_sees_the_caller(mesh):
    """The hop between sidecars is mTLS on both ends; the app gets XFCC naming the caller, never the caller's forgery."""
    status, echo = ask(mesh.client, headers={"x-forwarded-client-cert": "URI=spiffe://evil/ns/x/sa/admin"})
    assert status == 200, echo
    xfcc = echo["headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={REVIEWS};Hash=") and xfcc.endswith(f";URI={PRODUCTPAGE}"), xfcc
    assert "evil" not in json.dumps(echo["headers"])
    assert stat(mesh.client, "cluster.outbound|9080||reviews.default.svc.cluster.local.ssl.handshake") > 0
    inbound = [line for line in mesh.reviews.admin_get("/stats").splitlines()
               if line.startswith("listener.") and ".ssl.handshake: " in line]
    assert inbound and int(inbound[0].rsplit(": ", 1)[1]) > 0, inbound
    metrics = mesh.reviews.admin_get("/stats/prometheus")
    assert any('reporter="destination"' in line and 'connection_security_policy="mutual_tls"' in line
               and f'source_principal="{PRODUCTPAGE}"' in line
               for line in metrics.splitlines() if line.startswith("istio_requests_total{")), metrics[-2000:]
    outbound = mesh.client.admin_get("/stats/prometheus")
    assert any('reporter="source"' in line and f'destination_principal="{REVIEWS}"' in line
               for line in outbound.splitlines() if line.startswith("istio_requests_total{"))


def test_an_app_speaking_h2c_reaches_the_other_app_over_mtls(mesh):
    """An app speaking HTTP/2 (h2c prior knowledge) to its sidecar reaches reviews through the
    mTLS hop, which stays HTTP/1.1 between the sidecars for now; the app sees the caller."""
    c = H2Client(mesh.client.outbound_port)
    try:
        result = c.request("POST", "/reviews/h2", "reviews:9080", body=b"b" * 50_000)
    finally:
        c.close()
    assert result.status == 200, bytes(result.body)
    echo = json.loads(bytes(result.body))
    assert echo["path"] == "/reviews/h2" and echo["body_len"] == 50_000
    assert echo["headers"]["x-forwarded-client-cert"].endswith(f";URI={PRODUCTPAGE}")
    assert '"POST /reviews/h2 HTTP/2" 200' in mesh.client.access_log()
    assert '"POST /reviews/h2 HTTP/1.1" 200' in mesh.reviews.access_log()


def test_strict_mtls_and_authorization_applied_at_runtime(mesh):
    """After STRICT + an ALLOW policy for productpage: its GETs pass, other paths get 403 RBAC, plaintext is refused."""
    status, answer = mesh.control.apply(STRICT_AND_ALLOW)
    assert status == 200, answer
    wait_for(lambda: ask(mesh.client, "/other")[0] == 403, "the authorization policy to reach the reviews sidecar")
    status, body = ask(mesh.client, "/other")
    assert status == 403 and body == "RBAC: access denied"
    assert ask(mesh.client)[0] == 200
    assert stat(mesh.reviews, "http.inbound.rbac.denied") >= 1
    assert " RBAC " in mesh.reviews.access_log() or '"RBAC"' in mesh.reviews.access_log()

    def plaintext_answer() -> bytes:
        with socket.create_connection(("127.0.0.1", mesh.reviews.inbound_port), timeout=10) as sock:
            sock.sendall(b"GET /reviews/0 HTTP/1.1\r\nHost: reviews\r\n\r\n")
            try:
                return sock.recv(1024)
            except ConnectionResetError:
                return b""
    wait_for(lambda: plaintext_answer() == b"", "STRICT to refuse a plaintext caller")


def test_rotation_on_both_sidecars_under_traffic_fails_no_request(upstreams):
    """With 8 s certificates both sidecars rotate several times while requests flow: every request succeeds."""
    mesh = TokenMesh(upstreams, "--cert-ttl", "8s")
    try:
        first = {s: json.loads(s.admin_get("/certs"))["svid"]["serial"] for s in mesh.sidecars}
        failures: list = []
        done = threading.Event()

        def load() -> None:
            while not done.is_set():
                status, body = ask(mesh.client)
                if status != 200:
                    failures.append((status, body))
                time.sleep(0.01)
        worker = threading.Thread(target=load)
        worker.start()
        try:
            wait_for(lambda: all(json.loads(s.admin_get("/certs"))["svid"]["serial"] != first[s]
                                 for s in mesh.sidecars), "both sidecars to rotate", timeout=40)
            time.sleep(5)   # and a little more traffic on the new certificates
        finally:
            done.set()
            worker.join()
        assert failures == [], failures[:3]
    finally:
        mesh.stop()
