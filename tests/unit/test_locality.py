"""Locality failover (remora/proxy/upstream/locality.py): Istio's priorities, Envoy's priority load."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from remora.config.loader import ConfigError, load_mesh_text
from remora.config.model import (
    LocalityDistribute, LocalityFailover, LocalityLoadBalancerSetting, LoadBalancerSettings,
)
from remora.proxy.upstream.locality import (
    LocalityPriorityBalancer, LocalityWeightedBalancer, apply_locality, distribute_weights, label_priority,
    level_loads, locality_levels, locality_match, parse_locality, priority,
)
from remora.proxy.upstream.cluster import Cluster, Endpoint


@dataclass(eq=False)
class Ep:
    key: str
    locality: str
    labels: dict = None
    weight: int = 1
    active_requests: int = 0
    ejected: bool = False


EAST = parse_locality("us-east/us-east-1a/sz1")


@pytest.mark.parametrize("endpoint, expected", [
    ("us-east/us-east-1a/sz1", 0), ("us-east/us-east-1a/sz2", 1), ("us-east/us-east-1b", 2),
    ("us-west/us-west-1a", 3), ("", 3), ("us-east", 2),
])
def test_priorities_are_istios(endpoint, expected):
    """Same subzone 0, same zone 1, same region 2, elsewhere 3; no locality matches nothing."""
    assert priority(EAST, parse_locality(endpoint), ()) == expected


def test_failover_ranks_the_named_region_before_the_rest():
    """failover from us-east to eu-west: eu-west 3, every other region 4."""
    rules = [LocalityFailover(from_="us-east", to="eu-west")]
    assert priority(EAST, parse_locality("eu-west/eu-west-1a"), rules) == 3
    assert priority(EAST, parse_locality("us-west/us-west-1a"), rules) == 4
    assert priority(EAST, parse_locality("us-east/us-east-1b"), rules) == 2   # own region first
    other = [LocalityFailover(from_="ap-south", to="eu-west")]                # not this sidecar's region
    assert priority(EAST, parse_locality("us-west/us-west-1a"), other) == 3


def test_levels_are_consecutive_nearest_first():
    """Empty priorities are dropped: a zone match and a foreign region make levels 0 and 1."""
    near, far = Ep("a", "us-east/us-east-1a/x"), Ep("b", "eu-west/eu-west-1a")
    assert locality_levels([far, near], "us-east/us-east-1a/sz1", ()) == [[near], [far]]


@pytest.mark.parametrize("healthy, totals, loads", [
    ([2, 2], [2, 2], [100, 0]),         # all healthy: everything local
    ([1, 2], [2, 2], [70, 30]),         # half the local ones: 50% x 1.4 = 70% stays
    ([3, 2], [4, 2], [100, 0]),         # 75% x 1.4 >= 100: still all local
    ([0, 2], [2, 2], [0, 100]),         # local all ejected: all fail over
    ([1, 1], [4, 4], [50, 50]),         # 35% and 35%: under 100 together, scaled up
    ([0, 0], [2, 2], [0, 0]),           # nothing healthy
])
def test_level_loads_are_envoys_priority_load(healthy, totals, loads):
    """Overprovisioning 1.4 per level, spill to the next, normalized when the sum is short."""
    assert [round(x) for x in level_loads(healthy, totals)] == loads


def test_balancer_follows_the_loads_and_panics_to_everyone():
    """Picks go to the near level, spill by the loads when it fails, and to all in panic."""
    near = [Ep("n1", "r/z"), Ep("n2", "r/z")]
    far = [Ep("f1", "x/y"), Ep("f2", "x/y")]
    balancer = LocalityPriorityBalancer([near, far], None, rand=random.Random(7).random)
    assert {balancer.pick().key for _ in range(200)} == {"n1", "n2"}
    near[0].ejected = True
    counts = Counter(balancer.pick() in far for _ in range(4000))
    assert 0.25 < counts[True] / 4000 < 0.35            # 30% spills over
    near[1].ejected = True
    assert {balancer.pick().key for _ in range(200)} == {"f1", "f2"}
    for ep in far:
        ep.ejected = True
    assert {balancer.pick().key for _ in range(400)} == {"n1", "n2", "f1", "f2"}   # nothing healthy
    far[0].ejected = near[0].ejected = False
    balancer.panic = True
    assert {balancer.pick().key for _ in range(400)} == {"n1", "n2", "f1", "f2"}


def cluster(outlier: bool = True, setting: LocalityLoadBalancerSetting | None = None) -> Cluster:
    from remora.config.model import OutlierDetection, TrafficPolicy
    policy = TrafficPolicy(load_balancer=LoadBalancerSettings(locality_lb_setting=setting),
                           outlier_detection=OutlierDetection(consecutive_5xx_errors=1) if outlier else None)
    endpoints = [Endpoint("10.0.0.1", 80, {}, locality="r1/z1"), Endpoint("10.0.0.2", 80, {}, locality="r2/z1")]
    return Cluster("c", "svc", 80, None, endpoints, policy)


def test_applies_only_with_a_locality_outlier_detection_and_not_disabled():
    """Istio's conditions: the sidecar's locality known, outlierDetection set, enabled not false."""
    for made, locality, applies in ((cluster(), "r1/z1", True), (cluster(outlier=False), "r1/z1", False),
                                    (cluster(), "", False),
                                    (cluster(setting=LocalityLoadBalancerSetting(enabled=False)), "r1/z1", False)):
        apply_locality(made, locality)
        assert isinstance(made.balancer, LocalityPriorityBalancer) is applies
    made = cluster()
    apply_locality(made, "r1/z1")
    assert [(ep.key, ep.priority) for ep in made.endpoints] == [("10.0.0.1:80", 0), ("10.0.0.2:80", 1)]


MESH = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.internal
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    loadBalancer:
      localityLbSetting:
%s
"""


