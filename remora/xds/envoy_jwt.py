"""RequestAuthentication -> envoy.filters.http.jwt_authn on the inbound listener, as Istio renders it.

The RequestAuthentications that apply to the workload (root or own namespace, selector)
give one provider per jwtRule, named `origins-<i>` in (namespace, name, rule) order, each
with `payload_in_metadata` = its issuer. The requirement is Istio's: one provider:
`requires_any [P, allow_missing]`; several: `requires_any [P1, P2, ..., requires_all
[requires_any [P1, allow_missing], requires_any [P2, allow_missing], ...]]`, so that no
token passes, a good token passes, and several tokens must all be good. CORS preflights
bypass the filter (`bypass_cors_preflight`), as Istio sets it.

Keys must be inline (`jwks`): istiod fetches `jwksUri` and inlines the keys when it pushes;
this renderer works offline, so a rule with only `jwksUri` (or OpenID discovery) raises
`Unsupported`. The filter goes before the RBAC filters, as in Istio; AuthorizationPolicy's
JWT attributes are not rendered (envoy_rbac.py refuses them).
"""
from __future__ import annotations

from remora.config.loader import ConfigError, build_mesh_config
from remora.config.mesh_rules import applies_to
from remora.xds.envoy_clusters import Unsupported

JWT_FILTER = "envoy.filters.http.jwt_authn"
_JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_ALLOW_MISSING = {"allow_missing": {}}


def _provider(rule, where: str) -> dict:
    if rule.jwks is None:
        raise Unsupported(f"{where}.jwksUri: keys fetched at run time are not rendered for Envoy; "
                          "give them inline as jwks")
    provider: dict = {"issuer": rule.issuer, "local_jwks": {"inline_string": rule.jwks},
                      "payload_in_metadata": rule.issuer}
    if rule.audiences:
        provider["audiences"] = list(rule.audiences)
    if rule.from_headers:
        provider["from_headers"] = [{"name": h.name, **({"value_prefix": h.prefix} if h.prefix else {})}
                                    for h in rule.from_headers]
    if rule.from_params:
        provider["from_params"] = list(rule.from_params)
    if rule.from_cookies:
        provider["from_cookies"] = list(rule.from_cookies)
    if rule.forward_original_token:
        provider["forward"] = True
    if rule.output_payload_to_header:
        provider["forward_payload_header"] = rule.output_payload_to_header
    if rule.output_claim_to_headers:
        provider["claim_to_headers"] = [{"header_name": c.header, "claim_name": c.claim}
                                        for c in rule.output_claim_to_headers]
    return provider


def _requirement(names: list[str]) -> dict:
    if len(names) == 1:
        return {"requires_any": {"requirements": [{"provider_name": names[0]}, _ALLOW_MISSING]}}
    each = [{"requires_any": {"requirements": [{"provider_name": n}, _ALLOW_MISSING]}} for n in names]
    return {"requires_any": {"requirements": [*({"provider_name": n} for n in names),
                                              {"requires_all": {"requirements": each}}]}}


def jwt_filters(docs: list[dict], namespace: str, labels: dict[str, str]) -> list[dict]:
    """The jwt_authn http filter for the workload; [] when no RequestAuthentication rule applies."""
    if not docs:
        return []
    try:
        config = build_mesh_config([(doc, "RequestAuthentication") for doc in docs])
    except ConfigError as error:
        raise Unsupported(f"RequestAuthentication not valid: {error}") from None
    providers: dict[str, dict] = {}
    for policy in sorted(config.request_authentications, key=lambda p: (p.namespace, p.name)):
        if not applies_to(policy, namespace, labels):
            continue
        for i, rule in enumerate(policy.spec.jwt_rules):
            where = f"RequestAuthentication {policy.namespace}/{policy.name} spec.jwtRules[{i}]"
            providers[f"origins-{len(providers)}"] = _provider(rule, where)
    if not providers:
        return []
    return [{"name": JWT_FILTER, "typed_config": {
        "@type": _JWT, "providers": providers, "bypass_cors_preflight": True,
        "rules": [{"match": {"prefix": "/"}, "requires": _requirement(list(providers))}]}}]
