"""Typed model of DestinationRule's `trafficPolicy.loadBalancer` (networking.istio.io):
simple policies, consistent hashing and locality load balancing (`localityLbSetting`)."""
from __future__ import annotations

import msgspec

from remora.config.model_base import Spec


class HTTPCookie(Spec):
    name: str
    path: str | None = None
    ttl: str | None = None


class RingHash(Spec):
    minimum_ring_size: int | None = None


class Maglev(Spec):
    table_size: int | None = None


class ConsistentHashLB(Spec):
    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None
    minimum_ring_size: int | None = None


class LocalityFailover(Spec):
    # `from` is a Python keyword: the attribute is from_, the YAML name stays `from`.
    from_: str = msgspec.field(default="", name="from")
    to: str = ""


class LocalityDistribute(Spec):
    from_: str = msgspec.field(default="", name="from")
    to: dict[str, int] = {}


class LocalityLoadBalancerSetting(Spec):
    """Istio's localityLbSetting; `failoverPriority` is refused (validation)."""
    enabled: bool | None = None
    failover: list[LocalityFailover] = []
    distribute: list[LocalityDistribute] = []
    failover_priority: list[str] = []


class LoadBalancerSettings(Spec):
    simple: str | None = None
    consistent_hash: ConsistentHashLB | None = None
    warmup_duration_secs: str | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
