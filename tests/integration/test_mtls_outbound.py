"""Outbound mutual TLS over loopback: a sidecar with --cert-dir dialling mTLS test servers.

The servers stand in for a peer sidecar's inbound listener (tests/integration/mtls_peers.py):
they require the client's certificate and report what the handshake showed.
"""
from __future__ import annotations

import http.client
import json
import time

import pytest

from remora.certs.ca import CertificateAuthority
from remora.proxy.security.tls import write_cert_dir
from tests.integration.conftest import destination_rule, service
from tests.integration.mtls_peers import MtlsServers, issue, tls_service
from tests.integration.proxy_process import ProxyProcess

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The mesh CA, a foreign CA, and the client sidecar's certificate directory (ns shop, sa web)."""
    base = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.load_or_create(base / "ca", "cluster.local")
    foreign = CertificateAuthority.load_or_create(base / "foreign", "cluster.local")
    cert_dir = write_cert_dir(base / "client", issue(ca, "shop", "web"), ca.trust_bundle())
    return ca, foreign, str(cert_dir)


@pytest.fixture(scope="module")
def servers(pki):
    ca, foreign, _ = pki
    bundle = ca.trust_bundle()
    s = MtlsServers({
        "ratings": (issue(ca, "default", "ratings"), bundle),
        "imposter": (issue(ca, "default", "imposter"), bundle),
        "foreign": (issue(foreign, "default", "ratings"), foreign.trust_bundle()),
    }).start()
    yield s
    s.stop()


def mesh(servers, upstreams) -> str:
    ports = servers.ports
    return "".join([
        tls_service("ratings", ports["ratings"], "ratings"),
        tls_service("imposter", ports["imposter"], "ratings"),     # presents sa/imposter
        tls_service("foreign", ports["foreign"], "ratings"),       # a certificate from another CA
        tls_service("plain", upstreams.ports["echo"], "ratings"),  # labelled, but the DR says DISABLE
        destination_rule("plain", "{tls: {mode: DISABLE}}"),
        service("required", [(upstreams.ports["echo"], {})]),      # unlabelled, DR ISTIO_MUTUAL
        destination_rule("required", "{tls: {mode: ISTIO_MUTUAL}}"),
    ])


@pytest.fixture(scope="module")
def sidecar(pki, servers, upstreams):
    p = ProxyProcess(mesh(servers, upstreams), "--cert-dir", pki[2], "--access-log-format", "json",
                     "--drain-seconds", "1").wait_ready(TIMEOUT)
    yield p
    assert p.stop() == 0, p.stderr()


