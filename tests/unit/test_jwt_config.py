"""RequestAuthentication config: loading, validation (fail closed) and jwksUri key handling."""
from __future__ import annotations

import asyncio
import json

import pytest

from remora.config.jwks import JwksError, key_sources, parse_jwks
from remora.config.loader import ConfigError, load_mesh_text
from remora.xds.jwks_fetch import FetchError, JwksFetcher, fetch_for_files, resolve_keys
from remora.xds.metrics import ControlMetrics
from remora.xds.snapshots import ScopeKey, SnapshotCache
from tests.jwt_tokens import ISSUER, Keys, jwt_example

KEYS = Keys()


def problems(spec: str, api_version: str = "security.istio.io/v1") -> dict[str, str]:
    text = f"apiVersion: {api_version}\nkind: RequestAuthentication\nmetadata: {{name: ra, namespace: foo}}\nspec:\n{spec}"
    try:
        load_mesh_text(text)
    except ConfigError as error:
        return {issue.field_path: issue.message for issue in error.issues}
    return {}


@pytest.mark.parametrize("api_version", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_both_versions_load(api_version):
    """RequestAuthentication of security.istio.io v1 and v1beta1 is a supported kind."""
    config = load_mesh_text(jwt_example(KEYS.jwks()).replace("security.istio.io/v1", api_version))
    assert [r.name for r in config.request_authentications] == ["jwt-example"]
    assert not config.warnings


def test_rule_errors_name_the_field():
    """Istio's jwtRule checks, each naming resource and field path."""
    found = problems("""  jwtRules:
  - issuer: ""
    jwksUri: ftp://keys
    audiences: [""]
    fromHeaders: [{name: ""}, {name: "bad header"}]
    fromParams: [""]
    outputClaimToHeaders: [{header: x-a, claim: ""}, {header: Host, claim: sub}]
    outputPayloadToHeader: "x y"
    timeout: soon
""")
    rule = "spec.jwtRules[0]"
    assert "issuer must be set" in found[f"{rule}.issuer"]
    assert "http or https" in found[f"{rule}.jwksUri"]
    assert "non-empty" in found[f"{rule}.audiences[0]"]
    assert "non-empty" in found[f"{rule}.fromHeaders[0].name"]
    assert "invalid header name" in found[f"{rule}.fromHeaders[1].name"]
    assert "non-empty" in found[f"{rule}.fromParams[0]"]
    assert "claim must be" in found[f"{rule}.outputClaimToHeaders[0].claim"]
    assert "proxy owns" in found[f"{rule}.outputClaimToHeaders[1].header"]
    assert "invalid header name" in found[f"{rule}.outputPayloadToHeader"]
    assert "positive duration" in found[f"{rule}.timeout"]


def test_inline_jwks_must_hold_public_signing_keys():
    """A bad inline jwks, or a symmetric (oct / HS256) key, is a config error on `jwks`."""
    bad = problems("  jwtRules: [{issuer: a, jwks: '{\"keys\": 3}'}]\n")
    assert "jwks parse error" in bad["spec.jwtRules[0].jwks"]
    oct_key = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]})
    found = problems(f"  jwtRules: [{{issuer: a, jwks: '{oct_key}'}}]\n")
    assert "HS" in found["spec.jwtRules[0].jwks"]


def test_no_key_source_needs_a_url_issuer():
    """Neither jwks nor jwksUri means OpenID discovery, which needs an http(s) issuer."""
    assert "OpenID discovery" in problems(f"  jwtRules: [{{issuer: '{ISSUER}'}}]\n")["spec.jwtRules[0].jwksUri"]
    assert problems("  jwtRules: [{issuer: 'https://accounts.example.com'}]\n") == {}


def test_target_ref_is_refused_naming_selector():
    """targetRef(s) (Gateway / waypoint attachment) cannot be enforced by a sidecar: an error."""
    found = problems("  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n  jwtRules: []\n")
    assert "use selector.matchLabels" in found["spec.targetRef"]
    both = problems("  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: s}]\n")
    assert "only one of" in both["spec.targetRef"]


