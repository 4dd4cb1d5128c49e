"""The kinds the config loader knows: Istio kinds it reads (and their API groups and
versions), real mesh kinds it skips with a warning, and the kind/apiVersion check every
document passes first (unknown kinds are errors, with a "did you mean")."""
from __future__ import annotations

import difflib
from typing import Any, Callable

from remora.config.model import (
    AuthorizationPolicySpec,
    DestinationRuleSpec,
    PeerAuthenticationSpec,
    ServiceEntrySpec,
    TelemetrySpec,
    VirtualServiceSpec,
    WorkloadEntrySpec,
)
from remora.config.model_jwt import RequestAuthenticationSpec

SUPPORTED_GROUP = "networking.istio.io"
SUPPORTED_VERSIONS = ("v1", "v1beta1", "v1alpha3")
SPEC_TYPES: dict[str, type] = {
    "ServiceEntry": ServiceEntrySpec,
    "WorkloadEntry": WorkloadEntrySpec,
    "VirtualService": VirtualServiceSpec,
    "DestinationRule": DestinationRuleSpec,
    "Telemetry": TelemetrySpec,
    "PeerAuthentication": PeerAuthenticationSpec,
    "AuthorizationPolicy": AuthorizationPolicySpec,
    "RequestAuthentication": RequestAuthenticationSpec,
}
# Supported kinds outside networking.istio.io: their group and versions.
OTHER_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Telemetry": ("telemetry.istio.io", ("v1", "v1alpha1")),
    "PeerAuthentication": ("security.istio.io", ("v1", "v1beta1")),
    "AuthorizationPolicy": ("security.istio.io", ("v1", "v1beta1")),
    "RequestAuthentication": ("security.istio.io", ("v1", "v1beta1")),
}

# Real mesh kinds, by API group, that Remora does not implement yet: skipped with a
# warning so that a directory written for Istio, Linkerd or Consul still loads the parts
# Remora understands.
UNSUPPORTED_KINDS: dict[str, frozenset[str]] = {
    "networking.istio.io": frozenset({"Gateway", "Sidecar", "EnvoyFilter", "WorkloadGroup", "ProxyConfig"}),
    "extensions.istio.io": frozenset({"WasmPlugin"}),
    "split.smi-spec.io": frozenset({"TrafficSplit"}),
    "specs.smi-spec.io": frozenset({"HTTPRouteGroup", "TCPRoute", "UDPRoute"}),
    "access.smi-spec.io": frozenset({"TrafficTarget"}),
    "linkerd.io": frozenset({"ServiceProfile"}),
    "policy.linkerd.io": frozenset({
        "Server", "ServerAuthorization", "AuthorizationPolicy", "HTTPRoute",
        "MeshTLSAuthentication", "NetworkAuthentication",
    }),
    "consul.hashicorp.com": frozenset({
        "ServiceIntentions", "ServiceDefaults", "ServiceSplitter", "ServiceResolver",
        "ServiceRouter", "ProxyDefaults", "Mesh", "ExportedServices", "IngressGateway",
        "TerminatingGateway", "SamenessGroup", "JWTProvider",
    }),
    "gateway.networking.k8s.io": frozenset({"Gateway", "GatewayClass", "HTTPRoute", "GRPCRoute", "ReferenceGrant"}),
}

def supported_group(kind: str) -> str:
    """The API group of a supported kind."""
    return OTHER_GROUPS.get(kind, (SUPPORTED_GROUP, ()))[0]


def _groups_of(kind: str) -> list[str]:
    groups = [group for group, kinds in UNSUPPORTED_KINDS.items() if kind in kinds]
    if kind in OTHER_GROUPS:
        return groups + [OTHER_GROUPS[kind][0]]
    return groups + ([SUPPORTED_GROUP] if kind in SPEC_TYPES else [])



def check_kind(kind: Any, api_version: Any, report: Callable[[str, str], None]) -> bool:
    """True if the document is a kind this loader knows (supported or skipped)."""
    if not isinstance(api_version, str) or not api_version:
        report("apiVersion", "required field is missing")
        return False
    if not isinstance(kind, str) or not kind:
        report("kind", "required field is missing")
        return False
    group, _, version = api_version.rpartition("/")
    groups = _groups_of(kind)
    if not groups:
        known = sorted({k for kinds in UNSUPPORTED_KINDS.values() for k in kinds} | set(SPEC_TYPES))
        close = difflib.get_close_matches(kind, known, n=1, cutoff=0.8)
        hint = f"did you mean {close[0]}?" if close else f"Remora reads {', '.join(SPEC_TYPES)}"
        report("kind", f"unknown kind {kind!r} ({api_version}): {hint}")
        return False
    if group not in groups:
        report("apiVersion", f"kind {kind} belongs to API group {' or '.join(groups)}, not {group or 'the core group'!s} ({api_version})")
        return False
    if kind in SPEC_TYPES:
        supported_group_, versions = OTHER_GROUPS.get(kind, (SUPPORTED_GROUP, SUPPORTED_VERSIONS))
        if group == supported_group_ and version not in versions:
            report("apiVersion", f"unsupported version {api_version} for {kind}; use {', '.join(f'{supported_group_}/{v}' for v in versions)}")
            return False
    return True
