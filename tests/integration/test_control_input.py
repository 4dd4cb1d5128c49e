"""Input checks of `remora control` over real sockets: resource names, request bodies, token TTLs."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.integration.conftest import service, virtual_service
from tests.integration.control_process import ControlProcess

BASE = service("reviews", [(18080, {"version": "v1"})])
LATIN1 = "# r\xe9sum\xe9\n".encode("latin-1")   # 0xe9 then 's': not UTF-8


def named(name: str, namespace: str | None = None) -> str:
    """A valid VirtualService for host reviews, with the given metadata.name (and namespace)."""
    text = virtual_service("reviews", "name: all").replace("metadata: {name: reviews}", "metadata: {name: NAME}")
    meta = {"name": name, **({"namespace": namespace} if namespace is not None else {})}
    return text.replace("metadata: {name: NAME}", f"metadata: {json.dumps(meta)}")


@pytest.fixture(scope="module")
def control():
    c = ControlProcess({"base.yaml": BASE}).wait_ready()
    yield c
    assert c.stop() == 0, c.stderr()


def post_bytes(control: ControlProcess, path: str, body: bytes) -> tuple[int, bytes]:
    """(status, raw body) of a POST with exactly these bytes and the admin token."""
    req = urllib.request.Request(f"{control.url}{path}", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {control.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def applied_names(control: ControlProcess) -> list[str]:
    return [f"{i['namespace']}/{i['name']}" for i in control.get("/v1/resources?kind=vs")["items"]]


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "has space", "UPPER", "x" * 10_000, "-a", "a."])
def test_apply_refuses_a_name_kubernetes_would_refuse(control, name):
    """metadata.name must be a DNS-1123 subdomain: 400 naming the field and the resource; nothing is stored."""
    before = control.status()["config"]["version"]
    status, answer = control.apply(named(name), source="bad.yaml")
    assert status == 400, answer
    assert answer["errors"] and all(": metadata.name: " in e for e in answer["errors"]), answer
    assert answer["errors"][0].startswith("bad.yaml: VirtualService/default/")
    assert len(answer["errors"][0]) < 600   # a 10,000-character name is not echoed whole
    assert control.status()["config"]["version"] == before
    assert applied_names(control) == []


@pytest.mark.parametrize("namespace", ["default/a", "..", "Prod", "n" * 64, "a.b"])
def test_apply_refuses_a_namespace_kubernetes_would_refuse(control, namespace):
    """metadata.namespace must be a DNS-1123 label (at most 63 characters): 400 naming the field."""
    status, answer = control.apply(named("b", namespace), source="bad.yaml")
    assert status == 400, answer
    assert any(": metadata.namespace: " in e for e in answer["errors"]), answer
    assert applied_names(control) == []


def test_namespace_with_a_slash_cannot_replace_another_resource(control):
    """Namespace `default/a` + name `b` and namespace `default` + name `a/b` are both refused, never one key."""
    assert control.apply(named("a/b"))[0] == 400
    status, answer = control.apply(named("b", "default/a"))
    assert status == 400 and "configured" not in json.dumps(answer), answer
    assert applied_names(control) == []


def test_a_valid_253_character_name_is_accepted(control):
    """The bounds are Kubernetes': a 253-character subdomain name and a 63-character namespace are fine."""
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    status, answer = control.apply(named(name, "n" * 63))
    assert status == 200, answer
    status, _ = control.request("DELETE", f"/v1/resources/vs/{'n' * 63}/{name}")
    assert status == 200


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("namespace, name, field", [
    ("default", "..%2F..%2Fetc%2Fpasswd", "metadata.name"),
    ("default", "a%2Fb", "metadata.name"),
    ("default", "has%20space", "metadata.name"),
    ("default", "x" * 300, "metadata.name"),
    ("default%2Fa", "b", "metadata.namespace"),
    ("Default", "b", "metadata.namespace"),
])
def test_path_parameters_are_checked_like_names(control, method, namespace, name, field):
    """GET and DELETE /v1/resources/{kind}/{namespace}/{name} answer 400 naming the field for a bad name, not 404."""
    status, answer = control.request(method, f"/v1/resources/vs/{namespace}/{name}")
    assert status == 400, answer
    assert f"{field}: " in answer["error"] and answer["error"].startswith("VirtualService/"), answer
    assert len(answer["error"]) < 600


