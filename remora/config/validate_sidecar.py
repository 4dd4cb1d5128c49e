"""Rules of a Sidecar: Istio's (pkg/config/validation ValidateSidecar: egress hosts as
`namespace/dnsName`, the outbound traffic policy mode), then Remora's fail-closed rule:
what it does not apply is refused by name, never skipped.

Applied: `workloadSelector`, one `egress` listener without port whose `hosts` scope the
services, VirtualServices and DestinationRules a sidecar keeps, and
`outboundTrafficPolicy.mode`. Refused: `ingress` listeners, egress `port` / `bind` /
`captureMode` (per-port listeners), `egressProxy`, `inboundConnectionPool`.
"""
from __future__ import annotations

from remora.config.model_sidecar import SidecarSpec
from remora.config.schema import Problem
from remora.config.field_checks import DNS_LABEL, is_host_pattern

MODES = frozenset({"REGISTRY_ONLY", "ALLOW_ANY"})


def validate_sidecar(spec: SidecarSpec, path: str = "spec") -> list[Problem]:
    problems: list[Problem] = []
    if not spec.egress and not spec.ingress and spec.outbound_traffic_policy is None \
            and spec.inbound_connection_pool is None:
        problems.append(Problem(path, "sidecar: empty configuration provided"))
    if spec.ingress:
        problems.append(Problem(f"{path}.ingress", "Sidecar ingress listeners are not supported by Remora (the "
                                "inbound listener forwards to --app-port; PeerAuthentication sets its mTLS)"))
    if spec.inbound_connection_pool is not None:
        problems.append(Problem(f"{path}.inboundConnectionPool", "inboundConnectionPool is not supported by Remora"))
    for i, listener in enumerate(spec.egress):
        where = f"{path}.egress[{i}]"
        if not listener.hosts:
            problems.append(Problem(f"{where}.hosts", "sidecar: egress listener must contain at least one host"))
        for j, host in enumerate(listener.hosts):
            message = egress_host_problem(host)
            if message:
                problems.append(Problem(f"{where}.hosts[{j}]", message))
        for field, value in (("port", listener.port), ("bind", listener.bind), ("captureMode", listener.capture_mode)):
            if value is not None:
                problems.append(Problem(f"{where}.{field}", f"egress listeners with a {field} are not supported by "
                                        "Remora: give one egress listener with hosts only"))
    if len(spec.egress) > 1:
        problems.append(Problem(f"{path}.egress", "several egress listeners are not supported by Remora: give one "
                                "with every host"))
    policy = spec.outbound_traffic_policy
    if policy is not None:
        if policy.mode is not None and policy.mode not in MODES:
            problems.append(Problem(f"{path}.outboundTrafficPolicy.mode", f"unknown mode {policy.mode!r}; expected "
                                    "REGISTRY_ONLY or ALLOW_ANY"))
        if policy.egress_proxy is not None:
            problems.append(Problem(f"{path}.outboundTrafficPolicy.egressProxy", "egressProxy is not supported by "
                                    "Remora"))
    selector = spec.workload_selector
    for key, value in (selector.labels if selector is not None else {}).items():
        if "*" in key or "*" in value:
            problems.append(Problem(f'{path}.workloadSelector.labels["{key}"]',
                                    "wildcard is not supported in selector"))
    return problems


def egress_host_problem(host: str) -> str | None:
    """Istio's `namespace/dnsName` rule for a Sidecar egress host."""
    namespace, sep, name = host.partition("/")
    if not sep or "/" in name:
        return f"host {host!r} must be of form namespace/dnsName"
    if not namespace or not name:
        return "config namespace and dnsName in host entry cannot be empty"
    if namespace not in ("*", ".", "~") and not DNS_LABEL.fullmatch(namespace):
        return f"invalid namespace value {namespace!r} in sidecar"
    if name != "*" and not is_host_pattern(name):
        return f"domain name {name!r} invalid"
    return None
