"""AuthorizationPolicy on JWT attributes: requestPrincipals and request.auth.* (remora/proxy/security/authz.py)."""
from __future__ import annotations

import pytest

from remora.config.loader import load_mesh_text
from remora.proxy.security.authz import Authorizer, AuthzRequest
from remora.proxy.security.jwt_authn import VerifiedJwt
from tests.jwt_tokens import ISSUER, PRINCIPAL, groups_claims, require_jwt

LABELS = {"app": "httpbin"}


def authorizer(text: str) -> Authorizer:
    return Authorizer(load_mesh_text(text).authorization_policies, "foo", LABELS)


def policy(rules: str, action: str = "ALLOW") -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: foo}}
spec:
  action: {action}
  rules: {rules}
"""


def request(claims: dict | None) -> AuthzRequest:
    jwt = None if claims is None else VerifiedJwt({"iss": ISSUER, "sub": ISSUER, **claims}, "")
    return AuthzRequest(None, None, "10.0.0.1", "httpbin", "GET", "/headers", 8000, {}, jwt)


def test_require_jwt_policy_of_the_authz_jwt_task():
    """Istio's require-jwt: the named request principal passes; no token or another principal is denied."""
    authz = authorizer(require_jwt())
    assert authz.check(request({})).allowed
    assert not authz.check(request(None)).allowed
    other = AuthzRequest(None, None, "10.0.0.1", "h", "GET", "/", 8000, {},
                         VerifiedJwt({"iss": ISSUER, "sub": "someone"}, ""))
    assert not authz.check(other).allowed


def test_groups_condition_of_the_authz_jwt_task():
    """when request.auth.claims[groups] values [group1]: a list claim matches any element."""
    authz = authorizer(require_jwt(groups=True))
    assert authz.check(request(groups_claims())).allowed
    assert not authz.check(request({"groups": ["group2"]})).allowed
    assert not authz.check(request({})).allowed


def test_any_request_principal_requires_a_token():
    """requestPrincipals ["*"] is Istio's "a valid JWT is required"."""
    authz = authorizer(policy("[{from: [{source: {requestPrincipals: ['*']}}]}]"))
    assert authz.check(request({})).allowed
    assert not authz.check(request(None)).allowed


def test_not_request_principals_in_deny():
    """DENY with notRequestPrincipals ["*"] denies requests without a JWT, as in Istio."""
    authz = authorizer(policy("[{from: [{source: {notRequestPrincipals: ['*']}}]}]", "DENY"))
    assert not authz.check(request(None)).allowed
    assert authz.check(request({})).allowed


@pytest.mark.parametrize(("key", "values", "claims", "allowed"), [
    ("request.auth.principal", [PRINCIPAL], {}, True),
    ("request.auth.principal", [f"{ISSUER}/*"], {}, True),
    ("request.auth.audiences", ["httpbin"], {"aud": ["x", "httpbin"]}, True),
    ("request.auth.audiences", ["httpbin"], {"aud": "other"}, False),
    ("request.auth.presenter", ["web-app"], {"azp": "web-app"}, True),
    ("request.auth.claims[role]", ["admin"], {"role": "admin"}, True),
    ("request.auth.claims[role]", ["admin"], {"role": ["user"]}, False),
    ("request.auth.claims[realm][role]", ["ops*"], {"realm": {"role": ["dev", "ops-1"]}}, True),
    ("request.auth.claims[realm][role]", ["ops*"], {"realm": "ops"}, False),
    ("request.auth.claims[count]", ["7"], {"count": 7}, False),   # non-string claims match nothing
])
def test_when_keys_on_the_verified_jwt(key, values, claims, allowed):
    """request.auth.principal / audiences / presenter / claims[a][b] read the verified token."""
    authz = authorizer(policy(f"[{{when: [{{key: '{key}', values: {values}}}]}}]"))
    assert authz.check(request(claims)).allowed is allowed
    assert not authz.check(request(None)).allowed


def test_not_values_pass_without_a_token():
    """notValues on a missing claim (or no token) matches, as Istio's negated matcher."""
    authz = authorizer(policy("[{when: [{key: 'request.auth.claims[role]', notValues: [banned]}]}]"))
    assert authz.check(request(None)).allowed
    assert authz.check(request({"role": "user"})).allowed
    assert not authz.check(request({"role": ["x", "banned"]})).allowed
