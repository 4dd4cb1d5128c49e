"""Typed model of Istio's RequestAuthentication (security.istio.io), beside model.py.

Same conventions as model.py: Istio's camelCase names on the wire, unknown fields
rejected. Rules live in validate_jwt.py; enforcement in remora/proxy/security/jwt_authn.py.
"""
from __future__ import annotations

from remora.config.model import Spec, TelemetrySelector


class PolicyTargetReference(Spec):
    """Istio's targetRef: attaches a policy to a Gateway or a waypoint's Service."""

    group: str | None = None
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None


class JwtHeader(Spec):
    name: str = ""
    prefix: str | None = None   # e.g. "Bearer "; the token is what follows it


class ClaimToHeader(Spec):
    header: str = ""
    claim: str = ""


class JwtRule(Spec):
    """One accepted issuer of a RequestAuthentication (Istio's JWTRule)."""

    issuer: str = ""
    audiences: list[str] = []
    jwks_uri: str | None = None
    jwks: str | None = None      # inline JWKS (JSON); wins over jwksUri, as in Istio
    from_headers: list[JwtHeader] = []
    from_params: list[str] = []
    from_cookies: list[str] = []
    output_payload_to_header: str | None = None
    forward_original_token: bool = False
    output_claim_to_headers: list[ClaimToHeader] = []
    timeout: str | None = None   # jwksUri fetch timeout (default 5s)


class RequestAuthenticationSpec(Spec):
    selector: TelemetrySelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = []
    jwt_rules: list[JwtRule] = []
