"""Istio's naming and applicability rules, written once for the data plane and the Envoy renderer.

Names (what Istio's pilot writes, so stats, admin output and SNI read the same as in Istio):
- outbound cluster `outbound|<port>|<subset>|<fqdn>` (empty subset for the service's cluster);
- the SNI a sidecar sends to another sidecar, `outbound_.<port>_.<subset>_.<fqdn>`.

Applicability of policies to a workload (namespace, labels):
- a selector applies when the workload's labels carry every one of its labels (an empty or
  missing selector selects every workload);
- AuthorizationPolicy and RequestAuthentication: a policy in the root namespace applies
  mesh-wide, one elsewhere only in its own namespace; then its selector;
- PeerAuthentication and Telemetry: at most three scopes, broadest first: mesh (root
  namespace, no selector), namespace (own namespace, no selector), workload (own namespace,
  selector matching); several at one scope: Istio takes the oldest, Remora (no creation
  times) the first by (namespace, name);
- DestinationRule `workloadSelector`: such a rule applies only to workloads of its own
  namespace it selects, and then replaces the host's rule without a selector.

How an endpoint is dialled, from the merged `tls.mode` (Istio's auto mTLS): ISTIO_MUTUAL,
SIMPLE, MUTUAL as asked; DISABLE (or any other mode) plaintext; unset: mTLS to endpoints
labelled `security.istio.io/tlsMode: istio`, plaintext to the others.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from remora.config.names import TLS_MODE_LABEL

ROOT_NAMESPACE = "istio-system"   # Istio's default meshConfig.rootNamespace

ISTIO_MUTUAL, DISABLE, SIMPLE, MUTUAL = "ISTIO_MUTUAL", "DISABLE", "SIMPLE", "MUTUAL"

R = TypeVar("R")


def outbound_cluster_name(port: int, subset: str | None, fqdn: str) -> str:
    """Istio's outbound cluster name."""
    return f"outbound|{port}|{subset or ''}|{fqdn}"


def outbound_sni(port: int, subset: str | None, fqdn: str) -> str:
    """Istio's SNI for a sidecar-to-sidecar connection."""
    return f"outbound_.{port}_.{subset or ''}_.{fqdn}"


def labels_match(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """True when `labels` carry every key/value of `selector` (None or {} selects all)."""
    return not selector or all(labels.get(k) == v for k, v in selector.items())


def match_labels_of(policy) -> dict[str, str]:
    """A security / telemetry resource's `spec.selector.matchLabels` ({} without a selector)."""
    selector = policy.spec.selector
    return selector.match_labels if selector is not None else {}


def namespace_policy_applies(policy_namespace: str, selector: Mapping[str, str] | None,
                             namespace: str, labels: Mapping[str, str],
                             root_namespace: str = ROOT_NAMESPACE) -> bool:
    """AuthorizationPolicy / RequestAuthentication: root namespace or own namespace, then selector."""
    if policy_namespace not in (namespace, root_namespace):
        return False
    return labels_match(selector, labels)


def applies_to(policy, namespace: str, labels: Mapping[str, str],
               root_namespace: str = ROOT_NAMESPACE) -> bool:
    """namespace_policy_applies for a typed resource (`.namespace`, `.spec.selector`)."""
    return namespace_policy_applies(policy.namespace, match_labels_of(policy), namespace, labels,
                                    root_namespace)


def policy_scopes(resources: Iterable[R], namespace: str, labels: Mapping[str, str],
                  root_namespace: str = ROOT_NAMESPACE) -> list[R]:
    """The mesh, namespace and workload resources that apply to a workload, broadest first."""
    mesh = ns = workload = None
    for res in sorted(resources, key=lambda r: (r.namespace, r.name)):
        selector = match_labels_of(res)
        if not selector:
            if res.namespace == namespace:     # in the root namespace itself: one scope
                ns = ns or res
            elif res.namespace == root_namespace:
                mesh = mesh or res
        elif res.namespace == namespace and workload is None and labels_match(selector, labels):
            workload = res
    return [r for r in (mesh, ns, workload) if r is not None]


def workload_selected(rule_namespace: str, selector: Mapping[str, str],
                      workload: tuple[str, Mapping[str, str]] | None) -> bool:
    """A DestinationRule with a workloadSelector applies to this workload (namespace, labels)."""
    return workload is not None and rule_namespace == workload[0] and labels_match(selector, workload[1])


def destination_rules_for(rules: Iterable[R], describe: Callable[[R], tuple[str, str, Mapping | None]],
                          workload: tuple[str, Mapping[str, str]] | None) -> list[R]:
    """The DestinationRules for one sidecar: rules without a selector for hosts no selected rule
    covers (in order, duplicates kept for the caller to judge), then the selected rules (the
    last per host). `describe(rule)` gives (qualified host, namespace, matchLabels or None when
    the rule has no workloadSelector)."""
    plain: list[tuple[str, R]] = []
    chosen: dict[str, R] = {}
    for rule in rules:
        host, namespace, selector = describe(rule)
        if selector is None:
            plain.append((host, rule))
        elif workload_selected(namespace, selector, workload):
            chosen[host] = rule
    return [rule for host, rule in plain if host not in chosen] + list(chosen.values())


def endpoint_tls_mode(mode: str | None, labels: Mapping[str, str]) -> str:
    """ISTIO_MUTUAL, SIMPLE, MUTUAL or DISABLE for an endpoint with `labels` (module doc)."""
    mode = (mode or "").upper()
    if mode in (ISTIO_MUTUAL, SIMPLE, MUTUAL):
        return mode
    if mode:
        return DISABLE
    return ISTIO_MUTUAL if labels.get(TLS_MODE_LABEL) == "istio" else DISABLE
