"""Istio fields that are accepted but have no effect, with the warning istioctl prints.

- DestinationRule `outlierDetection.consecutiveErrors`: before Istio 1.7 it set Envoy's
  consecutive gateway-failure threshold (with 5xx ejection off). Since 1.7 pilot no longer
  translates it: the detector runs with Envoy's defaults (consecutive_5xx 5, enforced;
  gateway failures counted, not enforced) unless consecutive5xxErrors /
  consecutiveGatewayErrors say otherwise. Istio's validation keeps the resource and warns
  when the value is not 0 (pkg/config/validation, validateOutlierDetection); Remora does
  the same, in the loader (files, control server, `remora analyze`), the data plane
  (outlier.py) and the Envoy renderer (envoy_clusters.py).
- DestinationRule `loadBalancer.consistentHash.minimumRingSize`: replaced by
  `consistentHash.ringHash.minimumRingSize` (Istio's validation warns, validateLoadBalancer).
- VirtualService `http[].fault.delay.percent`: replaced by `percentage` (istioctl analyze's
  deprecation analyzer).
Each still works as Istio applies it; the warning names the field and its replacement.
"""
from __future__ import annotations

from remora.config.model import DestinationRuleSpec, OutlierDetection, TrafficPolicy, VirtualServiceSpec

# istioctl's words, so that a search for the message finds both.
CONSECUTIVE_ERRORS_MESSAGE = ("outlier detection consecutive errors is deprecated, use "
                              "consecutiveGatewayErrors or consecutive5xxErrors instead")


MINIMUM_RING_SIZE_MESSAGE = ("consistent hash minimumRingSize is deprecated, use ConsistentHashLB's "
                             "ringHash configuration instead")


def _outlier_settings(spec: DestinationRuleSpec) -> list[tuple[str, OutlierDetection]]:
    """(field path, outlierDetection) of every traffic policy of the rule."""
    found: list[tuple[str, OutlierDetection]] = []

    def add(path: str, policy: TrafficPolicy | None) -> None:
        if policy is None:
            return
        if policy.outlier_detection is not None:
            found.append((f"{path}.outlierDetection", policy.outlier_detection))
        for i, port_policy in enumerate(policy.port_level_settings):
            if port_policy.outlier_detection is not None:
                found.append((f"{path}.portLevelSettings[{i}].outlierDetection", port_policy.outlier_detection))

    add("spec.trafficPolicy", spec.traffic_policy)
    for i, subset in enumerate(spec.subsets):
        add(f"spec.subsets[{i}].trafficPolicy", subset.traffic_policy)
    return found


def _policies(spec: DestinationRuleSpec) -> list[tuple[str, TrafficPolicy]]:
    found = []
    for path, policy in [("spec.trafficPolicy", spec.traffic_policy),
                         *((f"spec.subsets[{i}].trafficPolicy", s.traffic_policy) for i, s in enumerate(spec.subsets))]:
        if policy is not None:
            found.append((path, policy))
            found += [(f"{path}.portLevelSettings[{i}]", p) for i, p in enumerate(policy.port_level_settings)]
    return found


def destination_rule_warnings(spec: DestinationRuleSpec, ref: str, source: str) -> list[str]:
    """One warning per deprecated field set (consecutiveErrors not 0, minimumRingSize), naming the field."""
    warnings = [f"{ref} in {source}: {path}.consecutiveErrors: {CONSECUTIVE_ERRORS_MESSAGE} "
                f"(ignored, as by Istio since 1.7: consecutive5xxErrors applies, default 5)"
                for path, outlier in _outlier_settings(spec) if outlier.consecutive_errors]
    for path, policy in _policies(spec):
        lb = policy.load_balancer
        if lb is not None and lb.consistent_hash is not None and lb.consistent_hash.minimum_ring_size:
            warnings.append(f"{ref} in {source}: {path}.loadBalancer.consistentHash.minimumRingSize: "
                            f"{MINIMUM_RING_SIZE_MESSAGE}")
    return warnings


def virtual_service_warnings(spec: VirtualServiceSpec, ref: str, source: str) -> list[str]:
    """`fault.delay.percent` (an integer) is deprecated for `percentage` (a Percent)."""
    return [f"{ref} in {source}: spec.http[{i}].fault.delay.percent: HTTPRoute.fault.delay.percent is "
            "deprecated; use HTTPRoute.fault.delay.percentage"
            for i, route in enumerate(spec.http)
            if route.fault is not None and route.fault.delay is not None and route.fault.delay.percent is not None]
