"""RequestAuthentication + AuthorizationPolicy end to end: a sidecar in front of an echo app.

Mirrors Istio's tasks with the same resource shapes (tests/jwt_tokens.py):
- authn-policy task ("End-user authentication"): the `jwt-example` RequestAuthentication
  alone: no token 200, an invalid token 401, a valid one 200;
- authz-jwt task ("Authorization with JWT"): `require-jwt` with
  `requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]`, then with
  `when: request.auth.claims[groups] values [group1]`: no token 403, wrong groups 403;
- jwksUri: the keys are served by a loopback HTTP server; a sidecar reading files fetches
  them at start, a sidecar fed by `remora control` gets them inline from the control server.
Keys are generated per run (cryptography); nothing leaves loopback.
"""
from __future__ import annotations

import base64
import json
import shutil
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.client import RawClient
from tests.integration.control_process import ControlProcess
from tests.integration.proxy_process import ProxyProcess
from tests.jwt_tokens import Keys, groups_claims, jwt_example, require_jwt

pytestmark = pytest.mark.integration

IDENTITY = ("--service", "httpbin", "--namespace", "foo", "--service-account", "httpbin",
            "--labels", "app=httpbin")
KEYS = Keys()


class JwksServer:
    """A loopback JWKS endpoint (the identity provider's jwksUri); counts its requests."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.status = 200
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):   # noqa: N802
                outer.hits += 1
                data = outer.body.encode()
                self.send_response(outer.status if self.path == "/jwks.json" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def jwks_server():
    server = JwksServer(KEYS.jwks())
    yield server
    server.stop()


def start_sidecar(mesh_yaml: str, app_port: int) -> ProxyProcess:
    return ProxyProcess(mesh_yaml, *IDENTITY, "--drain-seconds", "1", inbound_app_port=app_port).wait_ready()


def stop(process) -> None:
    assert process.stop() == 0, process.stderr()
    shutil.rmtree(process.dir, ignore_errors=True)


def get(sidecar: ProxyProcess, token: str | None = None, path: str = "/headers"):
    client = RawClient(sidecar.inbound_port)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return client.request("GET", path, "httpbin.foo", headers)
    finally:
        client.close()


def stats(sidecar: ProxyProcess) -> dict[str, int]:
    return {s["name"]: s["value"] for s in json.loads(sidecar.admin_get("/stats?format=json"))["stats"]}


@pytest.fixture(scope="module")
def authn_only(upstreams, jwks_server):
    """authn-policy task: jwt-example alone, keys from jwksUri, payload forwarded to the app."""
    sidecar = start_sidecar(jwt_example(jwks_uri=jwks_server.uri,
                                        extra="    outputPayloadToHeader: x-jwt-payload\n"),
                            upstreams.ports["echo"])
    yield sidecar
    stop(sidecar)


def test_no_token_passes_with_request_authentication_alone(authn_only):
    """No token: 200 (RequestAuthentication alone does not require one)."""
    r = get(authn_only)
    assert r.status == 200
    assert "x-jwt-payload" not in r.json()["headers"]


def test_invalid_token_is_401(authn_only):
    """`Authorization: Bearer invalidToken` gets Envoy's 401 and never reaches the app."""
    r = get(authn_only, "invalidToken")
    assert r.status == 401
    assert r.body == b"Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    assert r.headers["www-authenticate"].startswith('Bearer realm="http://httpbin.foo/headers"')
    assert "x-upstream" not in r.headers


def test_bad_signature_and_expired_tokens_are_401(authn_only):
    """A token signed by another key: `Jwt verification fails`; an expired one: `Jwt is expired`."""
    forged = Keys().token()
    r = get(authn_only, forged)
    assert (r.status, r.body) == (401, b"Jwt verification fails")
    r = get(authn_only, KEYS.token(exp=int(time.time()) - 3600))
    assert (r.status, r.body) == (401, b"Jwt is expired")


def test_jwt_failures_show_in_access_log_and_metrics(upstreams, jwks_server):
    """A rejected token is logged with flag JWT, Envoy's details in JSON, and response_flags="JWT" in Istio metrics."""
    sidecar = ProxyProcess(jwt_example(jwks_uri=jwks_server.uri), *IDENTITY, "--drain-seconds", "1",
                           "--access-log-format", "json", inbound_app_port=upstreams.ports["echo"]).wait_ready()
    try:
        assert get(sidecar, KEYS.token(exp=int(time.time()) - 3600)).status == 401
        assert get(sidecar).status == 200
        deadline = time.time() + 10
        lines = []
        while time.time() < deadline and len(lines) < 2:
            lines = [json.loads(line) for line in sidecar.access_log().splitlines() if line.startswith("{")]
            time.sleep(0.2)
        denied = [line for line in lines if line["response_code"] == 401]
        assert denied and denied[0]["response_flags"] == "JWT", lines
        assert denied[0]["response_code_details"] == "jwt_authn_access_denied{Jwt_is_expired}"
        assert any(line["response_code"] == 200 and line["response_flags"] == "-" for line in lines)
        prom = sidecar.admin_get("/stats/prometheus")
        assert any('response_flags="JWT"' in line and 'response_code="401"' in line
                   for line in prom.splitlines() if line.startswith("istio_requests_total")), prom
    finally:
        stop(sidecar)


def test_valid_token_reaches_the_app_with_the_payload_header(authn_only):
    """A valid token: 200; the app sees outputPayloadToHeader and not the token itself."""
    r = get(authn_only, KEYS.token())
    assert r.status == 200, r.body
    headers = r.json()["headers"]
    payload = headers["x-jwt-payload"]
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["foo"] == "bar"
    assert "authorization" not in headers


