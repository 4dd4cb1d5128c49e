"""Two captured pods with sidecars (network namespaces): plain app calls become routed, retried, mTLS'd."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from remora.certs.ca import CertificateAuthority
from remora.proxy.security.tls import write_cert_dir
from tests.integration.capture_lab import Lab, Sidecar, capture, http_get, start_app, tcp_exchange
from tests.integration.mtls_peers import issue
from tests.integration.netns import skip_unless_possible, wait_until

NET = 204
CLIENT, SERVER, OUTSIDE = f"10.{NET}.0.2", f"10.{NET}.0.3", f"10.{NET}.0.4"
REVIEWS_VIP, ECHO_VIP, LOOPY_VIP, SPLIT_VIP = "10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.13"
MESH = f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  addresses: [{REVIEWS_VIP}]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {{address: {SERVER}, labels: {{app: reviews, security.istio.io/tlsMode: istio}}, serviceAccount: reviews}}
  - {{address: {OUTSIDE}, labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews}}}}]
    retries: {{attempts: 3, retryOn: "connect-failure,refused-stream,5xx"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo]
  addresses: [{ECHO_VIP}]
  ports: [{{number: 9000, name: tcp-echo, protocol: TCP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {{address: {SERVER}, labels: {{app: echo, security.istio.io/tlsMode: istio}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-front}}
spec:
  hosts: [tcp-front]
  addresses: [{SPLIT_VIP}]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {{labels: {{app: tcp-front}}}}   # no workload: only the route reaches echo
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-front}}
spec:
  hosts: [tcp-front]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{destination: {{host: echo, port: {{number: 9000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: loopy}}
spec:
  hosts: [loopy]
  addresses: [{LOOPY_VIP}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {CLIENT}, ports: {{http: 15001}}}}]
"""


@pytest.fixture(scope="module")
def mesh():
    skip_unless_possible()
    lab = Lab(net=NET)
    try:
        client, server, outside = lab.pod("client", 2), lab.pod("server", 3), lab.pod("outside", 4)
        client.run("ip", "route", "add", "10.96.0.0/16", "dev", "eth0")
        client.hosts({"reviews": REVIEWS_VIP, "echo": ECHO_VIP, "tcp-front": SPLIT_VIP})
        certs = tempfile.mkdtemp(prefix="remora-certs-")
        lab.dirs.append(certs)
        ca = CertificateAuthority.load_or_create(Path(certs) / "ca", "cluster.local")
        for name, account in (("client", "productpage"), ("server", "reviews")):
            write_cert_dir(os.path.join(certs, name), issue(ca, "default", account), ca.trust_bundle())
        start_app(server, "http", 9080, "reviews")
        start_app(server, "echo", 9000)
        capture(client)
        capture(server)
        inbound = ["--inbound-port", "15006", "--app-port", "9080", "--inbound-bind", "0.0.0.0"]
        lab.client_sidecar = Sidecar(client, MESH, "--cert-dir", os.path.join(certs, "client"),
                                     "--service", "productpage", "--service-account", "productpage", *inbound)
        lab.server_sidecar = Sidecar(server, MESH, "--cert-dir", os.path.join(certs, "server"),
                                     "--service", "reviews", "--service-account", "reviews", *inbound)
        yield lab
    finally:
        lab.close()


def test_plain_client_call_is_routed_retried_and_mtls(mesh):
    """`http://reviews:9080/` from an unmodified client: routed by the sidecar, the dead endpoint
    retried away, and the hop between the sidecars is mTLS (XFCC at the app, TLS counters)."""
    client = mesh.pods["client"]
    for _ in range(6):
        status, _, body = http_get(client, "http://reviews:9080/reviews/1")
        assert status == 200, body
        seen = json.loads(body)
        assert seen["server"] == "reviews" and seen["path"] == "/reviews/1"
        assert "spiffe://cluster.local/ns/default/sa/productpage" in seen["headers"]["x-forwarded-client-cert"]
    client_stats = mesh.client_sidecar.stats()
    assert client_stats["cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_retry"] >= 1
    server_stats = mesh.server_sidecar.stats()
    assert server_stats["listener.0.0.0.0_15006.ssl.handshake"] >= 1
    assert server_stats["listener.0.0.0.0_15006.capture.http"] >= 1


def test_tcp_echo_through_two_sidecars_is_mtls(mesh):
    """A non-HTTP protocol on a port declared TCP crosses both sidecars byte for byte, over mTLS."""
    client = mesh.pods["client"]
    before = mesh.server_sidecar.stats()["listener.0.0.0.0_15006.ssl.handshake"]
    payload = b"\x00\x01 not http \xff" * 5000
    # no half close: a TLS hop cannot carry one (see docs/interception.md, limits)
    assert tcp_exchange(client, "echo", 9000, payload, half_close=False) == payload
    server_stats = wait_until(lambda: (s := mesh.server_sidecar.stats())["tcp.inbound.downstream_cx_total"] >= 1 and s,
                              20, "the server sidecar's TCP session")
    assert server_stats["listener.0.0.0.0_15006.ssl.handshake"] > before
    assert server_stats["listener.0.0.0.0_15006.capture.tcp"] >= 1
    assert mesh.client_sidecar.stats()["listener.127.0.0.1_15001.capture.tcp"] >= 1


def test_captured_tcp_follows_the_virtual_services_tcp_route(mesh):
    """tcp-front has no endpoints of its own: its VirtualService's tcp route sends the captured
    connection to echo, through both sidecars over mTLS."""
    client = mesh.pods["client"]
    payload = b"routed by port\n" * 100
    assert tcp_exchange(client, "tcp-front", 9000, payload, half_close=False) == payload


def test_loop_to_the_proxys_own_port_is_refused(mesh):
    """A route whose endpoint is the sidecar's own 15001 is cut by the loop guard (503), not looped."""
    client = mesh.pods["client"]
    # In a pod the sidecar runs as uid 1337 and its calls to its own pod IP take the uid rule
    # to REMORA_IN_REDIRECT. Here it runs as root with gid 1337 (the interpreter is not
    # readable by uid 1337), and the uid RETURN rule for lo comes first: put the gid's own
    # redirect first, as the uid rule would act.
    client.run("iptables", "-t", "nat", "-I", "REMORA_OUTPUT", "1", "!", "-d", "127.0.0.1/32", "-o", "lo",
               "-p", "tcp", "-m", "owner", "--gid-owner", "1337", "-j", "REMORA_IN_REDIRECT")
    status, _, _ = http_get(client, f"http://{LOOPY_VIP}/")
    assert status == 503
    assert mesh.client_sidecar.stats()["listener.0.0.0.0_15006.capture.loop_refused"] >= 1
