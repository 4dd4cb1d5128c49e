"""Istio's DestinationRule merge order, pinned by one table run by the data plane and the Envoy renderer."""
from __future__ import annotations

import pytest
import yaml

from remora.config.loader import load_mesh_text
from remora.config.mesh_rules import outbound_cluster_name, outbound_sni
from remora.config.traffic_policy import DICTS, TYPED, merge_sources, merge_traffic_policy
from remora.proxy.upstream.cluster import build_clusters as proxy_clusters
from remora.xds.envoy_clusters import build_clusters as envoy_clusters, services
from remora.xds.envoy_tls import istio_sni

HOST = "api.shop.svc.cluster.local"
PORT = 9080

# (rule top level, rule portLevelSettings for the port, subset top level,
#  subset portLevelSettings for the port) connectTimeout -> the subset cluster's effective one.
# Istio (pilot MergeTrafficPolicy): rule < rule's port level < subset < subset's port level.
TABLE = [
    (None, None, None, None, "10s"),     # Istio's default
    ("1s", None, None, None, "1s"),
    ("1s", "2s", None, None, "2s"),
    (None, "2s", None, None, "2s"),
    ("1s", "2s", "3s", None, "3s"),      # the subset's top level beats the rule's port level
    ("1s", None, "3s", None, "3s"),
    ("1s", "2s", "3s", "4s", "4s"),
    ("1s", "2s", None, "4s", "4s"),
    (None, None, None, "4s", "4s"),
    (None, "2s", "3s", None, "3s"),
]


def _pool(timeout: str) -> dict:
    return {"connectionPool": {"tcp": {"connectTimeout": timeout}}}


def _policy(top: str | None, port_level: str | None, decoy: bool) -> dict:
    """A trafficPolicy with `top` at top level, `port_level` for PORT (and a decoy for another port)."""
    policy = dict(_pool(top)) if top else {}
    levels = [{"port": {"number": PORT + 1}, **_pool("9s")}] if decoy else []
    if port_level:
        levels.append({"port": {"number": PORT}, **_pool(port_level)})
    if levels:
        policy["portLevelSettings"] = levels
    return policy


def _docs(rule, rule_port, subset, subset_port, extra_rule: dict | None = None) -> list[dict]:
    subset_doc: dict = {"name": "v1", "labels": {"version": "v1"}}
    if subset or subset_port:
        subset_doc["trafficPolicy"] = _policy(subset, subset_port, decoy=False)
    rule_policy = _policy(rule, rule_port, decoy=True)
    rule_policy.update(extra_rule or {})
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
         "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"hosts": [HOST], "location": "MESH_INTERNAL", "resolution": "STATIC",
                  "ports": [{"number": PORT, "name": "http", "protocol": "HTTP"}],
                  "endpoints": [{"address": "127.0.0.9", "labels": {"version": "v1"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"host": HOST, "trafficPolicy": rule_policy, "subsets": [subset_doc]}},
    ]


def _data_plane(docs: list[dict], subset: str | None = "v1"):
    config = load_mesh_text(yaml.safe_dump_all(docs))
    return proxy_clusters(config)[HOST].clusters[(PORT, subset)]


def _renderer(docs: list[dict], subset: str = "v1") -> dict:
    entries = [d for d in docs if d["kind"] == "ServiceEntry"]
    rules = [d for d in docs if d["kind"] == "DestinationRule"]
    clusters = envoy_clusters(services(entries, []), rules, None, "cluster.local")
    return next(c for c in clusters if c["name"] == outbound_cluster_name(PORT, subset, HOST))


@pytest.mark.parametrize("rule,rule_port,subset,subset_port,expected", TABLE)
def test_data_plane_merge_follows_istio_order(rule, rule_port, subset, subset_port, expected):
    """The data plane's subset cluster takes each field from the highest of Istio's four layers."""
    cluster = _data_plane(_docs(rule, rule_port, subset, subset_port))
    assert cluster.connect_timeout == float(expected[:-1])


