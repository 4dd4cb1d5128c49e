"""Locality load balancing: endpoints near the sidecar first, the others when the near ones
fail (failover, on Envoy's priority levels), or shares per locality (distribute, on Envoy's
locality weights), as Istio configures Envoy.

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
- failoverPriority (Istio's applyFailoverPriorities): an ordered list of label names (or
  `name=value`, the value standing for the sidecar's); an endpoint matching the sidecar on
  all of them is priority 0, one that first differs at the j-th of n labels is n - j. The
  labels compared are `--labels` plus the topology labels of each side's locality
  (topology.kubernetes.io/region and zone, topology.istio.io/subzone). With `failover` too,
  the locality priority refines each label level (label priority x 5 + locality priority).
- Load per level (Envoy's priority load, overprovisioning factor 1.4): a level whose
  healthy share is h takes min(100, 140 h)% of what the levels before it left; when all
  levels together are under 100 (most endpoints ejected) the shares are scaled up to 100.
  So one ejected endpoint of two local ones still keeps all traffic local (70% x 1.4 ≥
  100%), and traffic spills over in proportion as more fail.
- Panic (minHealthPercent, or every endpoint ejected): all endpoints, as one level.
- Within a level, the DestinationRule's loadBalancer policy picks (a balancer per level).
- distribute (Istio's applyLocalityWeights): the first rule whose `from` matches the
  sidecar's locality (`*` a whole last part) gives each `to` pattern its percent; the
  endpoints' localities that match a pattern share it in proportion to their endpoints'
  weights (rounded up), a locality matched by no pattern gets nothing. It needs no
  outlierDetection. A locality's share shrinks with its health (Envoy: weight x
  min(1, 1.4 x healthy share)); with nothing healthy anywhere, panic.
"""
from __future__ import annotations

import math
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
    if region == proxy[0]:           # plain equality, as Istio's LbPriority (empty parts too)
        if zone == proxy[1]:
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


class _GroupBalancer(Balancer):
    """Endpoint groups (levels or localities), a balancer per group, and one over `everyone`
    for panic: a pick chooses a group by its share, then the group's balancer chooses."""

    __slots__ = ("_group_balancers", "_everyone", "_rand")

    def __init__(self, groups: list[list[BalancedEndpoint]], settings, everyone: list, rand) -> None:
        super().__init__([ep for group in groups for ep in group])
        self._group_balancers = [make_balancer(settings, group) for group in groups]
        self._everyone = make_balancer(settings, everyone or self.endpoints)
        self._everyone.panic = True
        self._rand = rand

    def _panic_changed(self) -> None:
        pass   # read at pick time

    def _pick_group(self, shares: list[float], hash_key, exclude):
        """A group drawn in proportion to `shares`; with no share anywhere, panic."""
        total = sum(shares)
        if total <= 0:
            return self._everyone.pick(hash_key, exclude)
        point = self._rand() * total
        for index, share in enumerate(shares):
            if share > 0 and point < share:
                return self._group_balancers[index].pick(hash_key, exclude)
            point -= share
        last = max(i for i, share in enumerate(shares) if share > 0)   # rounding at the top end
        return self._group_balancers[last].pick(hash_key, exclude)


class LocalityPriorityBalancer(_GroupBalancer):
    """Picks a priority level by its load, then an endpoint with the level's own balancer."""

    __slots__ = ("levels",)

    def __init__(self, levels: list[list[BalancedEndpoint]], settings, rand=random.random) -> None:
        super().__init__(levels, settings, [], rand)
        self.levels = levels

    def loads(self) -> list[float]:
        healthy = [sum(not ep.ejected for ep in level) for level in self.levels]
        return level_loads(healthy, [len(level) for level in self.levels])

    def pick_elsewhere(self, hash_key: bytes | None, tried: Collection[BalancedEndpoint]):
        """retryRemoteLocalities (Envoy's previous_priorities): the levels of the tried
        endpoints count as unhealthy for this pick; if that leaves none, a plain pick."""
        if self._ignore_ejected:
            return self._everyone.pick(hash_key, tried)
        skipped = {ep.priority for ep in tried}
        healthy = [0 if number in skipped else sum(not ep.ejected for ep in level)
                   for number, level in enumerate(self.levels)]
        loads = level_loads(healthy, [len(level) for level in self.levels])
        if not any(loads):
            return self.pick(hash_key, tried)
        return self._pick_group(loads, hash_key, tried)

    def pick(self, hash_key: bytes | None = None, exclude: Collection[BalancedEndpoint] = ()):
        if self._ignore_ejected:
            return self._everyone.pick(hash_key, exclude)
        return self._pick_group(self.loads(), hash_key, exclude)


def locality_match(locality: tuple[str, str, str], pattern: str) -> bool:
    """Istio's LocalityMatch: `region[/zone[/subzone]]`, `*` or a missing part matching any."""
    rule = parse_locality(pattern)
    return all(want in ("*", "") or want == have for want, have in zip(rule, locality)) and rule[0] != ""


