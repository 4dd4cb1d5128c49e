"""`remora gateway --credentials-from-kubernetes`: HTTPS servers whose credentialName is a
Secret of the gateway's namespace, read from the Kubernetes API double (tests/kube_api.py)
over real sockets, by a real gateway process; a Python ssl client checks the served
certificate through rotation, deletion and corruption of the Secret.
"""
from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509

from remora.kube.secrets import SECRET
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_gateway_ingress import SAMPLES, get, service
from tests.integration.tls_origin_servers import TestPki
from tests.kube_api import ThreadedKubeApi

pytestmark = pytest.mark.integration
NAMESPACE = "istio-system"


def tls_secret(name: str, cert: str, key: str, corrupt: bool = False) -> dict:
    data = {"tls.crt": Path(cert).read_bytes(), "tls.key": b"not a key" if corrupt else Path(key).read_bytes()}
    return {"metadata": {"name": name, "namespace": NAMESPACE}, "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def serial_of(cert_path: str) -> int:
    return x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).serial_number


class SecretIngress:
    """The secure-ingress hosts sample, its two credentials as Secrets in the API double."""

    def __init__(self, upstreams) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="remora-gw-secrets-"))
        self.api = ThreadedKubeApi([SECRET])
        self.gateway = None
        try:
            self.pki = TestPki(str(self.tmp))
            self.ca = self.pki.ca("example.com")
            self.certs = {}
            for host in ("httpbin", "helloworld"):
                self.put(host)
            self.mesh = "\n---\n".join([service("httpbin", 8000, upstreams.ports["echo"]),
                                        service("helloworld", 5000, upstreams.ports["v2"]),
                                        (SAMPLES / "secure-ingress-hosts.yaml").read_text()])
            self.gateway = self.start(self.mesh)
            self.gateway.wait_ready()
        except BaseException:
            self.stop()
            raise

    def start(self, mesh: str) -> ProxyProcess:
        return ProxyProcess(mesh, "--credentials-from-kubernetes", "--kubeconfig", self.api.kubeconfig(),
                            "--namespace", NAMESPACE, gateway_ports=(443,))

    def put(self, host: str, version: int = 1, corrupt: bool = False) -> str:
        """Issue a new certificate for `host` and store it as `<host>-credential`; its path."""
        cert, key = self.pki.leaf("example.com", f"{host}-{version}.example.com", dns=[f"{host}.example.com"])
        self.api.put("Secret", tls_secret(f"{host}-credential", cert, key, corrupt))
        self.certs[host] = cert
        return cert

    def served_serial(self, host: str, gateway: ProxyProcess | None = None) -> int:
        """Handshake with SNI `host`, verifying against the CA; the serial of the certificate served."""
        context = ssl.create_default_context(cafile=self.ca)
        with socket.create_connection(("127.0.0.1", (gateway or self.gateway).ports[443]), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    def request(self, host: str, path: str):
        context = ssl.create_default_context(cafile=self.ca)

        class ForHost:
            def wrap_socket(self, sock):
                return context.wrap_socket(sock, server_hostname=host)
        return get(self.gateway.ports[443], path, host, tls=ForHost())

    def wait_serial(self, host: str, serial: int, timeout: float = 10.0, gateway: ProxyProcess | None = None) -> None:
        """Until `host` is served with `serial`; handshakes refused meanwhile (a Secret being
        restored is read by the gateway's watch some milliseconds later) count as not yet."""
        deadline = time.time() + timeout
        while True:
            try:
                if self.served_serial(host, gateway) == serial:
                    return
            except (ssl.SSLError, ConnectionError):
                pass
            assert time.time() < deadline, f"{host}: the new certificate is not served"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.api.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ingress(upstreams):
    made = SecretIngress(upstreams)
    yield made
    made.stop()


def test_the_secret_certificate_is_served_and_routes(ingress):
    """A client verifying against the CA gets each host's Secret certificate, and its route."""
    assert ingress.served_serial("httpbin.example.com") == serial_of(ingress.certs["httpbin"])
    assert ingress.served_serial("helloworld.example.com") == serial_of(ingress.certs["helloworld"])
    assert ingress.request("httpbin.example.com", "/status/418").status == 418


def test_config_dump_shows_where_each_credential_came_from(ingress):
    """/config_dump names the Secret, the serial and expiry of each credentialName."""
    dump = json.loads(ingress.gateway.admin_get("/config_dump"))["gateway"]["credentials"]
    web = dump["credentials"]["httpbin-credential"]
    assert web["origin"].startswith(f"secret {NAMESPACE}/httpbin-credential (kubernetes.io/tls")
    assert int(web["serial"], 16) == serial_of(ingress.certs["httpbin"]) and web["not_after"].endswith("Z")
    assert "Kubernetes" in dump["source"]


def test_a_rotated_secret_is_served_without_a_restart(ingress):
    """Rotating the Secret in the API: new handshakes get the new certificate, same process."""
    pid = ingress.gateway.proc.pid
    new = ingress.put("httpbin", version=2)
    ingress.wait_serial("httpbin.example.com", serial_of(new))
    assert ingress.request("httpbin.example.com", "/status/418").status == 418
    assert ingress.gateway.proc.pid == pid and ingress.gateway.proc.poll() is None


def test_a_deleted_or_corrupt_secret_refuses_handshakes_of_its_server_only(ingress):
    """Secret deleted or its key corrupt: handshakes for that host fail, the other host still
    serves; the Secret restored serves again."""
    ingress.api.delete("Secret", NAMESPACE, "helloworld-credential")
    deadline = time.time() + 10
    while True:
        try:
            ingress.served_serial("helloworld.example.com")
        except (ssl.SSLError, ConnectionError):
            break
        assert time.time() < deadline, "a deleted Secret's certificate is still served"
        time.sleep(0.05)
    assert ingress.request("httpbin.example.com", "/status/418").status == 418
    assert "credentialName helloworld-credential: no Secret istio-system/helloworld-credential: " \
           "handshakes of the servers using it are refused" in ingress.gateway.stderr()
    restored = ingress.put("helloworld", version=3)
    ingress.wait_serial("helloworld.example.com", serial_of(restored))
    ingress.put("helloworld", version=4, corrupt=True)
    deadline = time.time() + 10
    while True:
        try:
            ingress.served_serial("helloworld.example.com")
        except (ssl.SSLError, ConnectionError):
            break
        assert time.time() < deadline, "a corrupt Secret's old certificate is still served"
        time.sleep(0.05)
    stats = ingress.gateway.admin_get("/stats")
    assert "gateway.credentials.refused_handshakes" in stats
    dump = json.loads(ingress.gateway.admin_get("/config_dump"))["gateway"]["credentials"]
    assert dump["credentials"]["helloworld-credential"]["state"] == "refused"
    restored = ingress.put("helloworld", version=5)
    ingress.wait_serial("helloworld.example.com", serial_of(restored))


def test_a_gateway_made_before_its_secret_serves_it_once_it_is_created(ingress):
    """Started with a credentialName whose Secret does not exist yet (Gateway applied before the Secret):
    the gateway starts, that host's handshakes are refused and the other host serves; the Secret
    created, the host serves its certificate with no restart or new push."""
    ingress.api.delete("Secret", NAMESPACE, "helloworld-credential")
    gateway = ingress.start(ingress.mesh)
    try:
        gateway.wait_ready()
        assert ingress.served_serial("httpbin.example.com", gateway) == serial_of(ingress.certs["httpbin"])
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ingress.served_serial("helloworld.example.com", gateway)
        assert f"credentialName helloworld-credential: no Secret {NAMESPACE}/helloworld-credential" in gateway.stderr()
        dump = json.loads(gateway.admin_get("/config_dump"))["gateway"]["credentials"]
        assert dump["credentials"]["helloworld-credential"]["state"] == "refused"
        created = ingress.put("helloworld", version=7)
        ingress.wait_serial("helloworld.example.com", serial_of(created), gateway=gateway)
        assert gateway.proc.poll() is None
    finally:
        gateway.stop()
        ingress.put("helloworld", version=8)


def test_no_kubernetes_configuration_stops_the_gateway_with_the_reason(ingress, tmp_path):
    """--kubeconfig naming no file: the gateway exits 1 saying why, before serving anything."""
    gateway = ProxyProcess(ingress.mesh, "--credentials-from-kubernetes", "--kubeconfig",
                           str(tmp_path / "absent"), gateway_ports=(443,))
    try:
        assert gateway.proc.wait(30) == 1
        assert "--credentials-from-kubernetes: no kubeconfig at" in gateway.stderr(), gateway.stderr()
    finally:
        gateway.stop()


def test_each_worker_reads_the_secrets(ingress):
    """With --workers 2 every worker serves the Secret's certificate, and each sees a rotation."""
    gateway = ProxyProcess(ingress.mesh, "--credentials-from-kubernetes", "--kubeconfig", ingress.api.kubeconfig(),
                           "--namespace", NAMESPACE, "--workers", "2", gateway_ports=(443,))
    try:
        gateway.wait_ready()
        ingress.gateway, first = gateway, ingress.gateway
        try:
            current = serial_of(ingress.certs["httpbin"])
            assert {ingress.served_serial("httpbin.example.com") for _ in range(8)} == {current}
            new = serial_of(ingress.put("httpbin", version=6))
            ingress.wait_serial("httpbin.example.com", new)
            # Each worker runs its own watch: the other may read the Secret a moment later.
            deadline = time.time() + 10
            while (seen := {ingress.served_serial("httpbin.example.com") for _ in range(8)}) != {new}:
                assert time.time() < deadline, f"workers still serve {seen}, not only {new}"
                time.sleep(0.1)
            stats = gateway.admin_get("/stats")
            expiry = [line for line in stats.splitlines() if "httpbin-credential.expiry_seconds" in line]
            assert expiry and int(expiry[0].split(":")[1]) < time.time() + 3 * 86400, expiry
        finally:
            ingress.gateway = first
    finally:
        gateway.stop()


def test_a_worker_refusing_the_config_stops_the_gateway(ingress):
    """--workers 2 and a server whose cipherSuites OpenSSL does not know (checked by the workers, which
    read the Secrets): the workers refuse the config and the gateway exits 1."""
    mesh = ingress.mesh
    for name in ("httpbin", "helloworld"):   # servers of one port share one set of ciphers
        mesh = mesh.replace(f"credentialName: {name}-credential",
                            f"credentialName: {name}-credential\n      cipherSuites: [NO-SUCH-CIPHER]")
    assert mesh != ingress.mesh
    gateway = ProxyProcess(mesh,
                           "--credentials-from-kubernetes", "--kubeconfig", ingress.api.kubeconfig(),
                           "--namespace", NAMESPACE, "--workers", "2", gateway_ports=(443,))
    try:
        assert gateway.proc.wait(60) == 1
        err = gateway.stderr()
        assert "cipherSuites" in err and "NO-SUCH-CIPHER" in err and "Traceback" not in err, err
    finally:
        gateway.stop()
