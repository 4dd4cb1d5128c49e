"""Which mTLS mode a workload's inbound port accepts, from Istio PeerAuthentication policies
(shared by the data plane and the Envoy renderer).

Istio's rules: a policy in the root namespace without a selector is mesh-wide; one without
a selector in the workload's namespace is namespace-wide; one whose selector matches the
workload's labels is workload-specific (mesh_rules.policy_scopes). The narrowest that sets a
mode wins; `UNSET` (or no `mtls`) inherits from the next broader scope; `portLevelMtls` on
the workload policy overrides for that port. With nothing set the mode is PERMISSIVE
(plaintext and mTLS both accepted), Istio's default.
"""
from __future__ import annotations

from collections.abc import Iterable

from remora.config.mesh_rules import ROOT_NAMESPACE, policy_scopes
from remora.config.model import Resource
from remora.config.model_policy import PeerAuthenticationSpec

STRICT, PERMISSIVE, DISABLE = "STRICT", "PERMISSIVE", "DISABLE"
DEFAULT_MODE = PERMISSIVE


def effective_mtls_mode(policies: Iterable[Resource[PeerAuthenticationSpec]], namespace: str,
                        labels: dict[str, str], port: int | None = None,
                        root_namespace: str = ROOT_NAMESPACE) -> str:
    """STRICT, PERMISSIVE or DISABLE for traffic to `port` of the workload (namespace, labels)."""
    mode = DEFAULT_MODE
    for policy in policy_scopes(policies, namespace, labels, root_namespace):  # broadest first
        spec = policy.spec
        if spec.mtls is not None and spec.mtls.mode not in (None, "UNSET"):
            mode = spec.mtls.mode
        port_setting = (spec.port_level_mtls or {}).get(port) if port is not None else None
        if port_setting is not None and port_setting.mode not in (None, "UNSET"):
            mode = port_setting.mode
    return mode
