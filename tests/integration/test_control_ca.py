"""`remora control` as the mesh CA: join tokens from the CLI, CSRs signed over HTTP, the SVIDs usable for mTLS."""
from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys

import pytest

from remora.certs import Svid, generate_key_and_csr, peer_spiffe_id
from tests.integration.control_process import ControlProcess
from tests.integration.upstreams import free_port
from tests.unit.test_certs_ca import key_bytes, make_ca_cert, pem

TD = "cluster.local"
TOKEN = re.compile(r"rmt_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module")
def control():
    c = ControlProcess().wait_ready()
    yield c
    assert c.stop() == 0, c.stderr()


def create_token(control: ControlProcess, namespace: str, service_account: str, *extra: str) -> str:
    """`remora token create`; the token is stdout's last line."""
    result = control.cli("token", "create", "--namespace", namespace, "--service-account", service_account, *extra)
    assert result.returncode == 0, result.stderr
    token = result.stdout.splitlines()[-1]
    assert TOKEN.fullmatch(token), result.stdout
    return token


def sign(control: ControlProcess, spiffe_id: str, token: str):
    """(status, answer, key) of one signing request for a fresh key whose CSR names `spiffe_id`."""
    key, csr = generate_key_and_csr(spiffe_id)
    status, answer = control.request("POST", "/v1/certificates", json.dumps({"csr": csr, "token": token}))
    return status, answer, key


