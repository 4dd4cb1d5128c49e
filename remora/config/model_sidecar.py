"""Typed model of Istio's Sidecar (networking.istio.io): what one workload's sidecar sees
(`egress.hosts`) and where its unknown traffic goes (`outboundTrafficPolicy`)."""
from __future__ import annotations

from typing import Any

from remora.config.model import Spec, WorkloadSelector


class SidecarPort(Spec):
    number: int | None = None
    protocol: str | None = None
    name: str | None = None


class IstioEgressListener(Spec):
    port: SidecarPort | None = None
    bind: str | None = None
    capture_mode: str | None = None
    hosts: list[str] = []


class OutboundTrafficPolicy(Spec):
    mode: str | None = None          # REGISTRY_ONLY | ALLOW_ANY
    egress_proxy: Any = None


class SidecarSpec(Spec):
    workload_selector: WorkloadSelector | None = None
    ingress: list[Any] = []
    egress: list[IstioEgressListener] = []
    inbound_connection_pool: Any = None
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