def test_config_accepts_failover_and_distribute_and_refuses_what_istio_refuses_naming_the_field():
    """failover by region, failoverPriority labels and distribute weights load; both forms at
    once, zones in failover, weights not adding to 100, misplaced wildcards and bad or repeated
    labels are refused."""
    load_mesh_text(MESH % "        enabled: true\n        failover: [{from: us-east, to: us-west}]")
    load_mesh_text(MESH % "        failoverPriority: [topology.istio.io/network, version=v2]")
    load_mesh_text(MESH % "        distribute: [{from: 'us-east/*', to: {'us-east/*': 80, 'us-west/*': 20}}]")
    for body, path, words in (
            ("        distribute: [{from: us-east/*, to: {us-west/*: 100}}]\n        failover: [{from: a, to: b}]",
             "localityLbSetting", "only one of distribute and failover"),
            ("        distribute: [{from: us-east/*, to: {us-west/*: 90}}]", "distribute[0].to", "add up to 90"),
            ("        distribute: [{from: '*/zone', to: {us-west: 100}}]", "distribute[0].from", "whole last part"),
            ("        failoverPriority: [version, -bad]", "failoverPriority[1]", "expected a label name"),
            ("        failoverPriority: [version, version=v1]", "failoverPriority[1]", "listed twice"),
            ("        failover: [{from: us-east/zone-a, to: us-west}]", "failover[0].from", "names regions"),
            ("        failover: [{from: us-east, to: us-east}]", "failover[0]", "the same region"),
            ("        failover: [{to: us-west}]", "failover[0].from", "a region is required")):
        with pytest.raises(ConfigError) as caught:
            load_mesh_text(MESH % body)
        assert path in str(caught.value) and words in str(caught.value), str(caught.value)


@pytest.mark.parametrize("locality, pattern, matches", [
    ("us-east/z1/s1", "*", True), ("us-east/z1/s1", "us-east/*", True), ("us-east/z1/s1", "us-east", True),
    ("us-east/z1/s1", "us-east/z1/*", True), ("us-east/z1/s1", "us-east/z2/*", False),
    ("us-east/z1/s1", "us-west/*", False), ("us-east/z1/s1", "us-east/z1/s1", True),
])
def test_locality_patterns_match_as_istios(locality, pattern, matches):
    """Istio's LocalityMatch: `*` and missing parts match anything."""
    assert locality_match(parse_locality(locality), pattern) is matches


def test_distribute_shares_each_percent_among_matching_localities_by_endpoint_weight():
    """from us-east/*: 80% to us-east zones (z1 has two endpoints, z2 one: 54 and 27 rounded
    up), 20% to us-west; ap-south matches no pattern and gets nothing; another source: None."""
    groups = {"us-east/z1": [Ep("a", ""), Ep("b", "")], "us-east/z2": [Ep("c", "")],
              "us-west/z1": [Ep("d", "")], "ap-south/z1": [Ep("e", "")]}
    rules = [LocalityDistribute(from_="us-east/*", to={"us-east/*": 80, "us-west/*": 20})]
    assert distribute_weights(groups, "us-east/z1", rules) == {
        "us-east/z1": 54, "us-east/z2": 27, "us-west/z1": 20, "ap-south/z1": 0}
    assert distribute_weights(groups, "eu-west/z1", rules) is None