@pytest.mark.parametrize("rule,rule_port,subset,subset_port,expected", TABLE)
def test_renderer_merge_follows_istio_order(rule, rule_port, subset, subset_port, expected):
    """The Envoy renderer's subset cluster takes each field from the highest of Istio's four layers."""
    cluster = _renderer(_docs(rule, rule_port, subset, subset_port))
    assert cluster["connect_timeout"] == expected


@pytest.mark.parametrize("rule,rule_port,subset,subset_port,expected", TABLE)
def test_service_cluster_ignores_subsets(rule, rule_port, subset, subset_port, expected):
    """The service's own cluster (no subset) merges only the rule's top level and port level."""
    docs = _docs(rule, rule_port, subset, subset_port)
    want = rule_port or rule or "10s"
    assert _data_plane(docs, None).connect_timeout == float(want[:-1])
    assert _renderer(docs, "")["connect_timeout"] == want


def test_fields_merge_independently_and_port_level_does_not_inherit():
    """Each field comes whole from its own highest layer: a port-level connectionPool drops the
    top level's other pool fields, while the rule's loadBalancer stays."""
    docs = _docs(None, "2s", None, None, extra_rule={
        "loadBalancer": {"simple": "RANDOM"},
        "connectionPool": {"tcp": {"connectTimeout": "1s", "maxConnections": 7}}})
    cluster = _data_plane(docs)
    assert cluster.lb_policy == "RANDOM" and cluster.connect_timeout == 2.0
    assert cluster.traffic_policy.connection_pool.tcp.max_connections is None
    rendered = _renderer(docs)
    assert rendered["lb_policy"] == "RANDOM" and rendered["connect_timeout"] == "2s"
    assert rendered["circuit_breakers"]["thresholds"][0]["max_connections"] == 1_000_000_000


def test_first_port_level_entry_for_the_port_counts():
    """Two portLevelSettings entries for one port: the first wins, as Istio's loop breaks on it."""
    policy = {"portLevelSettings": [{"port": {"number": PORT}, **_pool("2s")},
                                    {"port": {"number": PORT}, **_pool("5s")}]}
    assert merge_traffic_policy(policy, None, PORT, DICTS)["connectionPool"] == _pool("2s")["connectionPool"]


def test_sources_name_the_winning_layer():
    """merge_sources reports the path of the layer each field came from (used in error messages)."""
    rule = {"tls": {"mode": "SIMPLE"}, "portLevelSettings": [{"port": {"number": PORT}, "tls": {"mode": "DISABLE"}}]}
    found = merge_sources(rule, {}, PORT, DICTS, "spec.trafficPolicy", "spec.subsets[0].trafficPolicy")
    assert found["tls"].where == "spec.trafficPolicy.portLevelSettings[0].tls"
    config = load_mesh_text(yaml.safe_dump_all(_docs("1s", None, None, "4s")))
    dr = config.destination_rules[0].spec
    typed = merge_sources(dr.traffic_policy, dr.subsets[0].traffic_policy, PORT, TYPED,
                          "spec.trafficPolicy", "spec.subsets[0].trafficPolicy")
    assert typed["connectionPool"].where == "spec.subsets[0].trafficPolicy.portLevelSettings[0].connectionPool"


def test_names_are_one_rule_for_both_sides():
    """Cluster names and SNI come from one place: the renderer's spellings equal the shared ones."""
    assert outbound_cluster_name(PORT, None, HOST) == f"outbound|{PORT}||{HOST}"
    assert outbound_sni(PORT, "v1", HOST) == f"outbound_.{PORT}_.v1_.{HOST}"
    assert istio_sni(PORT, HOST, "v1") == outbound_sni(PORT, "v1", HOST)
    assert istio_sni(PORT, HOST) == outbound_sni(PORT, None, HOST)