def distribute_weights(groups: dict[str, list], proxy_locality: str, rules: Sequence) -> dict[str, int] | None:
    """Each endpoint locality's weight under the first rule whose `from` matches the sidecar;
    None when no rule does (the cluster then balances as without distribute)."""
    proxy = parse_locality(proxy_locality)
    rule = next((r for r in rules if locality_match(proxy, r.from_)), None)
    if rule is None:
        return None
    weights = dict.fromkeys(groups, 0)
    unmatched = set(groups)
    for pattern, percent in rule.to.items():
        matched = {loc: sum(ep.weight for ep in groups[loc]) for loc in sorted(unmatched)
                   if locality_match(parse_locality(loc), pattern)}
        unmatched -= set(matched)
        total = sum(matched.values())
        for loc, original in matched.items():
            weights[loc] = math.ceil(original * percent / total) if total else 0
    return weights


class LocalityWeightedBalancer(_GroupBalancer):
    """Picks a locality by its weight scaled by its health, then an endpoint in it."""

    __slots__ = ("groups", "weights")

    def __init__(self, groups: list[list[BalancedEndpoint]], weights: list[int], settings,
                 rand=random.random) -> None:
        # Panic stays within the localities the rule sends to (Istio drops the others).
        served = [ep for group, weight in zip(groups, weights) if weight > 0 for ep in group]
        super().__init__(groups, settings, served, rand)
        self.groups, self.weights = groups, weights

    def effective_weights(self) -> list[float]:
        return [weight * min(1.0, OVERPROVISIONING / 100 * sum(not ep.ejected for ep in group) / len(group))
                for weight, group in zip(self.weights, self.groups)]

    def pick(self, hash_key: bytes | None = None, exclude: Collection[BalancedEndpoint] = ()):
        if self._ignore_ejected:
            return self._everyone.pick(hash_key, exclude)
        return self._pick_group(self.effective_weights(), hash_key, exclude)


TOPOLOGY_LABELS = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone")


def with_topology(labels: dict[str, str], locality: str) -> dict[str, str]:
    """Labels plus the topology labels a locality stands for (a label set explicitly stays)."""
    out = dict(labels)
    for name, value in zip(TOPOLOGY_LABELS, parse_locality(locality)):
        if value:
            out.setdefault(name, value)
    return out


def label_priority(proxy_labels: dict[str, str], endpoint_labels: dict[str, str], names: Sequence[str]) -> int:
    """Istio's failoverPriority: 0 when every listed label matches, else n - j at the first
    mismatch j (a missing label is the empty string, as in Go); `name=value` fixes the value."""
    for j, entry in enumerate(names):
        name, given, value = entry.partition("=")
        want = value if given else proxy_labels.get(name, "")
        if want != endpoint_labels.get(name, ""):
            return len(names) - j
    return 0


def locality_levels(endpoints: Sequence, proxy_locality: str, failover: Sequence,
                    priority_labels: Sequence[str] = (), proxy_labels: dict[str, str] | None = None,
                    use_locality: bool = True) -> list[list]:
    """The endpoints grouped by priority, nearest first, empty levels dropped."""
    proxy = parse_locality(proxy_locality)
    own = with_topology(proxy_labels or {}, proxy_locality)
    by_priority: dict[int, list] = {}
    for ep in endpoints:
        rank = 0
        if priority_labels:
            rank = label_priority(own, with_topology(ep.labels, ep.locality), priority_labels) * 5
        if use_locality:
            rank += priority(proxy, parse_locality(ep.locality), failover)
        by_priority.setdefault(rank, []).append(ep)
    return [by_priority[p] for p in sorted(by_priority)]


def apply_locality(cluster, proxy_locality: str | None, proxy_labels: dict[str, str] | None = None) -> None:
    """Give the cluster a LocalityWeightedBalancer (distribute) or a LocalityPriorityBalancer
    (failover, failoverPriority) when locality load balancing applies to it (module rules),
    and set each endpoint's `priority` (shown by /clusters)."""
    cluster.locality_args = (proxy_locality, proxy_labels)
    for ep in cluster.endpoints:
        ep.priority = 0
    policy = cluster.traffic_policy
    if policy is None:
        return
    lb = policy.load_balancer
    setting = lb.locality_lb_setting if lb is not None else None
    if setting is not None and setting.enabled is False:
        return
    priority_labels = setting.failover_priority if setting is not None else ()
    if not proxy_locality and not (priority_labels and proxy_labels):
        return
    if setting is not None and setting.distribute:
        if proxy_locality:
            _apply_distribute(cluster, proxy_locality, setting.distribute, lb)
        return
    if policy.outlier_detection is None:
        return
    failover = setting.failover if setting is not None else ()
    # failoverPriority alone ranks by labels only; with failover, localities refine it.
    use_locality = bool(proxy_locality) and (not priority_labels or bool(failover))
    levels = locality_levels(cluster.endpoints, proxy_locality or "", failover, priority_labels,
                             proxy_labels, use_locality)
    if len(levels) < 2:
        return
    for number, level in enumerate(levels):
        for ep in level:
            ep.priority = number
    cluster.balancer = LocalityPriorityBalancer(levels, lb)


def _apply_distribute(cluster, proxy_locality: str, rules: Sequence, lb) -> None:
    groups: dict[str, list] = {}
    for ep in cluster.endpoints:
        groups.setdefault(ep.locality, []).append(ep)
    weights = distribute_weights(groups, proxy_locality, rules)
    if weights is None:
        return
    order = sorted(groups)
    cluster.balancer = LocalityWeightedBalancer([groups[loc] for loc in order], [weights[loc] for loc in order], lb)
