"""TLS origination over loopback: the app speaks plain HTTP, the sidecar dials TLS servers.

The servers stand in for services outside the mesh (tests/integration/tls_origin_servers.py);
the YAML has the shapes of Istio's "Egress TLS Origination" task (ServiceEntry port 80 with
targetPort 443, DestinationRule portLevelSettings tls SIMPLE; mutual TLS origination with a
workloadSelector and credentialName), pointed at loopback.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile

import grpc
import pytest

from tests.integration import grpc_apps
from tests.integration.proxy_process import ProxyProcess
from tests.integration.test_mtls_outbound import get, stats
from tests.integration.tls_origin_servers import TestPki, TlsServers, server_context

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def pki():
    """A server CA, a client CA, another CA, and their certificates in a temporary directory."""
    directory = tempfile.mkdtemp(prefix="remora-tlsorig-")
    pki = TestPki(directory)
    paths = {"server_ca": pki.ca("server-ca"), "client_ca": pki.ca("client-ca"), "other_ca": pki.ca("other-ca")}
    paths["secure"] = pki.leaf("server-ca", "secure", dns=["secure.example.test", "*.wild.example.test"],
                               uris=["spiffe://partner.example/api"], ips=["127.0.0.1"])
    paths["nginx"] = pki.leaf("server-ca", "my-nginx", dns=["my-nginx.mesh-external.svc.cluster.local"])
    paths["foreign"] = pki.leaf("other-ca", "foreign", dns=["foreign.example.test"])
    paths["client"] = pki.leaf("client-ca", "sleep-client", client=True)
    credentials = os.path.join(directory, "credentials")
    os.makedirs(os.path.join(credentials, "client-credential"))
    for name, source in (("tls.crt", paths["client"][0]), ("tls.key", paths["client"][1]),
                         ("ca.crt", paths["server_ca"])):
        shutil.copy(source, os.path.join(credentials, "client-credential", name))
    paths["credentials"] = credentials
    yield paths
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def grpc_tls(pki):
    """A grpcio server behind TLS (gRPC refuses a handshake that does not negotiate ALPN h2)."""
    cert, key = pki["secure"]
    server = grpc_apps.EchoServer(workers=4)
    with open(cert, "rb") as c, open(key, "rb") as k:
        credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
    server.tls_port = server.server.add_secure_port("127.0.0.1:0", credentials)
    with server:
        yield server


@pytest.fixture(scope="module")
def servers(pki):
    s = TlsServers({
        "secure": server_context(*pki["secure"]),
        "foreign": server_context(*pki["foreign"]),
        "nginx": server_context(*pki["nginx"], client_ca=pki["client_ca"]),
        "mutual": server_context(*pki["secure"], client_ca=pki["client_ca"]),
    }).start()
    yield s
    s.stop()


def external(host: str, port: int, number: int = 80, target: bool = True, grpc: bool = False) -> str:
    """A MESH_EXTERNAL ServiceEntry shaped like Istio's edition-cnn-com one: port `number`
    sent to targetPort `port` on 127.0.0.1 (or, target=False, to endpoint port `port`);
    grpc=True: one port, protocol GRPC (HTTP/2 upstream)."""
    if grpc:
        ports = f"[{{number: {number}, name: grpc, protocol: GRPC, targetPort: {port}}}]"
        endpoint = "{address: 127.0.0.1}"
    elif target:
        ports = f"[{{number: {number}, name: http-port, protocol: HTTP, targetPort: {port}}}, " \
                "{number: 443, name: https-port, protocol: HTTPS}]"
        endpoint = "{address: 127.0.0.1}"
    else:
        ports = f"[{{name: http-port-for-tls-origination, number: {number}, protocol: HTTP}}]"
        endpoint = f"{{address: 127.0.0.1, ports: {{http-port-for-tls-origination: {port}}}}}"
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  ports: {ports}
  resolution: {"DNS" if target else "STATIC"}
  endpoints: [{endpoint}]
---
"""


def port_tls(host: str, tls: str, number: int = 80, selector: str = "") -> str:
    """A DestinationRule with portLevelSettings tls on port `number` (flow YAML `tls`)."""
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
{selector}  trafficPolicy:
    portLevelSettings:
    - port: {{number: {number}}}
      tls: {tls}
