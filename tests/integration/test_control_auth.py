"""The control server's admin API needs its admin token; the sidecars' endpoints do not."""
from __future__ import annotations

import json
import os
import stat

import pytest

from remora.certs import generate_key_and_csr
from remora.xds.admin_auth import OPEN_ROUTES
from remora.wire.protocol import Node
from remora.xds.server import ControlServer, ControlSettings
from tests.integration.conftest import service, virtual_service
from tests.integration.control_process import ControlProcess
from tests.integration.xds_client import XdsTestClient

BASE = service("reviews", [(18080, {"version": "v1"})])
OPERATOR_TOKEN = "operator-chosen-admin-token-0123456789"

# Every admin endpoint, with a request that would change or reveal something if it got through.
ADMIN_CALLS = [
    ("POST", "/v1/apply?source=x.yaml", virtual_service("reviews", "name: sneaky"), "POST /v1/apply"),
    ("GET", "/v1/resources", None, "GET /v1/resources"),
    ("GET", "/v1/resources/se/default/reviews", None, "GET /v1/resources/{kind}/{namespace}/{name}"),
    ("DELETE", "/v1/resources/vs/default/reviews", None, "DELETE /v1/resources/{kind}/{namespace}/{name}"),
    ("GET", "/v1/status", None, "GET /v1/status"),
    ("GET", "/v1/sidecars/any/config_dump", None, "GET /v1/sidecars/{node}/config_dump"),
    ("POST", "/v1/tokens", json.dumps({"namespace": "default", "service_account": "admin"}), "POST /v1/tokens"),
    ("GET", "/v1/tokens", None, "GET /v1/tokens"),
    ("DELETE", "/v1/tokens/{id}", None, "DELETE /v1/tokens/{id}"),
]


@pytest.fixture(scope="module")
def control():
    c = ControlProcess({"base.yaml": BASE}).wait_ready()
    yield c
    assert c.stop() == 0, c.stderr()


def unauthorized(control: ControlProcess, endpoint: str, reason: str) -> float:
    prefix = f'remora_control_unauthorized_total{{endpoint="{endpoint}",reason="{reason}"}} '
    return next((float(line.split()[-1]) for line in control.metrics().splitlines() if line.startswith(prefix)), 0.0)


def snapshot(control: ControlProcess) -> tuple:
    """What an unauthorized request must not change: resources, version and tokens."""
    resources = control.request("GET", "/v1/resources")[1]
    return resources["version"], resources["items"], control.request("GET", "/v1/tokens")[1]


def test_every_admin_endpoint_refuses_a_missing_or_wrong_token_and_changes_nothing(control):
    """No token, a wrong token or another scheme: 401 JSON naming what is wrong, counted, nothing changed."""
    assert control.apply(virtual_service("reviews", "name: a"))[0] == 200
    status, created = control.request("POST", "/v1/tokens", json.dumps({"namespace": "default",
                                                                         "service_account": "reviews"}))
    assert status == 200
    before = snapshot(control)
    attempts = {"missing": {}, "wrong": {"Authorization": "Bearer rma_not-the-admin-token-at-all"},
                "malformed": {"Authorization": f"Basic {control.admin_token}"}}
    for method, path, body, endpoint in ADMIN_CALLS:
        path = path.replace("{id}", created["id"])
        for reason, headers in attempts.items():
            counted = unauthorized(control, endpoint, reason)
            status, answer = control.request(method, path, body, auth=False, headers=headers)
            assert status == 401, (method, path, reason, answer)
            assert answer["reason"] == f"admin-token-{reason}", answer
            if reason == "missing":
                assert "Authorization: Bearer" in answer["error"] and "admin-token" in answer["error"]
            assert control.admin_token not in json.dumps(answer)   # a misplaced token is not echoed
            assert unauthorized(control, endpoint, reason) == counted + 1
    assert snapshot(control) == before
    assert "sneaky" not in json.dumps(before)