def test_unknown_field_is_an_error():
    """A misspelt jwtRule field is refused, not ignored."""
    assert "spec.jwtRules[0].jwksUrl" in problems("  jwtRules: [{issuer: a, jwksUrl: 'https://k'}]\n")


def test_parse_jwks_skips_encryption_keys_and_rejects_empty_sets():
    """`use: enc` keys are skipped; a set with no signing key is refused."""
    doc = json.loads(KEYS.jwks(("rsa",)))
    doc["keys"].append({**doc["keys"][0], "use": "enc", "kid": "enc"})
    assert [k.kid for k in parse_jwks(json.dumps(doc))] == ["k-rsa"]
    with pytest.raises(JwksError):
        parse_jwks('{"keys": []}')


# ---- jwksUri keys on the control server -------------------------------------------------------

URI = "http://127.0.0.1:9/jwks.json"


def test_resolve_inlines_keys_and_keeps_the_uri():
    """Fetched keys are pushed as the rule's inline jwks; the jwksUri stays for the dump."""
    config = load_mesh_text(jwt_example(jwks_uri=URI))
    assert key_sources(config) == {URI: 5.0}
    resolved = resolve_keys(config, {URI: KEYS.jwks()})
    rule = resolved.request_authentications[0].spec.jwt_rules[0]
    assert rule.jwks == KEYS.jwks() and rule.jwks_uri == URI
    assert resolved.version == config.version
    pushed = SnapshotCache(resolved).documents(ScopeKey("foo"))["policies"]
    assert pushed[0]["spec"]["jwtRules"][0]["jwks"] == KEYS.jwks()


class _Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def test_fetcher_keeps_last_good_keys_and_counts_failures():
    """A failed refresh keeps the last good keys, logs it and counts it; changes call on_change."""
    answers = [KEYS.jwks(), FetchError("HTTP 503 from " + URI)]
    changes, log, metrics = [], _Log(), ControlMetrics()

    def fetch(source, timeout):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    fetcher = JwksFetcher(metrics, log, lambda: changes.append(1), fetch=fetch)
    fetcher.config_changed(load_mesh_text(jwt_example(jwks_uri=URI)))

    async def scenario():
        loop = asyncio.get_running_loop()
        assert await fetcher._fetch_all([URI], loop) is True
        assert await fetcher._fetch_all([URI], loop) is False

    asyncio.run(scenario())
    assert fetcher.keys[URI] == KEYS.jwks()
    assert fetcher.status()[URI]["last_error"] == "HTTP 503 from " + URI
    assert any("keeping the keys fetched at" in line for line in log)
    text = metrics.render().decode()
    assert "remora_control_jwks_resolver_network_fetch_success_total 1.0" in text
    assert "remora_control_jwks_resolver_network_fetch_fail_total 1.0" in text


def test_fetcher_never_fetched_leaves_the_rule_without_keys():
    """Never fetched: no inline keys go out (the sidecar then answers 401), and a log line says so."""
    log = _Log()

    def fetch(source, timeout):
        raise FetchError("cannot fetch " + source)

    fetcher = JwksFetcher(ControlMetrics(), log, lambda: None, fetch=fetch)
    config = load_mesh_text(jwt_example(jwks_uri=URI))
    fetcher.config_changed(config)
    asyncio.run(fetcher._fetch_all([URI], _FakeLoop()))
    assert fetcher.resolve(config).request_authentications[0].spec.jwt_rules[0].jwks is None
    assert any("no keys yet" in line for line in log)


class _FakeLoop:
    def time(self) -> float:
        return 0.0


def test_files_mode_fetch_failure_is_logged():
    """A sidecar reading files logs a jwksUri it cannot fetch and keeps the rule keyless."""
    log = _Log()
    config = load_mesh_text(jwt_example(jwks_uri="http://127.0.0.1:1/jwks.json"))
    resolved = fetch_for_files(config, log)
    assert resolved.request_authentications[0].spec.jwt_rules[0].jwks is None
    assert any("jwks fetch failed" in line for line in log)