def test_jwt_authn_stats_are_exported(authn_only):
    """http.inbound.jwt_authn.allowed / denied count as Envoy's filter does."""
    before = stats(authn_only)
    get(authn_only, "invalidToken")
    get(authn_only)
    after = stats(authn_only)
    assert after["http.inbound.jwt_authn.denied"] == before["http.inbound.jwt_authn.denied"] + 1
    assert after["http.inbound.jwt_authn.allowed"] == before["http.inbound.jwt_authn.allowed"] + 1


def test_authz_jwt_task_require_jwt_and_groups(upstreams):
    """authz-jwt task: no token 403 RBAC, a token without group1 403, groups-scope token 200."""
    mesh = jwt_example(KEYS.jwks()) + "---\n" + require_jwt(groups=True)
    sidecar = start_sidecar(mesh, upstreams.ports["echo"])
    try:
        r = get(sidecar)
        assert (r.status, r.body) == (403, b"RBAC: access denied")
        assert get(sidecar, KEYS.token()).status == 403           # demo.jwt: no groups claim
        assert get(sidecar, KEYS.token(groups_claims())).status == 200
        assert get(sidecar, "invalidToken").status == 401         # authn answers before authz
        counters = stats(sidecar)
        assert counters["http.inbound.rbac.denied"] == 2
        assert counters["http.inbound.jwt_authn.denied"] == 1
    finally:
        stop(sidecar)


def test_files_sidecar_without_reachable_jwks_fails_closed(upstreams):
    """A jwksUri the sidecar cannot fetch at start: tokens get 401, no token still 200, one log line."""
    sidecar = start_sidecar(jwt_example(jwks_uri="http://127.0.0.1:1/jwks.json"), upstreams.ports["echo"])
    try:
        r = get(sidecar, KEYS.token())
        assert (r.status, r.body) == (401, b"Jwks remote fetch is failed")
        assert get(sidecar).status == 200
        assert "jwks fetch failed" in sidecar.stderr()
    finally:
        stop(sidecar)


def test_control_server_fetches_jwks_uri_and_pushes_keys(upstreams, jwks_server):
    """remora control fetches jwksUri and pushes the keys inline; the sidecar never calls the IdP."""
    mesh = jwt_example(jwks_uri=jwks_server.uri) + "---\n" + require_jwt()
    control = ControlProcess({"jwt.yaml": mesh}).wait_ready()
    sidecar = None
    try:
        sidecar = ProxyProcess(None, *IDENTITY, "--drain-seconds", "1", control=control.url,
                               inbound_app_port=upstreams.ports["echo"]).wait_ready()
        deadline = time.time() + 30
        while time.time() < deadline:
            dump = json.loads(sidecar.admin_get("/config_dump"))["inbound_security"]
            rules = [r["spec"]["jwtRules"][0] for r in dump["request_authentications"]]
            if rules and "jwks" in rules[0]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"keys never pushed: {control.stderr()}")
        assert get(sidecar).status == 403
        assert get(sidecar, KEYS.token()).status == 200
        assert get(sidecar, Keys().token()).status == 401
        status, body = control.request("GET", "/v1/status")
        assert body["jwks"][jwks_server.uri]["fetched"] is True
        with urllib.request.urlopen(f"{control.url}/metrics", timeout=5) as r:
            assert b"remora_control_jwks_resolver_network_fetch_success_total 1.0" in r.read()
    finally:
        if sidecar is not None:
            stop(sidecar)
        assert control.stop() == 0, control.stderr()
        shutil.rmtree(control.dir, ignore_errors=True)


def _wait(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_control_server_refreshes_keys_and_keeps_them_when_the_idp_fails(upstreams):
    """Key rotation reaches sidecars on refresh; a failing jwksUri keeps the last good keys, counted."""
    old, new = Keys("old"), Keys("new")
    idp = JwksServer(old.jwks())
    control = ControlProcess({"jwt.yaml": jwt_example(jwks_uri=idp.uri)}, "--jwks-refresh-interval", "0.5s").wait_ready()
    sidecar = None
    try:
        sidecar = ProxyProcess(None, *IDENTITY, "--drain-seconds", "1", control=control.url,
                               inbound_app_port=upstreams.ports["echo"]).wait_ready()
        _wait(lambda: get(sidecar, old.token()).status == 200, "the first keys")
        idp.body = new.jwks()                      # the IdP rotates its signing key
        _wait(lambda: get(sidecar, new.token()).status == 200, "the rotated keys")
        assert get(sidecar, old.token()).status == 401
        idp.status = 503                           # the IdP fails: last good keys stay
        hits = idp.hits
        _wait(lambda: idp.hits >= hits + 2, "refresh attempts")
        assert get(sidecar, new.token()).status == 200
        assert "jwks fetch failed: HTTP 503" in control.stderr()
        with urllib.request.urlopen(f"{control.url}/metrics", timeout=5) as r:
            assert b"remora_control_jwks_resolver_network_fetch_fail_total" in r.read()
        _, body = control.request("GET", "/v1/status")
        assert body["jwks"][idp.uri]["last_error"].startswith("HTTP 503")
    finally:
        if sidecar is not None:
            stop(sidecar)
        assert control.stop() == 0, control.stderr()
        shutil.rmtree(control.dir, ignore_errors=True)
        idp.stop()