---
"""


def mesh(pki, servers, grpc_port: int) -> str:
    p = servers.ports
    ca, other = pki["server_ca"], pki["other_ca"]
    cert, key = pki["client"]
    docs = [
        # Istio sample "Egress TLS Origination" (edition-cnn-com), with our CA.
        external("secure.example.test", p["secure"]), port_tls("secure.example.test", f"{{mode: SIMPLE, caCertificates: {ca}}}"),
        # No caCertificates: the system trust store, which does not know the test CA.
        external("system.example.test", p["secure"]), port_tls("system.example.test", "{mode: SIMPLE}"),
        external("wrongca.example.test", p["secure"]), port_tls("wrongca.example.test", f"{{mode: SIMPLE, caCertificates: {other}}}"),
        external("san.example.test", p["secure"]),
        port_tls("san.example.test", f"{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [other.example.test]}}"),
        external("uri.example.test", p["secure"]),
        port_tls("uri.example.test", f"{{mode: SIMPLE, caCertificates: {ca}, sni: api.partner.example, "
                                     "subjectAltNames: ['spiffe://partner.example/api']}"),
        # No sni, no subjectAltNames: the request's host is checked (the certificate lacks it).
        external("autosan.example.test", p["secure"]), port_tls("autosan.example.test", f"{{mode: SIMPLE, caCertificates: {ca}}}"),
        external("a.wild.example.test", p["secure"]), port_tls("a.wild.example.test", f"{{mode: SIMPLE, caCertificates: {ca}}}"),
        external("skip.example.test", p["foreign"]), port_tls("skip.example.test", "{mode: SIMPLE, insecureSkipVerify: true}"),
        external("mutual.example.test", p["mutual"]),
        port_tls("mutual.example.test", f"{{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {cert}, "
                                        f"privateKey: {key}, sni: secure.example.test}}"),
        external("nocert.example.test", p["mutual"]),
        port_tls("nocert.example.test", f"{{mode: SIMPLE, caCertificates: {ca}, sni: secure.example.test}}"),
        # Istio sample "Mutual TLS origination for egress traffic" (originate-mtls-for-nginx).
        external("my-nginx.mesh-external.svc.cluster.local", p["nginx"], 31443, target=False),
        port_tls("my-nginx.mesh-external.svc.cluster.local",
                 "{mode: MUTUAL, credentialName: client-credential, sni: my-nginx.mesh-external.svc.cluster.local}",
                 31443, "  workloadSelector: {matchLabels: {app: sleep}}\n"),
        external("late.example.test", p["nginx"]),
        port_tls("late.example.test", "{mode: MUTUAL, credentialName: late-credential, "
                                      "sni: my-nginx.mesh-external.svc.cluster.local}",
                 selector="  workloadSelector: {matchLabels: {app: sleep}}\n"),
        external("nocred.example.test", p["nginx"]),
        port_tls("nocred.example.test", "{mode: MUTUAL, credentialName: absent-credential}",
                 selector="  workloadSelector: {matchLabels: {app: sleep}}\n"),
        # gRPC to a TLS server outside the mesh: explicit SNI, and auto SNI (a wildcard name).
        external("grpc.example.test", grpc_port, grpc=True),
        port_tls("grpc.example.test", f"{{mode: SIMPLE, caCertificates: {ca}, sni: secure.example.test}}"),
        external("api.wild.example.test", grpc_port, grpc=True),
        port_tls("api.wild.example.test", f"{{mode: SIMPLE, caCertificates: {ca}}}"),
    ]
    return "".join(docs)


@pytest.fixture(scope="module")
def sidecar(pki, servers, grpc_tls):
    p = ProxyProcess(mesh(pki, servers, grpc_tls.tls_port), "--credentials-dir", pki["credentials"], "--labels", "app=sleep",
                     "--access-log-format", "json", "--drain-seconds", "1").wait_ready(TIMEOUT)
    yield p
    assert p.stop() == 0, p.stderr()
    shutil.rmtree(p.dir, ignore_errors=True)


def ssl_stat(p: ProxyProcess, host: str, name: str, port: int = 80) -> int:
    return stats(p).get(f"cluster.outbound|{port}||{host}.ssl.{name}", 0)


def flags(p: ProxyProcess, host: str) -> list[str]:
    return [r["response_flags"] for r in map(json.loads, filter(None, p.access_log().splitlines()))
            if r.get("authority") == host]


def test_simple_tls_origination_answers_the_plaintext_request(sidecar, servers):
    """SIMPLE with caCertificates: the app's plain HTTP reaches the TLS server (targetPort), SNI = Host, ALPN http/1.1."""
    status, body = get(sidecar.outbound_port, "secure.example.test", "/politics")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["server"] == "secure" and seen["path"] == "/politics"
    assert seen["sni"] == "secure.example.test" and seen["alpn"] == "http/1.1"
    assert seen["client_cn"] is None
    assert ssl_stat(sidecar, "secure.example.test", "handshake") >= 1
    [cluster] = [c for c in json.loads(sidecar.admin_get("/clusters?format=json"))
                 if c["name"] == "outbound|80||secure.example.test"]
    assert [e["tls_mode"] for e in cluster["endpoints"]] == ["SIMPLE"]
    assert cluster["endpoints"][0]["address"] == f"127.0.0.1:{servers.ports['secure']}"


