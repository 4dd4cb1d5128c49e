"""The istio.io ingress SNI-passthrough task on `remora gateway`: TLS for nginx.example.com
goes through the gateway untouched to my-nginx, which terminates it with its own
certificate (here a local HTTPS server standing in for nginx)."""
from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

import pytest

from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_gateway_ingress import SAMPLES, get
from tests.integration.tls_origin_servers import TestPki, TlsServers, server_context

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def passthrough():
    tmp = Path(tempfile.mkdtemp(prefix="remora-passthrough-"))
    pki = TestPki(str(tmp))
    ca = pki.ca("example.com")
    nginx = TlsServers({"nginx": server_context(*pki.leaf("example.com", "nginx.example.com",
                                                          dns=["nginx.example.com"]))}).start()
    service = f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: my-nginx}}
spec:
  hosts: [my-nginx.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{https: {nginx.ports["nginx"]}}}}}]
---
"""
    gateway = ProxyProcess(service + (SAMPLES / "ingress-sni-passthrough.yaml").read_text(),
                           gateway_ports=(443,)).wait_ready()
    yield gateway, ca, nginx
    gateway.stop()
    nginx.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def client(ca: str, host: str):
    context = ssl.create_default_context(cafile=ca)

    class ForHost:
        def wrap_socket(self, sock):
            return context.wrap_socket(sock, server_hostname=host)
    return ForHost()


def test_tls_passes_through_to_the_backend_which_terminates_it(passthrough):
    """The client verifies nginx.example.com's own certificate (the gateway holds none) and
    nginx saw the client's SNI: the bytes went through the gateway undecrypted."""
    gateway, ca, nginx = passthrough
    resp = get(gateway.ports[443], "/", "nginx.example.com", tls=client(ca, "nginx.example.com"))
    assert resp.status == 200 and resp.json()["server"] == "nginx"
    assert resp.json()["sni"] == "nginx.example.com"
    stats = gateway.admin_get("/stats")
    assert "tcp.gateway_443.downstream_cx_total: 1" in stats


def test_an_sni_no_route_names_is_closed(passthrough):
    """A ClientHello for another name takes no tls route: the connection is closed, counted."""
    gateway, ca, _ = passthrough
    context = ssl._create_unverified_context()

    class Other:
        def wrap_socket(self, sock):
            return context.wrap_socket(sock, server_hostname="other.example.com")
    try:
        status = get(gateway.ports[443], "/", "other.example.com", tls=Other()).status
    except (ssl.SSLError, OSError):
        status = 0
    assert status == 0
    assert "http.gateway_443.no_route: 1" in gateway.admin_get("/stats")


def test_plaintext_on_a_passthrough_port_is_closed(passthrough):
    """Bytes that are not a TLS ClientHello are refused without a response."""
    gateway, _, _ = passthrough
    assert get(gateway.ports[443], "/", "nginx.example.com").status == 0
