"""RequestAuthentication verification (remora/proxy/security/jwt_authn.py): Envoy jwt_authn semantics."""
from __future__ import annotations

import base64
import hmac
import hashlib
import json
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from remora.config.loader import load_mesh_text
from remora.proxy.security.jwt_authn import JwtAuthnStats, JwtAuthenticator, JwtFailure, VerifiedJwt, compile_authenticator
from remora.proxy.codec.message import RequestHead
from tests.jwt_tokens import ISSUER, PRINCIPAL, Keys, groups_claims, jwt_example

KEYS = Keys()
LABELS = {"app": "httpbin"}


def authenticator(extra: str = "", jwks: str | None = None, jwks_uri: str | None = None, clock=time.time):
    text = jwt_example(jwks if jwks is not None or jwks_uri else KEYS.jwks(), jwks_uri, extra=extra)
    config = load_mesh_text(text)
    return JwtAuthenticator(config.request_authentications, "foo", LABELS, clock=clock)


def head(headers=(), path: bytes = b"/headers", method: bytes = b"GET") -> RequestHead:
    return RequestHead(method, path, b"httpbin.foo", list(headers))


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + token.encode())


def run(auth, h):
    stats = JwtAuthnStats()
    return auth.authenticate(h, stats), stats


def test_valid_rs256_token_gives_the_istio_principal_and_drops_the_token():
    """A good token: principal <iss>/<sub>, Authorization removed upstream (forwardOriginalToken false)."""
    h = head([bearer(KEYS.token()), (b"Accept", b"*/*")])
    result, stats = run(authenticator(), h)
    assert isinstance(result, VerifiedJwt) and result.principal == PRINCIPAL
    assert result.claims["foo"] == "bar"
    assert h.headers == [(b"Accept", b"*/*")] and h.header(b"authorization") is None
    assert (stats.allowed, stats.denied) == (1, 0)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS512", "ES256", "EdDSA"])
def test_asymmetric_algorithms_verify(alg):
    """RS*, PS*, ES256 and EdDSA tokens verify with the JWKS keys of their type."""
    result, _ = run(authenticator(), head([bearer(KEYS.token(alg=alg))]))
    assert isinstance(result, VerifiedJwt), result


def test_no_token_passes_without_principal():
    """No token: allowed, no identity (requiring one is AuthorizationPolicy's job)."""
    result, stats = run(authenticator(), head([(b"Authorization", b"Basic dXNlcjpwYXNz")]))
    assert result is None and stats.allowed == 1


@pytest.mark.parametrize(("token", "status", "message"), [
    ("invalidToken", 401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
    ("a.b.c", 401, "Jwt header is an invalid Base64url input or an invalid JSON"),
])
def test_malformed_tokens_get_envoys_401(token, status, message):
    """Malformed tokens are refused with jwt_verify_lib's status string."""
    result, stats = run(authenticator(), head([bearer(token)]))
    assert result == JwtFailure(status, message) and stats.denied == 1


def test_bad_signature_is_jwt_verification_fails():
    """A token whose signature does not verify: 401 `Jwt verification fails` (Envoy's reply)."""
    token = KEYS.token()
    other = Keys().token()    # same kid, another key
    tampered = token.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]
    result, _ = run(authenticator(), head([bearer(tampered)]))
    assert result == JwtFailure(401, "Jwt verification fails")


def test_expired_token_with_clock_skew():
    """exp is allowed 60 s of skew (Envoy's default); past that `Jwt is expired`."""
    now = time.time()
    auth = authenticator(clock=lambda: now)
    assert isinstance(run(auth, head([bearer(KEYS.token(exp=int(now) - 30))]))[0], VerifiedJwt)
    assert run(auth, head([bearer(KEYS.token(exp=int(now) - 120))]))[0] == JwtFailure(401, "Jwt is expired")
    assert run(auth, head([bearer(KEYS.token(nbf=int(now) + 600))]))[0] == JwtFailure(401, "Jwt not yet valid")


def test_cached_token_expires_on_time():
    """A verified token is cached, but its exp is checked on every use."""
    now = [time.time()]
    auth = authenticator(clock=lambda: now[0])
    token = KEYS.token(exp=int(now[0]) + 10)
    assert isinstance(run(auth, head([bearer(token)]))[0], VerifiedJwt)
    now[0] += 100
    assert run(auth, head([bearer(token)]))[0] == JwtFailure(401, "Jwt is expired")


def test_wrong_issuer_is_not_configured():
    """A token from an issuer no rule names: 401 `Jwt issuer is not configured`."""
    result, _ = run(authenticator(), head([bearer(KEYS.token(iss="someone@else"))]))
    assert result == JwtFailure(401, "Jwt issuer is not configured")


def test_audiences():
    """`audiences`: any one matches (scheme and trailing slash ignored); none: 403 as Envoy."""
    auth = authenticator("    audiences: [httpbin.foo, 'https://api.example.com/']\n")
    assert isinstance(run(auth, head([bearer(KEYS.token(aud=["x", "httpbin.foo"]))]))[0], VerifiedJwt)
    assert isinstance(run(auth, head([bearer(KEYS.token(aud="api.example.com"))]))[0], VerifiedJwt)
    assert run(auth, head([bearer(KEYS.token(aud="other"))]))[0] == JwtFailure(403, "Audiences in Jwt are not allowed")
    assert run(auth, head([bearer(KEYS.token())]))[0] == JwtFailure(403, "Audiences in Jwt are not allowed")


def test_unknown_kid_is_refused():
    """A kid that no key of the JWKS has: `Jwks doesn't have key to match kid or alg from Jwt`."""
    result, _ = run(authenticator(), head([bearer(KEYS.token(kid="rotated-away"))]))
    assert result == JwtFailure(401, "Jwks doesn't have key to match kid or alg from Jwt")