def test_long_kind_and_token_id_are_not_echoed_whole(control):
    """A 4,000-character kind or token id in a path (aiohttp's request line limit is 8 KiB) is 400 with a short message."""
    status, answer = control.request("GET", f"/v1/resources/{'k' * 4_000}/default/x")
    assert status == 400 and answer["error"].startswith("unknown kind ") and len(answer["error"]) < 600, status
    status, answer = control.request("DELETE", f"/v1/tokens/{'z' * 4_000}")
    assert status == 400 and answer["reason"] == "token-malformed" and len(answer["error"]) < 600, status


def test_list_namespace_query_is_checked(control):
    """GET /v1/resources?namespace=... with a namespace no resource can have is 400 naming it."""
    status, answer = control.request("GET", "/v1/resources?namespace=" + urllib.parse.quote("a/b"))
    assert status == 400 and "metadata.namespace" in answer["error"], answer


def test_cli_get_and_delete_keep_a_slash_inside_the_name(control):
    """`remora get vs a/b` and `remora delete vs a/b -n x/y` exit 1 with the server's one-line 400, not a 404 of another path."""
    got = control.cli("get", "vs", "a/b")
    assert got.returncode == 1 and "metadata.name" in got.stderr, got.stderr
    deleted = control.cli("delete", "vs", "b", "-n", "x/y")
    assert deleted.returncode == 1 and "metadata.namespace" in deleted.stderr, deleted.stderr


# ---- bodies that are not UTF-8 ----------------------------------------------------------------

def test_non_utf8_apply_body_is_400_with_one_line(control):
    """A body that is not UTF-8 is 400 with a one-line error naming the bad byte, not 500."""
    status, raw = post_bytes(control, "/v1/apply?source=latin1.yaml", named("ok").encode() + LATIN1)
    assert status == 400, raw
    answer = json.loads(raw)
    assert "not UTF-8" in answer["error"] and "\n" not in answer["error"] and "0xe9" in answer["error"], answer
    assert answer["error"].startswith("latin1.yaml: ")
    assert applied_names(control) == []


