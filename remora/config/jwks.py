"""JSON Web Key Sets (RFC 7517) as RequestAuthentication uses them: public keys only.

One parser for the three places that read a JWKS: config validation (an inline `jwks`
that does not parse is a config error naming the field), the sidecar (keys compiled once
per config version) and the control server (a fetched `jwksUri` body is checked before it
replaces the last good one).

Rules (fail closed):
- Keys are RSA (`kty: RSA`, for RS256/384/512 and PS256/384/512), EC (`kty: EC`, P-256 /
  P-384 / P-521 for ES256 / ES384 / ES512) or OKP Ed25519 (EdDSA). A key's `alg`, when
  set, must be one of those and fit the key type.
- Symmetric keys (`kty: oct`, HS256...) are refused: a JWKS names public keys, and
  accepting HS* tokens next to public keys is the classic algorithm-confusion hole.
- Keys with `use` other than `sig` are skipped (they are for encryption); a set with no
  usable key is an error, as jwt_verify_lib's "Jwks doesn't have any valid public key".
- Only the public half of a key is kept, even if the document carries private parts.

The JOSE primitives are PyJWT's (`jwt.algorithms`, on `cryptography`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# JWS algorithms Remora verifies, and the key family each needs.
RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
ALGORITHMS = RSA_ALGS | frozenset(EC_CURVES) | {"EdDSA"}


class JwksError(ValueError):
    """A JWKS that cannot be used; the message says why (and which key)."""


@dataclass(frozen=True)
class PublicKey:
    kid: str | None
    alg: str | None      # the key's own `alg`, when it names one
    family: str          # "RSA", "EC:P-256", "EC:P-384", "EC:P-521" or "OKP:Ed25519"
    key: Any             # a cryptography public key object

    def fits(self, alg: str) -> bool:
        """Can this key verify a token signed with `alg`?"""
        if self.alg is not None and self.alg != alg:
            return False
        if alg in RSA_ALGS:
            return self.family == "RSA"
        if alg in EC_CURVES:
            return self.family == "EC:" + EC_CURVES[alg]
        return alg == "EdDSA" and self.family == "OKP:Ed25519"


def parse_jwks(text: str) -> tuple[PublicKey, ...]:
    """The usable public keys of a JWKS document; JwksError if there are none or one is bad."""
    try:
        document = json.loads(text)
    except (TypeError, ValueError) as error:
        raise JwksError(f"not valid JSON: {error}") from None
    if not isinstance(document, dict) or "keys" not in document:
        raise JwksError("a JWKS is a JSON object with a `keys` list")
    if not isinstance(document["keys"], list):
        raise JwksError("`keys` must be a list")
    keys = []
    for i, jwk in enumerate(document["keys"]):
        if isinstance(jwk, dict) and jwk.get("use") not in (None, "sig"):
            continue
        keys.append(_public_key(i, jwk))
    if not keys:
        raise JwksError("no signing key in `keys`")
    return tuple(keys)


def _public_key(index: int, jwk: Any) -> PublicKey:
    where = f"keys[{index}]"
    if not isinstance(jwk, dict):
        raise JwksError(f"{where}: expected a JSON object")
    kty, alg, kid = jwk.get("kty"), jwk.get("alg"), jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError(f"{where}: `kid` must be a string")
    if alg is not None and alg not in ALGORITHMS:
        raise JwksError(f"{where}: alg {alg!r} is not supported (use one of {', '.join(sorted(ALGORITHMS))}; "
                        "symmetric HS* and `none` are refused)")
    # PyJWT loads cryptography (~9 MiB together): only configs with JWKS keys pay for it.
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
    from jwt.exceptions import InvalidKeyError
    try:
        if kty == "RSA":
            family, key = "RSA", RSAAlgorithm.from_jwk(jwk)
        elif kty == "EC":
            family, key = f"EC:{jwk.get('crv')}", ECAlgorithm.from_jwk(jwk)
            if jwk.get("crv") not in EC_CURVES.values():
                raise JwksError(f"{where}: EC curve {jwk.get('crv')!r} is not supported (P-256, P-384, P-521)")
        elif kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise JwksError(f"{where}: OKP curve {jwk.get('crv')!r} is not supported (Ed25519)")
            family, key = "OKP:Ed25519", OKPAlgorithm.from_jwk(jwk)
        elif kty == "oct":
            raise JwksError(f"{where}: symmetric keys (kty oct, HS*) are not supported: "
                            "RequestAuthentication verifies with public keys only")
        else:
            raise JwksError(f"{where}: kty {kty!r} is not supported (RSA, EC, OKP)")
    except (InvalidKeyError, ValueError, TypeError, KeyError) as error:
        if isinstance(error, JwksError):
            raise
        raise JwksError(f"{where}: invalid {kty} key: {error}") from None
    if hasattr(key, "public_key"):
        key = key.public_key()   # a private JWK: keep its public half only
    public = PublicKey(kid, alg, family, key)
    if alg is not None and not public.fits(alg):
        raise JwksError(f"{where}: alg {alg} does not fit a {family} key")
    return public


# ---- where a rule's keys come from, and inlining fetched keys ----------------------------

DISCOVERY_SUFFIX = "/.well-known/openid-configuration"


def key_source(rule) -> str | None:
    """The URL a jwtRule's keys are fetched from: its `jwksUri`, or with neither `jwks` nor
    `jwksUri` the issuer's OpenID discovery document (as istiod does); None for inline keys."""
    if rule.jwks is not None:
        return None
    if rule.jwks_uri:
        return rule.jwks_uri
    return rule.issuer.rstrip("/") + DISCOVERY_SUFFIX


def key_sources(config) -> dict[str, float]:
    """Every URL the config's RequestAuthentications need keys from -> its fetch timeout (s)."""
    from remora.config.duration import parse_duration
    sources: dict[str, float] = {}
    for resource in config.request_authentications:
        for rule in resource.spec.jwt_rules:
            source = key_source(rule)
            if source is not None:
                timeout = parse_duration(rule.timeout) if rule.timeout else 5.0
                sources[source] = max(sources.get(source, 0.0), timeout)
    return sources


def with_fetched_keys(resource, keys: dict[str, str]):
    """A RequestAuthentication with the fetched JWKS of its rules inlined as `jwks` (the
    rule keeps its `jwksUri`, so dumps show where the keys came from); unchanged when
    nothing applies. Rules whose keys were never fetched stay without `jwks`: the sidecar
    fails their tokens (401), as Istio does with its placeholder key."""
    import msgspec
    from dataclasses import replace
    rules = resource.spec.jwt_rules
    new_rules = [msgspec.structs.replace(rule, jwks=keys[key_source(rule)])
                 if key_source(rule) in keys else rule for rule in rules]
    if all(a is b for a, b in zip(rules, new_rules)):
        return resource
    return replace(resource, spec=msgspec.structs.replace(resource.spec, jwt_rules=new_rules))
