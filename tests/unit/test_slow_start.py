"""Slow start (remora/proxy/upstream/slow_start.py): Envoy's weight curve and the rebuild."""
from __future__ import annotations

import pytest

from remora.config.model import LoadBalancerSettings, TrafficPolicy
from remora.proxy.upstream.cluster import Cluster, Endpoint
from remora.proxy.upstream.slow_start import SCALE, warm, warming, weight_now


@pytest.mark.parametrize("age, expected", [(0.0, 2), (1.0, 2), (2.0, 3), (5.0, 8), (10.0, 10), (60.0, 10)])
def test_weight_grows_linearly_from_the_floor_to_the_configured_weight(age, expected):
    """max(10%, max(age, 1 s) / window) of the weight, x10: a 6 s window gives 2, 3, 8, then 10."""
    assert weight_now(1, age, 6.0) == expected


def test_the_floor_is_ten_percent():
    """A long window starts at Envoy's min_weight_percent, 10%."""
    assert weight_now(3, 0.0, 100.0) == 3    # 3 x 10 x 0.1


def cluster(window: str | None, simple: str = "ROUND_ROBIN") -> Cluster:
    policy = TrafficPolicy(load_balancer=LoadBalancerSettings(simple=simple, warmup_duration_secs=window))
    made = Cluster("c", "svc", 80, None, [Endpoint("10.0.0.1", 80, {}), Endpoint("10.0.0.2", 80, {})], policy)
    made.endpoints[1].joined_at = 100.0       # joined later than the first (0.0)
    return made


def test_warm_reweights_and_rebuilds_keeping_the_panic_state():
    """A warming endpoint gets its share of the weights; the new balancer keeps panic mode."""
    made = cluster("6s")
    made.balancer.panic = True
    old = made.balancer
    assert warm(made, 101.0) and made.balancer is not old and made.balancer.panic
    assert [ep.weight for ep in made.endpoints] == [SCALE, 2]
    picks = [made.pick().key for _ in range(12)]
    assert picks.count("10.0.0.2:80") == 2
    assert not warm(made, 101.5)              # nothing changed: no rebuild
    assert warming(made, 105.0) and warm(made, 107.0)
    assert [ep.weight for ep in made.endpoints] == [SCALE, SCALE] and not warming(made, 107.0)


def test_only_round_robin_and_least_request_warm_up():
    """As in Envoy and Istio: RANDOM (and consistent hashing) ignore warmupDurationSecs."""
    assert cluster("6s").warmup == 6.0 and cluster("6s", "LEAST_REQUEST").warmup == 6.0
    assert cluster("6s", "RANDOM").warmup == 0.0 and cluster(None).warmup == 0.0
