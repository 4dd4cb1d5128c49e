"""Outbound mTLS while certificates rotate: from the control server's CA (--token) and from files (--cert-dir).

Each request through the sidecar reaches an mTLS test server that closes the connection
after answering, so every request is a new handshake and shows which client certificate
the sidecar presented at that moment.
"""
from __future__ import annotations

import http.client
import json
import os
import time

import pytest

from remora.certs.ca import CertificateAuthority
from remora.proxy.security.tls import write_cert_dir
from remora.xds.ca_service import CA_SUBDIR
from tests.integration.control_process import ControlProcess
from tests.integration.mtls_peers import MtlsServers, issue, tls_service
from tests.integration.proxy_process import ProxyProcess
from tests.integration.proxy_process import wait_until as proxy_wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 60.0


def get(p: ProxyProcess) -> tuple[int, dict | bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", p.outbound_port, timeout=15)
    try:
        conn.request("GET", "/", headers={"Host": "ratings"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if resp.status == 200 else body)
    finally:
        conn.close()


def wait_until(predicate, what: str, p: ProxyProcess, timeout: float = TIMEOUT):
    return proxy_wait_until(predicate, what, p, timeout)


def certs(p: ProxyProcess) -> dict:
    return json.loads(p.admin_get("/certs"))


def mesh_with_server(control: ControlProcess):
    """Servers whose certificates come from the control server's own CA; `ratings` routed to one."""
    ca = CertificateAuthority.load_or_create(os.path.join(control.state_dir, CA_SUBDIR), "cluster.local")
    servers = MtlsServers({"ratings": (issue(ca, "default", "ratings", ttl=3600), ca.trust_bundle())},
                          close=frozenset({"ratings"})).start()
    status, answer = control.apply(tls_service("ratings", servers.ports["ratings"], "ratings"))
    assert status == 200, answer
    return servers


def token_sidecar(control: ControlProcess, service_account: str) -> ProxyProcess:
    result = control.cli("token", "create", "--namespace", "shop", "--service-account", service_account)
    assert result.returncode == 0, result.stderr
    p = ProxyProcess(None, "--token", result.stdout.splitlines()[-1], "--namespace", "shop",
                     "--service-account", service_account, "--access-log", "off", "--drain-seconds", "1",
                     control=control.url)
    p.wait_ready(TIMEOUT)
    wait_until(lambda: get(p)[0] == 200, "the routed service", p)
    return p


def test_rotation_under_continuous_traffic_loses_no_request():
    """Certificates of 6 s rotate about every 3 s: requests over ~3 rotations all succeed, with several client serials."""
    control = ControlProcess(None, "--cert-ttl", "6s").wait_ready()
    servers = mesh_with_server(control)
    p = token_sidecar(control, "web")
    try:
        serials, failures, total = set(), [], 0
        first = certs(p)["svid"]["serial"]
        deadline = time.time() + 40
        while time.time() < deadline and (len(serials) < 3 or total < 50):
            status, seen = get(p)
            total += 1
            if status != 200:
                failures.append((status, seen))
                continue
            assert seen["client_id"] == "spiffe://cluster.local/ns/shop/sa/web"
            serials.add(seen["client_serial"])
            time.sleep(0.02)
        assert failures == [], failures[:3]
        assert len(serials) >= 2, f"one client certificate over {total} requests"
        assert certs(p)["svid"]["serial"] != first
    finally:
        assert p.stop() == 0, p.stderr()
        servers.stop()
        control.stop()


def test_ca_down_during_rotation_keeps_the_old_certificate_until_the_ca_returns():
    """With the CA stopped, rotation fails, /certs shows the error, traffic continues; after a restart a new certificate arrives."""
    control = ControlProcess(None, "--cert-ttl", "20s").wait_ready()
    servers = mesh_with_server(control)
    p = token_sidecar(control, "web")
    try:
        before = certs(p)["svid"]["serial"]
        assert control.stop() == 0, control.stderr()
        answer = wait_until(lambda: (c := certs(p))["last_error"] and c, "a failed rotation", p)
        assert answer["svid"]["serial"] == before
        status, seen = get(p)
        assert status == 200 and seen["client_serial"] == before
        control.start_again()
        wait_until(lambda: (s := certs(p)["svid"]) and s["serial"] != before, "a new certificate", p)
        assert certs(p)["last_error"] is None
        status, seen = get(p)
        assert status == 200 and seen["client_serial"] != before
    finally:
        assert p.stop() == 0, p.stderr()
        servers.stop()
        control.stop()


def test_cert_dir_is_re_read_when_its_files_change(tmp_path):
    """Rewriting --cert-dir's files rotates the certificate: /certs and new connections show the new serial."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    servers = MtlsServers({"ratings": (issue(ca, "default", "ratings"), ca.trust_bundle())},
                          close=frozenset({"ratings"})).start()
    directory = write_cert_dir(tmp_path / "certs", issue(ca, "shop", "web"), ca.trust_bundle())
    p = ProxyProcess(tls_service("ratings", servers.ports["ratings"], "ratings"), "--cert-dir", str(directory),
                     "--access-log", "off", "--drain-seconds", "1", "--workers", "2").wait_ready(TIMEOUT)
    try:
        first = certs(p)
        assert first["svid"]["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/web"
        assert first["source"] == str(directory) and first["last_error"] is None
        assert get(p)[1]["client_serial"] == first["svid"]["serial"]
        write_cert_dir(directory, issue(ca, "shop", "web"), ca.trust_bundle())
        assert [w["serving_serial"] for w in first["workers"]] == [first["svid"]["serial"]] * 2
        second = wait_until(lambda: (s := certs(p)["svid"]) and s["serial"] != first["svid"]["serial"] and s,
                            "the re-read certificate", p, timeout=30)
        # The supervisor hands it to the workers after re-reading: /certs lists what each serves.
        wait_until(lambda: {w["serving_serial"] for w in certs(p)["workers"]} == {second["serial"]},
                   "both workers serving the re-read certificate", p, timeout=30)
        # Both workers got it: every new connection presents the new certificate.
        seen = {get(p)[1]["client_serial"] for _ in range(10)}
        assert seen == {second["serial"]}
    finally:
        assert p.stop() == 0, p.stderr()
        servers.stop()
