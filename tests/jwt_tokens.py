"""Test keys, JWKS and tokens for RequestAuthentication tests (unit and integration).

Keys are generated per test run with `cryptography` (not Istio's demo key file); tokens
are signed with PyJWT. The YAML mirrors the shapes of Istio's tasks:
- `jwt_example` = the `jwt-example` RequestAuthentication of Istio's authn-policy and
  authz-jwt tasks (issuer `testing@secure.istio.io`, selector `app: httpbin`);
- `require_jwt` = the authz-jwt task's `require-jwt` AuthorizationPolicy
  (`requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]`, optionally
  with `when: request.auth.claims[groups] values [group1]`).
The tokens copy Istio's samples in security/tools/jwt/samples: demo.jwt (`foo: bar`) and
groups-scope.jwt (`groups: [group1, group2]`, `scope: [scope1, scope2]`).
"""
from __future__ import annotations

import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "testing@secure.istio.io"
PRINCIPAL = f"{ISSUER}/{ISSUER}"


class Keys:
    """An RSA, an EC P-256 and an Ed25519 key, and their public JWKS."""

    def __init__(self, kid_prefix: str = "k") -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.kids = {"rsa": f"{kid_prefix}-rsa", "ec": f"{kid_prefix}-ec", "ed": f"{kid_prefix}-ed"}

    def jwks(self, which: tuple[str, ...] = ("rsa", "ec", "ed")) -> str:
        keys = []
        for name in which:
            if name == "rsa":
                jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
            elif name == "ec":
                jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
            else:
                jwk = json.loads(OKPAlgorithm.to_jwk(self.ed.public_key()))
            jwk["kid"] = self.kids[name]
            keys.append(jwk)
        return json.dumps({"keys": keys})

    def token(self, claims: dict | None = None, alg: str = "RS256", kid: str | None = "default",
              **extra) -> str:
        """A signed token: Istio's demo.jwt claims unless `claims` is given (then merged)."""
        body = {"iss": ISSUER, "sub": ISSUER, "exp": int(time.time()) + 3600, "foo": "bar"}
        body.update(claims or {})
        body.update(extra)
        key = self.rsa if alg.startswith(("RS", "PS")) else self.ec if alg.startswith("ES") else self.ed
        family = "rsa" if key is self.rsa else "ec" if key is self.ec else "ed"
        headers = {} if kid is None else {"kid": self.kids[family] if kid == "default" else kid}
        return jwt.encode(body, key, algorithm=alg, headers=headers)


def groups_claims() -> dict:
    """The claims of Istio's groups-scope.jwt sample."""
    return {"groups": ["group1", "group2"], "scope": ["scope1", "scope2"]}


def jwt_example(jwks: str | None = None, jwks_uri: str | None = None, namespace: str = "foo",
                extra: str = "") -> str:
    """Istio's `jwt-example` RequestAuthentication (authn-policy / authz-jwt tasks)."""
    source = f"    jwks: '{jwks}'\n" if jwks is not None else f"    jwksUri: {jwks_uri}\n"
    return f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: {namespace}
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "{ISSUER}"
{source}{extra}"""


def require_jwt(namespace: str = "foo", groups: bool = False) -> str:
    """Istio's `require-jwt` AuthorizationPolicy of the authz-jwt task (with its groups step)."""
    when = """    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
""" if groups else ""
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: {namespace}
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["{PRINCIPAL}"]
{when}"""