def test_sidecar_endpoints_need_no_admin_token(control):
    """/healthz, /metrics, the trust bundle and certificate signing (with a join token) answer without one."""
    assert control.request("GET", "/healthz", auth=False) == (200, "ok\n")
    assert control.request("GET", "/metrics", auth=False)[0] == 200
    status, bundle = control.request("GET", "/v1/trust-bundle", auth=False)
    assert status == 200 and bundle["trust_bundle"]
    token = control.request("POST", "/v1/tokens", json.dumps({"namespace": "default",
                                                                "service_account": "ratings"}))[1]["token"]
    _, csr = generate_key_and_csr("spiffe://cluster.local/ns/default/sa/ratings")
    status, answer = control.request("POST", "/v1/certificates", json.dumps({"csr": csr, "token": token}), auth=False)
    assert status == 200 and answer["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/ratings"
    status, answer = control.request("GET", "/nothing-here", auth=False)
    assert status == 404


async def test_sidecar_stream_needs_no_admin_token(control):
    """A sidecar's /v1/xds stream connects, registers and syncs with no Authorization header."""
    c = await XdsTestClient(control.url, Node(id="auth-test-sidecar")).connect()
    try:
        responses = await c.sync()
        assert responses
        control.wait_until(lambda: control.sidecar("auth-test-sidecar"), what="registration")
    finally:
        await c.close()


def test_every_route_but_the_sidecar_ones_is_guarded(tmp_path):
    """Deny by default: each route the server registers is either a sidecar/probe route or needs the token."""
    os.mkdir(tmp_path / "config")
    server = ControlServer(ControlSettings(config_dir=str(tmp_path / "config"), state_dir=str(tmp_path / "s")),
                           log=lambda _: None)
    server.load()
    try:
        keys = set()
        for route in server.app().router.routes():
            if route.method != "HEAD":
                keys.add(f"{route.method} {route.resource.canonical}")
        guarded = {endpoint for *_, endpoint in ADMIN_CALLS}
        assert keys == guarded | {" ".join(r) for r in OPEN_ROUTES}
        assert not guarded & {" ".join(r) for r in OPEN_ROUTES}
    finally:
        server.ca.close()


def test_cli_takes_the_token_from_env_file_flag_or_local_state_dir(control, tmp_path):
    """`remora get` works with $REMORA_ADMIN_TOKEN, --admin-token-file, --admin-token or --state-dir."""
    token_file = tmp_path / "admin"
    token_file.write_text(control.admin_token + "\n")
    ways = [
        control.cli("get", "se", auth=True),
        control.cli("get", "se", "--admin-token-file", str(token_file), auth=False),
        control.cli("get", "se", "--admin-token", control.admin_token, auth=False),
        control.cli("get", "se", "--state-dir", control.state_dir, auth=False),
    ]
    for result in ways:
        assert result.returncode == 0 and "reviews" in result.stdout, result.stderr


def test_cli_without_or_with_a_wrong_token_says_where_the_token_is(control, tmp_path):
    """A 401 exits 1 naming <state-dir>/admin-token and the ways to pass it; a refused token names its source."""
    missing = control.cli("apply", "-f", "-", stdin=virtual_service("reviews", "name: x"), auth=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "no admin token was given" in missing.stderr and "<state-dir>/admin-token" in missing.stderr
    assert "--admin-token-file" in missing.stderr and "$REMORA_ADMIN_TOKEN" in missing.stderr
    wrong = control.cli("token", "create", "--namespace", "default", "--service-account", "x",
                        env={"REMORA_ADMIN_TOKEN": "rma_wrong-wrong-wrong-wrong"})
    assert wrong.returncode == 1 and "the admin token from $REMORA_ADMIN_TOKEN was refused" in wrong.stderr
    assert "rmt_" not in wrong.stdout
    absent = control.cli("status", "--admin-token-file", str(tmp_path / "nope"), auth=False)
    assert absent.returncode == 1 and f"{tmp_path / 'nope'}: no such file" in absent.stderr


def test_state_dir_token_is_private_and_stable_across_restarts(tmp_path):
    """<state-dir>/admin-token is 0600 and the same after a restart; the old token keeps working."""
    control = ControlProcess({"base.yaml": BASE}).wait_ready()
    try:
        path = os.path.join(control.state_dir, "admin-token")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        token = control.admin_token
        assert token.startswith("rma_") and token not in control.stderr()
        control.restart()
        assert control.admin_token == token
        assert control.cli("status", "--admin-token", token, auth=False).returncode == 0
    finally:
        control.stop()


def test_operator_token_file_is_used_and_rotates_without_restart(tmp_path):
    """--admin-token-file: its token is the one; no state-dir token is made; a rewritten file takes over."""
    token_file = tmp_path / "token"
    token_file.write_text(OPERATOR_TOKEN + "\n")
    control = ControlProcess({"base.yaml": BASE}, "--admin-token-file", str(token_file)).wait_ready()
    try:
        assert control.request("GET", "/v1/status", headers={})[0] == 200
        assert not os.path.exists(os.path.join(control.state_dir, "admin-token"))
        rotated = OPERATOR_TOKEN[::-1]
        tmp = tmp_path / ".token.new"
        tmp.write_text(rotated)
        os.replace(tmp, token_file)   # as a Secret update lands: a whole new file
        control.wait_until(lambda: control.request("GET", "/v1/status")[0] == 200
                           and control.request("GET", "/v1/status", auth=False, headers={
                               "Authorization": f"Bearer {OPERATOR_TOKEN}"})[0] == 401,
                           what="the rotated token to take over")
    finally:
        control.stop()


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("short", "at least 16")])
def test_unusable_operator_token_file_stops_the_server(tmp_path, content, message):
    """A missing or weak --admin-token-file stops `remora control` with exit 1 naming the file."""
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    control = ControlProcess({}, "--admin-token-file", str(token_file))
    try:
        assert control.proc.wait(30) == 1
        assert f"admin token: {token_file}" in control.stderr() and message in control.stderr()
    finally:
        control.stop()


def test_without_state_dir_the_token_is_printed_once_and_works(tmp_path):
    """No --state-dir and no file: a token made in memory, shown once on stderr, guards the API."""
    control = ControlProcess({"base.yaml": BASE}, state=False).wait_ready()
    try:
        assert control.stderr().count("is shown once") == 1
        assert control.request("GET", "/v1/status")[0] == 200
        assert control.request("GET", "/v1/status", auth=False)[0] == 401
    finally:
        control.stop()