def get(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def stats(p: ProxyProcess) -> dict[str, int]:
    out = {}
    for line in p.admin_get("/stats").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def log_records(p: ProxyProcess, host: str) -> list[dict]:
    return [r for r in map(json.loads, filter(None, p.access_log().splitlines())) if r.get("authority") == host]


def test_labelled_endpoint_is_dialled_with_mutual_tls(sidecar, servers):
    """An endpoint labelled tlsMode=istio gets mTLS: the server sees our SPIFFE ID, ALPN remora, Istio's SNI."""
    status, body = get(sidecar.outbound_port, "ratings")
    assert status == 200, body
    seen = json.loads(body)
    assert seen["client_id"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert seen["alpn"] == "remora"
    assert seen["sni"] == "outbound_.80_._.ratings.default.svc.cluster.local"
    counters = stats(sidecar)
    assert counters["cluster.outbound|80||ratings.default.svc.cluster.local.ssl.handshake"] >= 1
    [cluster] = [c for c in json.loads(sidecar.admin_get("/clusters?format=json"))
                 if c["name"] == "outbound|80||ratings.default.svc.cluster.local"]
    assert [e["tls_mode"] for e in cluster["endpoints"]] == ["ISTIO_MUTUAL"]
    assert "::tls_mode::ISTIO_MUTUAL" in sidecar.admin_get("/clusters")


def test_destination_principal_is_the_verified_server_identity(sidecar):
    """Istio's destination_principal on the source side is the server's verified SPIFFE ID."""
    assert get(sidecar.outbound_port, "ratings")[0] == 200
    metrics = sidecar.admin_get("/stats/prometheus")
    lines = [line for line in metrics.splitlines() if line.startswith("istio_requests_total{")
             and 'destination_service="ratings.default.svc.cluster.local"' in line]
    assert lines and all('destination_principal="spiffe://cluster.local/ns/default/sa/ratings"' in line
                         for line in lines)


def test_wrong_server_identity_is_refused_with_one_clear_log_line(sidecar):
    """A server presenting another identity than the endpoint's account: 503 UF, a reset reason, a log line."""
    status, body = get(sidecar.outbound_port, "imposter")
    assert status == 503
    assert b"secure naming" in body and b"spiffe://cluster.local/ns/default/sa/imposter" in body
    [record] = log_records(sidecar, "imposter")
    assert record["response_flags"].split(",")[0] == "UF"   # retried like any connect failure (URX)
    assert get(sidecar.outbound_port, "imposter")[0] == 503
    lines = [line for line in sidecar.stderr().splitlines() if "secure naming failed" in line]
    assert len(lines) == 1, lines     # logged once per endpoint and identity, not per request
    assert ("cluster outbound|80||imposter.default.svc.cluster.local" in lines[0]
            and "endpoint 127.0.0.1:" in lines[0]
            and "expected spiffe://cluster.local/ns/default/sa/ratings" in lines[0]
            and "got spiffe://cluster.local/ns/default/sa/imposter" in lines[0])
    assert stats(sidecar)["cluster.outbound|80||imposter.default.svc.cluster.local.ssl.fail_verify_san"] >= 2


def test_server_from_a_foreign_ca_fails_the_handshake(sidecar):
    """A certificate that does not chain to the bundle: 503 UF with a TLS error, counted as ssl.connection_error."""
    status, body = get(sidecar.outbound_port, "foreign")
    assert status == 503
    assert b"TLS error" in body
    assert log_records(sidecar, "foreign")[-1]["response_flags"].startswith("UF")
    assert stats(sidecar)["cluster.outbound|80||foreign.default.svc.cluster.local.ssl.connection_error"] >= 1


def test_destination_rule_disable_dials_plaintext(sidecar):
    """tls.mode DISABLE wins over the label: the plaintext echo server answers."""
    status, body = get(sidecar.outbound_port, "plain")
    assert status == 200 and json.loads(body)["server"] == "echo"
    [cluster] = [c for c in json.loads(sidecar.admin_get("/clusters?format=json"))
                 if c["name"] == "outbound|80||plain.default.svc.cluster.local"]
    assert cluster["endpoints"][0]["tls_mode"] == "DISABLE"


def test_istio_mutual_without_a_certificate_fails_clearly(servers, upstreams):
    """ISTIO_MUTUAL on a sidecar that has no certificate: 503 UF naming the missing certificate."""
    p = ProxyProcess(mesh(servers, upstreams), "--drain-seconds", "1").wait_ready(TIMEOUT)
    try:
        status, body = get(p.outbound_port, "required")
        assert status == 503 and b"needs this sidecar's certificate" in body
    finally:
        assert p.stop() == 0, p.stderr()


def test_two_workers_both_dial_mutual_tls(pki, servers, upstreams):
    """--workers 2 with --cert-dir: requests from both worker processes arrive over mTLS."""
    p = ProxyProcess(mesh(servers, upstreams), "--cert-dir", pki[2], "--workers", "2",
                     "--access-log", "off", "--drain-seconds", "1").wait_ready(TIMEOUT)
    try:
        prefixes, ids = set(), set()
        deadline = time.time() + TIMEOUT
        while len(prefixes) < 2 and time.time() < deadline:
            status, body = get(p.outbound_port, "ratings")   # a new connection each time
            assert status == 200, body
            seen = json.loads(body)
            ids.add(seen["client_id"])
            prefixes.add(seen["request_id"].rsplit("-", 1)[0])   # one random prefix per worker
        assert len(prefixes) == 2, "requests never reached the second worker"
        assert ids == {"spiffe://cluster.local/ns/shop/sa/web"}
    finally:
        assert p.stop() == 0, p.stderr()
