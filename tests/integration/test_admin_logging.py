"""`/logging` on the admin port and `--log-level`: an operator turns on rbac, jwt and http
debug lines on a running sidecar (as `istioctl proxy-config log` does with Envoy) to see why
requests are refused, and turns them off again; bad names are refused whole.

The sidecar runs Istio's authz-jwt task (tests/jwt_tokens.py: `jwt-example` + `require-jwt`)
in front of an echo app, so a request without a token is denied by RBAC and a malformed
token by JWT.
"""
from __future__ import annotations

import shutil
import urllib.error
import urllib.request

import pytest

from tests.integration.client import RawClient
from tests.integration.proxy_process import ProxyProcess, wait_until
from tests.jwt_tokens import Keys, jwt_example, require_jwt

pytestmark = pytest.mark.integration

IDENTITY = ("--service", "httpbin", "--namespace", "foo", "--service-account", "httpbin",
            "--labels", "app=httpbin")
DENIED_LINE = "remora proxy: rbac: enforced denied, matched policy none"


def mesh() -> str:
    return jwt_example(jwks=Keys().jwks()) + "---\n" + require_jwt()


def post(sidecar: ProxyProcess, query: str) -> tuple[int, str]:
    request = urllib.request.Request(sidecar.admin(f"/logging{query}"), data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def get(sidecar: ProxyProcess, token: str | None = None) -> int:
    client = RawClient(sidecar.inbound_port)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return client.request("GET", "/headers", "httpbin.foo", headers).status
    finally:
        client.close()


def levels(sidecar: ProxyProcess) -> dict[str, str]:
    lines = sidecar.admin_get("/logging").splitlines()
    assert lines[0] == "active loggers:"
    return dict(line.strip().split(": ") for line in lines[1:])


def start(upstreams, *flags: str) -> ProxyProcess:
    return ProxyProcess(mesh(), *IDENTITY, "--drain-seconds", "1", *flags,
                        inbound_app_port=upstreams.ports["echo"]).wait_ready()


def stop(sidecar: ProxyProcess) -> None:
    assert sidecar.stop() == 0, sidecar.stderr()
    shutil.rmtree(sidecar.dir, ignore_errors=True)


def test_debug_lines_are_turned_on_and_off_on_a_running_sidecar(upstreams):
    """rbac:debug shows each denial with the deciding policy and the request's attributes;
    jwt and http debug show the JWT failure and the local reply; level=warning silences them."""
    sidecar = start(upstreams)
    try:
        assert levels(sidecar)["rbac"] == "info" and "remora proxy: outbound" in sidecar.stderr()
        assert get(sidecar) == 403
        assert "rbac:" not in sidecar.stderr()

        status, body = post(sidecar, "?rbac=debug")
        assert status == 200 and "  rbac: debug\n" in body and "  jwt: info\n" in body
        assert get(sidecar) == 403
        line = wait_until(lambda: next((x for x in sidecar.stderr().splitlines() if x.startswith(DENIED_LINE)), None),
                          "the rbac debug line", sidecar)
        assert "method='GET'" in line and "path='/headers'" in line and "host='httpbin.foo'" in line
        assert "remora proxy: admin: log levels changed: rbac:debug" in sidecar.stderr()

        assert post(sidecar, "?paths=jwt:debug,http:debug")[0] == 200
        assert get(sidecar, "invalidToken") == 401
        wait_until(lambda: "remora proxy: jwt: GET httpbin.foo/headers from 127.0.0.1 refused 401: Jwt is not "
                           "in the form of Header.Payload.Signature" in sidecar.stderr(), "the jwt debug line", sidecar)
        wait_until(lambda: "remora proxy: http: local reply 401 JWT to GET httpbin.foo/headers" in sidecar.stderr(),
                   "the http local-reply line", sidecar)

        assert post(sidecar, "?level=warning")[0] == 200
        assert set(levels(sidecar).values()) == {"warning"}
        denials = sidecar.stderr().count(DENIED_LINE)
        assert get(sidecar) == 403
        assert post(sidecar, "?rbac=debug")[0] == 200     # a later line proves the 403's would have been written
        assert get(sidecar) == 403
        wait_until(lambda: sidecar.stderr().count(DENIED_LINE) == denials + 1, "one more rbac line", sidecar)
    finally:
        stop(sidecar)


def test_bad_requests_change_nothing(upstreams):
    """An unknown level or logger is 400 naming it, with nothing applied (not even the valid
    part); changing levels with GET is 405."""
    sidecar = start(upstreams)
    try:
        status, body = post(sidecar, "?rbac=loud")
        assert status == 400 and "unknown log level 'loud'" in body and "trace, debug, info" in body
        status, body = post(sidecar, "?rbac=debug&filter=debug")
        assert status == 400 and "unknown logger 'filter'" in body and "rbac" in body
        status, body = post(sidecar, "?paths=jwt:debug,rbac")
        assert status == 400 and "'rbac': expected COMPONENT:LEVEL" in body
        try:
            urllib.request.urlopen(sidecar.admin("/logging?level=debug"), timeout=5)
            raise AssertionError("GET /logging?level=debug was accepted")
        except urllib.error.HTTPError as error:
            assert error.code == 405
        assert set(levels(sidecar).values()) == {"info"}
        assert "/logging" in sidecar.admin_get("/help")
    finally:
        stop(sidecar)


def test_workers_all_take_the_change_and_the_start_level(upstreams):
    """--log-level warning hides the start line; with --workers 2 a POST reaches every worker,
    so each denial on a new connection (spread over both) gets its line."""
    sidecar = start(upstreams, "--workers", "2", "--log-level", "warning")
    try:
        assert "remora proxy: outbound" not in sidecar.stderr()
        assert set(levels(sidecar).values()) == {"warning"}
        assert post(sidecar, "?rbac=debug")[0] == 200
        for _ in range(12):
            assert get(sidecar) == 403
        wait_until(lambda: sidecar.stderr().count(DENIED_LINE) == 12, "12 rbac lines from both workers", sidecar)
    finally:
        stop(sidecar)
