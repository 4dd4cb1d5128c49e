"""Istio's DestinationRule traffic-policy merge, once for the data plane and the Envoy renderer.

Istio's order (pilot `MergeTrafficPolicy`, applied to a subset cluster as
`MergeTrafficPolicy(rule.trafficPolicy, subset.trafficPolicy, port)`), lowest to highest:
1. the rule's trafficPolicy top level;
2. the rule's portLevelSettings entry for the cluster's port;
3. the subset's trafficPolicy top level;
4. the subset's portLevelSettings entry for the port.
Each of loadBalancer, connectionPool, outlierDetection and tls is taken whole from the
highest layer that sets it (a port-level connectionPool does not inherit the top level's
fields: Istio's "port level policies do not inherit"). Within one portLevelSettings list the
first entry for the port counts, as Istio's loop breaks on it.

The same function reads typed policies (config.model.TrafficPolicy, snake_case attributes)
and the renderer's YAML dicts (camelCase keys): a `PolicyView` says how to read a layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")
SNAKE_CASE = {"loadBalancer": "load_balancer", "connectionPool": "connection_pool",
          "outlierDetection": "outlier_detection", "tls": "tls"}


@dataclass(frozen=True)
class PolicyView:
    """How to read one representation of a trafficPolicy."""

    field: Callable[[Any, str], Any]          # (layer, camelCase field) -> value or None
    port_levels: Callable[[Any], list]        # layer -> its portLevelSettings
    port_number: Callable[[Any], int | None]  # one portLevelSettings entry -> port.number


TYPED = PolicyView(
    field=lambda layer, name: getattr(layer, SNAKE_CASE[name]),
    port_levels=lambda layer: getattr(layer, "port_level_settings", ()),
    port_number=lambda pls: pls.port.number if pls.port is not None else None,
)
DICTS = PolicyView(
    field=lambda layer, name: layer.get(name),
    port_levels=lambda layer: layer.get("portLevelSettings") or [],
    port_number=lambda pls: (pls.get("port") or {}).get("number"),
)


@dataclass(frozen=True)
class Source:
    """Where a merged field came from: the layer's path and the value."""

    where: str
    value: Any


def port_level(layer, port: int, view: PolicyView) -> tuple[int, Any] | None:
    """(index, entry) of the first portLevelSettings entry for `port`, or None."""
    for i, pls in enumerate(view.port_levels(layer)):
        if view.port_number(pls) == port:
            return i, pls
    return None


def merge_sources(rule, subset, port: int, view: PolicyView, rule_where: str = "trafficPolicy",
                  subset_where: str = "subset.trafficPolicy") -> dict[str, Source]:
    """Each field set by some layer -> its Source after Istio's merge (module doc)."""
    merged: dict[str, Source] = {}
    for layer, where in ((rule, rule_where), (subset, subset_where)):
        if layer is None:
            continue
        for name in FIELDS:
            value = view.field(layer, name)
            if value is not None:
                merged[name] = Source(f"{where}.{name}", value)
        found = port_level(layer, port, view)
        if found is not None:
            i, pls = found
            for name in FIELDS:
                value = view.field(pls, name)
                if value is not None:
                    merged[name] = Source(f"{where}.portLevelSettings[{i}].{name}", value)
    return merged


def merge_traffic_policy(rule, subset, port: int, view: PolicyView) -> dict[str, Any]:
    """camelCase field -> effective value for the cluster of (subset, port); unset fields left out."""
    return {name: source.value for name, source in merge_sources(rule, subset, port, view).items()}
