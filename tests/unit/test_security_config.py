"""Loading and validating PeerAuthentication and AuthorizationPolicy (security.istio.io)."""
from __future__ import annotations

import textwrap

import pytest

from remora.config.loader import ConfigError, build_mesh_config, load_mesh_text
from remora.config.validate_security import is_match_pattern


def resource(kind: str, spec: str, api_version: str = "security.istio.io/v1") -> str:
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    return f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: p, namespace: foo}}\nspec:\n{body}\n"


def problems(kind: str, spec: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_mesh_text(resource(kind, spec), "sec.yaml")
    assert all(i.file == "sec.yaml" and i.resource == f"{kind}/foo/p" for i in caught.value.issues)
    return {issue.field_path: issue.message for issue in caught.value.issues}


@pytest.mark.parametrize("api_version", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_both_versions_load_into_the_mesh_config(api_version: str) -> None:
    """v1 and v1beta1 of both kinds load into MeshConfig's new tuples."""
    text = (resource("PeerAuthentication", "mtls: {mode: STRICT}", api_version) + "---\n"
            + resource("AuthorizationPolicy", "action: DENY\nrules: [{}]", api_version))
    config = load_mesh_text(text)
    assert [r.spec.mtls.mode for r in config.peer_authentications] == ["STRICT"]
    assert [r.spec.action for r in config.authorization_policies] == ["DENY"]


def test_request_authentication_loads() -> None:
    """RequestAuthentication (JWT) is a supported kind now: loaded, no warning."""
    config = load_mesh_text(resource("RequestAuthentication", "jwtRules: [{issuer: a, jwksUri: 'https://a/jwks'}]"))
    assert [r.spec.jwt_rules[0].issuer for r in config.request_authentications] == ["a"]
    assert not config.warnings


def test_linkerd_authorization_policy_is_refused_not_skipped() -> None:
    """policy.linkerd.io's AuthorizationPolicy shares the kind name but is not Istio's: Remora cannot enforce it, so the config is invalid."""
    with pytest.raises(ConfigError, match="AuthorizationPolicy .policy.linkerd.io. is access or authentication policy"):
        load_mesh_text(resource("AuthorizationPolicy", "targetRef: {kind: Server, name: web}",
                                "policy.linkerd.io/v1alpha1"))


def test_unknown_security_version_is_an_error() -> None:
    """A version Istio never had for the kind is an error naming the accepted ones."""
    with pytest.raises(ConfigError, match="use security.istio.io/v1, security.istio.io/v1beta1"):
        load_mesh_text(resource("PeerAuthentication", "{}", "security.istio.io/v2"))


def test_peer_authentication_modes() -> None:
    """mtls.mode and portLevelMtls modes must be UNSET, DISABLE, PERMISSIVE or STRICT."""
    found = problems("PeerAuthentication", """
        selector: {matchLabels: {app: a}}
        mtls: {mode: strict}
        portLevelMtls: {8080: {mode: MUTUAL}}
        """)
    assert "unknown mTLS mode 'strict'" in found["spec.mtls.mode"]
    assert "unknown mTLS mode 'MUTUAL'" in found["spec.portLevelMtls.8080.mode"]


def test_port_level_mtls_needs_a_selector() -> None:
    """Istio's rule: portLevelMtls only on a policy with a workload selector."""
    found = problems("PeerAuthentication", "mtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}}")
    assert "needs a workload selector" in found["spec.portLevelMtls"]


def test_port_level_keys_are_port_numbers() -> None:
    """portLevelMtls keys are port numbers 1-65535; JSON-style string digits are accepted."""
    found = problems("PeerAuthentication", """
        selector: {matchLabels: {app: a}}
        portLevelMtls: {http: {mode: STRICT}}
        """)
    assert "keys must be integers" in found["spec.portLevelMtls.http"]
    found = problems("PeerAuthentication", "selector: {matchLabels: {app: a}}\nportLevelMtls: {70000: {mode: STRICT}}")
    assert "between 1 and 65535" in found["spec.portLevelMtls.70000"]
    docs = [({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "p"},
              "spec": {"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"9090": {"mode": "DISABLE"}}}},
             "push")]
    assert build_mesh_config(docs).peer_authentications[0].spec.port_level_mtls[9090].mode == "DISABLE"


def test_same_config_same_version_with_port_keys() -> None:
    """The config version is computable (and stable) for int-keyed portLevelMtls."""
    text = resource("PeerAuthentication", "selector: {matchLabels: {app: a}}\nportLevelMtls: {8080: {mode: STRICT}}")
    assert load_mesh_text(text).version == load_mesh_text(text).version


def test_authorization_actions() -> None:
    """action ALLOW/DENY/AUDIT load; CUSTOM is 'not supported'; other values are unknown."""
    assert "not supported" in problems("AuthorizationPolicy", "action: CUSTOM\nrules: [{}]")["spec.action"]
    assert "unknown action 'REJECT'" in problems("AuthorizationPolicy", "action: REJECT")["spec.action"]


def test_when_keys() -> None:
    """when.key must be one Remora evaluates; others are errors naming the key."""
    found = problems("AuthorizationPolicy", """
        rules:
        - when:
          - {key: 'request.auth.claims[iss]', values: [x]}
          - {key: 'request.headers[]', values: [x]}
          - {key: 'request.headers[x-a]'}
          - {key: destination.port, values: [http]}
          - {key: source.ip, notValues: [10.0.0.300]}
        """)
    assert "spec.rules[0].when[0].key" not in found   # JWT claims are supported now
    assert "'request.headers[]' is not supported" in found["spec.rules[0].when[1].key"]
    assert "set values or notValues" in found["spec.rules[0].when[2]"]
    assert "port number" in found["spec.rules[0].when[3].values[0]"]
    assert "invalid IP address or CIDR block" in found["spec.rules[0].when[4].notValues[0]"]


def test_source_and_operation_values() -> None:
    """Patterns allow `*` only as a whole, first or last character; CIDRs and ports are checked."""
    found = problems("AuthorizationPolicy", """
        rules:
        - from: [{source: {principals: ['a*b'], ipBlocks: [10.0.0.0/33]}}]
          to: [{operation: {paths: ['*/x*'], ports: ['0'], notHosts: ['']}}]
        """)
    assert "invalid pattern 'a*b'" in found["spec.rules[0].from[0].source.principals[0]"]
    assert "invalid IP address or CIDR" in found["spec.rules[0].from[0].source.ipBlocks[0]"]
    assert "invalid pattern '*/x*'" in found["spec.rules[0].to[0].operation.paths[0]"]
    assert "port number" in found["spec.rules[0].to[0].operation.ports[0]"]
    assert "must not be empty" in found["spec.rules[0].to[0].operation.notHosts[0]"]


def test_empty_source_or_operation_is_an_error() -> None:
    """As in Istio, `source: {}` / `operation: {}` / a missing source are rejected."""
    found = problems("AuthorizationPolicy", "rules: [{from: [{source: {}}, {}], to: [{operation: {}}]}]")
    assert "must not be empty" in found["spec.rules[0].from[0].source"]
    assert "required field is missing" in found["spec.rules[0].from[1].source"]
    assert "must not be empty" in found["spec.rules[0].to[0].operation"]


def test_jwt_fields_are_checked_like_other_patterns() -> None:
    """requestPrincipals / notRequestPrincipals load, with Istio's pattern rules."""
    found = problems("AuthorizationPolicy", "rules: [{from: [{source: {requestPrincipals: ['*'], notRequestPrincipals: ['a*b']}}]}]")
    assert "spec.rules[0].from[0].source.requestPrincipals[0]" not in found
    assert "invalid pattern" in found["spec.rules[0].from[0].source.notRequestPrincipals[0]"]


def test_unknown_field_is_named() -> None:
    """A typo in a rule is an unknown-field error with a suggestion."""
    found = problems("AuthorizationPolicy", "rules: [{to: [{operation: {method: [GET]}}]}]")
    assert "did you mean `methods`" in found["spec.rules[0].to[0].operation.method"]


@pytest.mark.parametrize(("value", "ok"), [("abc", True), ("abc*", True), ("*abc", True), ("*", True),
                                           ("a*c", False), ("*abc*", False), ("**", False)])
def test_match_pattern_forms(value: str, ok: bool) -> None:
    """Exact, prefix*, *suffix and * are Istio's only forms."""
    assert is_match_pattern(value) is ok