def test_weighted_balancer_follows_weights_and_shrinks_unhealthy_localities():
    """80/20 picks; a locality with half its endpoints ejected keeps 70% of its weight; a
    locality with weight 0 gets nothing, not even in panic."""
    east, west, none = [Ep("e1", ""), Ep("e2", "")], [Ep("w1", "")], [Ep("x1", "")]
    balancer = LocalityWeightedBalancer([east, west, none], [80, 20, 0], None, rand=random.Random(3).random)
    share = sum(balancer.pick() in west for _ in range(5000)) / 5000
    assert 0.17 < share < 0.23
    east[0].ejected = True
    share = sum(balancer.pick() in west for _ in range(5000)) / 5000
    assert 0.23 < share < 0.29          # 20 / (0.7 x 80 + 20) = 26%
    for ep in east + west:
        ep.ejected = True
    assert {balancer.pick().key for _ in range(300)} == {"e1", "e2", "w1"}


def test_pick_elsewhere_skips_the_tried_levels_until_none_is_left():
    """retryRemoteLocalities: a retry after the near level goes to the next level although
    the near one is healthy; with every level tried, a plain pick."""
    near, far = [Ep("n1", "r/z")], [Ep("f1", "x/y")]
    for number, level in enumerate((near, far)):
        for ep in level:
            ep.priority = number
    balancer = LocalityPriorityBalancer([near, far], None, rand=random.Random(1).random)
    assert {balancer.pick_elsewhere(None, near).key for _ in range(50)} == {"f1"}
    assert {balancer.pick_elsewhere(None, near + far).key for _ in range(50)} == {"n1"}


def test_label_priority_is_istios_failover_priority():
    """All labels equal: 0; first mismatch at j of n: n - j; `name=value` overrides the sidecar's."""
    names = ["topology.istio.io/network", "topology.kubernetes.io/region", "topology.kubernetes.io/zone"]
    proxy = {"topology.istio.io/network": "n1", "topology.kubernetes.io/region": "r1",
             "topology.kubernetes.io/zone": "z1"}
    assert label_priority(proxy, dict(proxy), names) == 0
    assert label_priority(proxy, {**proxy, "topology.kubernetes.io/zone": "z2"}, names) == 1
    assert label_priority(proxy, {**proxy, "topology.kubernetes.io/region": "r2"}, names) == 2
    assert label_priority(proxy, {}, names) == 3
    assert label_priority({}, {"version": "v2"}, ["version=v2"]) == 0


def test_failover_priority_levels_use_labels_and_locality_topology_and_failover_refines_them():
    """Topology labels come from each side's locality; alone, failoverPriority ranks by labels
    only; with failover, the locality order splits each label level."""
    def ep(key, locality, **labels):
        made = Ep(key, locality)
        made.labels = {k.replace("_", "/"): v for k, v in labels.items()}
        return made
    same_zone_other_net = ep("a", "us-east/1a", **{"topology.istio.io_network": "n2"})
    other_region = ep("b", "us-west/1a", **{"topology.istio.io_network": "n1"})
    same_region = ep("c", "us-east/1b", **{"topology.istio.io_network": "n1"})
    order = ["topology.istio.io/network", "topology.kubernetes.io/region", "topology.kubernetes.io/zone"]
    proxy = {"topology.istio.io/network": "n1"}
    levels = locality_levels([same_zone_other_net, other_region, same_region], "us-east/1a", (), order, proxy,
                             use_locality=False)
    assert [[e.key for e in level] for level in levels] == [["c"], ["b"], ["a"]]
    twins = [ep("x", "us-east/1a", version="v1"), ep("y", "us-east/1b", version="v1"), ep("z", "us-east/1a")]
    levels = locality_levels(twins, "us-east/1a", [LocalityFailover(from_="us-east", to="us-west")],
                             ["version"], {"version": "v1"})
    assert [[e.key for e in level] for level in levels] == [["x"], ["y"], ["z"]]
