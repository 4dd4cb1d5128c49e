"""`remora proxy --control URL --token T` gets its workload certificate from `remora control`'s CA.

Real processes on loopback: a control server (the CA), join tokens made with `remora token
create`, sidecars reading GET /certs and the certificate-expiry metric.
"""
from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.integration.conftest import service
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess, wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 30.0   # generous: a busy 2-core machine


@pytest.fixture(scope="module")
def control(upstreams):
    """A control server whose mesh routes `echo` to the test echo upstream; certificates live 20 s."""
    c = ControlProcess({"mesh.yaml": service("echo", [(upstreams.ports["echo"], {})])},
                       "--cert-ttl", "20s").wait_ready()
    yield c
    assert c.stop() == 0, c.stderr()


def create_token(control: ControlProcess, namespace: str, service_account: str) -> str:
    result = control.cli("token", "create", "--namespace", namespace, "--service-account", service_account)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


def sidecar(control: ControlProcess, token: str | None, namespace: str, service_account: str,
            *extra: str, ready: bool = True) -> ProxyProcess:
    """A sidecar under `control`; waits for /ready (or only for admin when `ready` is False)."""
    args = ["--access-log", "off", "--drain-seconds", "1", "--namespace", namespace,
            "--service-account", service_account, *extra]
    if token is not None:
        args += ["--token", token]
    p = ProxyProcess(None, *args, control=control.url)
    return p.wait_ready(TIMEOUT) if ready else p.wait_admin(TIMEOUT)


def certs(p: ProxyProcess) -> dict:
    return json.loads(p.admin_get("/certs"))



def echo_status(p: ProxyProcess) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", p.outbound_port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": "echo"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_token_gets_a_certificate_shown_at_certs_and_as_a_metric(control, workers):
    """With a token the sidecar holds an SVID for its namespace/service account; /certs and the expiry gauge show it."""
    p = sidecar(control, create_token(control, "shop", "web"), "shop", "web", "--workers", str(workers))
    try:
        answer = wait_until(lambda: (c := certs(p))["svid"] and c, "a certificate", p)
        svid = answer["svid"]
        assert svid["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/web"
        assert svid["not_after"].endswith("Z") and 0 < svid["expires_in_seconds"] <= 21
        assert answer["last_error"] is None
        [root] = answer["trust_bundle"]
        assert len(root["fingerprint_sha256"]) == 64 and root["subject"]
        metrics = p.admin_get("/stats/prometheus")
        expiry = [line for line in metrics.splitlines()
                  if line.startswith("remora_certificate_expiry_timestamp_seconds ")]
        assert expiry and float(expiry[0].split()[1]) == pytest.approx(time.time() + svid["expires_in_seconds"], abs=5)
        assert f"certificate issued: spiffe://cluster.local/ns/shop/sa/web serial {svid['serial']}" in p.stderr()
        if workers > 1:     # the supervisor holds the SVID and hands it to each worker
            wait_until(lambda: [w["serving_serial"] for w in certs(p)["workers"]] == [svid["serial"]] * workers,
                       "every worker serving the certificate", p)
        else:
            assert "workers" not in answer
    finally:
        assert p.stop() == 0, p.stderr()


def test_certificate_rotates_before_it_expires(control):
    """A 20 s certificate is replaced by one with a new serial at about half its life, before it expires."""
    p = sidecar(control, create_token(control, "shop", "rotating"), "shop", "rotating")
    try:
        first = wait_until(lambda: certs(p)["svid"], "a certificate", p)
        assert certs(p)["next_rotation_in_seconds"] <= 20
        second = wait_until(lambda: (s := certs(p)["svid"]) and s["serial"] != first["serial"] and s,
                            "a rotated certificate", p, timeout=60)
        assert second["spiffe_id"] == first["spiffe_id"]
        assert second["not_after"] >= first["not_after"]
    finally:
        assert p.stop() == 0, p.stderr()


def test_revoked_token_shows_the_error_and_the_sidecar_is_not_ready(control):
    """A revoked token gets no certificate: /certs names the refusal, /ready is 503 saying why,
    and plaintext traffic still flows."""
    token = create_token(control, "shop", "revoked")
    token_id = token[len("rmt_"):].split(".", 1)[0]
    assert control.cli("token", "revoke", token_id).returncode == 0
    p = sidecar(control, token, "shop", "revoked", ready=False)
    try:
        answer = wait_until(lambda: (c := certs(p))["last_error"] and c, "the CA's refusal", p)
        assert answer["svid"] is None
        assert "401" in answer["last_error"] and "revoked" in answer["last_error"]
        assert answer["next_rotation_in_seconds"] is not None
        assert "certificate request failed" in p.stderr()
        assert p.ready_status() == 503
        with pytest.raises(Exception) as error:
            p.admin_get("/ready")
        assert "waiting for the workload certificate" in error.value.read().decode()
        assert wait_until(lambda: echo_status(p) == 200, "traffic through the sidecar", p)
    finally:
        assert p.stop() == 0, p.stderr()


def test_token_for_another_identity_is_refused_by_name(control):
    """A token for another service account: the CA's identity-mismatch refusal is shown at /certs."""
    p = sidecar(control, create_token(control, "shop", "db"), "shop", "web", ready=False)
    try:
        answer = wait_until(lambda: (c := certs(p))["last_error"] and c, "the CA's refusal", p)
        assert "identity-mismatch" in answer["last_error"] and "sa/db" in answer["last_error"]
    finally:
        assert p.stop() == 0, p.stderr()


def test_without_token_certs_says_how_to_get_one(control):
    """No --token: /certs is 404 naming the flags that enable it."""
    p = sidecar(control, None, "shop", "web")
    try:
        with pytest.raises(Exception) as error:
            p.admin_get("/certs")
        assert error.value.code == 404 and "--token" in error.value.read().decode()
    finally:
        assert p.stop() == 0, p.stderr()
