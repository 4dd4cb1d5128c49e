"""Locality failover: endpoints near the sidecar first, the others when the near ones fail
(Istio's locality load balancing, on Envoy's priority levels).

Rules, as Istio and Envoy apply them:
- Active for a cluster only when the sidecar knows its locality (`--locality
  region/zone/subzone`), the DestinationRule does not say `localityLbSetting.enabled:
  false`, and the cluster has outlierDetection: without it an endpoint never leaves, so
  traffic would never fail over (Istio: "failover should only be applied with outlier
  detection"). Else the cluster balances over all its endpoints as before.
- Priority (Istio's applyLocalityFailover): 0 when region, zone and subzone match the
  sidecar's; 1 when region and zone do; 2 when the region does; 3 otherwise. With
  `failover: [{from: R1, to: R2}]` and the sidecar in R1, endpoints of other regions than R2
  drop to 4. Levels are then numbered consecutively (empty ones removed). An endpoint
  without a locality matches nothing.
- Load per level (Envoy's priority load, overprovisioning factor 1.4): a level whose
  healthy share is h takes min(100, 140 h)% of what the levels before it left; when all
  levels together are under 100 (most endpoints ejected) the shares are scaled up to 100.
  So one ejected endpoint of two local ones still keeps all traffic local (70% x 1.4 ≥
  100%), and traffic spills over in proportion as more fail.
- Panic (minHealthPercent, or every endpoint ejected): all endpoints, as one level.
- Within a level, the DestinationRule's loadBalancer policy picks (a balancer per level).
"""
from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from remora.proxy.upstream.balancer import Balancer, BalancedEndpoint, make_balancer

OVERPROVISIONING = 140   # Envoy's default overprovisioning factor, in percent


def parse_locality(text: str | None) -> tuple[str, str, str]:
    """`region/zone/subzone` (trailing parts optional) -> (region, zone, subzone)."""
    parts = (text or "").split("/")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def priority(proxy: tuple[str, str, str], endpoint: tuple[str, str, str], failover: Sequence) -> int:
    """Istio's priority of an endpoint's locality seen from the sidecar's (0 is nearest)."""
    region, zone, subzone = endpoint
    if region and region == proxy[0]:
        if zone and zone == proxy[1]:
            return 0 if subzone == proxy[2] else 1
        return 2
    for rule in failover:
        if rule.from_ == proxy[0]:
            return 3 if region == rule.to else 4
    return 3


def level_loads(healthy: Sequence[int], totals: Sequence[int]) -> list[float]:
    """Percent of requests per level (Envoy's priority load); all zero when nothing is healthy."""
    health = [min(100.0, OVERPROVISIONING * h / t) if t else 0.0 for h, t in zip(healthy, totals)]
    total = sum(health)
    if total <= 0:
        return [0.0] * len(health)
    if total < 100:
        return [100.0 * h / total for h in health]
    loads, left = [], 100.0
    for h in health:
        share = min(left, h)
        loads.append(share)
        left -= share
    return loads


class LocalityPriorityBalancer(Balancer):
    """Picks a priority level by its load, then an endpoint with the level's own balancer."""

    __slots__ = ("levels", "_level_balancers", "_everyone", "_rand")

    def __init__(self, levels: list[list[BalancedEndpoint]], settings, rand=random.random) -> None:
        super().__init__([ep for level in levels for ep in level])
        self.levels = levels
        self._level_balancers = [make_balancer(settings, level) for level in levels]
        self._everyone = make_balancer(settings, self.endpoints)
        self._everyone.panic = True
        self._rand = rand

    def _panic_changed(self) -> None:
        pass   # read at pick time

    def loads(self) -> list[float]:
        healthy = [sum(not ep.ejected for ep in level) for level in self.levels]
        return level_loads(healthy, [len(level) for level in self.levels])

    def pick(self, hash_key: bytes | None = None, exclude: Collection[BalancedEndpoint] = ()):
        if self._ignore_ejected:
            return self._everyone.pick(hash_key, exclude)
        loads = self.loads()
        point = self._rand() * 100.0
        for index, load in enumerate(loads):
            if load > 0 and point < load:
                return self._level_balancers[index].pick(hash_key, exclude)
            point -= load
        if not any(loads):
            return self._everyone.pick(hash_key, exclude)    # nothing healthy: panic
        last = max(i for i, load in enumerate(loads) if load > 0)   # rounding at the top end
        return self._level_balancers[last].pick(hash_key, exclude)


def locality_levels(endpoints: Sequence, proxy_locality: str, failover: Sequence) -> list[list]:
    """The endpoints grouped by priority, nearest first, empty levels dropped."""
    proxy = parse_locality(proxy_locality)
    by_priority: dict[int, list] = {}
    for ep in endpoints:
        by_priority.setdefault(priority(proxy, parse_locality(ep.locality), failover), []).append(ep)
    return [by_priority[p] for p in sorted(by_priority)]


def apply_locality(cluster, proxy_locality: str | None) -> None:
    """Give the cluster a LocalityPriorityBalancer when locality failover applies to it
    (module rules), and set each endpoint's `priority` (shown by /clusters)."""
    for ep in cluster.endpoints:
        ep.priority = 0
    policy = cluster.traffic_policy
    if not proxy_locality or policy is None or policy.outlier_detection is None:
        return
    lb = policy.load_balancer
    setting = lb.locality_lb_setting if lb is not None else None
    if setting is not None and setting.enabled is False:
        return
    levels = locality_levels(cluster.endpoints, proxy_locality, setting.failover if setting is not None else ())
    if len(levels) < 2:
        return
    for number, level in enumerate(levels):
        for ep in level:
            ep.priority = number
    cluster.balancer = LocalityPriorityBalancer(levels, lb)
