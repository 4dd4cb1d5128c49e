"""Rules of Istio's RequestAuthentication (security.istio.io), as Istio validates them,
plus what Remora cannot enforce (an error, never a warning: fail closed).

Istio's own checks: `selector` and `targetRef` / `targetRefs` are mutually exclusive;
every jwtRule has an `issuer`; audiences, header names, query parameter names and claims
are non-empty; `jwksUri` is an http(s) URL with a host; an inline `jwks` parses.
Remora's additions:
- `targetRef(s)` attach a policy to a Gateway or a waypoint (a Service); Remora has
  neither, and Istio does not apply such a policy to sidecars, so it would silently
  protect nothing: refused, naming `selector` as the way to pick workloads.
- an inline `jwks` must hold public signing keys Remora can verify with (RSA, EC P-256/
  384/521, Ed25519); symmetric `oct` keys are refused (remora/config/jwks.py).
- a rule with neither `jwks` nor `jwksUri` gets its keys by OpenID discovery from the
  issuer (as istiod), so the issuer must then be an http(s) URL;
- output header names must be valid HTTP field names and must not be headers the proxy
  owns (Host, framing, hop-by-hop).
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from remora.config.duration import parse_duration
from remora.config.jwks import JwksError, parse_jwks
from remora.config.model_jwt import RequestAuthenticationSpec
from remora.config.schema import Problem
from remora.config.validate_security import _selector

# RFC 9110 token characters: what a header name may be made of.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers an output header must not replace: framing, routing and hop-by-hop ones.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
    "te", "trailer", "proxy-connection", "expect", "x-forwarded-client-cert",
})


def validate_request_authentication(spec: RequestAuthenticationSpec, path: str = "spec") -> list[Problem]:
    problems: list[Problem] = []
    _selector(path, spec.selector, problems)
    targeted = spec.target_ref is not None or bool(spec.target_refs)
    if targeted and spec.selector is not None:
        problems.append(Problem(f"{path}.targetRef", "only one of selector, targetRef or targetRefs may be set"))
    if spec.target_ref is not None and spec.target_refs:
        problems.append(Problem(f"{path}.targetRefs", "only one of targetRef or targetRefs may be set"))
    if targeted:
        field = "targetRef" if spec.target_ref is not None else "targetRefs"
        problems.append(Problem(f"{path}.{field}", "targetRef attaches the policy to a Gateway or a waypoint "
                                "(Service); Remora has neither and Istio does not apply such a policy to "
                                "sidecars, so it would protect nothing: use selector.matchLabels"))
    for i, rule in enumerate(spec.jwt_rules):
        where = f"{path}.jwtRules[{i}]"
        if not rule.issuer:
            problems.append(Problem(f"{where}.issuer", "issuer must be set"))
        for k, audience in enumerate(rule.audiences):
            if not audience:
                problems.append(Problem(f"{where}.audiences[{k}]", "audience must be a non-empty string"))
        if rule.jwks_uri is not None:
            problem = jwks_uri_problem(rule.jwks_uri)
            if problem:
                problems.append(Problem(f"{where}.jwksUri", problem))
        if rule.jwks is None and not rule.jwks_uri and rule.issuer and jwks_uri_problem(rule.issuer):
            problems.append(Problem(f"{where}.jwksUri", "set jwks or jwksUri: the issuer is not an http(s) URL, so "
                                    "its keys cannot be found by OpenID discovery"))
        if rule.jwks is not None:
            try:
                parse_jwks(rule.jwks)
            except JwksError as error:
                problems.append(Problem(f"{where}.jwks", f"jwks parse error: {error}"))
        for k, header in enumerate(rule.from_headers):
            if not header.name:
                problems.append(Problem(f"{where}.fromHeaders[{k}].name", "location header name must be a non-empty string"))
            elif not HEADER_NAME.fullmatch(header.name):
                problems.append(Problem(f"{where}.fromHeaders[{k}].name", f"invalid header name {header.name!r}"))
        for field in ("fromParams", "fromCookies"):
            for k, name in enumerate(getattr(rule, "from_params" if field == "fromParams" else "from_cookies")):
                if not name:
                    problems.append(Problem(f"{where}.{field}[{k}]", "must be a non-empty string"))
        if rule.output_payload_to_header is not None:
            _output_header(f"{where}.outputPayloadToHeader", rule.output_payload_to_header, problems)
        for k, claim in enumerate(rule.output_claim_to_headers):
            _output_header(f"{where}.outputClaimToHeaders[{k}].header", claim.header, problems)
            if not claim.claim:
                problems.append(Problem(f"{where}.outputClaimToHeaders[{k}].claim", "claim must be a non-empty string"))
        if rule.timeout is not None:
            try:
                if parse_duration(rule.timeout) <= 0:
                    raise ValueError
            except ValueError:
                problems.append(Problem(f"{where}.timeout", f"expected a positive duration such as 5s, got {rule.timeout!r}"))
    return problems


def jwks_uri_problem(uri: str) -> str | None:
    """Istio's ParseJwksURI: an http or https URL with a host; None when fine."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError as error:
        return f"invalid URL {uri!r}: {error}"
    if parts.scheme not in ("http", "https"):
        return f"jwksUri must be an http or https URL, got {uri!r}"
    if not host:
        return f"jwksUri {uri!r} has no host"
    return None


def _output_header(where: str, name: str, problems: list[Problem]) -> None:
    if not name:
        problems.append(Problem(where, "header must be a non-empty string"))
    elif not HEADER_NAME.fullmatch(name):
        problems.append(Problem(where, f"invalid header name {name!r}"))
    elif name.lower() in RESERVED_HEADERS:
        problems.append(Problem(where, f"{name!r} is a header the proxy owns; choose another name"))
