"""The istio.io egress task with TLS origination, as written but for addresses: a sidecar
sends plain HTTP for edition.cnn.com, the mesh takes it to `remora gateway` (as
istio-egressgateway) over ISTIO_MUTUAL, and the gateway originates TLS to the outside.

edition.cnn.com is a local HTTPS server here: the task's ServiceEntry (resolution DNS) gets
a static loopback endpoint, and its TLS-origination DestinationRule the test CA as
caCertificates (the task trusts the system store)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from remora.certs.ca import CertificateAuthority
from remora.certs.spiffe import SpiffeId
from remora.proxy.security.tls import write_cert_dir
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_gateway_ingress import SAMPLES, get
from tests.integration.test_inbound_mtls import issue
from tests.integration.tls_origin_servers import TestPki, TlsServers, server_context

pytestmark = pytest.mark.integration

EGRESS_SERVICE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http2, protocol: HTTP2}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http2: %d}, labels: {istio: egressgateway}}]
"""


class EgressMesh:
    """The sleep sample's sidecar, the egress gateway and edition.cnn.com (a local HTTPS server)."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="remora-egress-"))
        self.procs: list[ProxyProcess] = []
        self.outside = None
        try:
            pki = TestPki(str(self.tmp))
            outside_ca = pki.ca("outside")
            cert, key = pki.leaf("outside", "edition.cnn.com", dns=["edition.cnn.com"])
            self.outside = TlsServers({"cnn": server_context(cert, key)}).start()
            ca = CertificateAuthority.load_or_create(self.tmp / "ca", "cluster.local")
            bundle = ca.trust_bundle()
            certs = {sa: write_cert_dir(self.tmp / sa, issue(ca, SpiffeId("cluster.local", ns, sa)), bundle)
                     for ns, sa in (("default", "sleep"), ("istio-system", "istio-egressgateway-service-account"))}
            task = (SAMPLES / "egress-tls-origination.yaml").read_text()
            task = task.replace("  resolution: DNS\n", "  resolution: STATIC\n  endpoints: [{address: 127.0.0.1, "
                                f"ports: {{http: 9, https: {self.outside.ports['cnn']}}}}}]\n")
            task = task.replace("        mode: SIMPLE # initiates HTTPS for connections to edition.cnn.com\n",
                                f"        mode: SIMPLE\n        caCertificates: {outside_ca}\n")
            self.gateway = ProxyProcess(task, "--cert-dir", str(certs["istio-egressgateway-service-account"]),
                                        "--labels", "istio=egressgateway,app=istio-egressgateway",
                                        "--service", "istio-egressgateway",
                                        "--service-account", "istio-egressgateway-service-account",
                                        gateway_ports=(80,))
            self.procs.append(self.gateway)
            mesh = task + "\n---\n" + EGRESS_SERVICE % self.gateway.ports[80]
            self.sleep = ProxyProcess(mesh, "--cert-dir", str(certs["sleep"]), "--labels", "app=sleep",
                                      "--service", "sleep", "--service-account", "sleep")
            self.procs.append(self.sleep)
            for proc in self.procs:
                proc.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.outside is not None:
            self.outside.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def egress():
    mesh = EgressMesh()
    yield mesh
    mesh.stop()


def test_http_to_edition_cnn_leaves_through_the_egress_gateway_as_https(egress):
    """curl http://edition.cnn.com/politics from the sleep sidecar: 200 from the outside
    server over TLS (SNI edition.cnn.com), after an ISTIO_MUTUAL hop to the gateway."""
    resp = get(egress.sleep.outbound_port, "/politics", "edition.cnn.com")
    assert resp.status == 200, resp.body
    assert resp.json()["sni"] == "edition.cnn.com" and resp.json()["path"] == "/politics"
    assert '"GET /politics HTTP/2" 200' in egress.gateway.access_log()   # h2 over mTLS, as the task shows
    stats = egress.sleep.admin_get("/stats")
    handshakes = [line for line in stats.splitlines()
                  if line.startswith("cluster.outbound|80|cnn|istio-egressgateway") and ".ssl.handshake:" in line]
    assert handshakes and int(handshakes[0].rsplit(": ", 1)[1]) > 0, handshakes


def test_the_egress_gateway_refuses_callers_without_a_mesh_certificate(egress):
    """ISTIO_MUTUAL: a client that is not in the mesh gets no answer from the gateway port."""
    import ssl
    context = ssl._create_unverified_context()

    class ForHost:
        def wrap_socket(self, sock):
            return context.wrap_socket(sock, server_hostname="edition.cnn.com")
    try:
        status = get(egress.gateway.ports[80], "/politics", "edition.cnn.com", tls=ForHost()).status
    except (ssl.SSLError, OSError):
        status = 0
    assert status == 0


def test_the_http_egress_task_routes_mesh_traffic_through_the_gateway(upstreams):
    """The egress-gateway task's HTTP variant: the sidecar's route for `mesh` sends
    edition.cnn.com to the egress gateway, whose route for itself sends it outside."""
    task = (SAMPLES / "egress-gateway-http.yaml").read_text().replace(
        "  resolution: DNS\n", "  resolution: STATIC\n  endpoints: [{address: 127.0.0.1, "
        f"ports: {{http-port: {upstreams.ports['echo']}, https: 9}}}}]\n")
    gateway = ProxyProcess(task, "--labels", "istio=egressgateway,app=istio-egressgateway",
                           "--service", "istio-egressgateway", gateway_ports=(80,)).wait_ready()
    sleep = None
    try:
        egress = EGRESS_SERVICE.replace("name: http2, protocol: HTTP2", "name: http, protocol: HTTP").replace(
            "{http2: %d}", "{http: %d}") % gateway.ports[80]
        sleep = ProxyProcess(task + "\n---\n" + egress, "--labels", "app=sleep").wait_ready()
        resp = get(sleep.outbound_port, "/politics", "edition.cnn.com")
        assert resp.status == 200 and resp.json()["server"] == "echo"
        assert resp.json()["headers"]["host"] == "edition.cnn.com"
        assert '"GET /politics HTTP/1.1" 200' in gateway.access_log()
        assert f'"127.0.0.1:{gateway.ports[80]}"' in sleep.access_log()   # the sidecar's upstream: the gateway
    finally:
        if sleep is not None:
            sleep.stop()
        gateway.stop()
