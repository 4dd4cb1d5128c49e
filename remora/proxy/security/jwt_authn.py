"""RequestAuthentication on the inbound listener: Envoy's jwt_authn filter as Istio sets it up.

Istio turns every RequestAuthentication that applies to a workload into jwt_authn
providers with `allow_missing`, so (copied here):
- A request with no token passes (requiring one is AuthorizationPolicy's job:
  `requestPrincipals: ["*"]` then denies it 403 RBAC).
- Every token found must verify, or the request is refused with Envoy's local reply:
  401 (403 for "Audiences in Jwt are not allowed") with jwt_verify_lib's status string as
  the body, e.g. `Jwt verification fails`, and `www-authenticate: Bearer realm="<url>",
  error="invalid_token"`. Envoy sets no response flag for it (the access log shows `-`;
  Envoy's details say `jwt_authn_access_denied{...}`).
- Checks in Envoy's order: format, issuer (a rule with that `iss` that reads the location
  the token came from), exp / nbf with 60 s of clock skew, audience (any of the rule's
  `audiences`, compared without http(s):// and a trailing slash; none listed: any), the key
  (`kid` and `alg` must fit a key of the rule's JWKS), the signature.
- Algorithms: RS256/384/512, PS256/384/512, ES256/384/512, EdDSA. `alg: none` and HS*
  fail ("Jwt header [alg] field value is invalid"): keys are public (remora/config/jwks.py).
- A rule whose keys are not known (a `jwksUri` never fetched) fails its tokens with
  "Jwks remote fetch is failed": fail closed, as Istio does with its placeholder JWKS.
- Token locations: each rule's `fromHeaders` (name, prefix), `fromParams`, `fromCookies`;
  none given: `Authorization: Bearer <token>` and the `access_token` query parameter.
- On success: the principal is `<iss>/<sub>` of the first token; `outputPayloadToHeader`
  gets the payload's base64url text, `outputClaimToHeaders` the claim (string, number or
  bool; nested claims as `a.b`); the header the token came in is removed unless
  `forwardOriginalToken` (query parameters and cookies keep it, as in Envoy). Output
  header names are removed from every request first (Envoy's sanitizePayloadHeaders), so
  a caller cannot forge them.
- CORS preflights (OPTIONS with Origin and Access-Control-Request-Method) bypass the
  check, as Istio configures (`bypass_cors_preflight`).

Everything is compiled once per config version; a request on a listener where no
RequestAuthentication applies never reaches this module.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable
from functools import cache
from typing import NamedTuple
from urllib.parse import parse_qsl

from remora.config.jwks import ALGORITHMS, PublicKey, parse_jwks
from remora.config.model import Resource
from remora.config.model_jwt import JwtRule, RequestAuthenticationSpec
from remora.proxy.security.authz import applies_to
from remora.proxy.telemetry.counters import Counters
from remora.proxy.telemetry.telemetry_policy import ROOT_NAMESPACE

CLOCK_SKEW = 60          # seconds, Envoy's default
CACHE_SIZE = 256         # verified tokens kept per authenticator (Envoy has a JWT cache too)


@cache
def _verifiers() -> dict:
    """PyJWT's verifier per algorithm Remora accepts; loaded (with cryptography) on the first JWT."""
    from jwt.algorithms import get_default_algorithms
    return {name: algorithm for name, algorithm in get_default_algorithms().items() if name in ALGORITHMS}


_B64URL = re.compile(r"[A-Za-z0-9_\-]*=*")
_TOKEN = re.compile(rb"[A-Za-z0-9_\-.=]+")
_DEFAULT_HEADER = (b"authorization", b"Bearer ")
_DEFAULT_PARAM = "access_token"


class JwtFailure(NamedTuple):
    """A refused request: the local reply's status and body (jwt_verify_lib's words)."""

    status: int
    message: str


def _fail(message: str, status: int = 401) -> JwtFailure:
    return JwtFailure(status, message)