def svid_for(control: ControlProcess, namespace: str, service_account: str) -> tuple[Svid, list[str]]:
    spiffe_id = f"spiffe://{TD}/ns/{namespace}/sa/{service_account}"
    status, answer, key = sign(control, spiffe_id, create_token(control, namespace, service_account))
    assert status == 200, answer
    return Svid.from_pems(answer["certificate"], answer["chain"], key), answer["trust_bundle"]


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[str | None, str | None]:
    """Run a TLS handshake in memory; return (the ID the client saw, the ID the server saw)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c, s = client.wrap_bio(c_in, c_out), server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    for _ in range(20):
        for side in (c, s):
            try:
                side.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return peer_spiffe_id(c), peer_spiffe_id(s)
    raise AssertionError("handshake did not finish")


def metric(control: ControlProcess, line_start: str) -> float:
    for line in control.metrics().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def test_token_from_cli_gets_an_svid_that_works_for_mutual_tls(control):
    """A token made by `remora token create` gets SVIDs that authenticate both ends of mTLS by SPIFFE ID."""
    web, bundle = svid_for(control, "shop", "web")
    db, _ = svid_for(control, "shop", "db")
    assert str(web.spiffe_id) == f"spiffe://{TD}/ns/shop/sa/web"
    assert bundle == control.get("/v1/trust-bundle")["trust_bundle"]
    seen_by_client, seen_by_server = handshake(web.to_ssl_context(False, bundle), db.to_ssl_context(True, bundle))
    assert (seen_by_client, seen_by_server) == (str(db.spiffe_id), str(web.spiffe_id))


def test_csr_for_another_identity_is_refused_with_400(control):
    """A CSR naming another service account than the token's is refused (400, the CA's reason)."""
    token = create_token(control, "shop", "web")
    status, answer, _ = sign(control, f"spiffe://{TD}/ns/shop/sa/admin", token)
    assert status == 400 and answer["reason"] == "csr-identity-mismatch", answer
    assert "sa/admin" in answer["error"]


def test_revoked_token_is_refused_with_401(control):
    """After `remora token revoke ID` the token gets 401 saying it was revoked; the list shows it revoked."""
    token = create_token(control, "shop", "web")
    token_id = token[4:20]
    revoked = control.cli("token", "revoke", token_id)
    assert (revoked.returncode, revoked.stdout) == (0, f"join token {token_id} revoked\n"), revoked.stderr
    status, answer, _ = sign(control, f"spiffe://{TD}/ns/shop/sa/web", token)
    assert status == 401 and "revoked" in answer["error"], answer
    listed = control.cli("token", "list").stdout
    row = next(line for line in listed.splitlines() if line.startswith(token_id))
    assert row.split()[-1] == "revoked" and token[21:] not in listed
    again = control.cli("token", "revoke", "0123456789abcdef")
    assert again.returncode == 1 and "unknown join token" in again.stderr


def test_expired_token_is_refused_with_401(control):
    """A token past its TTL gets 401 saying it expired."""
    token = create_token(control, "shop", "web", "--ttl", "1s")
    spiffe_id = f"spiffe://{TD}/ns/shop/sa/web"
    status, answer, _ = control.wait_until(lambda: (r := sign(control, spiffe_id, token))[0] == 401 and r,
                                           what="the token to expire")
    assert "expired" in answer["error"], answer


def test_bad_bodies_are_refused_with_400_and_413(control):
    """A body that is not a JSON object is 400; one over 64 KiB is 413."""
    status, answer = control.request("POST", "/v1/certificates", "not json")
    assert status == 400 and "JSON" in answer["error"]
    status, answer = control.request("POST", "/v1/certificates", json.dumps({"csr": "x" * (70 << 10)}))
    assert status == 413, answer


def test_metrics_count_issued_certificates_and_refusals(control):
    """certificates_issued_total and ca_errors_total{reason} count, and the CA expiry gauge is set."""
    issued = metric(control, "remora_control_certificates_issued_total")
    unknown = metric(control, 'remora_control_ca_errors_total{reason="token-unknown"}')
    svid_for(control, "shop", "web")
    sign(control, f"spiffe://{TD}/ns/shop/sa/web", "rmt_0123456789abcdef." + "A" * 43)
    assert metric(control, "remora_control_certificates_issued_total") == issued + 1
    assert metric(control, 'remora_control_ca_errors_total{reason="token-unknown"}') == unknown + 1
    assert metric(control, "remora_control_ca_cert_expiry_timestamp_seconds") > 0


def test_ca_root_and_tokens_survive_a_restart():
    """With --state-dir a restarted control server keeps its root and honours tokens made before."""
    control = ControlProcess().wait_ready()
    try:
        token = create_token(control, "shop", "web")
        before = control.get("/v1/trust-bundle")["trust_bundle"]
        control.restart()
        assert control.get("/v1/trust-bundle")["trust_bundle"] == before
        status, answer, _ = sign(control, f"spiffe://{TD}/ns/shop/sa/web", token)
        assert status == 200 and answer["trust_bundle"] == before, answer
    finally:
        control.stop()


def test_plugin_ca_signs_and_its_root_is_the_bundle(tmp_path):
    """--ca-cert/--ca-key/--ca-chain: SVIDs are issued by the intermediate and chain to the operator's root."""
    root = make_ca_cert("Corp Root")
    inter = make_ca_cert("Mesh Intermediate", issuer=root)
    (tmp_path / "ca-cert.pem").write_bytes(pem(inter[0]))
    (tmp_path / "ca-key.pem").write_bytes(key_bytes(inter[1]))
    (tmp_path / "cert-chain.pem").write_bytes(pem(inter[0]) + pem(root[0]))
    control = ControlProcess(None, "--ca-cert", str(tmp_path / "ca-cert.pem"), "--ca-key",
                             str(tmp_path / "ca-key.pem"), "--ca-chain", str(tmp_path / "cert-chain.pem"),
                             "--cert-ttl", "1h").wait_ready()
    try:
        web, bundle = svid_for(control, "shop", "web")
        db, _ = svid_for(control, "shop", "db")
        assert bundle == [pem(root[0]).decode()]
        assert web.cert.issuer == inter[0].subject and web.chain[0] == inter[0]
        assert 3600 <= web.lifetime <= 3600 + 120
        assert handshake(web.to_ssl_context(False, bundle), db.to_ssl_context(True, bundle))[1] == str(web.spiffe_id)
    finally:
        control.stop()


def test_without_state_dir_a_warning_says_certificates_do_not_survive():
    """Without --state-dir the server still signs, and warns that the CA is temporary."""
    control = ControlProcess(state=False).wait_ready()
    try:
        svid_for(control, "shop", "web")
        assert "will not survive a restart" in control.stderr()
    finally:
        control.stop()


@pytest.mark.parametrize("extra, message", [
    (["--cert-ttl", "2200h"], "outside (0, 90 days]"),
    (["--ca-cert", "/nonexistent/ca.pem"], "--ca-key"),
    (["--ca-cert", "/nonexistent/ca.pem", "--ca-key", "/nonexistent/key.pem"], "/nonexistent/ca.pem"),
])
def test_bad_ca_flags_stop_the_server_with_a_clear_error(tmp_path, extra, message):
    """A TTL over 90 days or an incomplete / missing plug-in CA stops `remora control` with the reason."""
    result = subprocess.run([sys.executable, "-m", "remora", "control", "--config-dir", str(tmp_path),
                             "--listen", f"127.0.0.1:{free_port()}", *extra], capture_output=True, text=True, timeout=60)
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