def _unsigned(header: dict, claims: dict, signature: bytes = b"") -> str:
    enc = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()   # noqa: E731
    return f"{enc(json.dumps(header).encode())}.{enc(json.dumps(claims).encode())}.{enc(signature)}"


def test_alg_none_is_refused():
    """`alg: none` never passes, with or without a signature."""
    claims = {"iss": ISSUER, "sub": ISSUER, "exp": int(time.time()) + 60}
    result, _ = run(authenticator(), head([bearer(_unsigned({"alg": "none"}, claims))]))
    assert result == JwtFailure(401, "Jwt header [alg] field value is invalid")


def test_hs256_signed_with_the_public_key_is_refused():
    """The algorithm-confusion attack (HS256 keyed with the RSA public key) is refused."""
    claims = {"iss": ISSUER, "sub": ISSUER, "exp": int(time.time()) + 60}
    pem = KEYS.rsa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    unsigned = _unsigned({"alg": "HS256", "kid": "k-rsa"}, claims).rsplit(".", 1)[0]
    mac = hmac.new(pem, unsigned.encode(), hashlib.sha256).digest()
    token = unsigned + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    result, _ = run(authenticator(), head([bearer(token)]))
    assert isinstance(result, JwtFailure) and result.status == 401


def test_every_token_must_verify():
    """A good token next to a bad one (another location) is refused: all tokens must verify."""
    auth = authenticator()
    h = head([bearer(KEYS.token())], path=b"/headers?access_token=invalidToken")
    assert isinstance(run(auth, h)[0], JwtFailure)


def test_default_locations_include_the_access_token_parameter():
    """Without fromHeaders/fromParams: Authorization Bearer and ?access_token= (Envoy's defaults)."""
    result, _ = run(authenticator(), head(path=b"/x?access_token=" + KEYS.token().encode()))
    assert isinstance(result, VerifiedJwt)


def test_custom_header_prefix_params_and_cookies():
    """fromHeaders (name + prefix), fromParams and fromCookies replace the default locations."""
    auth = authenticator("    fromHeaders: [{name: x-jwt-assertion, prefix: 'Token '}]\n"
                         "    fromParams: [my_token]\n    fromCookies: [session]\n")
    token = KEYS.token()
    assert isinstance(run(auth, head([(b"X-JWT-Assertion", b"Token " + token.encode())]))[0], VerifiedJwt)
    assert isinstance(run(auth, head(path=b"/?my_token=" + token.encode()))[0], VerifiedJwt)
    assert isinstance(run(auth, head([(b"Cookie", b"a=1; session=" + token.encode())]))[0], VerifiedJwt)
    # Authorization is no longer a location: ignored, not refused.
    assert run(auth, head([bearer("invalidToken")]))[0] is None


def test_output_payload_and_claims_and_forward():
    """outputPayloadToHeader (base64url payload), outputClaimToHeaders, forwardOriginalToken."""
    auth = authenticator("    outputPayloadToHeader: x-jwt-payload\n    forwardOriginalToken: true\n"
                         "    outputClaimToHeaders: [{header: x-jwt-foo, claim: foo}, {header: x-jwt-n, claim: n.x}]\n")
    token = KEYS.token(n={"x": 7})
    h = head([bearer(token)])
    run(auth, h)
    payload = h.header(b"x-jwt-payload").decode()
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["foo"] == "bar"
    assert h.header(b"x-jwt-foo") == b"bar" and h.header(b"x-jwt-n") == b"7"
    assert h.header(b"authorization") == b"Bearer " + token.encode()


def test_caller_cannot_forge_output_headers():
    """Output header names are removed from every request, token or not (sanitizePayloadHeaders)."""
    auth = authenticator("    outputPayloadToHeader: x-jwt-payload\n")
    h = head([(b"X-Jwt-Payload", b"forged"), (b"Accept", b"*/*")])
    assert run(auth, h)[0] is None
    assert h.headers == [(b"Accept", b"*/*")]


def test_jwks_uri_never_fetched_fails_closed():
    """A jwksUri whose keys never arrived: tokens of that issuer get 401, no token still passes."""
    auth = authenticator(jwks_uri="http://127.0.0.1:1/jwks.json")
    assert run(auth, head([bearer(KEYS.token())]))[0] == JwtFailure(401, "Jwks remote fetch is failed")
    assert run(auth, head())[0] is None


def test_cors_preflight_bypasses():
    """A CORS preflight is not checked (Istio sets bypass_cors_preflight)."""
    h = head([(b"Origin", b"https://a"), (b"Access-Control-Request-Method", b"GET"), bearer("bad")],
             method=b"OPTIONS")
    result, stats = run(authenticator(), h)
    assert result is None and stats.cors_preflight_bypassed == 1


def test_policy_must_select_the_workload():
    """A RequestAuthentication for other labels or another namespace does not apply."""
    config = load_mesh_text(jwt_example(KEYS.jwks()))
    assert compile_authenticator(config.request_authentications, "foo", {"app": "other"}) is None
    assert compile_authenticator(config.request_authentications, "bar", LABELS) is None
    mesh_wide = load_mesh_text(jwt_example(KEYS.jwks(), namespace="istio-system"))
    assert compile_authenticator(mesh_wide.request_authentications, "bar", LABELS) is not None


def test_groups_claims_are_kept_for_authorization():
    """The verified claims (Istio's groups-scope.jwt shape) are what request.auth.claims reads."""
    result, _ = run(authenticator(), head([bearer(KEYS.token(groups_claims()))]))
    assert result.claims["groups"] == ["group1", "group2"]