BAD_FORMAT = _fail("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
HEADER_PARSE = _fail("Jwt header is an invalid Base64url input or an invalid JSON")
HEADER_BAD_ALG = _fail("Jwt header [alg] field is not a string")
ALG_NOT_IMPLEMENTED = _fail("Jwt header [alg] field value is invalid")
HEADER_BAD_KID = _fail("Jwt header [kid] field is not a string")
PAYLOAD_PARSE = _fail("Jwt payload is an invalid Base64 or an invalid JSON")
SIGNATURE_PARSE = _fail("Jwt signature is an invalid Base64")
UNKNOWN_ISSUER = _fail("Jwt issuer is not configured")
EXPIRED = _fail("Jwt is expired")
NOT_YET_VALID = _fail("Jwt not yet valid")
AUDIENCE_NOT_ALLOWED = _fail("Audiences in Jwt are not allowed", 403)
JWKS_FETCH_FAIL = _fail("Jwks remote fetch is failed")
KID_ALG_MISMATCH = _fail("Jwks doesn't have key to match kid or alg from Jwt")
VERIFICATION_FAIL = _fail("Jwt verification fails")


class JwtAuthnStats(Counters):
    """Envoy's jwt_authn filter counters (`http.inbound.jwt_authn.*`)."""

    __slots__ = ("allowed", "denied", "cors_preflight_bypassed")


class VerifiedJwt:
    """A token that passed: what AuthorizationPolicy's request.auth.* keys read."""

    __slots__ = ("principal", "claims", "payload_b64")

    def __init__(self, claims: dict, payload_b64: str) -> None:
        self.claims = claims
        self.principal = f"{claims.get('iss')}/{claims.get('sub', '')}"
        self.payload_b64 = payload_b64


def _audience(value: str) -> str:
    """jwt_verify_lib's audience comparison: without http(s):// and a trailing slash."""
    for scheme in ("https://", "http://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
            break
    return value[:-1] if value.endswith("/") else value


class CompiledRule:
    """One jwtRule, ready to verify: issuer, audiences, keys and what to do on success."""

    def __init__(self, rule: JwtRule) -> None:
        self.issuer = rule.issuer
        self.audiences = frozenset(_audience(a) for a in rule.audiences) or None
        # Inline jwks wins over jwksUri (Istio); the control server inlines fetched keys.
        self.keys: tuple[PublicKey, ...] | None = parse_jwks(rule.jwks) if rule.jwks is not None else None
        self.payload_header = rule.output_payload_to_header.lower().encode("latin-1") if rule.output_payload_to_header else None
        self.claim_headers = [(c.header.lower().encode("latin-1"), c.claim.split(".")) for c in rule.output_claim_to_headers]
        self.forward = rule.forward_original_token
        self.headers = [(h.name.lower().encode("latin-1"), (h.prefix or "").encode("latin-1")) for h in rule.from_headers]
        self.params = list(rule.from_params)
        self.cookies = list(rule.from_cookies)
        if not (self.headers or self.params or self.cookies):
            self.headers, self.params = [_DEFAULT_HEADER], [_DEFAULT_PARAM]


class _Token(NamedTuple):
    text: str
    rules: tuple              # the rules that read this location
    header: bytes | None      # the header it came in (removed on success unless forwarded)


class JwtAuthenticator:
    """The RequestAuthentications of one workload, ready to authenticate request heads."""

    def __init__(self, policies: Iterable[Resource[RequestAuthenticationSpec]], namespace: str,
                 labels: dict[str, str], root_namespace: str = ROOT_NAMESPACE, clock=time.time) -> None:
        self.clock = clock
        self.rules: list[CompiledRule] = []
        for policy in sorted(policies, key=lambda p: (p.namespace, p.name)):
            if applies_to(policy, namespace, labels, root_namespace):
                self.rules.extend(CompiledRule(rule) for rule in policy.spec.jwt_rules)
        headers: dict[bytes, dict[bytes, list]] = {}
        params: dict[str, list] = {}
        cookies: dict[str, list] = {}
        for rule in self.rules:
            for name, prefix in rule.headers:
                headers.setdefault(name, {}).setdefault(prefix, []).append(rule)
            for name in rule.params:
                params.setdefault(name, []).append(rule)
            for name in rule.cookies:
                cookies.setdefault(name, []).append(rule)
        self.header_locations = {name: [(prefix, tuple(rules)) for prefix, rules in by_prefix.items()]
                                 for name, by_prefix in headers.items()}
        self.param_locations = {name: tuple(rules) for name, rules in params.items()}
        self.cookie_locations = {name: tuple(rules) for name, rules in cookies.items()}
        # Output headers are never taken from the caller (Envoy's sanitizePayloadHeaders).
        self.sanitized = frozenset(
            [r.payload_header for r in self.rules if r.payload_header] +
            [name for r in self.rules for name, _ in r.claim_headers])
        self.cache: dict[str, tuple[dict, dict] | JwtFailure] = {}

    @property
    def empty(self) -> bool:
        return not self.rules

    # -- per request -----------------------------------------------------------------------
    def authenticate(self, head, stats: JwtAuthnStats) -> VerifiedJwt | JwtFailure | None:
        """Check every token of a request head; on success rewrite its headers.

        Returns None (no token: allowed, no principal), the first token's VerifiedJwt, or
        the JwtFailure to answer with; counts into the listener's `stats`.
        """
        if head.method == b"OPTIONS" and head.header(b"origin") and head.header(b"access-control-request-method"):
            stats.cors_preflight_bypassed += 1
            stats.allowed += 1
            return None
        tokens = self._extract(head)
        verified = []
        now = self.clock()
        for token in tokens:
            outcome = self._verify(token, now)
            if outcome.__class__ is JwtFailure:
                stats.denied += 1
                return outcome
            verified.append((token, *outcome))
        self._rewrite(head, verified)
        stats.allowed += 1
        return VerifiedJwt(verified[0][2], verified[0][3]) if verified else None

    def _extract(self, head) -> list[_Token]:
        tokens: list[_Token] = []
        locations = self.header_locations
        for name, value in head.headers:
            specs = locations.get(name.lower())
            if specs is None:
                continue
            for prefix, rules in specs:
                if prefix:
                    at = value.find(prefix)
                    if at < 0:
                        continue
                    found = _TOKEN.search(value, at + len(prefix))
                    if found is None:
                        continue
                    text = found.group()
                else:
                    text = value.strip()
                tokens.append(_Token(text.decode("latin-1"), rules, name.lower()))
        if self.param_locations and b"?" in head.path:
            for name, value in parse_qsl(head.query().decode("latin-1"), keep_blank_values=True):
                rules = self.param_locations.get(name)
                if rules is not None:
                    tokens.append(_Token(value, rules, None))
        if self.cookie_locations:
            for name, value in head.headers:
                if name.lower() == b"cookie":
                    for part in value.decode("latin-1").split(";"):
                        key, _, cookie = part.strip().partition("=")
                        rules = self.cookie_locations.get(key)
                        if rules is not None:
                            tokens.append(_Token(cookie, rules, None))
        return tokens

    def _verify(self, token: _Token, now: float):
        """(rule, claims, payload_b64) of a good token, else the JwtFailure."""
        entry = self.cache.get(token.text)
        if entry is None:
            entry = self._parse_and_verify(token.text)
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            self.cache[token.text] = entry
        if entry.__class__ is JwtFailure:
            return entry
        claims, outcomes = entry
        rule = next((r for r in token.rules if r in outcomes), None)
        if rule is None:
            return UNKNOWN_ISSUER          # the issuer is known, but not at this location
        # Envoy's order: time and audience before the key and the signature.
        return self._check_claims(rule, claims, now) or outcomes[rule] or (rule, claims, token.text.split(".")[1])

    @staticmethod
    def _check_claims(rule: CompiledRule, claims: dict, now: float) -> JwtFailure | None:
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if exp is not None and now > exp + CLOCK_SKEW:
            return EXPIRED
        if nbf is not None and now + CLOCK_SKEW < nbf:
            return NOT_YET_VALID
        if rule.audiences is not None:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and _audience(a) in rule.audiences for a in auds):
                return AUDIENCE_NOT_ALLOWED
        return None

    def _parse_and_verify(self, text: str):
        """Parse one token and verify its signature with each rule of its issuer:
        (claims, {rule: None if verified else its JwtFailure}), or the JwtFailure of a
        token that cannot be read or whose issuer no rule names. Nothing here depends on
        the clock, so the result is cached by the token's text."""
        parts = text.split(".")
        if len(parts) != 3:
            return BAD_FORMAT
        header = _json_part(parts[0])
        if header is None:
            return HEADER_PARSE
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str):
            return HEADER_BAD_ALG
        if alg not in ALGORITHMS:
            return ALG_NOT_IMPLEMENTED
        if kid is not None and not isinstance(kid, str):
            return HEADER_BAD_KID
        claims = _json_part(parts[1])
        if claims is None or any(not isinstance(claims.get(k, 0), (int, float)) or isinstance(claims.get(k), bool)
                                 for k in ("exp", "nbf")):
            return PAYLOAD_PARSE
        signature = _b64(parts[2])
        if signature is None:
            return SIGNATURE_PARSE
        issuer = claims.get("iss")
        rules = [r for r in self.rules if r.issuer == issuer] if isinstance(issuer, str) else []
        if not rules:
            return UNKNOWN_ISSUER
        signing_input = (parts[0] + "." + parts[1]).encode("ascii")
        verifier = _verifiers()[alg]
        outcomes: dict[CompiledRule, JwtFailure | None] = {}
        for rule in rules:
            if rule.keys is None:
                outcomes[rule] = JWKS_FETCH_FAIL
                continue
            fitting = [key for key in rule.keys if (kid is None or key.kid is None or key.kid == kid) and key.fits(alg)]
            if not fitting:
                outcomes[rule] = KID_ALG_MISMATCH
            elif any(verifier.verify(signing_input, key.key, signature) for key in fitting):
                outcomes[rule] = None
            else:
                outcomes[rule] = VERIFICATION_FAIL
        return claims, outcomes

    def _rewrite(self, head, verified: list) -> None:
        """Sanitize output headers; add them for verified tokens; drop forwarded-off tokens."""
        drop = set(self.sanitized)
        added = []
        for token, rule, claims, payload_b64 in verified:
            if rule.payload_header is not None:
                added.append((rule.payload_header, payload_b64.encode("latin-1")))
            for name, path in rule.claim_headers:
                value = _claim_text(claims, path)
                if value is not None:
                    added.append((name, value.encode("utf-8")))
            if not rule.forward and token.header is not None:
                drop.add(token.header)
        if not drop and not added:
            return
        if drop:
            head.headers = [(n, v) for n, v in head.headers if n.lower() not in drop]
        head.headers.extend(added)
        head._index = None      # the cached name index of RequestHead.header()


def _b64(part: str) -> bytes | None:
    if not _B64URL.fullmatch(part):
        return None
    try:
        return base64.urlsafe_b64decode(part.rstrip("=") + "=" * (-len(part.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        return None


def _json_part(part: str) -> dict | None:
    raw = _b64(part)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _claim_text(claims: dict, path: list[str]) -> str | None:
    """A claim as Envoy copies it into a header: strings, integers, numbers, booleans only."""
    value = claims
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() and value >= 0 else str(value)
    if isinstance(value, str):
        return value or None
    return None


def compile_authenticator(policies, namespace: str, labels: dict[str, str]) -> JwtAuthenticator | None:
    """The workload's authenticator, or None when no RequestAuthentication rule applies."""
    authenticator = JwtAuthenticator(policies, namespace, labels)
    return None if authenticator.empty else authenticator
