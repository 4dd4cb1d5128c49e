"""Istio's applicability rules in config/mesh_rules.py, and the data plane and the renderer picking alike."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from remora.config.loader import load_mesh_text
from remora.config.mesh_rules import (
    ROOT_NAMESPACE, applies_to, endpoint_tls_mode, labels_match, policy_scopes,
)
from remora.proxy.upstream.cluster import applicable_rules
from remora.proxy.security.identity import WorkloadIdentity
from remora.xds.envoy_clusters import selected_rules


def _policy(namespace: str, name: str = "p", selector: dict | None = None):
    spec = SimpleNamespace(selector=None if selector is None else SimpleNamespace(match_labels=selector))
    return SimpleNamespace(namespace=namespace, name=name, spec=spec)


@pytest.mark.parametrize("policy_ns,selector,expected", [
    ("shop", None, True),                        # own namespace, no selector
    (ROOT_NAMESPACE, None, True),                # root namespace: mesh-wide
    ("other", None, False),                      # another namespace
    ("shop", {"app": "api"}, True),              # selector carried by the workload
    ("shop", {"app": "web"}, False),
    (ROOT_NAMESPACE, {"app": "api"}, True),      # root namespace with a selector
    ("shop", {}, True),                          # empty selector selects all
])
def test_authorization_policy_applicability(policy_ns, selector, expected):
    """AuthorizationPolicy / RequestAuthentication: root or own namespace, then the selector."""
    assert applies_to(_policy(policy_ns, selector=selector), "shop", {"app": "api", "v": "1"}) is expected


def test_scopes_are_mesh_namespace_workload_first_by_name():
    """PeerAuthentication / Telemetry scopes: mesh, namespace, workload, broadest first; the first by name per scope."""
    mesh, ns_b, ns_a = _policy(ROOT_NAMESPACE, "m"), _policy("shop", "b"), _policy("shop", "a")
    work, other = _policy("shop", "w", {"app": "api"}), _policy("shop", "x", {"app": "web"})
    found = policy_scopes([work, other, ns_b, ns_a, mesh], "shop", {"app": "api"})
    assert found == [mesh, ns_a, work]
    assert policy_scopes([mesh], ROOT_NAMESPACE, {}) == [mesh]   # in the root namespace: one scope


def test_labels_match_needs_every_pair():
    """A selector matches when the labels carry every key with the same value."""
    assert labels_match({"a": "1"}, {"a": "1", "b": "2"}) and labels_match(None, {})
    assert not labels_match({"a": "1", "c": "3"}, {"a": "1"})


@pytest.mark.parametrize("mode,labels,expected", [
    ("ISTIO_MUTUAL", {}, "ISTIO_MUTUAL"),
    ("simple", {}, "SIMPLE"),
    ("MUTUAL", {}, "MUTUAL"),
    ("DISABLE", {"security.istio.io/tlsMode": "istio"}, "DISABLE"),
    (None, {"security.istio.io/tlsMode": "istio"}, "ISTIO_MUTUAL"),   # auto mTLS
    (None, {}, "DISABLE"),
])
def test_endpoint_tls_mode(mode, labels, expected):
    """The endpoint's dial mode: the rule's mode, else auto mTLS by the endpoint's tlsMode label."""
    assert endpoint_tls_mode(mode, labels) == expected


RULES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec: {hosts: [api.example.com], resolution: STATIC, ports: [{number: 80, name: http, protocol: HTTP}],
       endpoints: [{address: 127.0.0.9}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: plain, namespace: shop}
spec: {host: api.example.com}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: canary, namespace: shop}
spec: {host: api.example.com, workloadSelector: {matchLabels: {track: canary}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: elsewhere, namespace: other}
spec: {host: api.example.com, workloadSelector: {matchLabels: {track: canary}}}
"""


@pytest.mark.parametrize("workload,expected", [
    (None, "plain"),
    (("shop", {}), "plain"),
    (("shop", {"track": "canary"}), "canary"),
    (("other", {"track": "canary"}), "elsewhere"),
    (("third", {"track": "canary"}), "plain"),
])
def test_destination_rule_choice_is_the_same_on_both_sides(workload, expected):
    """A workloadSelector rule applies in its namespace to the workloads it selects, replacing the plain rule, on both sides."""
    config = load_mesh_text(RULES)
    identity = None if workload is None else WorkloadIdentity(namespace=workload[0], labels=workload[1])
    assert applicable_rules(config, identity)["api.example.com"].name == expected
    docs = [d for d in yaml.safe_load_all(RULES) if d["kind"] == "DestinationRule"]
    assert [d["metadata"]["name"] for d in selected_rules(docs, workload)] == [expected]
