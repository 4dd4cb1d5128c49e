"""Slow start (DestinationRule `loadBalancer.warmupDurationSecs`, Envoy's slow start mode):
an endpoint that joined the cluster less than the window ago gets a share of the traffic
that grows with its age, so a new pod is not handed its full share while it warms up.

Rules, as Envoy's (aggression 1, min_weight_percent 10%):
- Weight during the window: configured weight x max(0.1, max(age, 1 s) / window); after
  it, the configured weight. Weights are kept x10 on warming clusters, so the factor has
  steps of a tenth.
- Age is the time since the endpoint's address first appeared in the cluster: an address
  kept across config versions keeps its age (cluster_setup carries it), and every endpoint
  of a cluster's first version joins together, so at start nobody is favoured.
- The worker's once-a-second sweeper re-weights warming clusters and rebuilds their
  balancer (locality levels included) only when a weight changed: the request path reads
  weights as before and pays nothing.
"""
from __future__ import annotations

from remora.proxy.upstream.balancer import make_balancer

SCALE = 10            # weights on warming clusters, per unit of configured weight
MIN_FACTOR = 0.1      # Envoy's min_weight_percent default (10%)


def weight_now(configured: int, age: float, window: float) -> int:
    """The endpoint's weight (x SCALE) at `age` seconds into a `window`-second slow start."""
    if age >= window:
        return configured * SCALE
    factor = max(MIN_FACTOR, max(age, 1.0) / window)
    return max(1, round(configured * SCALE * factor))


def warm(cluster, now: float) -> bool:
    """Re-weight the cluster's endpoints for `now`; rebuild its balancer if one changed."""
    changed = False
    for ep in cluster.endpoints:
        weight = weight_now(ep.configured_weight, now - ep.joined_at, cluster.warmup)
        if weight != ep.weight:
            ep.weight = weight
            changed = True
    if changed:
        rebuild_balancer(cluster)
    return changed


def rebuild_balancer(cluster) -> None:
    """A balancer over the endpoints' current weights, in the same panic state."""
    from remora.proxy.upstream.locality import apply_locality
    panic = cluster.balancer.panic
    policy = cluster.traffic_policy
    cluster.balancer = make_balancer(policy.load_balancer if policy is not None else None, cluster.endpoints)
    apply_locality(cluster, *cluster.locality_args)
    cluster.balancer.panic = panic


def warming(cluster, now: float) -> bool:
    """Some endpoint is still within the window (or has not been given its full weight)."""
    return any(now - ep.joined_at < cluster.warmup or ep.weight != ep.configured_weight * SCALE
               for ep in cluster.endpoints)
