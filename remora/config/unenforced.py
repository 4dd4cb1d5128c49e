"""Fail closed on security that Remora would not enforce.

The loader skips, with a warning, mesh kinds it does not implement, so that a directory
written for Istio, Linkerd or Consul still loads the parts Remora understands. That is
only safe for kinds whose absence leaves traffic no less protected than the operator
wrote (routing, telemetry, a gateway's own config). A kind that grants or denies access,
authenticates callers or sets TLS is refused instead, naming the resource and the field,
so an operator never believes a policy holds when no proxy applies it:

- other meshes' authorization and authentication kinds (Linkerd's policy.linkerd.io
  Server/ServerAuthorization/AuthorizationPolicy/MeshTLSAuthentication/
  NetworkAuthentication, Consul's ServiceIntentions/JWTProvider, SMI's TrafficTarget);
- Istio's EnvoyFilter / WasmPlugin when they carry an authentication, authorization, TLS
  or scripting filter (Remora cannot run Envoy patches or Wasm). (Sidecar is read:
  config/validate_sidecar.py refuses what it does not apply.)
"""
from __future__ import annotations

import json
from typing import Any

from remora.config.schema import Problem

# group -> kinds that are security policy in their own mesh.
SECURITY_KINDS: dict[str, frozenset[str]] = {
    "policy.linkerd.io": frozenset({"Server", "ServerAuthorization", "AuthorizationPolicy",
                                    "MeshTLSAuthentication", "NetworkAuthentication"}),
    "consul.hashicorp.com": frozenset({"ServiceIntentions", "JWTProvider"}),
    "access.smi-spec.io": frozenset({"TrafficTarget"}),
}
# What an EnvoyFilter patch names when it adds or changes a security filter.
_ENVOY_SECURITY_WORDS = ("rbac", "ext_authz", "jwt_authn", "oauth2", "basic_auth", "lua",
                         "wasm", "transport_socket", "tls_context", "tlscontext", "authz", "authn")
_WASM_SECURITY_PHASES = ("AUTHN", "AUTHZ")


def unenforced_security(group: str, kind: str, spec: Any) -> Problem | None:
    """Why this skipped resource must make the config invalid, or None if skipping is safe."""
    if kind in SECURITY_KINDS.get(group, ()):
        return Problem("kind", f"{kind} ({group}) is access or authentication policy that Remora "
                               "does not enforce; write it as an Istio AuthorizationPolicy / "
                               "PeerAuthentication, or remove it")
    spec = spec if isinstance(spec, dict) else {}
    if group == "networking.istio.io" and kind == "EnvoyFilter":
        text = json.dumps(spec, default=str).lower()
        words = [w for w in _ENVOY_SECURITY_WORDS if w in text]
        if words:
            return Problem("spec.configPatches", "an EnvoyFilter that patches security filters "
                           f"({', '.join(words)}) cannot be applied by Remora; refused rather "
                           "than skipped")
    if group == "extensions.istio.io" and kind == "WasmPlugin":
        phase = spec.get("phase")
        if phase in _WASM_SECURITY_PHASES:
            return Problem("spec.phase", f"a WasmPlugin in phase {phase} authenticates or "
                                         "authorizes requests; Remora cannot run it")
    return None