@pytest.mark.parametrize("host", ["grpc.example.test", "api.wild.example.test"])
def test_grpc_origination_negotiates_h2(sidecar, grpc_tls, host):
    """A GRPC port with SIMPLE TLS: the sidecar offers ALPN h2 (as Istio does for an HTTP/2
    cluster), so a grpcio TLS server, which requires it, answers calls made in plaintext to
    the sidecar; explicit SNI and auto SNI (connections per request host) both work."""
    channel = grpc_apps.channel(sidecar.outbound_port, host)
    try:
        call = grpc_apps.method(channel, "unary_unary", "Unary")
        assert [call(b"tls-%d" % i, timeout=15) for i in range(3)] == [b"tls-0", b"tls-1", b"tls-2"]
    finally:
        channel.close()
    assert 1 <= ssl_stat(sidecar, host, "handshake") <= 3
    assert ssl_stat(sidecar, host, "connection_error") == 0


def test_connections_are_reused_across_requests(sidecar):
    """A second request on the same host rides the pooled TLS connection (no new handshake)."""
    assert get(sidecar.outbound_port, "secure.example.test")[0] == 200
    before = ssl_stat(sidecar, "secure.example.test", "handshake")
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.outbound_port, timeout=15)
    try:
        for _ in range(3):
            conn.request("GET", "/", headers={"Host": "secure.example.test"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
    finally:
        conn.close()
    assert ssl_stat(sidecar, "secure.example.test", "handshake") - before <= 1


def test_without_ca_certificates_the_system_trust_store_decides(sidecar, servers):
    """No caCertificates: verified against the system CAs, which refuse the test CA: 503 UF, never plaintext."""
    status, body = get(sidecar.outbound_port, "system.example.test")
    assert status == 503 and b"CERTIFICATE_VERIFY_FAILED" in body, body
    assert flags(sidecar, "system.example.test")[-1].startswith("UF")
    assert ssl_stat(sidecar, "system.example.test", "fail_verify_error") >= 1
    assert ssl_stat(sidecar, "system.example.test", "connection_error") >= 1


def test_a_server_from_another_ca_is_refused(sidecar):
    """caCertificates that did not sign the server's certificate: 503 UF, ssl.fail_verify_error."""
    status, body = get(sidecar.outbound_port, "wrongca.example.test")
    assert status == 503 and b"TLS error" in body, body
    assert flags(sidecar, "wrongca.example.test")[-1].startswith("UF")
    assert ssl_stat(sidecar, "wrongca.example.test", "fail_verify_error") >= 1


def test_subject_alt_names_mismatch_is_refused(sidecar):
    """subjectAltNames the certificate does not carry: 503 UF, ssl.fail_verify_san, the names in the reason."""
    status, body = get(sidecar.outbound_port, "san.example.test")
    assert status == 503 and b"other.example.test" in body and b"secure.example.test" in body, body
    assert flags(sidecar, "san.example.test")[-1].startswith("UF")
    assert ssl_stat(sidecar, "san.example.test", "fail_verify_san") >= 1
    assert ssl_stat(sidecar, "san.example.test", "handshake") == 0


def test_uri_subject_alt_name_and_explicit_sni(sidecar, servers):
    """A URI SAN matches exactly; an explicit sni is sent instead of the Host."""
    status, body = get(sidecar.outbound_port, "uri.example.test")
    assert status == 200, body
    assert json.loads(body)["sni"] == "api.partner.example"


def test_without_sni_and_sans_the_request_host_is_verified(sidecar):
    """Istio's auto SAN validation: a certificate without the Host's name is refused (fail_verify_san); a wildcard SAN covers one label."""
    status, body = get(sidecar.outbound_port, "autosan.example.test")
    assert status == 503 and b"autosan.example.test" in body, body
    assert ssl_stat(sidecar, "autosan.example.test", "fail_verify_san") >= 1
    status, body = get(sidecar.outbound_port, "a.wild.example.test")
    assert status == 200 and json.loads(body)["sni"] == "a.wild.example.test", body


def test_insecure_skip_verify_accepts_any_server(sidecar):
    """insecureSkipVerify: a certificate from an unknown CA is accepted (and still TLS)."""
    status, body = get(sidecar.outbound_port, "skip.example.test")
    assert status == 200 and json.loads(body)["server"] == "foreign", body


def test_mutual_presents_the_client_certificate_files(sidecar):
    """MUTUAL with clientCertificate/privateKey: the server, which requires a client certificate, sees ours."""
    status, body = get(sidecar.outbound_port, "mutual.example.test")
    assert status == 200, body
    assert json.loads(body)["client_cn"] == "sleep-client"
    # Without our certificate the server refuses; with TLS 1.3 the client learns it on its
    # first read, so this is a reset after the handshake rather than a handshake failure.
    status, body = get(sidecar.outbound_port, "nocert.example.test")
    assert status == 503, body


def test_credential_name_from_the_credentials_dir(sidecar, servers):
    """Istio's mutual TLS origination sample: workloadSelector + credentialName read from --credentials-dir."""
    status, body = get(sidecar.outbound_port, "my-nginx.mesh-external.svc.cluster.local:31443")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["client_cn"] == "sleep-client" and seen["sni"] == "my-nginx.mesh-external.svc.cluster.local"
    [cluster] = [c for c in json.loads(sidecar.admin_get("/clusters?format=json"))
                 if c["name"] == "outbound|31443||my-nginx.mesh-external.svc.cluster.local"]
    assert cluster["endpoints"][0]["tls_mode"] == "MUTUAL"


def test_missing_credential_fails_closed(sidecar, servers):
    """A credentialName with no files: 503 UF naming it; the server never gets a request."""
    before = list(servers.seen["nginx"])
    status, body = get(sidecar.outbound_port, "nocred.example.test", "/never")
    assert status == 503 and b"absent-credential" in body, body
    assert flags(sidecar, "nocred.example.test")[-1].startswith("UF")
    assert ssl_stat(sidecar, "nocred.example.test", "connection_error") >= 1
    assert "/never" not in servers.seen["nginx"][len(before):]


def test_a_credential_written_later_is_used_by_the_next_connection(sidecar, pki):
    """credentialName files that appear after the start are read on the next connection: 503 UF before, 200 after."""
    status, body = get(sidecar.outbound_port, "late.example.test")
    assert status == 503 and b"late-credential" in body, body
    late = os.path.join(pki["credentials"], "late-credential")
    os.makedirs(late)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        shutil.copy(os.path.join(pki["credentials"], "client-credential", name), os.path.join(late, name))
    status, body = get(sidecar.outbound_port, "late.example.test")
    assert status == 200 and json.loads(body)["client_cn"] == "sleep-client", body


def test_missing_ca_file_refuses_the_config(pki, servers):
    """A caCertificates file that does not exist: the sidecar refuses the config, naming resource and field."""
    text = external("gone.example.test", servers.ports["secure"]) + port_tls(
        "gone.example.test", "{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}")
    p = ProxyProcess(text)
    try:
        assert p.proc.wait(TIMEOUT) == 1
        err = p.stderr()
        assert "DestinationRule/default/gone.example.test" in err, err
        assert "spec.trafficPolicy.portLevelSettings[0].tls.caCertificates" in err, err
        assert "cannot use CA file /nonexistent/ca.pem: no such file" in err, err
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
        try:
            p.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(p.dir, ignore_errors=True)