def test_cli_apply_of_a_non_utf8_file_prints_one_line(control, tmp_path):
    """`remora apply -f FILE` with a non-UTF-8 file exits 1 with one line on stderr, no traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(named("ok").encode() + LATIN1)
    result = control.cli("apply", "-f", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: {path}: not UTF-8") and "0xe9" in result.stderr


def test_cli_apply_of_non_utf8_stdin_prints_one_line(control):
    """`remora apply -f -` reading bytes that are not UTF-8 exits 1 with one line on stderr."""
    import subprocess
    import sys
    env = {**os.environ, "REMORA_CONTROL": control.url, "REMORA_ADMIN_TOKEN": control.admin_token}
    result = subprocess.run([sys.executable, "-m", "remora", "apply", "-f", "-"], input=LATIN1,
                            capture_output=True, env=env, timeout=60)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("error: <stdin>: not UTF-8")


def test_cli_prints_a_one_line_error_for_a_400_answer(control, tmp_path):
    """`remora apply -f FILE` with a bad name exits 1: the error line, then the field's line."""
    path = tmp_path / "bad.yaml"
    path.write_text(named("a/b"))
    result = control.cli("apply", "-f", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "error: invalid metadata.name or metadata.namespace", lines
    assert lines[1].startswith(f"  {path}: VirtualService/default/'a/b': metadata.name: ")


# ---- join-token TTLs and the records stored ------------------------------------------------

def tokens_file(control: ControlProcess) -> str:
    return os.path.join(control.state_dir, "ca", "join-tokens.json")


def token_ids(control: ControlProcess) -> list[str]:
    status, answer = control.request("GET", "/v1/tokens")
    assert status == 200, answer
    return [t["id"] for t in answer["tokens"]]


@pytest.mark.parametrize("ttl", [1e12, 10 ** 400, 0, -5, "1000000h", 365 * 24 * 3600 + 1])
def test_token_ttl_out_of_bounds_is_400_and_nothing_is_stored(control, ttl):
    """POST /v1/tokens with a TTL outside (0, 1 year] is 400 naming ttl, and no token is stored."""
    before = token_ids(control)
    body = '{"namespace": "default", "service_account": "web", "ttl": %s}' % json.dumps(ttl)
    status, answer = control.request("POST", "/v1/tokens", body)
    assert status == 400, answer
    assert answer["error"].startswith("ttl: ") and answer["reason"] == "bad-request", answer
    assert token_ids(control) == before


def test_token_ttl_of_one_year_is_accepted(control):
    """The bound itself is allowed: a token for 8760h is created and listed."""
    status, answer = control.request("POST", "/v1/tokens",
                                     '{"namespace": "default", "service_account": "web", "ttl": "8760h"}')
    assert status == 200, answer
    assert answer["id"] in token_ids(control)


def test_cli_token_create_with_a_huge_ttl_fails_and_list_still_works(control):
    """`remora token create --ttl 1000000000000` exits 1 with one line naming ttl; `token list` keeps working."""
    result = control.cli("token", "create", "--namespace", "default", "--service-account", "web",
                         "--ttl", "1000000000000")
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr.startswith("error: ttl: ") and result.stderr.count("\n") == 1, result.stderr
    listed = control.cli("token", "list")
    assert listed.returncode == 0, listed.stderr


def test_a_broken_stored_record_is_reported_never_500_even_after_restart():
    """A stored token record with an unprintable expiry (written by an older version) is listed apart as broken,
    never honoured, dropped by revoke; GET /v1/tokens and `remora token list` answer, before and after a restart."""
    c = ControlProcess().wait_ready()
    try:
        good = c.cli("token", "create", "--namespace", "default", "--service-account", "web")
        assert good.returncode == 0, good.stderr
        token = good.stdout.splitlines()[-1]
        good_id = token[4:20]
        with open(tokens_file(c)) as f:
            data = json.load(f)
        bad = dict(data["tokens"][0], id="0123456789abcdef")
        bad["expires_at"] = bad["created_at"] + 1e12   # what `--ttl 1e12` stored before the bound
        data["tokens"].append(bad)
        data["tokens"].append({"id": "fedcba9876543210", "namespace": "default"})   # fields missing
        with open(tokens_file(c), "w") as f:
            json.dump(data, f)
        for attempt in ("running", "restarted"):
            status, answer = c.request("GET", "/v1/tokens")
            assert status == 200, (attempt, answer)
            assert [t["id"] for t in answer["tokens"]] == [good_id]
            assert [(b["id"], b["index"]) for b in answer["broken"]] == [("0123456789abcdef", 1),
                                                                          ("fedcba9876543210", 2)]
            assert "expires_at" in answer["broken"][0]["error"]
            listed = c.cli("token", "list")
            assert listed.returncode == 0 and good_id in listed.stdout, listed.stderr
            assert "0123456789abcdef" in listed.stderr and "Traceback" not in listed.stderr
            if attempt == "running":
                c.restart()
                c.wait_ready()
        status, answer = c.request("DELETE", "/v1/tokens/0123456789abcdef")
        assert status == 200, answer
        assert [b["id"] for b in c.request("GET", "/v1/tokens")[1]["broken"]] == ["fedcba9876543210"]
        assert token_ids(c) == [good_id]
    finally:
        assert c.stop() == 0, c.stderr()


def test_apply_with_consecutive_errors_is_accepted_with_istioctls_warning(control):
    """POST /v1/apply of a DestinationRule with outlierDetection.consecutiveErrors is 200 with istioctl's deprecation warning."""
    dr = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-cb}\n"
          "spec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {consecutiveErrors: 1}\n")
    status, answer = control.apply(dr, source="cb.yaml")
    assert status == 200, answer
    assert any("spec.trafficPolicy.outlierDetection.consecutiveErrors: outlier detection consecutive errors is "
               "deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead" in w
               for w in answer["warnings"]), answer
    assert control.request("DELETE", "/v1/resources/dr/default/reviews-cb")[0] == 200
